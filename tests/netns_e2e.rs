//! The pod path for real: a "node" network namespace runs `initialize` and
//! `server` on 169.254.170.23:80 and [fd00:ec2::23]:80 (EKS Auth emulator
//! beside it), a "pod" namespace reaches it over a veth pair with default
//! routes via the node, and real SDKs resolve credentials from there.
//! Needs root; skips otherwise, unless CI=true.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{Netns, Proc, TempDir, check, wait_for};
use common::{bin, in_ci, is_root, skip, testkit_bin};

struct Node {
    ns: Netns,
    pod: Netns,
    dir: TempDir,
    key: PathBuf,
    _emulator: Proc,
    server: Option<Proc>,
}

/// Node namespace with init done, emulator running, and a pod namespace
/// wired to it. `ipv6` false disables IPv6 in the node first.
fn node(ipv6: bool) -> Node {
    let ns = Netns::new("pia-e2e", "node");
    let pod = Netns::new("pia-e2e", "pod");
    if !ipv6 {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6=1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6=1");
    }
    let init = check(
        ns.cmd(bin())
            .args(["initialize", "--link-kind", "bridge", "-v", "info"]),
    );
    let init_log = String::from_utf8_lossy(&init.stderr);
    if !ipv6 {
        assert!(
            init_log.contains("\"level\":\"WARN\""),
            "IPv6 off is a warning: {init_log}"
        );
    }
    // Second run: idempotent.
    check(ns.cmd(bin()).args(["initialize", "--link-kind", "bridge"]));

    ns.ip(&[
        "link", "add", "vn0", "type", "veth", "peer", "name", "vp0", "netns", &pod.0,
    ]);
    ns.ip(&["addr", "add", "10.231.0.1/24", "dev", "vn0"]);
    ns.ip(&["link", "set", "vn0", "up"]);
    pod.ip(&["addr", "add", "10.231.0.2/24", "dev", "vp0"]);
    pod.ip(&["link", "set", "vp0", "up"]);
    pod.ip(&["route", "add", "default", "via", "10.231.0.1"]);
    if ipv6 {
        ns.ip(&["-6", "addr", "add", "fd01:231::1/64", "dev", "vn0", "nodad"]);
        pod.ip(&["-6", "addr", "add", "fd01:231::2/64", "dev", "vp0", "nodad"]);
        pod.ip(&["-6", "route", "add", "default", "via", "fd01:231::1"]);
    }

    let dir = TempDir::new("pia-e2e");
    let key = dir.0.join("issuer.pem");
    let ready = dir.0.join("emulator.url");
    let emulator = Proc(
        ns.cmd(testkit_bin())
            .args(["emulator", "--listen", "127.0.0.1:0", "--key-file"])
            .arg(&key)
            .arg("--ready-file")
            .arg(&ready)
            .args([
                "--association",
                "default/app=arn:aws:iam::111122223333:role/e2e",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the emulator", Duration::from_secs(20), || ready.exists());
    Node {
        ns,
        pod,
        dir,
        key,
        _emulator: emulator,
        server: None,
    }
}

impl Node {
    fn start_server(&mut self, extra: &[&str]) {
        let url = std::fs::read_to_string(self.dir.0.join("emulator.url")).unwrap();
        let log = std::fs::File::create(self.dir.0.join("server.log")).unwrap();
        let child = self
            .ns
            .cmd(bin())
            .args([
                "server",
                "--cluster-name",
                "e2e",
                "--endpoint",
                url.trim(),
                "--region",
                "us-west-2",
            ])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", "AKIDE2ENODEFAKE00001")
            .env("AWS_SECRET_ACCESS_KEY", "e2e")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(Proc(child));
        let ns = &self.ns;
        wait_for("the agent's probe", Duration::from_secs(30), || {
            ns.cmd("curl")
                .args(["-sf", "-o", "/dev/null", "http://localhost:2703/healthz"])
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    fn emulator_url(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("emulator.url"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    fn token_file(&self, pod: &str) -> PathBuf {
        let out = check(
            Command::new(testkit_bin())
                .args(["mint-token", "--key-file"])
                .arg(&self.key)
                .args(["--issuer", self.emulator_url().as_str()])
                .args([
                    "--namespace",
                    "default",
                    "--service-account",
                    "app",
                    "--pod",
                    pod,
                ]),
        );
        let path = self.dir.0.join(format!("{pod}.token"));
        // Written without a newline, as the kubelet writes projected tokens.
        std::fs::write(&path, String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        path
    }

    fn probe(&self, path: &str) -> String {
        let out = self
            .ns
            .cmd("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://localhost:2703{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `curl -H "Authorization: $(cat tokenfile)" <url>` from the pod.
    fn curl_from_pod(&self, url: &str, token_file: &Path) -> serde_json::Value {
        let script = format!(
            "curl -sS --max-time 5 -H \"Authorization: $(cat {})\" {url}",
            token_file.display()
        );
        let out = check(self.pod.cmd("sh").args(["-c", &script]));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn pod_env(&self, cmd: &mut Command, url: &str, token_file: &Path) {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir.0)
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-west-2");
    }
}

fn privileged() -> bool {
    if is_root() {
        return true;
    }
    !skip("needs root to create network namespaces")
}

#[test]
fn pod_reaches_the_agent_by_its_link_local_addresses() {
    if !privileged() {
        return;
    }
    let mut n = node(true);
    n.start_server(&[]);
    assert_eq!(n.probe("/healthz"), "200");
    assert_eq!(n.probe("/readyz"), "200");

    let token = n.token_file("e2e-pod");
    let v4 = n.curl_from_pod("http://169.254.170.23/v1/credentials", &token);
    assert!(
        v4["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{v4}"
    );
    let v6 = n.curl_from_pod("http://[fd00:ec2::23]/v1/credentials", &token);
    assert_eq!(
        v6["AccessKeyId"], v4["AccessKeyId"],
        "one cached credential, both addresses"
    );

    // boto3 over IPv4.
    let have_boto3 = Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if have_boto3 || in_ci() {
        let mut cmd = n.pod.cmd("python3");
        cmd.args(["-c", "import boto3; f = boto3.Session().get_credentials().get_frozen_credentials(); print(f.access_key)"]);
        n.pod_env(&mut cmd, "http://169.254.170.23/v1/credentials", &token);
        let out = check(&mut cmd);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            v4["AccessKeyId"].as_str().unwrap()
        );
    } else {
        skip("boto3 is not installed");
    }

    // aws-sdk-js-v3 fromHttp over IPv6.
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if js
        .join("node_modules/@aws-sdk/credential-providers")
        .exists()
        || in_ci()
    {
        let mut cmd = n.pod.cmd("node");
        cmd.arg(js.join("fromhttp.mjs")).current_dir(&js);
        n.pod_env(&mut cmd, "http://[fd00:ec2::23]/v1/credentials", &token);
        let out = check(&mut cmd);
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["accessKeyId"], v4["AccessKeyId"]);
    } else {
        skip("tests/js has no node_modules");
    }

    // aws-config (Rust), from this test binary's child mode.
    let mut cmd = n
        .pod
        .cmd(std::env::current_exe().unwrap().to_str().unwrap());
    cmd.args([
        "--exact",
        "child_aws_config",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    n.pod_env(&mut cmd, "http://169.254.170.23/v1/credentials", &token);
    let out = check(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let akid = stdout
        .split("AKID=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(akid, v4["AccessKeyId"].as_str().unwrap());

    // A host-network process on the node reaching the agent by a bad address is refused.
    let script = format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -H \"Authorization: $(cat {})\" http://10.231.0.1/v1/credentials",
        token.display()
    );
    let out = n.ns.cmd("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "nothing listens on other node addresses"
    );
    assert!(
        !n.server_log()
            .contains(&std::fs::read_to_string(&token).unwrap()[..40]),
        "token not logged"
    );
}

#[test]
fn without_ipv6_the_agent_serves_ipv4_and_stays_healthy() {
    if !privileged() {
        return;
    }
    let mut n = node(false);
    n.start_server(&["--ipv6-bind-wait", "1s"]);
    assert_eq!(n.probe("/healthz"), "200");
    assert_eq!(n.probe("/readyz"), "200");
    let token = n.token_file("v4-only");
    let v = n.curl_from_pod("http://169.254.170.23/v1/credentials", &token);
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    let log = n.server_log();
    assert!(
        log.contains("fd00:ec2::23"),
        "the skipped IPv6 address is named in a warning: {log}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n.probe("/healthz"), "200", "still healthy, no crash loop");
    assert!(
        n.server.as_mut().unwrap().0.try_wait().unwrap().is_none(),
        "server still running"
    );
}

/// Child mode of `pod_reaches_the_agent_by_its_link_local_addresses`.
#[tokio::test]
#[ignore = "child process of the e2e test"]
async fn child_aws_config() {
    use aws_credential_types::provider::ProvideCredentials;
    let creds = aws_config::ecs::EcsCredentialsProvider::builder()
        .build()
        .provide_credentials()
        .await
        .expect("credentials from the agent");
    println!("AKID={}", creds.access_key_id());
}
