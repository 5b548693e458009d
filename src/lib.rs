//! A node-local credential agent for EKS Pod Identity, compatible with the
//! upstream Go agent (aws/eks-pod-identity-agent v0.1.37).
//!
//! Request path: [`server`] (endpoint, statuses) → [`ratelimit`] →
//! [`verify`] (token admission, [`token`] parsing, [`jwks`] keys) → [`cache`]
//! → [`eksauth`] → [`credentials`] (wire form).
//!
//! - [`cli`]: subcommands and flags (upstream names and defaults).
//! - [`server`]: the `/v1/credentials` endpoint, assembly, binding, drain.
//! - [`serve`]: hardened HTTP/1 serving shared by every listener.
//! - [`probe`]: `/healthz`, `/readyz` and the metrics server's routes.
//! - [`ratelimit`]: global and per-client token buckets.
//! - [`token`]: JWT parsing and keyless claim checks.
//! - [`verify`]: admission: keyless checks, signature verification.
//! - [`memo`]: the admitted-token memo (a token is checked once, not per request).
//! - [`jwks`]: signing-key sources, rotation, last-known-good copy.
//! - [`cache`]: identity-keyed credential cache with coalescing and refresh-ahead.
//! - [`eksauth`]: the EKS Auth client and its error boundary.
//! - [`credentials`]: credential values, redaction, the pod-facing JSON.
//! - [`rotating`]: `--rotate-credentials`, the re-read shared credentials file.
//! - [`metrics`]: Prometheus registry.
//! - [`logging`]: tracing setup that keeps secrets out of logs.
//! - [`clock`]: injectable wall clock.
//! - [`duration`]: Go-style duration flags.
//! - [`issuer`], [`emulator`], [`demo`]: the embedded token issuer, EKS Auth
//!   emulator and the no-AWS demo.
//!
//! Node init (`initialize`) lives in the separate `pod-identity-init` crate.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod demo;
pub mod duration;
pub mod eksauth;
pub mod emulator;
pub mod issuer;
pub mod jwks;
pub mod logging;
pub mod memo;
pub mod metrics;
pub mod probe;
pub mod ratelimit;
pub mod rotating;
pub mod serve;
pub mod server;
pub mod token;
pub mod verify;
