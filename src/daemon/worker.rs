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

use crate::config::Config;
use crate::engine::{Engine, EngineError, FinishReason, Flow, GenerateRequest, ModelInfo, SamplingParams};
use crate::health::Metrics;
use crate::pipeline::grounding::CachedAnswer;
use crate::pipeline::postprocess::Guarded;
use crate::pipeline::safety::{Action, Detection};
use crate::pipeline::{Pipeline, PipelineError, PromptInput, preprocess::PreprocessError};
use crate::protocol::{Done, ErrorCode, Event, PromptRequest, Rejection, Usage};

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

/// Loads the model on a new thread and runs the worker loop there. Returns once the model is
/// loaded (or failed to load).
pub fn spawn(
    config: Config,
    queue: Receiver<Job>,
    control_rx: Receiver<Control>,
    control: Arc<WorkerControl>,
    metrics: Arc<Metrics>,
    notifier: Arc<super::notify::Notifier>,
) -> Result<(std::thread::JoinHandle<()>, ModelInfo), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<ModelInfo, String>>(1);
    let handle = std::thread::Builder::new()
        .name("edgellm-inference".into())
        .spawn(move || {
            let options = crate::cli::engine_options(&config, None);
            let mut engine = match Engine::load(options) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
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
            let mut pipeline = match Pipeline::with_progress(&config, &mut engine, &progress) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
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
        .map_err(|e| format!("cannot start the inference thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(info)) => Ok((handle, info)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err("the inference thread died while loading the model".into())
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
            while let Ok(Control::Reload(config)) = control_rx.try_recv() {
                self.reload(*config);
            }
            match queue.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => {
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

    fn reload(&mut self, config: Config) {
        // Re-embedding counts as progress for the watchdog.
        let heartbeat = |_| {
            self.metrics.worker_heartbeat.fetch_add(1, Relaxed);
        };
        match Pipeline::reload(&config, &mut self.engine, &mut self.pipeline, &heartbeat) {
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
            tracing::debug!(id = %req.id, prompt = %req.prompt, "prompt");
        }
        let input = PromptInput { prompt: &req.prompt, session: req.session.as_deref() };
        let prepared = match self.pipeline.prepare(&self.engine, input) {
            Ok(p) => p,
            Err(PipelineError::Blocked { rule, kind }) => {
                self.metrics.record_safety(kind, Action::Block);
                return self.fail(&job, Rejection::new(ErrorCode::Blocked, format!("blocked by safety rule `{rule}`")));
            }
            Err(e) => return self.fail(&job, pipeline_rejection(&e)),
        };
        for d in &prepared.input_safety.detections {
            self.metrics.record_safety(d.kind, d.action);
        }
        let generation = self.pipeline.generation();
        let (sampling, max_new_tokens) = generation.for_request(&req.params);
        let stop_strings = generation.stop_strings.clone();
        let settings = format!("{sampling:?}|{max_new_tokens}|{stop_strings:?}");
        let cache_key = Pipeline::cache_key(&prepared, &settings);
        let session = req.session.as_deref();

        if let Some(hit) = self.pipeline.cached_answer(&cache_key) {
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            if req.stream && !hit.text.is_empty() {
                let _ = job.events.try_send(Event::Token(hit.text.clone()));
            }
            let text = self.pipeline.finish(&prepared, session, &hit.text, false, None);
            let total_ms = job.admitted.elapsed().as_secs_f64() * 1e3;
            self.metrics.record_completion(total_ms, total_ms, 0, 0.0);
            tracing::info!(id = %req.id, total_ms = total_ms as u64, "request answered from the cache");
            let done = Done {
                text,
                finish_reason: hit.finish_reason,
                usage: Usage { prompt_tokens: hit.prompt_tokens, completion_tokens: hit.completion_tokens },
                timings: serde_json::json!({"total_ms": round1(total_ms)}),
                sources: serde_json::to_value(&prepared.sources).unwrap_or_default(),
                entities: serde_json::to_value(&prepared.entities[..]).unwrap_or_default(),
                safety: serde_json::json!({"input": prepared.input_safety.summary(), "output": []}),
                cached: true,
            };
            let _ = job.events.try_send(Event::Done(Box::new(done)));
            return;
        }
        self.metrics.cache_misses.fetch_add(1, Relaxed);

        let gen_request = GenerateRequest {
            prompt_ids: &prepared.ids,
            shared_prefix_len: prepared.shared_prefix_len,
            max_new_tokens,
            sampling,
            stop_strings: &stop_strings,
            deadline: Some(job.deadline),
            ignore_eos: false,
        };
        self.metrics.inference_runs.fetch_add(1, Relaxed);
        let metrics = &self.metrics;
        let control = &self.control;
        let mut guard = self.pipeline.output_guard();
        let mut released = String::new();
        let mut blocked: Option<Detection> = None;
        let mut shut_down = false;
        let send_piece = |text: &str| {
            // Fails only when the receiver is gone (the client disconnected).
            !req.stream || text.is_empty() || job.events.try_send(Event::Token(text.to_string())).is_ok()
        };
        let result = self.engine.generate(&gen_request, |piece| {
            metrics.worker_heartbeat.fetch_add(1, Relaxed);
            if job.cancel.is_cancelled() {
                return Flow::Cancel;
            }
            if control.drain_expired.load(Relaxed) {
                shut_down = true;
                return Flow::Cancel;
            }
            match guard.push(piece) {
                Guarded::Release(text) => {
                    released.push_str(&text);
                    if !send_piece(&text) {
                        job.cancel.cancel();
                        return Flow::Cancel;
                    }
                    Flow::Continue
                }
                Guarded::Blocked(d) => {
                    blocked = Some(d);
                    Flow::Cancel
                }
            }
        });
        let generation = match result {
            Ok(g) => g,
            Err(e) => return self.fail(&job, engine_rejection(&e)),
        };
        match generation.finish_reason {
            _ if blocked.is_some() => {}
            FinishReason::Cancelled if shut_down => {
                return self.fail(&job, Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
            }
            FinishReason::Cancelled => return self.fail(&job, Rejection::new(ErrorCode::Cancelled, "cancelled")),
            FinishReason::Deadline => {
                return self.fail(&job, Rejection::new(ErrorCode::Timeout, "the request's deadline passed"));
            }
            FinishReason::Stop | FinishReason::Length => match guard.finish() {
                Guarded::Release(text) => {
                    released.push_str(&text);
                    send_piece(&text);
                }
                Guarded::Blocked(d) => blocked = Some(d),
            },
        }
        if let Some(d) = blocked {
            self.metrics.record_safety(d.kind, Action::Block);
            return self
                .fail(&job, Rejection::new(ErrorCode::Blocked, format!("answer blocked by safety rule `{}`", d.rule)));
        }
        let output_safety: Vec<_> = guard.detections.iter().cloned().collect();
        drop(guard);
        for d in &output_safety {
            self.metrics.record_safety(d.kind, d.action);
        }
        let finish_reason = match generation.finish_reason {
            FinishReason::Length => "length",
            _ => "stop",
        };
        let cached = CachedAnswer {
            text: String::new(),
            finish_reason,
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
        };
        let text = self.pipeline.finish(
            &prepared,
            session,
            &released,
            generation.finish_reason == FinishReason::Length,
            Some((cache_key, cached)),
        );
        let t = &generation.timings;
        let total_ms = job.admitted.elapsed().as_secs_f64() * 1e3;
        let queue_ms = total_ms - (t.prefill_ms + t.decode_ms + prepared.retrieval_ms);
        self.metrics.record_completion(
            queue_ms.max(0.0) + t.time_to_first_token_ms,
            total_ms,
            generation.completion_tokens,
            t.decode_ms,
        );
        if log_text {
            tracing::debug!(id = %req.id, answer = %text, "answer");
        }
        tracing::info!(
            id = %req.id,
            prompt_tokens = generation.prompt_tokens,
            completion_tokens = generation.completion_tokens,
            ttft_ms = t.time_to_first_token_ms as u64,
            total_ms = total_ms as u64,
            sources = prepared.sources.len(),
            "request done"
        );
        let output_summary: Vec<_> = output_safety
            .iter()
            .map(|d| serde_json::json!({"rule": d.rule, "kind": d.kind, "action": d.action}))
            .collect();
        let done = Done {
            text,
            finish_reason,
            usage: Usage { prompt_tokens: generation.prompt_tokens, completion_tokens: generation.completion_tokens },
            timings: serde_json::json!({
                "queue_ms": round1(queue_ms.max(0.0)),
                "retrieval_ms": round1(prepared.retrieval_ms),
                "prefill_ms": round1(t.prefill_ms),
                "decode_ms": round1(t.decode_ms),
                "time_to_first_token_ms": round1(t.time_to_first_token_ms),
                "total_ms": round1(total_ms),
                "reused_prefix_tokens": t.reused_prefix_tokens,
            }),
            sources: serde_json::to_value(&prepared.sources).unwrap_or_default(),
            entities: serde_json::to_value(&prepared.entities[..]).unwrap_or_default(),
            safety: serde_json::json!({"input": prepared.input_safety.summary(), "output": output_summary}),
            cached: false,
        };
        let _ = job.events.try_send(Event::Done(Box::new(done)));
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
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
