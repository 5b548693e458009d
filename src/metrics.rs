//! Prometheus metrics, one registry per agent instance (tests run several
//! agents in one process). Upstream names are kept: `pod_identity_http_response{code}`,
//! `pod_identity_cache_state{state}`, `pod_identity_cache_errors{type,code}`.

use std::time::Duration;

use crate::logging::LogLimiter;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_response: IntCounterVec,
    pub request_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub cache_state: IntCounterVec,
    pub cache_errors: IntCounterVec,
    pub cache_entries: IntGauge,
    pub coalesced_waits: IntCounter,
    pub refreshes: IntCounterVec,
    pub negative_hits: IntCounter,
    pub stale_served: IntCounter,
    pub eksauth_calls: IntCounterVec,
    pub calls_avoided: IntCounterVec,
    pub eksauth_allowed_rate: Gauge,
    pub eksauth_throttled: IntCounter,
    pub eksauth_queue_depth: IntGauge,
    pub eksauth_queue_wait: Histogram,
    /// `reason`: `full` (refused on arrival), `pushed_out` (a queued call
    /// of the flow holding the most slots, to make room for another flow).
    pub eksauth_queue_rejected: IntCounterVec,
    /// Flows with calls waiting in the EKS Auth queue.
    pub eksauth_queue_flows: IntGauge,
    pub eksauth_duration: HistogramVec,
    pub token_verifications: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGauge,
    pub rate_limited: IntCounterVec,
    pub open_connections: IntGauge,
    /// `reason`: `cap` (--max-connections), `source_share`
    /// (--max-connections-per-source).
    pub rejected_connections: IntCounterVec,
    /// Idle connections of the source holding the most, closed to admit a
    /// source holding fewer at the cap.
    pub evicted_connections: IntCounter,
    /// Source addresses holding connections.
    pub connection_sources: IntGauge,
    /// Per-topic log budgets (see [`LogLimiter`]): telemetry as much as the
    /// counters, and handed around with them.
    pub logs: LogLimiter,
    /// No labels; a vector only so the series is absent until set.
    pub ready: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique within the registry");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique within the registry");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique within the registry");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique within the registry");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric names are unique within the registry");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "pod_identity_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        r.register(Box::new(build_info.clone()))
            .expect("metric names are unique within the registry");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            http_response: counter_vec(
                &r,
                "pod_identity_http_response",
                "Responses of the credential endpoint by status code.",
                &["code"],
            ),
            request_duration: histogram_vec(
                &r,
                "pod_identity_request_duration_seconds",
                "Latency of credential requests that did work, by outcome (miss, coalesced, stale, error); hits are counted in pod_identity_cache_state, not timed.",
                &["outcome"],
            ),
            in_flight: gauge(
                &r,
                "pod_identity_requests_in_flight",
                "Credential requests being served.",
            ),
            cache_state: counter_vec(
                &r,
                "pod_identity_cache_state",
                "Cache lookups: hit, miss; evicted entries; refreshed (upstream counts successful refreshes as hit).",
                &["state"],
            ),
            cache_errors: counter_vec(
                &r,
                "pod_identity_cache_errors",
                "EKS Auth errors seen by the cache, by type (Recoverable, NonRecoverable) and code.",
                &["type", "code"],
            ),
            cache_entries: gauge(
                &r,
                "pod_identity_cache_entries",
                "Credentials held in the cache.",
            ),
            coalesced_waits: counter(
                &r,
                "pod_identity_cache_coalesced_waits_total",
                "Requests that waited for another request's EKS Auth call instead of making one.",
            ),
            refreshes: counter_vec(
                &r,
                "pod_identity_cache_refreshes_total",
                "Background refreshes by result (ok, recoverable_error, irrecoverable_error, skipped).",
                &["result"],
            ),
            negative_hits: counter(
                &r,
                "pod_identity_cache_negative_hits_total",
                "Requests answered from the negative cache (an irrecoverable answer replayed).",
            ),
            stale_served: counter(
                &r,
                "pod_identity_cache_stale_served_total",
                "Requests served a still-valid credential because EKS Auth failed recoverably.",
            ),
            eksauth_calls: counter_vec(
                &r,
                "pod_identity_eksauth_calls_total",
                "AssumeRoleForPodIdentity calls by result code (OK or the error code).",
                &["code"],
            ),
            calls_avoided: counter_vec(
                &r,
                "pod_identity_eksauth_calls_avoided_total",
                "EKS Auth calls not made because the identity is backing off after a recoverable failure (its last answer was replayed).",
                &["reason"],
            ),
            eksauth_allowed_rate: {
                let g = Gauge::new(
                    "pod_identity_eksauth_allowed_rate",
                    "EKS Auth calls per second the node-wide gate currently allows (lowered by throttling).",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric names are unique within the registry");
                g
            },
            eksauth_throttled: counter(
                &r,
                "pod_identity_eksauth_rate_decreases_total",
                "Times a throttling answer lowered the allowed EKS Auth call rate.",
            ),
            eksauth_queue_depth: gauge(
                &r,
                "pod_identity_eksauth_queue_depth",
                "EKS Auth calls waiting for the node-wide gate.",
            ),
            eksauth_queue_wait: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "pod_identity_eksauth_queue_wait_seconds",
                        "Time EKS Auth calls waited for the node-wide gate.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("static metric definition");
                r.register(Box::new(h.clone()))
                    .expect("metric names are unique within the registry");
                h
            },
            eksauth_queue_rejected: counter_vec(
                &r,
                "pod_identity_eksauth_queue_rejected_total",
                "Requests refused (503) because the EKS Auth call queue was full, by reason: full (on arrival), pushed_out (the flow holding the most slots made room for another).",
                &["reason"],
            ),
            eksauth_queue_flows: gauge(
                &r,
                "pod_identity_eksauth_queue_flows",
                "Flows (verified workloads, else source addresses) with EKS Auth calls waiting.",
            ),
            eksauth_duration: histogram_vec(
                &r,
                "pod_identity_eksauth_duration_seconds",
                "AssumeRoleForPodIdentity call latency, retries included, by result (ok, error).",
                &["result"],
            ),
            token_verifications: counter_vec(
                &r,
                "pod_identity_token_verifications_total",
                "Local token checks by outcome: verified, cached, inconclusive_<reason> (forwarded to EKS Auth), or the refusal reason.",
                &["outcome"],
            ),
            jwks_fetches: counter_vec(
                &r,
                "pod_identity_jwks_fetches_total",
                "JWKS loads by source and result.",
                &["source", "result"],
            ),
            jwks_keys: gauge(
                &r,
                "pod_identity_jwks_keys",
                "Signing keys currently loaded.",
            ),
            rate_limited: counter_vec(
                &r,
                "pod_identity_rate_limited_total",
                "Requests refused with 429, by limit: flow (the workload's or source's share), global.",
                &["limit"],
            ),
            open_connections: gauge(
                &r,
                "pod_identity_open_connections",
                "Open connections on the credential endpoint.",
            ),
            rejected_connections: counter_vec(
                &r,
                "pod_identity_rejected_connections_total",
                "Connections closed at once, by reason: cap (--max-connections open), source_share (--max-connections-per-source open from that address).",
                &["reason"],
            ),
            evicted_connections: counter(
                &r,
                "pod_identity_connections_evicted_total",
                "Connections of the source holding the most closed at the cap to admit another source's.",
            ),
            connection_sources: gauge(
                &r,
                "pod_identity_connection_sources",
                "Source addresses holding connections to the credential endpoint.",
            ),
            logs: LogLimiter::new(Some(counter_vec(
                &r,
                "pod_identity_log_lines_suppressed_total",
                "Per-request log lines not written because their topic was over its budget (10 at once, then 1/s), by topic.",
                &["topic"],
            ))),
            ready: gauge_vec(
                &r,
                "pod_identity_ready",
                "Outcome of the last readiness check (/readyz, the kubelet's probe): 1 ready, 0 not; absent before the first.",
                &[],
            ),
            registry: r,
        }
    }

    /// `pod_identity_instance_info{instance_id,pod,start_time} 1`. During a
    /// surge rollout two agents share the metrics port and a scrape reaches
    /// either; this series says which one answered. One series per process.
    pub fn register_instance(&self, instance: &crate::instance::Instance) {
        let info = IntGaugeVec::new(
            Opts::new(
                "pod_identity_instance_info",
                "The agent process that answered this scrape; the value is always 1.",
            ),
            &["instance_id", "pod", "start_time"],
        )
        .expect("static metric definition");
        info.with_label_values(&[&instance.id, &instance.pod, &instance.start_time])
            .set(1);
        self.registry
            .register(Box::new(info))
            .expect("registered once per registry");
    }

    pub fn eksauth_call(&self, code: &str, took: Duration) {
        self.eksauth_calls.with_label_values(&[code]).inc();
        let result = if code == "OK" { "ok" } else { "error" };
        self.eksauth_duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
    }

    /// Calls refused by the EKS Auth queue, for every reason.
    pub fn queue_rejected(&self) -> u64 {
        ["full", "pushed_out"]
            .iter()
            .map(|r| self.eksauth_queue_rejected.with_label_values(&[r]).get())
            .sum()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
