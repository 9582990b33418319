//! Helpers shared by the integration tests: the real model, loaded once per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use edgellm_engine::{Engine, EngineOptions};

/// The prepared default model (`make model`); tests fail loudly when it is missing.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("EDGELLM_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2"));
    assert!(
        dir.join("model.onnx").exists(),
        "model not prepared at {}: run `make model` (models/prepare.sh) first",
        dir.display()
    );
    dir
}

/// The prepared embedding model (`make model`), next to the LLM.
pub fn embedder_dir() -> PathBuf {
    let dir = std::env::var_os("EDGELLM_EMBEDDING_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/minilm"));
    assert!(
        dir.join("model.onnx").exists(),
        "embedding model not prepared at {}: run `make model` (models/prepare.sh) first",
        dir.display()
    );
    dir
}

/// One engine per test binary: loading takes seconds, and tests take turns on it.
pub fn shared_engine() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(model_dir());
        options.threads = 1;
        Mutex::new(Engine::load(options).expect("the default model loads"))
    });
    engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Real processes: a mosquitto broker and the daemon binary, each on its own port / socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn mosquitto_bin() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("mosquitto is not installed (.ci/run installs it with apt)");
}

/// A mosquitto broker of the test's own, with persistence in a temp dir.
pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with("allow_anonymous true\n")
    }

    /// `extra` is appended to the listener's configuration (auth, TLS...).
    pub fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker { port: free_port(), dir, extra: extra.to_string(), child: None };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\npersistence true\npersistence_location {}/\nautosave_interval 1\n{}",
                self.port,
                self.dir.path().display(),
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.path().join("broker.log")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok());
    }

    /// Stops the broker with SIGTERM (it saves its persistent sessions).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL, then a fresh start on the same port: what a crash does. Sessions are kept as of
    /// the last autosave (every second).
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// `edgellm serve --config CONFIG` started by `systemd-socket-activate` listening on
/// `sockets` (named `names`, systemd's `FileDescriptorName=`, when given), its log in `log`.
pub fn socket_activated(sockets: &[&Path], names: Option<&str>, config: &Path, log: std::fs::File) -> Child {
    let mut command = Command::new("systemd-socket-activate");
    for socket in sockets {
        command.arg("-l").arg(socket);
    }
    if let Some(names) = names {
        command.arg(format!("--fdname={names}"));
    }
    command
        .arg(env!("CARGO_BIN_EXE_edgellm"))
        .args(["serve", "--config"])
        .arg(config)
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate (package systemd)")
}

pub fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon binary with a config of the test's own.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `edgellm serve` with the given TOML appended to a base config (socket in a temp
    /// dir, the real model, one thread) and waits until its socket accepts.
    pub fn start(extra_toml: &str) -> Daemon {
        Self::start_env(extra_toml, &[])
    }

    pub fn start_env(extra_toml: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("edgellm.sock");
        let config_path = dir.path().join("edgellm.toml");
        std::fs::write(&config_path, base_config(&socket, extra_toml)).unwrap();
        let log = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgellm"));
        command.arg("serve").arg("--config").arg(&config_path).stdout(Stdio::null()).stderr(log_file);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start the daemon");
        let mut daemon = Daemon { dir, socket, config_path, child, log };
        let deadline = Instant::now() + Duration::from_secs(120);
        while UnixStream::connect(&daemon.socket).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("daemon exited early ({status}):\n{}", daemon.log_text());
            }
            assert!(Instant::now() < deadline, "daemon did not start:\n{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "daemon did not exit:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test config: the real model on one thread, the socket in a temp dir, merged with the
/// test's own TOML (its keys win).
pub fn base_config(socket: &Path, extra: &str) -> String {
    let mut config: toml::Table = toml::from_str(&format!(
        "device_id = \"dev1\"\n[model]\ndir = \"{}\"\nthreads = 1\n[socket]\npath = \"{}\"\n",
        model_dir().display(),
        socket.display()
    ))
    .unwrap();
    let extra: toml::Table = toml::from_str(extra).expect("test config is TOML");
    merge(&mut config, extra);
    toml::to_string(&config).unwrap()
}

fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A line-oriented client of the daemon's socket.
pub struct Client {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next event, or None when the daemon closed the connection.
    pub fn next_event(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad event {line:?}: {e}"))),
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }

    /// Events up to and including the final one (done or error) of request `id`.
    pub fn until_final(&mut self, id: &str) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().unwrap_or_else(|| panic!("connection closed before {id} finished"));
            let is_final = event["id"] == id && event["event"] != "token";
            events.push(event);
            if is_final {
                return events;
            }
        }
    }

    pub fn ask(&mut self, request: serde_json::Value) -> serde_json::Value {
        let id = request["id"].as_str().expect("requests in tests carry an id").to_string();
        self.send(&request.to_string());
        self.until_final(&id).pop().unwrap()
    }
}
