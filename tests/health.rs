//! Health and fleet reporting against a real mosquitto: the retained health document, its
//! counters, the birth / last-will status, draining, and the same document on the socket.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Daemon};
use serde_json::{Value, json};

fn config(broker: &Broker, extra: &str) -> String {
    format!("[mqtt]\nenabled = true\nport = {}\nkeep_alive_secs = 5\n[health]\ninterval_secs = 2\n{extra}", broker.port)
}

/// Follows a topic with mosquitto_sub (retained message first), one line per message.
struct Follow {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    fn new(port: u16, topic: &str) -> Follow {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }

    fn next(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits for a line satisfying `want`, within `timeout`.
    fn until(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next(left).unwrap_or_else(|| panic!("nothing matching within {timeout:?}"));
            if want(&line) {
                return line;
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let path = format!("{prefix}.{k}");
            out.insert(path.clone());
            // Per-code and per-kind maps are data, not shape.
            if !matches!(k.as_str(), "errors" | "blocked" | "redacted" | "flagged") {
                key_paths(v, &path, out);
            }
        }
    }
}

#[test]
fn retained_health_is_published_parses_and_its_counters_move() {
    let broker = Broker::start();
    let daemon = Daemon::start(&config(&broker, ""));
    let health = Follow::new(broker.port, "edgellm/dev1/health");
    let first: Value =
        serde_json::from_str(&health.until(Duration::from_secs(10), |l| l.contains("\"ready\""))).unwrap();
    assert_eq!(first["device_id"], "dev1");
    assert_eq!(first["state"], "ready");
    assert_eq!(first["model"]["id"], "SmolLM2-135M-Instruct");
    assert_eq!(first["model"]["sha256_prefix"].as_str().unwrap().len(), 12);
    assert!(first["memory"]["rss_mib"].as_f64().unwrap() > 50.0);
    assert!(first["memory"]["budget_mib"].as_f64().unwrap() > 100.0);
    assert!(first["memory"]["system_available_mib"].as_f64().unwrap() > 0.0);
    assert!(first["disk"]["model_dir_free_mib"].as_f64().is_some());
    assert_eq!(first["queue"]["capacity"], 8);
    assert_eq!(first["mqtt"]["connected"], true);

    let mut client = daemon.client();
    let mut tokens = 0;
    for (i, prompt) in ["Say hello.", "Say goodbye."].iter().enumerate() {
        let done = client.ask(json!({"id": format!("r{i}"), "prompt": prompt, "max_tokens": 8}));
        assert_eq!(done["event"], "done");
        tokens += done["usage"]["completion_tokens"].as_u64().unwrap();
    }
    client.send(r#"{"prompt": 5}"#);
    assert_eq!(client.next_event().unwrap()["code"], "bad_request");
    // Within one interval the retained document shows the work.
    let later: Value = serde_json::from_str(&health.until(Duration::from_secs(6), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["counters"]["completed"] == 2)
    }))
    .unwrap();
    assert_eq!(later["counters"]["requests"], 2);
    assert_eq!(later["counters"]["errors"]["bad_request"], 1);
    assert_eq!(later["counters"]["tokens_generated"].as_u64().unwrap(), tokens);
    assert!(later["latency_ms"]["time_to_first_token"]["p50"].as_f64().unwrap() > 0.0);
    assert!(later["latency_ms"]["total"]["p99"].as_f64().unwrap() > 0.0);
    assert!(later["tokens_per_second"].as_f64().unwrap() > 1.0);
    assert_eq!(later["last_error"]["code"], "bad_request");

    // The socket's document has the same shape.
    client.send(r#"{"op":"health"}"#);
    let socket_doc = client.next_event().unwrap()["health"].clone();
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&socket_doc, "", &mut a);
    key_paths(&later, "", &mut b);
    assert_eq!(a, b);
    // And `edgellm health` prints it.
    let out =
        Command::new(env!("CARGO_BIN_EXE_edgellm")).args(["health", "--socket"]).arg(&daemon.socket).output().unwrap();
    assert!(out.status.success());
    let cli_doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli_doc["device_id"], "dev1");
}

#[test]
fn sigkill_mid_request_makes_the_broker_publish_offline_and_a_restart_online() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&config(&broker, ""));
    let status = Follow::new(broker.port, "edgellm/dev1/status");
    status.until(Duration::from_secs(10), |l| l == "online");
    let mut client = daemon.client();
    client.send(&json!({"id": "k", "prompt": "Write a long story.", "max_tokens": 300, "stream": true}).to_string());
    assert_eq!(client.next_event().unwrap()["event"], "token");
    common::signal(&daemon.child, "KILL");
    let _ = daemon.child.wait();
    // The last will, published by the broker alone.
    status.until(Duration::from_secs(15), |l| l == "offline");
    // A restarted daemon (nothing on disk to repair) comes back online and serves.
    let restarted = Daemon::start(&config(&broker, ""));
    status.until(Duration::from_secs(15), |l| l == "online");
    let done = restarted.client().ask(json!({"id": "r", "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(done["event"], "done");
}

#[test]
fn sigterm_publishes_draining_then_offline() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&config(&broker, ""));
    let status = Follow::new(broker.port, "edgellm/dev1/status");
    status.until(Duration::from_secs(10), |l| l == "online");
    common::signal(&daemon.child, "TERM");
    status.until(Duration::from_secs(10), |l| l == "draining");
    status.until(Duration::from_secs(10), |l| l == "offline");
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), 0);
    // The retained status stays offline for fleet managers who look later.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "edgellm/dev1/status", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "offline");
}

/// Retained messages on `topic` (a filter), as (topic, payload) pairs, read by a fresh
/// mosquitto_sub: what Home Assistant finds when it subscribes.
fn retained(port: u16, topic: &str, count: usize) -> Vec<(String, String)> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-v", "--retained-only"])
        .args(["-C", &count.to_string(), "-W", "10"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// Renders a discovery template as Home Assistant would: the payload as `value_json`.
fn render(template: &str, doc: &Value) -> String {
    let env = minijinja::Environment::new();
    env.render_str(template, minijinja::context! { value_json => minijinja::Value::from_serialize(doc) })
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn home_assistant_discovery_in_the_current_schema_read_back_retained() {
    let broker = Broker::start();
    let _daemon = Daemon::start(&config(&broker, "home_assistant = true\n"));
    let status = Follow::new(broker.port, "edgellm/dev1/status");
    status.until(Duration::from_secs(10), |l| l == "online");
    let health = Follow::new(broker.port, "edgellm/dev1/health");
    health.until(Duration::from_secs(10), |l| l.contains("\"state\":\"ready\""));
    let configs = retained(broker.port, "homeassistant/sensor/+/+/config", 8);
    assert_eq!(configs.len(), 8, "{configs:?}");
    let (_, doc) = retained(broker.port, "edgellm/dev1/health", 1).pop().expect("a retained health document");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    // No request yet: the figures that need samples are null.
    assert!(doc["tokens_per_second"].is_null() && doc["latency_ms"]["time_to_first_token"].is_null(), "{doc}");
    let mut keys = BTreeSet::new();
    for (topic, payload) in &configs {
        let config: Value = serde_json::from_str(payload).unwrap();
        let unique_id = config["unique_id"].as_str().unwrap();
        assert!(topic.starts_with("homeassistant/sensor/edgellm_dev1/"), "{topic}");
        assert!(config.get("object_id").is_none(), "object_id is deprecated since 2025.10: {config}");
        assert_eq!(config["default_entity_id"], format!("sensor.{unique_id}"), "{config}");
        assert!(config.get("availability_topic").is_none(), "{config}");
        let availability = config["availability"].as_array().unwrap();
        assert_eq!(availability[0]["topic"], "edgellm/dev1/status", "bound to the retained status: {config}");
        assert_eq!(availability[0]["payload_available"], "online");
        assert_eq!(availability[0]["payload_not_available"], "offline");
        assert_eq!(config["availability_mode"], "all");
        assert_eq!(config["state_topic"], "edgellm/dev1/health");
        assert_eq!(config["device"]["identifiers"][0], "edgellm_dev1");
        // Rendered on the real document, the value is never "None"; a sensor with a unit
        // gets a number, and a figure without samples makes its sensor unavailable.
        let template = config["value_template"].as_str().unwrap();
        let value = render(template, &doc);
        assert_ne!(value, "None", "{unique_id}: {template}");
        if config.get("unit_of_measurement").is_some() {
            assert!(value.parse::<f64>().is_ok(), "{unique_id}: {value:?} from {template}");
        }
        for extra in &availability[1..] {
            assert_eq!(extra["topic"], "edgellm/dev1/health");
            assert_eq!(
                render(extra["value_template"].as_str().unwrap(), &doc),
                "offline",
                "{unique_id}: no samples yet"
            );
            let mut sampled = doc.clone();
            sampled["tokens_per_second"] = json!(42.5);
            sampled["latency_ms"]["time_to_first_token"] = json!({"p50": 120.0, "p95": 200.0, "p99": 300.0});
            assert_eq!(render(extra["value_template"].as_str().unwrap(), &sampled), "online", "{unique_id}");
            assert!(render(template, &sampled).parse::<f64>().unwrap() > 0.0, "{unique_id}");
        }
        keys.insert(topic.rsplit('/').nth(1).unwrap().to_string());
    }
    let rss: Value = serde_json::from_str(&configs.iter().find(|(t, _)| t.contains("/rss/")).unwrap().1).unwrap();
    assert_eq!(rss["unit_of_measurement"], "MiB");
    assert_eq!(rss["device_class"], "data_size");
    assert!(keys.contains("tokens_per_second") && keys.contains("ttft_p50"), "{keys:?}");
}

#[test]
fn unreadable_knowledge_directory_is_degraded_but_still_serving() {
    let broker = Broker::start();
    let daemon = Daemon::start(&config(&broker, "[grounding]\nknowledge_dir = \"/nonexistent/edgellm-knowledge\"\n"));
    let mut client = daemon.client();
    client.send(r#"{"op":"health"}"#);
    let doc = client.next_event().unwrap()["health"].clone();
    assert_eq!(doc["state"], "degraded", "{doc}");
    assert!(doc["degraded_reasons"][0].as_str().unwrap().contains("knowledge"));
    let done = client.ask(json!({"id": "a", "prompt": "Say hi.", "max_tokens": 4}));
    assert_eq!(done["event"], "done");
}
