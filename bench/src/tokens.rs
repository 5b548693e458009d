//! Pod tokens for the benchmark, minted in-process with the emulator's
//! signing key (`emulator --key-file`), so they are exactly what the
//! emulator itself mints: RS256, `iss` = the emulator's URL, audience
//! `pods.eks.amazonaws.com`, 22 h lifetime, a random `jti` (every token is
//! distinct, even for the same pod).

use std::io::Write;
use std::path::Path;

use testkit::issuer::{Issuer, IssuerError, TokenSpec};

pub const NAMESPACE: &str = "bench";
pub const SERVICE_ACCOUNT: &str = "app";
pub const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/bench";

/// Pod number `i` of namespace `bench`, ServiceAccount `app`, with a fixed
/// uid, so tokens minted later for the same pod share its identity.
pub fn pod_spec(i: usize) -> TokenSpec {
    let mut spec = TokenSpec::pod(NAMESPACE, SERVICE_ACCOUNT, &format!("pod-{i:05}"));
    spec.pod_uid = format!("00000000-0000-4000-8000-{i:012}");
    spec
}

/// Mints one token per spec on `threads` threads (RSA signing dominates).
pub fn mint_parallel(
    issuer: &Issuer,
    specs: &[TokenSpec],
    threads: usize,
) -> Result<Vec<String>, IssuerError> {
    let threads = threads.max(1);
    let chunk = specs.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<String>, IssuerError>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|spec| issuer.mint(spec)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("minting thread panicked"))
            .collect()
    });
    let mut out = Vec::with_capacity(specs.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// One token per line (what `wrk/rotate.lua` reads).
pub fn write_lines(path: &Path, tokens: &[String]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for t in tokens {
        writeln!(f, "{t}")?;
    }
    f.flush()
}
