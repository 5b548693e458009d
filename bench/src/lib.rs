//! The load benchmark of the agent's credential cache (`bench/run`): the
//! scenarios (`scenario`), what they share (`ctx`, `wrk`), the Markdown
//! report (`report`), the fleet simulation (`fleet`, run by the `fleet`
//! binary) and support code: a minimal keep-alive HTTP/1.1 client
//! (`client`), a botocore-like credential client (`sdk`), child-process
//! guards, token minting, latency statistics. The `bench` binary
//! (`src/bin/bench.rs`) parses the flags and runs the scenarios;
//! `src/bin/baseline.rs` is the physical-limit server and `benches/` holds
//! the criterion micro-benchmarks.
#![allow(
    clippy::disallowed_methods,
    reason = "fakes and benchmarks stand in for the outside world and read its wall clock"
)]

pub mod client;
pub mod ctx;
pub mod fleet;
pub mod procs;
pub mod profile;
pub mod report;
pub mod scenario;
pub mod sdk;
pub mod stats;
pub mod tokens;
pub mod wrk;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type R<T> = Result<T, Error>;
