//! A node-local credential agent for EKS Pod Identity, compatible with the
//! upstream Go agent (aws/eks-pod-identity-agent v0.1.37).
//!
//! The request path reads in four modules: [`endpoint`] (checks, statuses)
//! → [`verify`] (token admission) → [`cache`] → [`eksauth`].
//!
//! - [`app`]: the `server` subcommand assembled: build, run, drain.
//! - [`listeners`]: binding the credential, probe and metrics listeners.
//! - [`endpoint`]: `/v1/credentials`, its errors and their one status function.
//! - [`verify`]: admission: keyless checks, signature verification, the memo.
//! - [`token`]: JWT parsing with upstream's (golang-jwt's) rules and messages.
//! - [`gojson`]: JSON syntax and type errors worded as Go's `encoding/json`.
//! - [`memo`]: the admitted-token memo (a token is checked once, not per request).
//! - [`jwks`]: signing keys: sources, the key set, the store.
//! - [`cache`]: identity-keyed credential cache with coalescing and refresh-ahead.
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
//!
//! Node init (`initialize`) lives in the separate `pod-identity-init` crate;
//! the token issuer, EKS Auth emulator and demo in the `testkit` crate.
#![forbid(unsafe_code)]

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
pub mod flow;
pub mod gojson;
pub mod https;
pub mod instance;
pub mod jwks;
pub mod listeners;
pub mod logging;
pub mod memo;
pub mod metrics;
pub mod probe;
pub mod probe_socket;
pub mod ratelimit;
pub mod reuseport;
pub mod rotating;
pub mod serve;
pub mod token;
pub mod verify;
