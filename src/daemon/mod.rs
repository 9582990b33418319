//! The daemon: transports → bounded admission queue → the inference worker → replies.
//!
//! Lifecycle: load the model (worker thread), open the transports, tell systemd READY; on
//! SIGHUP reload the config (a bad one is refused, the old one kept); on shutdown stop
//! accepting, let admitted work finish within `queue.drain_timeout_ms`, answer the rest
//! `shutting_down`, close the transports and return.

pub mod notify;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::{HealthDoc, Metrics, Reporter};
use crate::protocol::{ErrorCode, Event, PromptRequest, Rejection};
use notify::Notifier;
use worker::{Control, Job, WorkerControl};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("model load failed: {0}")]
    ModelLoad(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::ModelLoad(_) => crate::exit_code::MODEL_LOAD,
            DaemonError::Config(_) => crate::exit_code::BAD_CONFIG,
            DaemonError::Runtime(_) => crate::exit_code::RUNTIME,
        }
    }
}

/// The way into the queue, shared by every transport. Admission never waits: a full queue
/// is an immediate `busy`.
#[derive(Debug, Clone)]
pub struct Admission {
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
    accepting: Arc<AtomicBool>,
    /// Events one answer can produce: every token plus the final event.
    event_capacity: usize,
    timeout: Duration,
    next_id: Arc<AtomicU64>,
}

/// A caller's handle on an admitted request.
#[derive(Debug)]
pub struct Ticket {
    pub events: mpsc::Receiver<Event>,
    pub cancel: CancellationToken,
}

impl Admission {
    /// A fresh id for a request that carries none.
    pub fn new_id(&self) -> String {
        format!("req-{}", self.next_id.fetch_add(1, Relaxed) + 1)
    }

    pub fn submit(&self, request: PromptRequest) -> Result<Ticket, Rejection> {
        self.metrics.requests.fetch_add(1, Relaxed);
        let result = self.try_submit(request);
        if let Err(r) = &result {
            self.metrics.record_error(r.code);
        }
        result
    }

    fn try_submit(&self, request: PromptRequest) -> Result<Ticket, Rejection> {
        if !self.accepting.load(Relaxed) {
            return Err(Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
        }
        let (events_tx, events) = mpsc::channel(self.event_capacity);
        let cancel = CancellationToken::new();
        let now = Instant::now();
        let job =
            Job { request, events: events_tx, cancel: cancel.clone(), admitted: now, deadline: now + self.timeout };
        // Count before sending: the worker decrements as soon as it takes the job.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => Ok(Ticket { events, cancel }),
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                Err(Rejection::new(ErrorCode::Busy, "the queue is full, try again later"))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                Err(Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"))
            }
        }
    }
}

/// What every transport task gets.
#[derive(Debug, Clone)]
pub struct Shared {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    pub reporter: Arc<Reporter>,
    pub config: Arc<Config>,
    /// Fired at shutdown: stop taking new requests, finish what is in flight.
    pub stop_accepting: CancellationToken,
    /// Fired when the worker is done: in-flight answers are all final.
    pub worker_done: CancellationToken,
    /// Fired on every state change worth an immediate health publish.
    pub state_changed: Arc<tokio::sync::Notify>,
}

impl Shared {
    pub fn health(&self) -> HealthDoc {
        self.reporter.snapshot(&self.metrics)
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
            .map_err(|e| DaemonError::Runtime(e.to_string()))?
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

    let shared = Shared {
        admission: Admission {
            queue: queue_tx,
            metrics: metrics.clone(),
            accepting: Arc::new(AtomicBool::new(true)),
            event_capacity: config.generation.max_new_tokens_limit + 2,
            timeout: Duration::from_millis(config.generation.request_timeout_ms),
            next_id: Arc::new(AtomicU64::new(0)),
        },
        metrics: metrics.clone(),
        reporter,
        config: Arc::new(config.clone()),
        stop_accepting: CancellationToken::new(),
        worker_done: CancellationToken::new(),
        state_changed: Arc::new(tokio::sync::Notify::new()),
    };

    let mut transports = tokio::task::JoinSet::new();
    if config.socket.enabled {
        let listener = crate::transport::socket::bind(&config.socket).map_err(DaemonError::Runtime)?;
        transports.spawn(crate::transport::socket::serve(listener, shared.clone()));
    }
    if config.mqtt.enabled {
        let mqtt = crate::transport::mqtt::Mqtt::new(&config).map_err(|e| DaemonError::Config(e.to_string()))?;
        transports.spawn(mqtt.serve(shared.clone()));
    }

    metrics.set_ready();
    shared.state_changed.notify_one();
    notifier.ready("ready");
    tracing::info!(socket = config.socket.enabled, mqtt = config.mqtt.enabled, "ready");
    let watchdog = tokio::spawn(watchdog(notifier.clone(), metrics.clone(), shared.worker_done.clone()));

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Runtime(format!("cannot watch SIGHUP: {e}")))?;
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
    shared.admission.accepting.store(false, Relaxed);
    shared.stop_accepting.cancel();
    shared.state_changed.notify_one();
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
    shared.worker_done.cancel();
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
