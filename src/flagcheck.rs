//! Range checks for every numeric and duration flag, as clap value parsers.
//!
//! A value out of range stops the agent at start with clap's message naming
//! the flag (`invalid value 'NaN' for '--max-service-qps <MAX_SERVICE_QPS>':
//! ...`, exit 64), instead of a task panicking later or an agent starting
//! that cannot work (a zero header timeout fails every request). Numbers
//! must be finite and not negative; a non-zero value below the minimum
//! (subnormals such as `1e-320` included) is refused. Where zero has a
//! meaning upstream gave it (`--max-cache-size 0`, rate limits of 0), the
//! `_or_off` variants accept exactly `0` besides the range.
//!
//! Usage: `#[arg(long, value_parser = flagcheck::duration("10ms", "1m"))]`.
//! Bounds are written as the flag would be, so messages quote them as is.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::duration::parse_duration;

/// A duration in `min..=max` (Go syntax: `500ms`, `1h30m`).
pub fn duration(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let (lo, hi) = (bound_duration(min), bound_duration(max));
    move |s| {
        let d = parse_duration(s)?;
        if d < lo || d > hi {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(d)
    }
}

/// `0` (the flag's "off") or a duration in `min..=max`.
pub fn duration_or_off(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let (lo, hi) = (bound_duration(min), bound_duration(max));
    move |s| {
        let d = parse_duration(s)?;
        if !d.is_zero() && (d < lo || d > hi) {
            return Err(format!("must be 0 (off) or between {min} and {max}"));
        }
        Ok(d)
    }
}

/// A finite number in `min..=max` (a rate per second).
pub fn rate(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    let (lo, hi) = (bound_number::<f64>(min), bound_number::<f64>(max));
    move |s| {
        let v = parse_rate(s)?;
        if !(lo..=hi).contains(&v) {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(v)
    }
}

/// `0` (off) or a finite number in `min..=max`.
pub fn rate_or_off(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    let (lo, hi) = (bound_number::<f64>(min), bound_number::<f64>(max));
    move |s| {
        let v = parse_rate(s)?;
        if v != 0.0 && !(lo..=hi).contains(&v) {
            return Err(format!("must be 0 (off) or between {min} and {max}"));
        }
        Ok(v)
    }
}

/// A whole number in `min..=max` (a size or a count).
pub fn count<T>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    assert!(
        T::try_from(max).is_ok(),
        "the bound {max} fits the flag's type"
    );
    move |s| {
        let v: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("must be a whole number between {min} and {max}"))?;
        if !(min..=max).contains(&v) {
            return Err(format!("must be between {min} and {max}"));
        }
        T::try_from(v).map_err(|_| format!("must be between {min} and {max}"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_owned())?;
    if !v.is_finite() {
        return Err("must be a finite number".into());
    }
    if v.is_sign_negative() {
        return Err("must not be negative".into());
    }
    Ok(v)
}

fn bound_duration(s: &'static str) -> Duration {
    parse_duration(s).unwrap_or_else(|e| panic!("flag bound {s:?} is a duration: {e}"))
}

fn bound_number<T: FromStr>(s: &'static str) -> T
where
    T::Err: Display,
{
    s.parse()
        .unwrap_or_else(|e| panic!("flag bound {s:?} is a number: {e}"))
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::Cli;

    /// Values no numeric or duration flag may accept.
    const ALWAYS_BAD: &[&str] = &[
        "NaN",
        "nan",
        "inf",
        "-inf",
        "infinity",
        "-1",
        "-1s",
        "-0.5",
        "1e-320",
        "1e-320s",
        "",
        "x",
        "1e400",
        "99999999999999999999999",
        "999999999999h",
    ];

    /// Every numeric or duration flag: values out of its range, and the
    /// edges it must accept. A flag missing here fails
    /// `every_numeric_and_duration_flag_refuses_bad_values`.
    const TABLE: &[(&str, &str, &[&str], &[&str])] = &[
        ("server", "port", &["65536", "1.5"], &["0", "65535"]),
        ("server", "probe-port", &["65536"], &["0", "65535"]),
        ("server", "metrics-port", &["65536"], &["0", "65535"]),
        (
            "server",
            "max-credential-retention-before-renewal",
            &["999ms", "8761h"],
            &["0", "0s", "1s", "3h0m0s", "24h", "8760h"],
        ),
        (
            "server",
            "max-cache-size",
            &["10000001", "1.5"],
            &["0", "10000000"],
        ),
        (
            "server",
            "max-service-qps",
            &["0.0009", "1000001", "-1"],
            &["0", "0.001", "3", "1000000"],
        ),
        (
            "server",
            "credentials-reload-interval",
            &["0s", "999ms", "25h"],
            &["1s", "24h"],
        ),
        (
            "server",
            "eks-auth-connect-timeout",
            &["0s", "9ms", "61s"],
            &["10ms", "1m"],
        ),
        (
            "server",
            "eks-auth-request-timeout",
            &["0s", "9ms", "301s"],
            &["10ms", "5m"],
        ),
        (
            "server",
            "eks-auth-max-attempts",
            &["0", "11"],
            &["1", "10"],
        ),
        (
            "server",
            "eks-auth-rate-limit",
            &["0.0009", "1000001"],
            &["0", "0.001", "0.01", "1000000"],
        ),
        (
            "server",
            "eks-auth-rate-burst",
            &["0", "1000001"],
            &["1", "1000000"],
        ),
        (
            "server",
            "eks-auth-queue-size",
            &["1000001"],
            &["0", "1000000"],
        ),
        (
            "server",
            "negative-cache-ttl",
            &["1h0m1s"],
            &["0", "1ms", "1h"],
        ),
        (
            "server",
            "rate-limit",
            &["0.0009", "1000001"],
            &["0", "0.001", "1000000"],
        ),
        (
            "server",
            "rate-limit-burst",
            &["0", "1000001"],
            &["1", "1000000"],
        ),
        (
            "server",
            "per-client-rate-limit",
            &["0.0009", "1000001"],
            &["0", "0.001", "1000000"],
        ),
        (
            "server",
            "per-client-rate-limit-burst",
            &["0", "1000001"],
            &["1", "1000000"],
        ),
        (
            "server",
            "max-connections",
            &["0", "1000001"],
            &["1", "1000000"],
        ),
        (
            "server",
            "max-connections-per-source",
            &["0", "1000001"],
            &["1", "1000000"],
        ),
        (
            "server",
            "header-read-timeout",
            &["0s", "99ms", "10m1s"],
            &["100ms", "10m"],
        ),
        (
            "server",
            "max-header-bytes",
            &["0", "4095", "1048577"],
            &["4096", "1048576"],
        ),
        ("server", "drain-timeout", &["1h0m1s"], &["0", "1h"]),
        ("server", "ipv6-bind-wait", &["10m1s"], &["0", "10m"]),
        (
            "server",
            "jwks-refetch-interval",
            &["24h0m1s"],
            &["0s", "24h"],
        ),
        (
            "server",
            "jwks-refresh-interval",
            &["0s", "999ms", "24h0m1s"],
            &["1s", "24h"],
        ),
        ("server", "token-leeway", &["10m1s"], &["0s", "10m"]),
        (
            "server",
            "verified-token-cache-size",
            &["10000001"],
            &["0", "10000000"],
        ),
        (
            "probe",
            "timeout",
            &["0s", "9ms", "10m1s"],
            &["10ms", "10m"],
        ),
    ];

    fn numeric(arg: &clap::Arg) -> bool {
        let id = arg.get_value_parser().type_id();
        [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
            TypeId::of::<f32>(),
            TypeId::of::<f64>(),
            TypeId::of::<Duration>(),
        ]
        .iter()
        .any(|t| id == *t)
    }

    /// Arguments a command line needs besides the flag under test.
    fn argv(sub: &str, flag: &str, value: &str) -> Vec<String> {
        let mut v = vec!["eks-pod-identity-agent".to_owned(), sub.to_owned()];
        match sub {
            "server" => v.extend(["--cluster-name".into(), "c".into()]),
            "probe" => v.extend(["--socket".into(), "/s".into()]),
            _ => {}
        }
        v.push(format!("--{flag}={value}"));
        if sub == "probe" {
            v.push("healthz".into());
        }
        v
    }

    /// Walks clap's own description of every subcommand, so a numeric or
    /// duration flag added without an entry here (and a validator) fails.
    #[test]
    fn every_numeric_and_duration_flag_refuses_bad_values() {
        let cli = Cli::command();
        let mut walked = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| numeric(a)) {
                let flag = arg.get_long().expect("numeric flags are long flags");
                let sub = sub.get_name();
                walked.push((sub.to_owned(), flag.to_owned()));
                let Some((_, _, bad, good)) =
                    TABLE.iter().find(|(s, f, _, _)| *s == sub && *f == flag)
                else {
                    panic!(
                        "--{flag} ({sub}) takes a number or duration: give it a range (flagcheck) and an entry in TABLE"
                    );
                };
                for value in ALWAYS_BAD.iter().chain(bad.iter()) {
                    let err = Cli::try_parse_from(argv(sub, flag, value))
                        .err()
                        .unwrap_or_else(|| panic!("--{flag}={value:?} was accepted"));
                    assert!(
                        matches!(
                            err.kind(),
                            ErrorKind::ValueValidation | ErrorKind::InvalidValue
                        ),
                        "--{flag}={value:?}: {:?}",
                        err.kind()
                    );
                    let text = err.to_string();
                    assert!(text.contains(&format!("--{flag}")), "{text}");
                }
                for value in good.iter() {
                    if let Err(e) = Cli::try_parse_from(argv(sub, flag, value)) {
                        panic!("--{flag}={value:?} was refused: {e}");
                    }
                }
            }
        }
        for (sub, flag, _, _) in TABLE {
            assert!(
                walked.iter().any(|(s, f)| s == sub && f == flag),
                "TABLE names --{flag} ({sub}), which is not a numeric flag"
            );
        }
        // The global flags take no numbers; were one added, walk it too.
        assert!(!cli.get_arguments().any(numeric));
    }

    /// The defaults are inside their ranges (clap runs them through the
    /// same value parsers).
    #[test]
    fn defaults_pass_their_own_checks() {
        Cli::try_parse_from(["eks-pod-identity-agent", "server", "--cluster-name", "c"])
            .expect("defaults");
        Cli::try_parse_from(["x", "probe", "--socket", "/s", "readyz"]).expect("defaults");
    }

    #[test]
    fn messages_say_the_range() {
        let check = rate_or_off("0.001", "1000000");
        assert_eq!(
            check("1e-320").unwrap_err(),
            "must be 0 (off) or between 0.001 and 1000000"
        );
        assert_eq!(check("NaN").unwrap_err(), "must be a finite number");
        assert_eq!(check("-3").unwrap_err(), "must not be negative");
        assert_eq!(check("0").unwrap(), 0.0);
        assert_eq!(
            duration("10ms", "1m")("0s").unwrap_err(),
            "must be between 10ms and 1m"
        );
        assert_eq!(
            count::<u32>(1, 10)("11").unwrap_err(),
            "must be between 1 and 10"
        );
    }
}
