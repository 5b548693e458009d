//! A node-local credential agent for EKS Pod Identity, compatible with the
//! upstream Go agent (aws/eks-pod-identity-agent v0.1.37).
//!
//! The request path reads in five modules: [`endpoint`] (checks, statuses)
//! → [`admission`] (the token) → [`cache`] → [`policy`] (when and whether
//! EKS Auth is called) → [`eksauth`].
//!
//! - [`app`]: the `server` subcommand assembled: build, run, drain.
//! - [`listeners`]: binding the credential, probe and metrics listeners.
//! - [`endpoint`]: `/v1/credentials`, its errors and their one status function.
//! - [`admission`]: the token: keyless checks, signature verification, refusals, the memo.
//! - [`token`]: JWT parsing with upstream's (golang-jwt's) rules and messages.
//! - [`gojson`]: JSON syntax and type errors worded as Go's `encoding/json`.
//! - [`jwks`]: signing keys: sources, the key set, the store.
//! - [`key`]: who may share a credential, and the token kept to fetch it with.
//! - [`cache`]: identity-keyed credential cache with coalescing and refresh-ahead.
//! - [`policy`]: the EKS Auth protection policy: negative answers, backoff, the gate, stale-on-error.
//! - [`eksauth`]: the EKS Auth client and its error boundary.
//! - [`https`]: the one HTTPS client (EKS Auth, issuer URL, API server): trust, proxy, timeouts.
//! - [`env`]: the environment variables the agent reads, injectable.
//! - [`credentials`]: credential values, redaction, the pod-facing JSON.
//! - [`serve`]: hardened HTTP/1 serving shared by every listener.
//! - [`connections`]: connection shares: the cap, per-source shares, room made at the cap, probe exemption.
//! - [`probe`]: `/healthz`, `/readyz` and the metrics server's routes.
//! - [`probe_socket`]: per-instance probes over a unix socket, and `probe`.
//! - [`reuseport`]: listeners shared with the next agent during a rollout.
//! - [`instance`]: this process's identity and phase (starting, serving, draining).
//! - [`flow`]: whom a request's cost is charged to (verified workload, else source address).
//! - [`ratelimit`]: the global and per-flow request limits (work-conserving).
//! - [`rotating`]: `--rotate-credentials`, the re-read shared credentials file.
//! - [`metrics`]: the Prometheus registry.
//! - [`logging`]: tracing setup that keeps secrets out of logs.
//! - [`cli`]: subcommands and flags (upstream names and defaults).
//! - [`clock`]: the injectable wall clock.
//! - [`duration`]: Go-style duration flags.
//! - [`flagcheck`]: the ranges of numeric and duration flags (clap value parsers).
//!
//! Node init (`initialize`) lives in the separate `pod-identity-init` crate;
//! the token issuer, EKS Auth emulator and demo in the `testkit` crate.
//!
//! Features (both default): `aws-sdk` (the EKS Auth client, [`app`],
//! [`rotating`]) and `node-init` (`initialize`). The fuzz
//! targets (`fuzz/`) build without them.
#![forbid(unsafe_code)]

pub mod admission;
#[cfg(feature = "aws-sdk")]
pub mod app;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod connections;
pub mod credentials;
pub mod duration;
pub mod eksauth;
pub mod endpoint;
pub mod env;
pub mod flagcheck;
pub mod flow;
pub mod gojson;
pub mod https;
pub mod instance;
pub mod jwks;
pub mod key;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod probe_socket;
pub mod ratelimit;
pub mod reuseport;
#[cfg(feature = "aws-sdk")]
pub mod rotating;
pub mod serve;
pub mod token;
