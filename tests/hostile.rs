//! Hostile and careless socket clients, against the real daemon: clients that stall mid-line,
//! half-close, send what is not an object or an over-long line, forge log lines, or connect
//! while the daemon drains. Each test is one hole found by attacking the daemon from outside.
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Daemon};
use serde_json::json;

fn health(client: &mut Client) -> serde_json::Value {
    client.send(r#"{"op":"health","id":"h"}"#);
    let event = client.next_event().unwrap();
    assert_eq!(event["event"], "health");
    event["health"].clone()
}

/// Reads until the daemon closes the connection; the events it sent on the way.
fn read_to_close(stream: &mut UnixStream, within: Duration) -> Vec<serde_json::Value> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut text = String::new();
    if let Err(e) = stream.read_to_string(&mut text) {
        panic!("the daemon did not close the connection within {within:?} ({e}); it sent {text:?}");
    }
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn clients_that_stall_mid_line_are_closed_and_cannot_lock_others_out() {
    let daemon = Daemon::start("[socket]\nmax_connections = 4\nline_timeout_ms = 600\n");
    // One more staller than there are slots (a slot may also still be held for a moment by the
    // start-up probe's connection): each is either refused `busy` at once or holds a slot
    // until its line times out; none is left hanging.
    let mut stalled: Vec<UnixStream> = (0..5)
        .map(|_| {
            let mut s = UnixStream::connect(&daemon.socket).unwrap();
            s.write_all(br#"{"prompt":"half a li"#).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let mut codes = Vec::new();
    for s in &mut stalled {
        let events = read_to_close(s, Duration::from_secs(30));
        codes.push(events.last().unwrap()["code"].as_str().unwrap().to_string());
    }
    // 600 ms each, in parallel; the margin is for a machine busy with other work.
    assert!(started.elapsed() < Duration::from_secs(10), "closed within the line timeout: {:?}", started.elapsed());
    let timeouts = codes.iter().filter(|c| *c == "timeout").count();
    assert!(codes.iter().all(|c| c == "timeout" || c == "busy") && timeouts >= 3, "{codes:?}");
    assert!(codes.contains(&"busy".to_string()), "one over the limit is refused: {codes:?}");
    // Their slots are free again.
    let mut client = daemon.client();
    let done = client.ask(json!({"id": "ok", "prompt": "Say hi.", "max_tokens": 4}));
    assert_eq!(done["event"], "done", "{done}");
    let h = health(&mut client);
    assert!(h["counters"]["errors"]["timeout"].as_u64().unwrap() >= timeouts as u64, "{h}");
    assert!(h["counters"]["errors"]["busy"].as_u64().unwrap() >= 1, "{h}");
}

#[test]
fn an_idle_connection_with_nothing_in_flight_is_closed() {
    let daemon = Daemon::start("[socket]\nidle_timeout_ms = 500\n");
    let mut idle = UnixStream::connect(&daemon.socket).unwrap();
    let events = read_to_close(&mut idle, Duration::from_secs(10));
    assert_eq!(events.last().unwrap()["code"], "timeout", "{events:?}");
    // A client waiting for a slow answer is not idle.
    let mut client = daemon.client();
    let done = client.ask(json!({"id": "slow", "prompt": "Tell me about rivers.", "max_tokens": 60}));
    assert_eq!(done["event"], "done", "{done}");
}

#[test]
fn a_client_that_half_closes_still_gets_its_answer() {
    let daemon = Daemon::start("");
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.write_all(b"{\"id\":\"hc\",\"prompt\":\"Say OK.\",\"max_tokens\":8,\"stream\":true}\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let events = read_to_close(&mut stream, Duration::from_secs(60));
    let last = events.last().unwrap();
    assert_eq!((last["id"].as_str(), last["event"].as_str()), (Some("hc"), Some("done")), "{events:?}");

    // The same with socat, as a user would (it half-closes at the end of its input).
    let mut socat = Command::new("socat")
        .args(["-t", "60", "-", &format!("UNIX-CONNECT:{}", daemon.socket.display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat");
    socat.stdin.take().unwrap().write_all(b"{\"id\":\"s1\",\"prompt\":\"Say OK.\",\"max_tokens\":8}\n").unwrap();
    let out = socat.wait_with_output().unwrap();
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("a reply")).unwrap();
    assert_eq!(last["event"], "done", "{last}");
}

#[test]
fn a_client_that_is_really_gone_has_its_request_cancelled() {
    let daemon = Daemon::start("");
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.write_all(b"{\"id\":\"gone\",\"prompt\":\"Write a long story.\",\"max_tokens\":400}\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let mut client = daemon.client();
    common::wait_for(Duration::from_secs(30), || {
        health(&mut client)["counters"]["errors"]["cancelled"].as_u64().unwrap_or(0) >= 1
    });
}

#[test]
fn refusals_name_their_request_and_only_objects_are_requests() {
    let daemon = Daemon::start("");
    let mut client = daemon.client();
    client.send(r#"{"id":"x1","prompt":"hi","max_tokens":-5}"#);
    let e = client.next_event().unwrap();
    assert_eq!((e["id"].as_str(), e["code"].as_str()), (Some("x1"), Some("bad_request")), "{e}");
    client.send(r#"["generate","x","Say OK"]"#);
    let e = client.next_event().unwrap();
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e["message"].as_str().unwrap().contains("JSON object"), "{e}");
    // The connection goes on serving.
    assert_eq!(client.ask(json!({"id": "after", "prompt": "Hi", "max_tokens": 2}))["event"], "done");
}

#[test]
fn an_over_long_line_is_answered_and_closed_without_waiting_for_its_end() {
    let daemon = Daemon::start("[socket]\nmax_line_bytes = 1024\n");
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream.write_all(&vec![b'a'; 5000]).unwrap();
    let started = Instant::now();
    let events = read_to_close(&mut stream, Duration::from_secs(10));
    assert_eq!(events.last().unwrap()["code"], "too_long", "{events:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "no newline was needed");
}

#[test]
fn client_field_names_cannot_forge_log_lines() {
    let daemon = Daemon::start("");
    let mut client = daemon.client();
    client.send(r#"{"prompt":"x","evil\nERROR forged by a client":1}"#);
    let e = client.next_event().unwrap();
    assert_eq!(e["code"], "bad_request");
    assert!(!e["message"].as_str().unwrap().contains('\n'), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log_text();
    assert!(log.contains("request refused"), "the refusal is logged: {log}");
    assert!(!log.lines().any(|l| l.trim_start().starts_with("ERROR forged")), "{log}");
}

#[test]
fn a_connection_opened_while_draining_is_told_so_and_closed() {
    let mut daemon = Daemon::start("[queue]\ndrain_timeout_ms = 30000\n");
    let mut client = daemon.client();
    client.send(
        // About a second of answer (the sea's ends after some 125 tokens): it outlasts the wait
        // below on a fast machine.
        &json!({"id": "long", "prompt": "Tell me about the moon.", "max_tokens": 300, "stream": true}).to_string(),
    );
    assert_eq!(client.next_event().unwrap()["event"], "token");
    common::signal(&daemon.child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    let mut late = UnixStream::connect(&daemon.socket).expect("the socket still accepts while draining");
    late.write_all(b"{\"id\":\"late\",\"prompt\":\"Hi\"}\n").ok();
    let events = read_to_close(&mut late, Duration::from_secs(5));
    assert_eq!(events[0]["code"], "shutting_down", "{events:?}");
    assert_eq!(client.until_final("long").pop().unwrap()["event"], "done");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
}
