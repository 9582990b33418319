//! Deployment: systemd notification and watchdog with a real NOTIFY_SOCKET, socket activation,
//! the unit files' security score and validity, and the Debian package's contents.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn messages_until(socket: &UnixDatagram, timeout: Duration, want: &str) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.contains(want);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want:?} within {timeout:?}; got {seen:?}");
}

#[test]
fn notify_socket_sees_ready_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let notify_str = notify_path.display().to_string();
    let mut daemon = Daemon::start_env("", &[("NOTIFY_SOCKET", notify_str.as_str()), ("WATCHDOG_USEC", "1000000")]);
    let before_ready = messages_until(&notify, Duration::from_secs(10), "READY=1");
    assert!(before_ready.iter().any(|m| m.contains("STATUS=loading")), "{before_ready:?}");
    // The socket already answers when READY is sent.
    let mut client = daemon.client();
    // Pings every 0.5 s while the worker is alive, also while it is busy.
    client.send(&json!({"id": "w", "prompt": "Count to ten.", "max_tokens": 40}).to_string());
    let pings = messages_until(&notify, Duration::from_secs(5), "WATCHDOG=1");
    assert!(pings.last().unwrap().contains("WATCHDOG=1"));
    messages_until(&notify, Duration::from_secs(5), "WATCHDOG=1");
    assert_eq!(client.until_final("w").pop().unwrap()["event"], "done");
    common::signal(&daemon.child, "TERM");
    messages_until(&notify, Duration::from_secs(10), "STOPPING=1");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn socket_activation_uses_the_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    // Our own config names another path: the inherited socket must win.
    let config = dir.path().join("edgellm.toml");
    std::fs::write(&config, common::base_config(&dir.path().join("unused.sock"), "")).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = common::socket_activated(&[&socket], None, &config, log);
    common::wait_for(Duration::from_secs(10), || socket.exists());
    // The first connection starts the daemon; it answers once the model is loaded.
    let mut client = common::Client::connect(&socket);
    let done = client.ask(json!({"id": "a", "prompt": "Say hi.", "max_tokens": 4}));
    assert_eq!(done["event"], "done", "{done}");
    assert!(!dir.path().join("unused.sock").exists(), "no socket of its own was bound");
    common::signal(&child, "TERM");
    let _ = child.wait();
}

fn units_with_binary(dir: &Path) -> PathBuf {
    let service = std::fs::read_to_string(repo().join("systemd/edgellm.service")).unwrap();
    // `verify` checks that ExecStart= exists: point it at the binary under test.
    std::fs::write(dir.join("edgellm.service"), service.replace("/usr/bin/edgellm", env!("CARGO_BIN_EXE_edgellm")))
        .unwrap();
    std::fs::copy(repo().join("systemd/edgellm.socket"), dir.join("edgellm.socket")).unwrap();
    dir.join("edgellm.service")
}

#[test]
fn unit_is_hardened_to_at_most_2_and_verifies_clean() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(repo().join("systemd/edgellm.service"))
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for edgellm.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {text}"));
    println!("systemd-analyze security: {score}");
    assert!(score <= 2.0, "exposure {score}:\n{text}");

    let dir = tempfile::tempdir().unwrap();
    let service = units_with_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&service)
        .arg(dir.path().join("edgellm.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "verify: {stderr}");
}

#[test]
fn debian_package_holds_binary_units_config_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("edgellm.deb");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo())
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(&deb)
        .status()
        .expect("cargo deb (install with `cargo install cargo-deb`; .ci/run does)");
    assert!(status.success(), "cargo deb failed");
    let out = Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/bin/edgellm",
        "./etc/edgellm/edgellm.toml",
        "./usr/lib/systemd/system/edgellm.service",
        "./usr/lib/systemd/system/edgellm.socket",
        "./usr/lib/sysusers.d/edgellm.conf",
        "./usr/lib/tmpfiles.d/edgellm.conf",
        "./usr/share/edgellm/models/smollm2/model.onnx",
        "./usr/share/edgellm/models/smollm2/manifest.json",
        "./usr/share/edgellm/models/smollm2/tokenizer.json",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing from:\n{listing}");
    }
    let info = Command::new("dpkg-deb").arg("-I").arg(&deb).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("conffiles") || info.contains("postinst"), "{info}");
}
