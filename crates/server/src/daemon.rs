//! The daemon: transports → bounded admission queue → the inference worker → replies.
//!
//! Lifecycle: load the model (worker thread), open the transports, tell systemd READY; on
//! SIGHUP reload the config (a bad one is refused, the old one kept); on shutdown stop
//! accepting, let admitted work finish within `queue.drain_timeout_ms`, answer the rest
//! `shutting_down`, close the transports and return.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::{Metrics, Reporter};
use crate::notify::Notifier;
use crate::service::Service;
use crate::worker::{self, Control, Job, WorkerControl};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("model load failed")]
    ModelLoad(#[source] crate::worker::StartError),
    #[error("configuration")]
    Mqtt(#[source] crate::transport::mqtt::MqttError),
    #[error("the prompt socket")]
    Socket(#[source] crate::transport::socket::SocketError),
    #[error("the HTTP API")]
    Http(#[source] crate::transport::http::HttpError),
    #[error("cannot watch SIGHUP")]
    Signal(#[source] std::io::Error),
    #[error("the start-up task failed")]
    StartUp(#[source] tokio::task::JoinError),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::ModelLoad(_) => crate::exit_code::MODEL_LOAD,
            DaemonError::Mqtt(_) => crate::exit_code::BAD_CONFIG,
            DaemonError::Socket(_) | DaemonError::Http(_) | DaemonError::Signal(_) | DaemonError::StartUp(_) => {
                crate::exit_code::RUNTIME
            }
        }
    }
}

/// Runs the daemon until `shutdown` completes. `config_path` is re-read on SIGHUP.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Watch SIGHUP before the model loads: its default action would end the process without
    // a word. One that arrives during the load is kept and handled once the daemon is ready.
    let mut hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let notifier = Arc::new(Notifier::from_env());
    notifier.status("loading the model");
    tracing::info!(model_dir = %config.model.dir.display(), "loading the model");
    let metrics = Arc::new(Metrics::new(600));
    metrics.queue_capacity.store(config.queue.capacity, Relaxed);
    let reporter = Arc::new(Reporter::new(&config, crate::budget::MemoryBudget::estimate(&config).total_mib()));

    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<Job>(config.queue.capacity);
    let (control_tx, control_rx) = std::sync::mpsc::channel::<Control>();
    let worker_control = Arc::new(WorkerControl::default());
    let load_started = Instant::now();
    let (worker_handle, model_info) = {
        let config = config.clone();
        let control = worker_control.clone();
        let metrics = metrics.clone();
        let notifier = notifier.clone();
        tokio::task::spawn_blocking(move || worker::spawn(config, queue_rx, control_rx, control, metrics, notifier))
            .await
            .map_err(DaemonError::StartUp)?
            .map_err(DaemonError::ModelLoad)?
    };
    tracing::info!(
        model = %model_info.id,
        quantization = %model_info.quantization,
        sha256 = %model_info.sha256_prefix,
        kv_cache = model_info.kv_cache,
        load_ms = load_started.elapsed().as_millis() as u64,
        "model loaded"
    );
    reporter.set_model(model_info);

    let service = Service::new(Arc::new(config.clone()), queue_tx, metrics.clone(), reporter);

    let mut transports = tokio::task::JoinSet::new();
    if config.socket.enabled {
        let listener = crate::transport::socket::bind(&config.socket).map_err(DaemonError::Socket)?;
        transports.spawn(crate::transport::socket::serve(listener, service.clone()));
    }
    if config.http.enabled {
        let listeners = crate::transport::http::bind(&config).map_err(DaemonError::Http)?;
        transports.spawn(crate::transport::http::serve(listeners, service.clone()));
    }
    if config.mqtt.enabled {
        let mqtt = crate::transport::mqtt::Mqtt::new(&config).map_err(DaemonError::Mqtt)?;
        transports.spawn(mqtt.serve(service.clone()));
    }

    metrics.set_ready();
    service.state_changed.notify_one();
    notifier.ready("ready");
    tracing::info!(socket = config.socket.enabled, http = config.http.enabled, mqtt = config.mqtt.enabled, "ready");
    let watchdog = tokio::spawn(watchdog(notifier.clone(), metrics.clone(), service.worker_done.clone()));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => reload(config_path.as_deref(), &service, &control_tx, &notifier),
        }
    }

    // Drain.
    tracing::info!(drain_timeout_ms = config.queue.drain_timeout_ms, "shutting down: draining");
    notifier.stopping();
    metrics.set_draining();
    service.close();
    worker_control.stopping.store(true, Relaxed);
    let drain_deadline = Instant::now() + Duration::from_millis(config.queue.drain_timeout_ms);
    let mut worker_handle = Some(worker_handle);
    loop {
        if worker_handle.as_ref().is_some_and(|h| h.is_finished()) {
            break;
        }
        if Instant::now() >= drain_deadline && !worker_control.drain_expired.swap(true, Relaxed) {
            tracing::warn!("drain deadline passed: remaining requests get shutting_down");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(h) = worker_handle.take()
        && h.join().is_err()
    {
        tracing::error!("the inference worker panicked");
    }
    service.worker_done.cancel();
    watchdog.abort();
    // Transports deliver the last answers, say goodbye, and close.
    let flush = async { while transports.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), flush).await.is_err() {
        tracing::warn!("transports did not close within 5 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config; a bad or empty file is refused and the running settings stay. The new
/// settings reach the worker (pipeline, generation) and the service (request limits, timeouts,
/// per-connection socket settings); what only a restart can change is named in the log.
fn reload(
    path: Option<&std::path::Path>,
    service: &Service,
    control: &std::sync::mpsc::Sender<Control>,
    notifier: &Notifier,
) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no config file to reload (running on the embedded default)");
        return;
    };
    let new = match read_for_reload(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "SIGHUP: new config rejected, keeping the old one");
            return;
        }
    };
    let old = service.config();
    let changed = changed_keys(&old, &new);
    if changed.is_empty() {
        tracing::info!(path = %path.display(), "SIGHUP: the config is unchanged");
        return;
    }
    let needs_restart: Vec<&str> =
        changed.iter().map(String::as_str).filter(|key| RESTART_ONLY.iter().any(|p| key.starts_with(p))).collect();
    // The worker hears first: a request admitted under the new limits finds the worker's
    // reload waiting ahead of it.
    let new = Arc::new(new);
    let _ = control.send(Control::Reload(Box::new((*new).clone())));
    service.set_config(new);
    tracing::info!(path = %path.display(), changed = %changed.join(", "), "SIGHUP: reloading");
    if !needs_restart.is_empty() {
        tracing::warn!(keys = %needs_restart.join(", "), "SIGHUP: these settings take effect only after a restart");
    }
    notifier.status("ready (reloaded)");
}

/// Settings read once at start: the model and its threads, the queue, the listeners, the
/// broker connection and the health publisher.
const RESTART_ONLY: &[&str] = &[
    "device_id",
    "model.",
    "queue.",
    "socket.path",
    "socket.mode",
    "socket.enabled",
    "socket.max_connections",
    "mqtt.",
    "health.",
    "logging.level",
];

/// Loads the config for a reload, refusing a file with no settings at all: a truncated or
/// emptied file would otherwise silently reset everything to the defaults.
fn read_for_reload(path: &std::path::Path) -> Result<Config, crate::config::ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| crate::config::ConfigError::Read { path: path.into(), source })?;
    if toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.is_empty()) {
        return Err(crate::config::ConfigError::Parse(format!(
            "{} holds no settings (empty file?); refusing to reset every setting to its default",
            path.display()
        )));
    }
    let config = Config::load(path)?;
    config.check_service_files()?;
    Ok(config)
}

/// The dotted keys whose values differ between two configs (never the values: they may be
/// secrets).
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, a.get(key), b.get(key), out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let as_value = |c: &Config| toml::Value::try_from(c).ok();
    let mut out = Vec::new();
    walk("", as_value(old).as_ref(), as_value(new).as_ref(), &mut out);
    out
}

/// Pings systemd's watchdog only while the worker makes progress: its heartbeat moves at
/// every queue poll (200 ms when idle) and every generated token.
async fn watchdog(notifier: Arc<Notifier>, metrics: Arc<Metrics>, done: CancellationToken) {
    let Some(interval) = Notifier::watchdog_interval() else { return };
    let mut last = metrics.worker_heartbeat.load(Relaxed);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = metrics.worker_heartbeat.load(Relaxed);
        if now != last {
            notifier.watchdog();
        } else {
            tracing::error!("inference worker made no progress for {interval:?}: withholding the watchdog ping");
        }
        last = now;
    }
}
