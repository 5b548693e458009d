//! Support code for the load benchmark of the agent's credential cache
//! (`bench/run`): a minimal keep-alive HTTP/1.1 client, child-process
//! guards, token minting and latency statistics. Measures nothing by itself;
//! see `src/bin/bench.rs` (the scenarios), `src/bin/baseline.rs` (the
//! physical-limit server) and `benches/` (criterion micro-benchmarks).

pub mod client;
pub mod procs;
pub mod stats;
pub mod tokens;
