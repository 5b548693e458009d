//! Fakes for the pod identity agent's tests, benchmarks and demo. Nothing
//! here ships in the agent's image, and nothing here parses or verifies a
//! token with the agent's code: a fake that shared it would hide its bugs.
//!
//! - [`issuer`]: mints projected-ServiceAccount-shaped tokens and publishes
//!   its keys like kube-apiserver.
//! - [`emulator`]: EKS Auth `AssumeRoleForPodIdentity` on the real wire
//!   protocol, with fault knobs and call events.
//! - [`agent`]: `server` flags for an agent on loopback; a cache over any upstream.
//! - [`apiserver`]: a fake kube-apiserver over TLS (issuer discovery, keys).
//! - [`tls`]: a private CA and server certificates it signs.
//! - [`net`]: network fixtures (a blackholed address).
//! - [`demo`]: issuer + emulator + agent on loopback, no AWS account.
//! - [`cli`]: the `testkit` command line (`demo`, `emulator`, `mint-token`).
#![allow(
    clippy::disallowed_methods,
    reason = "fakes and benchmarks stand in for the outside world and read its wall clock"
)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod apiserver;
pub mod cli;
pub mod demo;
pub mod emulator;
pub mod issuer;
pub mod net;
pub mod tls;
