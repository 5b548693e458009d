//! The monitoring component: the rules file is valid (`promtool check
//! rules`), every alert has unit tests (`promtool test rules`), the
//! PrometheusRule is generated from it, and a real Prometheus scraping a
//! running agent sees the EKS Auth alert fire during an emulated outage and
//! resolve after it.
//!
//! Needs Debian's `prometheus` package (prometheus, promtool); skips without
//! it, unless CI=true.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{World, free_port, raw, skip};
use testkit::emulator::Faults;

const COMPONENT: &str = "daemonset/components/monitoring";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_path() -> PathBuf {
    root().join(COMPONENT).join("rules.yaml")
}

fn tool(name: &'static str) -> Option<&'static str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Some(name)
    } else {
        skip(&format!(
            "{name} is not installed (Debian package `prometheus`)"
        ));
        None
    }
}

const PROMETHEUS_RULE_HEADER: &str = "\
# GENERATED from rules.yaml (the source; edit that file, then run
# `UPDATE_MONITORING=1 cargo test --test monitoring`). tests/monitoring.rs
# fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: eks-pod-identity-agent
  namespace: kube-system
  labels:
    app.kubernetes.io/name: eks-pod-identity-agent
spec:
";

/// The PrometheusRule: a fixed head, then the rules file (minus its leading
/// comment) indented under `spec:`.
fn prometheus_rule(rules: &str) -> String {
    let mut out = String::from(PROMETHEUS_RULE_HEADER);
    for line in rules
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty())
    {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn prometheus_rule_is_generated_from_the_rules_file() {
    let rules = std::fs::read_to_string(rules_path()).unwrap();
    let want = prometheus_rule(&rules);
    let path = root().join(COMPONENT).join("prometheusrule.yaml");
    if std::env::var_os("UPDATE_MONITORING").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: run `UPDATE_MONITORING=1 cargo test --test monitoring`",
        path.display()
    );
}

#[test]
fn promtool_checks_and_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", rules_path().to_str().unwrap()],
        vec!["test", "rules", "rules_test.yaml"],
    ] {
        let out = Command::new(promtool)
            .args(&args)
            .current_dir(root().join("tests/monitoring"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(rules_path()).unwrap();
    let tests = std::fs::read_to_string(root().join("tests/monitoring/rules_test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no promtool test for {alert}"
        );
    }
}

/// The rules with short windows and `for:` so a test sees them move in
/// seconds; the expressions are the shipped ones.
fn fast_rules(rules: &str) -> String {
    rules
        .lines()
        .map(|l| {
            let indent = &l[..l.len() - l.trim_start().len()];
            if l.trim_start().starts_with("for: ") {
                format!("{indent}for: 2s")
            } else {
                l.replace("[5m]", "[10s]")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(binary: &str, target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pia-prometheus-{}-{}",
            std::process::id(),
            testkit::issuer::uuid()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = std::fs::read_to_string(rules_path()).unwrap();
        std::fs::write(dir.join("rules.yaml"), fast_rules(&rules)).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - rules.yaml\n\
                 scrape_configs:\n  - job_name: eks-pod-identity-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, addr, dir }
    }

    async fn get(&self, path: &str) -> common::Resp {
        // HTTP/1.0: no chunked encoding, the body ends with the connection.
        let req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        raw(self.addr, req.as_bytes()).await
    }

    async fn ready(&self) -> bool {
        tokio::net::TcpStream::connect(self.addr).await.is_ok()
            && self.get("/-/ready").await.status == 200
    }

    /// State of `alert` ("pending", "firing"), or None when it is not active.
    async fn alert_state(&self, alert: &str) -> Option<String> {
        let r = self.get("/api/v1/alerts").await;
        let v = r.json();
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == alert)
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }

    async fn query(&self, expr: &str) -> serde_json::Value {
        let r = self.get(&format!("/api/v1/query?query={expr}")).await;
        r.json()["data"]["result"].clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` until it holds; fails the test after `within` (a generous
/// bound, never a timing assertion).
async fn until<F, Fut>(what: &str, within: Duration, prom: &Prometheus, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; prometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_auth_alert_fires_during_an_outage_and_resolves_after_it() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let w = World::start().await;
    let agent = Arc::new(w.agent(&["--eks-auth-max-attempts", "1"]).await);
    let prom = Prometheus::start(binary, agent.metrics_addr);
    until(
        "Prometheus to start",
        Duration::from_secs(60),
        &prom,
        || prom.ready(),
    )
    .await;

    // Steady load: every request carries a new token, so every request is
    // an EKS Auth call.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (agent, stop) = (agent.clone(), stop.clone());
        let issuer = w.issuer.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let token = issuer
                    .mint(&testkit::issuer::TokenSpec::pod(
                        "default",
                        "app",
                        &format!("load-{n}"),
                    ))
                    .unwrap();
                let _ = agent.creds(&token).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The kubelet's readiness probe, which pod_identity_ready reports; no
    // sample before it.
    let before = common::get(agent.metrics_addr, "/metrics", Some("localhost"), None).await;
    assert!(
        !before.body.contains("\npod_identity_ready "),
        "{}",
        before.body
    );
    let probe = common::get(agent.probe, "/readyz", Some("localhost"), None).await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    until(
        "the agent's readiness in Prometheus",
        Duration::from_secs(60),
        &prom,
        || async { prom.query("pod_identity_ready").await[0]["value"][1] == "1" },
    )
    .await;
    assert_eq!(prom.alert_state("EksPodIdentityEksAuthErrors").await, None);

    // Outage: every call answers 503.
    w.emulator.set_faults(Faults {
        force_error: Some("ServiceUnavailableException".into()),
        ..Default::default()
    });
    until(
        "the EKS Auth alert to fire",
        Duration::from_secs(120),
        &prom,
        || async {
            prom.alert_state("EksPodIdentityEksAuthErrors")
                .await
                .as_deref()
                == Some("firing")
        },
    )
    .await;

    // Recovery: the error ratio falls to zero and the alert goes away.
    w.emulator.set_faults(Faults::default());
    until(
        "the EKS Auth alert to resolve",
        Duration::from_secs(120),
        &prom,
        || async {
            prom.alert_state("EksPodIdentityEksAuthErrors")
                .await
                .is_none()
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}
