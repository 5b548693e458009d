//! A drop-in for the Kubernetes `go-runner` launcher
//! (kubernetes/release `images/build/go-runner`), which the upstream EKS Pod
//! Identity Agent image ships as `/go-runner` and its Helm chart puts in
//! front of every command: `['/go-runner', '/eks-pod-identity-agent', 'server']`.
//!
//! - [`flags`]: the command line, by Go's `flag` package rules.
//! - [`run`]: starting the command, its output, signal forwarding, the exit status.
//! - [`log`]: go-runner's own messages in Go's `log` format.
//!
//! No network: it starts one process, passes signals on and waits.
#![forbid(unsafe_code)]

pub mod flags;
pub mod log;
pub mod run;
