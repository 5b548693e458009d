//! Packaging: runs `tests/packaging/check.py`, which renders the manifests in
//! `daemonset/` with `kubectl kustomize`, validates them against the
//! Kubernetes schemas and the agent's invariants, and lints the Dockerfile
//! with hadolint; then parses every command line it rendered (containers and
//! exec probes) with the binaries' own parsers (`Cli::try_parse_from`), so a
//! flag the manifests pass is one the binary accepts, and checks the values
//! that matter with the CLI's own defaults: ports, the metrics address, the
//! drain bound against the grace period, the cluster name, and the key source:
//! in a pod with the ServiceAccount token where the manifests mount it, the
//! server's flags resolve to the API server's keys (`--jwks-source auto` or
//! `apiserver`), with a JWKS cache.
//!
//! Needs python3 with the packages in `tests/requirements.txt`, kubectl and
//! hadolint. Where they are missing the test is skipped with a message,
//! except under `CI=true`, where a missing tool fails it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use pod_identity_agent::cli::{Cli, Command as AgentCommand, ServerArgs};
use pod_identity_agent::jwks::{KeySource, resolve_source};
use serde::Deserialize;

/// check.py's exit status for a missing prerequisite.
const EXIT_MISSING: i32 = 77;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Outside CI, a visible skip (`test <name> ... SKIPPED: <why>`, written
/// past the harness's output capture); under CI=true, a failure.
fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("packaging checks cannot run under CI=true: {why}");
    }
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "test {name} ... SKIPPED: {why}");
}

/// One rendered command line (check.py's CONTAINERS_JSON).
#[derive(Debug, Clone, Deserialize)]
struct Rendered {
    render: String,
    daemonset: String,
    container: String,
    grace_seconds: Option<u64>,
    /// Where this container has the ServiceAccount token volume mounted.
    sa_mount: Option<String>,
    argv: Vec<String>,
}

impl Rendered {
    fn at(&self) -> String {
        format!(
            "[{}] {}/{}: {:?}",
            self.render, self.daemonset, self.container, self.argv
        )
    }
}

/// What is wrong with one command line, parsed by the binary it names.
fn problems(r: &Rendered) -> Vec<String> {
    let mut out = Vec::new();
    let Some(program) = r.argv.first() else {
        return vec![format!("{}: empty command", r.at())];
    };
    match program.as_str() {
        "/eks-pod-identity-init" => {
            if let Err(e) = pod_identity_init::Cli::try_parse_from(&r.argv) {
                out.push(format!("{}: the init binary refuses it: {e}", r.at()));
            }
        }
        "/eks-pod-identity-agent" => match Cli::try_parse_from(&r.argv) {
            Err(e) => out.push(format!("{}: the agent refuses it: {e}", r.at())),
            Ok(cli) => {
                if let AgentCommand::Server(args) = cli.command {
                    out.extend(server_problems(r, &args));
                }
            }
        },
        other => out.push(format!(
            "{}: runs {other}, not one of the image's binaries",
            r.at()
        )),
    }
    out
}

fn server_problems(r: &Rendered, args: &ServerArgs) -> Vec<String> {
    let mut out = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            out.push(format!("{}: {what}", r.at()));
        }
    };
    want(
        args.cluster_name == "$(CLUSTER_NAME)",
        format!(
            "--cluster-name is {:?}, not $(CLUSTER_NAME)",
            args.cluster_name
        ),
    );
    want(
        args.port == 80,
        format!("credential port {} (pods call port 80)", args.port),
    );
    want(
        args.probe_port == 2703,
        format!("probe port {} (upstream's 2703)", args.probe_port),
    );
    want(
        args.metrics_port == 2705,
        format!(
            "metrics port {} (the scrape annotations say 2705)",
            args.metrics_port
        ),
    );
    want(
        args.metrics_address == IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        format!(
            "metrics address {} (scraped on the node's IP)",
            args.metrics_address
        ),
    );
    match r.grace_seconds {
        Some(grace) => want(
            args.drain_timeout < Duration::from_secs(grace),
            format!(
                "--drain-timeout {:?} is not below terminationGracePeriodSeconds {grace}",
                args.drain_timeout
            ),
        ),
        None => want(false, "no terminationGracePeriodSeconds".into()),
    }
    // Local verification: the agent looks for the ServiceAccount where the
    // manifests mount the token, and there, in a pod, its flags pick the
    // API server's keys.
    let v = &args.verify;
    want(
        r.sa_mount.as_deref().map(Path::new) == Some(v.service_account_dir.as_path()),
        format!(
            "the agent looks for the ServiceAccount in {}, the token is mounted at {:?}",
            v.service_account_dir.display(),
            r.sa_mount
        ),
    );
    static SCRATCH: AtomicUsize = AtomicUsize::new(0);
    let sa_dir = std::env::temp_dir().join(format!(
        "pia-packaging-sa-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&sa_dir).expect("scratch ServiceAccount dir");
    std::fs::write(sa_dir.join("token"), "t").expect("scratch token");
    let in_pod = |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("10.100.0.1".to_owned()),
        "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
        _ => None,
    };
    let resolved = resolve_source(&v.jwks_source, v.kube_api_url.as_deref(), &sa_dir, in_pod);
    let _ = std::fs::remove_dir_all(&sa_dir);
    want(
        matches!(resolved, Ok(Some(KeySource::ApiServer { ref base_url, .. })) if base_url == "https://10.100.0.1:443"),
        format!(
            "--jwks-source {:?} in a pod with a ServiceAccount token resolves to {resolved:?}, not the API server",
            v.jwks_source
        ),
    );
    want(
        v.jwks_cache_path.is_some(),
        "no --jwks-cache-path (a restart while the API server is down would not verify)".into(),
    );
    out
}

#[test]
fn packaging_manifests_and_dockerfile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let lines = std::env::temp_dir().join(format!("pia-packaging-{}.json", std::process::id()));
    let output = match Command::new(&python)
        .arg(root.join("tests/packaging/check.py"))
        .env("CONTAINERS_JSON", &lines)
        .current_dir(root)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            skip_or_fail(&format!("cannot run {python}: {e}"));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    match output.status.code() {
        Some(0) => {}
        Some(EXIT_MISSING) => {
            skip_or_fail(&format!("missing prerequisites:\n{stdout}{stderr}"));
            return;
        }
        code => panic!("tests/packaging/check.py failed (exit {code:?}):\n{stdout}{stderr}"),
    }
    let rendered: Vec<Rendered> =
        serde_json::from_slice(&std::fs::read(&lines).expect("check.py wrote the command lines"))
            .expect("command lines as JSON");
    let _ = std::fs::remove_file(&lines);
    let servers = rendered
        .iter()
        .filter(|r| r.argv.get(1).map(String::as_str) == Some("server"))
        .count();
    assert!(
        rendered.len() >= 20 && servers >= 8,
        "expected every variant's command lines, got {} ({servers} servers)",
        rendered.len()
    );
    let found: Vec<String> = rendered.iter().flat_map(problems).collect();
    assert!(found.is_empty(), "{}", found.join("\n"));

    // The checks are not blind: mutated copies of a rendered server must be
    // caught.
    let server = rendered
        .iter()
        .find(|r| r.render == "base" && r.argv.get(1).map(String::as_str) == Some("server"))
        .expect("the base's server command line")
        .clone();
    let with = |extra: &[&str]| Rendered {
        argv: server
            .argv
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect(),
        ..server.clone()
    };
    for (what, mutated) in [
        ("an unknown flag", with(&["--no-such-flag=1"])),
        (
            "a drain longer than the grace period",
            with(&["--drain-timeout=45s"]),
        ),
        ("another credential port", with(&["--port=8080"])),
        (
            "metrics on localhost only",
            with(&["--metrics-address=127.0.0.1"]),
        ),
        ("a hard-coded cluster name", with(&["--cluster-name=prod"])),
        ("verification off", with(&["--jwks-source=none"])),
        (
            "the ServiceAccount looked for elsewhere",
            with(&["--service-account-dir=/sa"]),
        ),
        (
            "the token not mounted",
            Rendered {
                sa_mount: None,
                ..server.clone()
            },
        ),
    ] {
        assert!(!problems(&mutated).is_empty(), "missed {what}");
    }
}
