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
            DaemonError::Socket(_) | DaemonError::Signal(_) | DaemonError::StartUp(_) => crate::exit_code::RUNTIME,
        }
    }
}

/// Runs the daemon until `shutdown` completes. `config_path` is re-read on SIGHUP.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let notifier = Arc::new(Notifier::from_env());
    notifier.status("loading the model");
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
    if config.mqtt.enabled {
        let mqtt = crate::transport::mqtt::Mqtt::new(&config).map_err(DaemonError::Mqtt)?;
        transports.spawn(mqtt.serve(service.clone()));
    }

    metrics.set_ready();
    service.state_changed.notify_one();
    notifier.ready("ready");
    tracing::info!(socket = config.socket.enabled, mqtt = config.mqtt.enabled, "ready");
    let watchdog = tokio::spawn(watchdog(notifier.clone(), metrics.clone(), service.worker_done.clone()));

    let mut hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(DaemonError::Signal)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => reload(config_path.as_deref(), &control_tx, &notifier),
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

/// Re-reads the config; a bad file is refused and the running settings stay.
fn reload(path: Option<&std::path::Path>, control: &std::sync::mpsc::Sender<Control>, notifier: &Notifier) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no config file to reload (running on the embedded default)");
        return;
    };
    match Config::load(path) {
        Ok(new) => {
            tracing::info!(path = %path.display(), "SIGHUP: reloading");
            let _ = control.send(Control::Reload(Box::new(new)));
            notifier.status("ready (reloaded)");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "SIGHUP: new config rejected, keeping the old one")
        }
    }
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
