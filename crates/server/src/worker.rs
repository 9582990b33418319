//! The inference worker: one named OS thread that owns the engine and the pipeline, takes jobs
//! from the bounded queue and sends events back on each job's own bounded channel.
//!
//! The worker never blocks on a client: a job's event channel holds every event one answer
//! can produce (`max_new_tokens_limit` tokens + the final event), so `try_send` only fails
//! when the client has gone, which cancels the job.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use edgellm_engine::{Engine, EngineError, Flow, GenerateRequest, ModelInfo, SamplingParams};
use edgellm_pipeline::{AnswerRequest, AnswerSink, Pipeline, PipelineError, PromptInput, preprocess::PreprocessError};
use edgellm_protocol::{ErrorCode, Event, PromptRequest, Rejection};
use edgellm_text::safety::Action;

use crate::config::Config;
use crate::health::Metrics;

/// One admitted request.
#[derive(Debug)]
pub struct Job {
    pub request: PromptRequest,
    pub events: Sender<Event>,
    pub cancel: CancellationToken,
    pub admitted: Instant,
    pub deadline: Instant,
}

/// Shared between the daemon and the worker thread.
#[derive(Debug, Default)]
pub struct WorkerControl {
    /// No more jobs will come: exit once the queue is empty.
    pub stopping: AtomicBool,
    /// The drain deadline passed: end the current job and answer the rest `shutting_down`.
    pub drain_expired: AtomicBool,
}

/// Settings that SIGHUP can change without a restart.
#[derive(Debug)]
pub enum Control {
    Reload(Box<Config>),
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start the inference thread")]
    Thread(#[source] std::io::Error),
    #[error("the inference thread died while loading the model")]
    Died,
}

/// Loads the model on a new thread and runs the worker loop there. Returns once the model is
/// loaded (or failed to load).
pub fn spawn(
    config: Config,
    queue: Receiver<Job>,
    control_rx: Receiver<Control>,
    control: Arc<WorkerControl>,
    metrics: Arc<Metrics>,
    notifier: Arc<crate::notify::Notifier>,
) -> Result<(std::thread::JoinHandle<()>, ModelInfo), StartError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<ModelInfo, StartError>>(1);
    let handle = std::thread::Builder::new()
        .name("edgellm-inference".into())
        .spawn(move || {
            let options = config.engine_options(None);
            let mut engine = match Engine::load(options) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            // Embedding a large knowledge directory takes a while: keep systemd's start-up
            // timeout from expiring while it progresses.
            let last_extended = std::cell::Cell::new(Instant::now());
            let progress = |done: usize| {
                if last_extended.get().elapsed() >= Duration::from_secs(5) {
                    last_extended.set(Instant::now());
                    notifier.extend_start_timeout(Duration::from_secs(30));
                    notifier.status(&format!("embedding the knowledge ({done} chunks)"));
                }
            };
            let mut pipeline = match Pipeline::with_progress(&config.pipeline_config(), &mut engine, &progress) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            metrics.knowledge_reload_failed.store(pipeline.knowledge_error().is_some(), Relaxed);
            // Warm the system-prompt cache so the first request is as fast as the rest.
            if let Ok(prepared) = pipeline.prepare(&engine, PromptInput { prompt: "hello", session: None }) {
                let warm = GenerateRequest {
                    prompt_ids: &prepared.ids,
                    shared_prefix_len: prepared.shared_prefix_len,
                    max_new_tokens: 1,
                    sampling: SamplingParams::default(),
                    stop_strings: &[],
                    deadline: None,
                    ignore_eos: true,
                };
                let _ = engine.generate(&warm, |_| Flow::Continue);
            }
            let _ = ready_tx.send(Ok(engine.info().clone()));
            let mut worker = Worker { engine, pipeline, config, metrics, control };
            worker.run(queue, control_rx);
        })
        .map_err(StartError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(info)) => Ok((handle, info)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(StartError::Died)
        }
    }
}

struct Worker {
    engine: Engine,
    pipeline: Pipeline,
    config: Config,
    metrics: Arc<Metrics>,
    control: Arc<WorkerControl>,
}

impl Worker {
    fn run(&mut self, queue: Receiver<Job>, control_rx: Receiver<Control>) {
        loop {
            self.metrics.worker_heartbeat.fetch_add(1, Relaxed);
            self.apply_pending_reloads(&control_rx);
            match queue.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => {
                    // A reload sent before this job was admitted applies to it (the daemon
                    // sends the reload before the service admits under the new settings).
                    self.apply_pending_reloads(&control_rx);
                    self.metrics.queue_depth.fetch_sub(1, Relaxed);
                    self.metrics.worker_busy.store(true, Relaxed);
                    self.process(job);
                    self.metrics.worker_busy.store(false, Relaxed);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.control.stopping.load(Relaxed) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Anything still queued after the loop is answered, never dropped.
        while let Ok(job) = queue.try_recv() {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            self.fail(&job, Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
        }
        tracing::debug!("inference worker stopped");
    }

    fn apply_pending_reloads(&mut self, control_rx: &Receiver<Control>) {
        while let Ok(Control::Reload(config)) = control_rx.try_recv() {
            self.reload(*config);
        }
    }

    fn reload(&mut self, config: Config) {
        // Re-embedding counts as progress for the watchdog.
        let heartbeat = |_| {
            self.metrics.worker_heartbeat.fetch_add(1, Relaxed);
        };
        match Pipeline::reload(&config.pipeline_config(), &mut self.engine, &mut self.pipeline, &heartbeat) {
            Ok(pipeline) => {
                self.metrics.knowledge_reload_failed.store(pipeline.knowledge_error().is_some(), Relaxed);
                self.pipeline = pipeline;
                self.engine.clear_prefix_cache();
                self.config = config;
                tracing::info!("worker reloaded its settings");
            }
            Err(e) => tracing::error!(error = %e, "reload rejected by the pipeline; keeping the old settings"),
        }
    }

    fn fail(&self, job: &Job, rejection: Rejection) {
        self.metrics.record_error(rejection.code);
        tracing::info!(id = %job.request.id, code = rejection.code.as_str(), "request failed");
        let _ = job.events.try_send(Event::Error(rejection));
    }

    fn process(&mut self, job: Job) {
        if self.control.drain_expired.load(Relaxed) {
            return self.fail(&job, Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
        }
        if job.cancel.is_cancelled() || job.events.is_closed() {
            return self.fail(&job, Rejection::new(ErrorCode::Cancelled, "cancelled before it started"));
        }
        if Instant::now() >= job.deadline {
            return self
                .fail(&job, Rejection::new(ErrorCode::Timeout, "the deadline passed while the request was queued"));
        }
        let req = &job.request;
        let log_text = self.config.logging.log_user_text;
        if log_text {
            tracing::debug!(id = %req.id, prompt = %req.prompt.escape_debug(), "prompt");
        }
        let request = AnswerRequest {
            prompt: &req.prompt,
            session: req.session.as_deref(),
            params: &req.params,
            stream: req.stream,
            admitted: job.admitted,
            deadline: Some(job.deadline),
            conversation: req.conversation.as_ref(),
        };
        let mut sink = JobSink { job: &job, metrics: &self.metrics, control: &self.control, shut_down: false };
        let result = self.pipeline.answer(&mut self.engine, request, &mut sink);
        let shut_down = sink.shut_down;
        let done = match result {
            Ok(done) => done,
            Err(PipelineError::Cancelled) if shut_down => {
                return self.fail(&job, Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
            }
            Err(e) => {
                if let PipelineError::Blocked { kind, .. } | PipelineError::AnswerBlocked { kind, .. } = &e {
                    self.metrics.record_safety(*kind, Action::Block);
                }
                return self.fail(&job, pipeline_rejection(&e));
            }
        };
        for finding in done.safety.input.iter().chain(&done.safety.output) {
            self.metrics.record_safety(finding.kind, finding.action);
        }
        let t = &done.timings;
        if done.cached {
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            self.metrics.record_completion(t.total_ms, t.total_ms, 0, 0.0);
        } else {
            self.metrics.cache_misses.fetch_add(1, Relaxed);
            self.metrics.inference_runs.fetch_add(1, Relaxed);
            let first_token_ms = t.queue_ms.unwrap_or(0.0) + t.time_to_first_token_ms.unwrap_or(0.0);
            let decode_ms = t.decode_ms.unwrap_or(0.0);
            self.metrics.record_completion(first_token_ms, t.total_ms, done.usage.completion_tokens, decode_ms);
        }
        if log_text {
            tracing::debug!(id = %req.id, answer = %done.text.escape_debug(), "answer");
        }
        tracing::info!(
            id = %req.id,
            prompt_tokens = done.usage.prompt_tokens,
            completion_tokens = done.usage.completion_tokens,
            ttft_ms = t.time_to_first_token_ms.unwrap_or(0.0) as u64,
            total_ms = t.total_ms as u64,
            sources = done.sources.len(),
            cached = done.cached,
            "request done"
        );
        let _ = job.events.try_send(Event::Done(Box::new(done)));
    }
}

/// The worker's side of [`AnswerSink`]: pieces go to the job's event channel; a client that
/// left, a cancel, or the drain deadline stop the answer.
struct JobSink<'a> {
    job: &'a Job,
    metrics: &'a Metrics,
    control: &'a WorkerControl,
    /// Stopped because the drain deadline passed (answered `shutting_down`, not `cancelled`).
    shut_down: bool,
}

impl AnswerSink for JobSink<'_> {
    fn piece(&mut self, text: &str) -> bool {
        // Fails only when the receiver is gone (the client disconnected).
        let sent = self.job.events.try_send(Event::Token(text.to_string())).is_ok();
        if !sent {
            self.job.cancel.cancel();
        }
        sent
    }

    fn keep_going(&mut self) -> bool {
        self.metrics.worker_heartbeat.fetch_add(1, Relaxed);
        if self.control.drain_expired.load(Relaxed) {
            self.shut_down = true;
            return false;
        }
        !self.job.cancel.is_cancelled()
    }
}

fn pipeline_rejection(e: &PipelineError) -> Rejection {
    match e {
        PipelineError::Preprocess(PreprocessError::Empty) => {
            Rejection::new(ErrorCode::BadRequest, "the prompt is empty")
        }
        PipelineError::Preprocess(PreprocessError::InvalidUtf8) => {
            Rejection::new(ErrorCode::BadRequest, "the prompt is not valid UTF-8")
        }
        PipelineError::Preprocess(PreprocessError::TooManyBytes { .. }) | PipelineError::TooManyTokens { .. } => {
            Rejection::new(ErrorCode::TooLong, e.to_string())
        }
        PipelineError::Engine(inner) => engine_rejection(inner),
        PipelineError::Blocked { rule, .. } => {
            Rejection::new(ErrorCode::Blocked, format!("blocked by safety rule `{rule}`"))
        }
        PipelineError::AnswerBlocked { rule, .. } => {
            Rejection::new(ErrorCode::Blocked, format!("answer blocked by safety rule `{rule}`"))
        }
        PipelineError::Cancelled => Rejection::new(ErrorCode::Cancelled, "cancelled"),
        PipelineError::DeadlinePassed => Rejection::new(ErrorCode::Timeout, "the request's deadline passed"),
        PipelineError::Safety(_) => {
            tracing::error!(error = %e, "safety rules failed");
            Rejection::new(ErrorCode::Internal, "internal error")
        }
        PipelineError::Preprocess(PreprocessError::Template(_)) => {
            tracing::error!(error = %e, "chat template failed");
            Rejection::new(ErrorCode::Internal, "internal error")
        }
    }
}

fn engine_rejection(e: &EngineError) -> Rejection {
    match e {
        EngineError::PromptTooLong { .. } => Rejection::new(ErrorCode::TooLong, e.to_string()),
        EngineError::EmptyPrompt => Rejection::new(ErrorCode::BadRequest, "the prompt is empty"),
        _ => {
            tracing::error!(error = %e, "inference failed");
            Rejection::new(ErrorCode::Internal, "internal error")
        }
    }
}
