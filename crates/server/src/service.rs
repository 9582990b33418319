//! The service layer under every transport: parsing with the configured limits, admission to
//! the bounded queue, the requests each client has in flight, and cancel.
//!
//! A transport only translates: bytes from its wire into [`Service::parse`], each client (a
//! socket connection, an MQTT reply topic) as an [`Origin`], events from a [`Ticket`] back
//! onto its wire. Everything a client may rely on whatever the transport (`busy` when the
//! queue is full, ids unique per client, a cancel reaching only that client's requests, every
//! refusal counted) is decided here, once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use edgellm_protocol::{BadRequest, ErrorCode, Event, ParseLimits, PromptRequest, Rejection, Request, parse_request};

use crate::config::Config;
use crate::health::{HealthDoc, Metrics, Reporter};
use crate::worker::Job;

/// What every transport task holds (cheap to clone).
#[derive(Debug, Clone)]
pub struct Service {
    admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    reporter: Arc<Reporter>,
    /// The settings in force: replaced as a whole on reload, read afresh by every request and
    /// every new connection.
    settings: Arc<RwLock<Arc<Config>>>,
    /// Fired at shutdown: stop taking new requests, finish what is in flight.
    pub stop_accepting: CancellationToken,
    /// Fired when the worker is done: in-flight answers are all final.
    pub worker_done: CancellationToken,
    /// Fired on every state change worth an immediate health publish.
    pub state_changed: Arc<tokio::sync::Notify>,
}

/// The way into the queue. Admission never waits: a full queue is an immediate `busy`.
#[derive(Debug)]
struct Admission {
    queue: SyncSender<Job>,
    accepting: AtomicBool,
    next_id: AtomicU64,
    /// Random keys for the ids of requests that carry none.
    id_keys: std::collections::hash_map::RandomState,
}

impl Service {
    pub(crate) fn new(
        config: Arc<Config>,
        queue: SyncSender<Job>,
        metrics: Arc<Metrics>,
        reporter: Arc<Reporter>,
    ) -> Self {
        let admission = Admission {
            queue,
            accepting: AtomicBool::new(true),
            next_id: AtomicU64::new(0),
            id_keys: Default::default(),
        };
        Service {
            admission: Arc::new(admission),
            metrics,
            reporter,
            settings: Arc::new(RwLock::new(config)),
            stop_accepting: CancellationToken::new(),
            worker_done: CancellationToken::new(),
            state_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The settings in force now (a reload replaces them; a snapshot stays consistent).
    pub fn config(&self) -> Arc<Config> {
        self.settings.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts reloaded settings in force for every later request and connection.
    pub(crate) fn set_config(&self, config: Arc<Config>) {
        *self.settings.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    pub fn health(&self) -> HealthDoc {
        self.reporter.snapshot(&self.metrics)
    }

    /// Parses one request document with the configured limits. A refusal is counted and
    /// logged (the message never quotes the payload; a field name in it is escaped).
    pub fn parse(&self, bytes: &[u8], transport: &'static str) -> Result<Request, BadRequest> {
        let config = self.config();
        let limits = ParseLimits {
            max_prompt_bytes: config.limits.max_prompt_bytes,
            max_new_tokens: config.generation.max_new_tokens_limit,
        };
        parse_request(bytes, limits, || self.new_id()).inspect_err(|e| self.refused(&e.rejection, transport))
    }

    /// Counts and logs a refusal that a transport answers by itself (line too long, payload
    /// too large, a reply topic it may not use).
    pub fn refused(&self, rejection: &Rejection, transport: &'static str) {
        self.metrics.record_error(rejection.code);
        let message = rejection.message.escape_debug();
        tracing::info!(transport, code = rejection.code.as_str(), %message, "request refused");
    }

    /// A new client whose requests are tracked together, at most `max_in_flight` at a time.
    pub fn origin(&self, max_in_flight: usize) -> Origin {
        Origin { service: self.clone(), in_flight: Arc::default(), max_in_flight }
    }

    /// No more admissions: later requests are answered `shutting_down`.
    pub(crate) fn close(&self) {
        self.admission.accepting.store(false, Relaxed);
        self.stop_accepting.cancel();
        self.state_changed.notify_one();
    }

    /// A fresh id for a request that carries none: 128 bits no other client can guess
    /// (SipHash of a counter under keys the OS drew at random for this process).
    fn new_id(&self) -> String {
        use std::hash::BuildHasher;
        let n = self.admission.next_id.fetch_add(1, Relaxed);
        let [a, b] = [0u8, 1].map(|half| self.admission.id_keys.hash_one((n, half)));
        format!("req-{a:016x}{b:016x}")
    }

    fn submit(&self, request: PromptRequest) -> Result<(mpsc::Receiver<Event>, CancellationToken), Rejection> {
        let a = &self.admission;
        if !a.accepting.load(Relaxed) {
            return Err(Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"));
        }
        let config = self.config();
        // Room for every event one answer can produce: each token plus the final event.
        let (events_tx, events) = mpsc::channel(config.generation.max_new_tokens_limit + 2);
        let cancel = CancellationToken::new();
        let now = Instant::now();
        let timeout = Duration::from_millis(config.generation.request_timeout_ms);
        let job = Job { request, events: events_tx, cancel: cancel.clone(), admitted: now, deadline: now + timeout };
        // Count before sending: the worker decrements as soon as it takes the job.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match a.queue.try_send(job) {
            Ok(()) => Ok((events, cancel)),
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

type InFlight = Arc<Mutex<HashMap<String, CancellationToken>>>;

/// One client of the daemon: the requests it has in flight, by id. Only the origin that sent
/// a request can cancel it; when the client goes away, [`Origin::cancel_all`] stops them.
#[derive(Debug, Clone)]
pub struct Origin {
    service: Service,
    in_flight: InFlight,
    max_in_flight: usize,
}

impl Origin {
    /// Admits a request: refused `bad_request` when this client already has one with that id
    /// in flight, `busy` past its in-flight limit or when the queue is full, `shutting_down`
    /// while draining. Every request and every refusal is counted.
    pub fn submit(&self, request: PromptRequest) -> Result<Ticket, Rejection> {
        self.submit_as(request.id.clone(), request)
    }

    /// [`Origin::submit`] with the request known in flight as `key` rather than its id (MQTT:
    /// its reply topic and id, so that one client cannot cancel another's request).
    pub fn submit_as(&self, key: String, request: PromptRequest) -> Result<Ticket, Rejection> {
        self.service.metrics.requests.fetch_add(1, Relaxed);
        let id = request.id.clone();
        let admitted = match self.in_flight.lock() {
            Ok(map) if map.contains_key(&key) => {
                Err(Rejection::new(ErrorCode::BadRequest, "a request with this id is already in flight"))
            }
            Ok(map) if map.len() >= self.max_in_flight => {
                Err(Rejection::new(ErrorCode::Busy, "too many requests in flight from this client"))
            }
            Ok(mut map) => self.service.submit(request).map(|(events, cancel)| {
                map.insert(key.clone(), cancel.clone());
                (events, cancel)
            }),
            Err(_) => Err(Rejection::new(ErrorCode::Internal, "internal error")),
        };
        match admitted {
            Ok((events, cancel)) => Ok(Ticket { id, key, events, cancel, in_flight: self.in_flight.clone() }),
            Err(r) => {
                self.service.metrics.record_error(r.code);
                Err(r)
            }
        }
    }

    /// Cancels this client's request `key` (its id, unless submitted with [`Origin::submit_as`]);
    /// false when it has none in flight by that key.
    pub fn cancel(&self, key: &str) -> bool {
        let token = self.in_flight.lock().ok().and_then(|m| m.get(key).cloned());
        token.inspect(CancellationToken::cancel).is_some()
    }

    /// Cancels everything this client has in flight (it went away).
    pub fn cancel_all(&self) {
        if let Ok(map) = self.in_flight.lock() {
            map.values().for_each(CancellationToken::cancel);
        }
    }
}

/// A client's handle on an admitted request: its events, and its cancel. Dropping it (after
/// the final event, or when the client has gone) ends the request's place in its origin.
#[derive(Debug)]
pub struct Ticket {
    pub id: String,
    /// Its key in the origin's in-flight set.
    key: String,
    pub events: mpsc::Receiver<Event>,
    pub cancel: CancellationToken,
    in_flight: InFlight,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.remove(&self.key);
        }
    }
}
