//! Real AWS SDK credential providers pointed at the agent, configured the
//! way EKS configures pods: `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;

/// Environment of a pod, nothing else (no stray credentials, no IMDS).
fn pod_env(cmd: &mut tokio::process::Command, url: &str, token_file: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-west-2");
}

async fn setup() -> (
    World,
    Agent,
    String,
    tempfile_path::TempFile,
    serde_json::Value,
) {
    let w = World::start().await;
    let agent = w.agent(&[]).await;
    let token = w.token("default", "app", "sdk-pod");
    let file = tempfile_path::TempFile::with(&token);
    let direct = agent.creds(&token).await;
    assert_eq!(direct.status, 200);
    let expected = direct.json();
    let url = format!("http://{}/v1/credentials", agent.addr);
    (w, agent, url, file, expected)
}

#[tokio::test]
async fn aws_config_rust_ecs_provider() {
    let (w, _agent, url, file, expected) = setup().await;
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_aws_config",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    pod_env(&mut cmd, &url, &file.path);
    let out = cmd.stderr(Stdio::inherit()).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let akid = stdout
        .split("AKID=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(akid, expected["AccessKeyId"].as_str().unwrap());
    assert_eq!(w.emulator.calls(), 1, "the SDK was served from the cache");
}

/// Runs in a child process (see above), so the SDK reads a pod-like
/// environment without this process setting variables.
#[tokio::test]
#[ignore = "child process of aws_config_rust_ecs_provider"]
async fn child_aws_config() {
    use aws_credential_types::provider::ProvideCredentials;
    let provider = aws_config::ecs::EcsCredentialsProvider::builder().build();
    let creds = provider
        .provide_credentials()
        .await
        .expect("credentials from the agent");
    assert!(creds.session_token().is_some());
    assert!(creds.expiry().is_some());
    println!("AKID={}", creds.access_key_id());
}

#[tokio::test]
async fn boto3_container_provider() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output();
    if !probe.is_ok_and(|o| o.status.success())
        && skip("boto3 is not installed (pip install boto3)")
    {
        return;
    }
    let (w, _agent, url, file, expected) = setup().await;
    let script = "import boto3, json\n\
        c = boto3.Session().get_credentials()\n\
        print(c.method)\n\
        f = c.get_frozen_credentials()\n\
        print(json.dumps({'akid': f.access_key, 'secret': f.secret_key, 'token': f.token}))\n";
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", script]);
    pod_env(&mut cmd, &url, &file.path);
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("container-role"));
    let got: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(got["akid"], expected["AccessKeyId"]);
    assert_eq!(got["secret"], expected["SecretAccessKey"]);
    assert_eq!(got["token"], expected["Token"]);
    assert_eq!(w.emulator.calls(), 1);
}

mod tempfile_path {
    use std::path::PathBuf;

    pub struct TempFile {
        pub path: PathBuf,
    }

    impl TempFile {
        pub fn with(contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "pia-token-{}-{}",
                std::process::id(),
                testkit::issuer::uuid()
            ));
            std::fs::write(&path, contents).unwrap();
            Self { path }
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[tokio::test]
async fn aws_sdk_js_v3_from_http() {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js
        .join("node_modules/@aws-sdk/credential-providers")
        .exists()
        && skip("tests/js has no node_modules (cd tests/js && npm ci)")
    {
        return;
    }
    let (w, _agent, url, file, expected) = setup().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(js.join("fromhttp.mjs")).current_dir(&js);
    pod_env(&mut cmd, &url, &file.path);
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(got["accessKeyId"], expected["AccessKeyId"]);
    assert_eq!(got["sessionToken"], true);
    assert_eq!(w.emulator.calls(), 1);
}
