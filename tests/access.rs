//! Access control: socket peer credentials, MQTT username/password, and MQTT over TLS with a
//! client certificate (a test CA made with openssl), against brokers configured to require them.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Broker, Daemon};
use serde_json::json;

#[test]
fn socket_refuses_a_uid_that_is_not_allowed() {
    let me = nix::unistd::getuid().as_raw();
    let daemon = Daemon::start(&format!("[socket]\nallowed_uids = [{}]\n", me + 4242));
    let mut client = daemon.client();
    let refusal = client.next_event().expect("a refusal");
    assert_eq!(refusal["code"], "forbidden", "{refusal}");
    assert!(client.next_event().is_none(), "the connection is closed");
    assert!(daemon.log_text().contains("not in the allow-lists"));

    // The CLI says why and fails, rather than printing `null` or "Broken pipe".
    let bin = env!("CARGO_BIN_EXE_edgellm");
    for args in [&["health"][..], &["ask", "Hi"][..]] {
        let out = Command::new(bin).args(args).arg("--socket").arg(&daemon.socket).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(stderr.contains("forbidden"), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("null"), "{args:?}");
    }

    let allowed = Daemon::start(&format!("[socket]\nallowed_uids = [{me}]\n"));
    let done = allowed.client().ask(json!({"id": "a", "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(done["event"], "done");
}

fn mqtt_status(port: u16, extra_args: &[&str]) -> String {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port.to_string(), "-t", "edgellm/dev1/status", "-C", "1", "-W", "15"])
        .args(extra_args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mqtt_with_username_and_password_and_a_clear_error_for_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    let status =
        Command::new("mosquitto_passwd").arg("-b").arg("-c").arg(&passwords).args(["edge", "s3cret-pw"]).status();
    assert!(status.unwrap().success());
    let broker = Broker::start_with(&format!("allow_anonymous false\npassword_file {}\n", passwords.display()));
    let auth = ["-u", "edge", "-P", "s3cret-pw"];

    let good = Daemon::start(&format!(
        "[mqtt]\nenabled = true\nport = {}\nusername = \"edge\"\npassword = \"s3cret-pw\"\n",
        broker.port
    ));
    assert_eq!(mqtt_status(broker.port, &auth), "online");
    drop(good);

    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, "wrong-password\n").unwrap();
    let bad = Daemon::start(&format!(
        "[mqtt]\nenabled = true\nport = {}\nusername = \"edge\"\npassword_file = \"{}\"\n",
        broker.port,
        password_file.display()
    ));
    common::wait_for(Duration::from_secs(10), || bad.log_text().contains("MQTT connection lost"));
    let log = bad.log_text();
    assert!(log.contains("NotAuthorized") || log.contains("BadUserNamePassword"), "{log}");
    assert!(!log.contains("wrong-password"), "the password is never logged");
    // The socket keeps serving, and health says MQTT is down.
    let mut client = bad.client();
    client.send(r#"{"op":"health"}"#);
    assert_eq!(client.next_event().unwrap()["health"]["mqtt"]["connected"], false);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mqtt_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=edgellm test CA",
        ],
    );
    std::fs::write(d.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    // rustls accepts only X.509 v3 certificates, which `openssl x509 -req` makes when given extensions.
    std::fs::write(d.join("client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={}", if name == "server" { "localhost" } else { "edgellm-client" }),
            ],
        );
        let mut args =
            vec!["x509", "-req", "-in", &*format!("{name}.csr")].into_iter().map(String::from).collect::<Vec<_>>();
        args.extend(["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out"].map(String::from));
        args.push(format!("{name}.pem"));
        args.extend(["-extfile".to_string(), format!("{name}.ext")]);
        openssl(d, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let broker = Broker::start_with(&format!(
        // mosquitto started as root drops to its own user, which cannot read keys in our temp dir.
        "user root\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
        d.display()
    ));
    let _daemon = Daemon::start(&format!(
        "[mqtt]\nenabled = true\nhost = \"localhost\"\nport = {}\n[mqtt.tls]\nca_file = \"{1}/ca.pem\"\nclient_cert = \"{1}/client.pem\"\nclient_key = \"{1}/client.key\"\n",
        broker.port,
        d.display()
    ));
    let ca = format!("{}/ca.pem", d.display());
    let cert = format!("{}/client.pem", d.display());
    let key = format!("{}/client.key", d.display());
    assert_eq!(mqtt_status(broker.port, &["--cafile", &ca, "--cert", &cert, "--key", &key]), "online");
}

/// Item 23: refusals that never reach the queue are counted by code: `forbidden` (read from
/// the retained health on the broker, since a forbidden client cannot ask), the per-connection
/// in-flight limit (`busy`) and an id already in flight (`bad_request`).
#[test]
fn every_refusal_is_counted_by_code() {
    let broker = Broker::start();
    let me = nix::unistd::getuid().as_raw();
    let closed = Daemon::start(&format!(
        "[socket]\nallowed_uids = [{}]\n[mqtt]\nenabled = true\nport = {}\n[health]\ninterval_secs = 1\n",
        me + 4242,
        broker.port
    ));
    assert_eq!(closed.client().next_event().unwrap()["code"], "forbidden");
    let forbidden_counted = || {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &broker.port.to_string(), "-t", "edgellm/dev1/health", "-C", "1"])
            .args(["-W", "5"])
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // The start-up probe's connection was refused too.
        doc["counters"]["errors"]["forbidden"].as_u64().unwrap_or(0) >= 1
    };
    common::wait_for(Duration::from_secs(30), forbidden_counted);

    let open = Daemon::start("[socket]\nmax_inflight_per_connection = 1\n");
    let mut client = open.client();
    client.send(r#"{"id":"a","prompt":"Write a story about the sea.","max_tokens":40,"stream":true}"#);
    client.send(r#"{"id":"a","prompt":"Another prompt with the same id."}"#);
    client.send(r#"{"id":"b","prompt":"A second request on a one-request connection."}"#);
    let events = client.until_final("b");
    assert_eq!(events.last().unwrap()["code"], "busy", "{events:?}");
    let duplicate =
        events.iter().find(|e| e["event"] == "error" && e["id"] == "a").expect("a refusal for the reused id");
    assert_eq!(duplicate["code"], "bad_request", "{duplicate}");
    client.until_final("a");
    client.send(r#"{"op":"health"}"#);
    let health = client.next_event().unwrap();
    let errors = &health["health"]["counters"]["errors"];
    assert_eq!(errors["busy"], 1, "{health}");
    assert_eq!(errors["bad_request"], 1, "{health}");
}
