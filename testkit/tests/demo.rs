//! The README's first command (`cargo run --release -p testkit -- demo`):
//! the demo prints a curl line and SDK settings that work as printed, with
//! no AWS account.

use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_testkit")
}
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn demo_prints_a_working_curl_line_and_sdk_environment() {
    let dir = std::env::temp_dir().join(format!("pia-demo-{}", std::process::id()));
    let mut child = tokio::process::Command::new(bin())
        .args(["demo", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("Serving until Ctrl-C");
            printed.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .expect("the demo starts");
    let text = printed.join("\n");
    assert!(text.contains("Self-check: 200 OK"), "{text}");
    let curl = printed
        .iter()
        .find(|l| l.trim_start().starts_with("curl "))
        .unwrap_or_else(|| panic!("{text}"));
    let out = std::process::Command::new("sh")
        .args(["-c", curl.trim()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(v["AccountId"], "111122223333");

    // The printed exports, as an SDK would use them (aws-config's provider
    // reads the same two variables; curl stands in to keep this test light).
    let export = |name: &str| {
        printed
            .iter()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("export {name}="))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("{name} not printed: {text}"))
    };
    let url = export("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    let token_file = export("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: {token}"), &url])
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        again["AccessKeyId"], v["AccessKeyId"],
        "served from the cache"
    );

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "Ctrl-C ends the demo cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_once_exits_after_its_self_check() {
    let out = std::process::Command::new(bin())
        .args(["demo", "--once"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Self-check: 200 OK"));
}
