//! The OpenAI-compatible HTTP API (HTTP/1.1, hyper): `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, `POST /v1/embeddings`, `GET /health`,
//! `GET /metrics`, on a Unix socket of its own (and on TCP when `http.listen` is set).
//!
//! Only a translation onto the [`Service`], like the other transports: a request becomes a
//! protocol request parsed with the same limits, admitted to the same queue, counted in the
//! same health; its refusals become OpenAI-style `error` objects with an HTTP status (`busy`
//! 429 with `Retry-After`, `blocked` 400, `shutting_down` 503). A client that goes away
//! cancels its request: hyper drops the response (streaming) or the handler (not
//! streaming), and with it the request's cancel guard. The OpenAI documents themselves, in
//! and out, are typed in the `openai` module beside this one.
//!
//! `POST /v1/embeddings` is the exception: the sentence-embedding model is not reachable
//! through the service (the worker takes prompts only), so this transport loads an instance
//! of its own on first use and runs one embedding request at a time.
//!
//! Bounded: a cap on connections, on the request body (413 past it, judged by
//! `Content-Length` before reading), on the time headers and body may take; a streamed
//! answer is read from the request's own bounded event channel, one event at a time, as the
//! connection takes it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::Number;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use edgellm_engine::Embedder;
use edgellm_protocol::{Conversation, Done, ErrorCode, Event, PromptRequest, Rejection, Request as ProtocolRequest};

mod openai;
use openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionRequest, Completion, CompletionObject,
    CompletionRequest, CompletionSettings, Delta, Embedding, EmbeddingList, EmbeddingsRequest, EncodingFormat,
    ErrorResponse, Extras, InvalidRequest, Model, ModelList, NoLogprobs, Role, TextChoice, Usage, Vector,
};

use crate::config::ConfigError;
use crate::service::{Origin, Service, Ticket};

const TRANSPORT: &str = "http";

/// Why the HTTP API could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the HTTP socket passed by systemd")]
    Inherited(#[source] std::io::Error),
    #[error("the HTTP socket")]
    Socket(#[from] super::socket::SocketError),
    #[error("cannot listen on {addr}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Mode(#[from] ConfigError),
}

/// The API's listening sockets: the Unix socket, and TCP when configured.
#[derive(Debug)]
pub struct Listeners {
    unix: UnixListener,
    path: PathBuf,
    tcp: Option<TcpListener>,
}

/// Binds the Unix socket (with the prompt socket's mode) and, when `http.listen` is set, TCP.
pub fn bind(config: &crate::config::Config) -> Result<Listeners, HttpError> {
    let path = config.http.socket_path(&config.socket);
    let tcp = listen_tcp(&config.http.listen)?;
    if let Some(fd) = super::socket::listen_fd(|name| name == super::socket::HTTP_FD_NAME) {
        let listener = std::os::unix::net::UnixListener::from(fd);
        let inherited = |e| HttpError::Inherited(e);
        listener.set_nonblocking(true).map_err(inherited)?;
        tracing::info!("using the HTTP socket passed by systemd");
        let unix = UnixListener::from_std(listener).map_err(inherited)?;
        // systemd owns the path: it stays when the daemon stops.
        return Ok(Listeners { unix, path: PathBuf::new(), tcp });
    }
    let unix = super::socket::bind_path(&path, config.socket.mode_bits()?)?;
    Ok(Listeners { unix, path, tcp })
}

/// The TCP listener when `http.listen` names an address.
fn listen_tcp(addr: &str) -> Result<Option<TcpListener>, HttpError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listen = || -> std::io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    };
    listen().map(Some).map_err(|source| HttpError::Listen { addr: addr.to_string(), source })
}

impl Listeners {
    /// Where the Unix socket is (empty when systemd passed it).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// What every connection's handler shares.
#[derive(Debug)]
struct Api {
    service: Service,
    /// The model's id from its manifest (it does not change while the daemon runs).
    model: String,
    max_body: usize,
    read_timeout: Duration,
    accept_system: bool,
    embeddings: Embeddings,
    /// `http.embeddings`.
    embeddings_on: bool,
}

/// Serves until the worker is done (during the drain, new requests are answered 503 by the
/// admission), then lets open connections finish their last responses.
pub async fn serve(listeners: Listeners, service: Service) {
    // Fixed for the listener's life (a reload that changes them takes effect at restart).
    let settings = service.config();
    let config = &settings.http;
    let model = service.health().model.map(|m| m.id).unwrap_or_default();
    let api = Arc::new(Api {
        service: service.clone(),
        model,
        max_body: config.max_body_bytes,
        read_timeout: Duration::from_millis(config.read_timeout_ms),
        accept_system: config.accept_system_messages,
        embeddings: Embeddings::new(&settings),
        embeddings_on: config.embeddings,
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    let Listeners { unix, path, tcp } = listeners;
    loop {
        let accepted = tokio::select! {
            _ = service.worker_done.cancelled() => break,
            a = unix.accept() => a.map(|(s, _)| Accepted::Unix(s)),
            a = accept_tcp(tcp.as_ref()) => a.map(Accepted::Tcp),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Accepted::Unix(s) = &stream
            && let Err(reason) = super::socket::check_peer(s, &service.config().socket)
        {
            tracing::warn!(%reason, "HTTP client refused");
            let r = Rejection::new(ErrorCode::Forbidden, "this user may not use the socket");
            refuse(stream, &api, r).await;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max = config.max_connections, "HTTP client refused: too many connections");
            refuse(stream, &api, Rejection::new(ErrorCode::Busy, "too many connections")).await;
            continue;
        };
        let api = api.clone();
        tracker.spawn(async move {
            match stream {
                Accepted::Unix(s) => connection(s, api).await,
                Accepted::Tcp(s) => connection(s, api).await,
            }
            drop(permit);
        });
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        tracing::warn!("HTTP connections still open at shutdown");
    }
    if !path.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&path);
    }
}

enum Accepted {
    Unix(UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept_tcp(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Answers one request on a connection that is not served (403, or 429 when full) and
/// closes it, within a second: the accept loop waits for it, so a flood is slowed, not
/// multiplied into tasks.
async fn refuse(stream: Accepted, api: &Api, rejection: Rejection) {
    api.service.refused(&rejection, TRANSPORT);
    let handler = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let response = error_response(&ApiError::new(rejection.clone()));
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false);
    let budget = Duration::from_secs(1);
    let _ = match stream {
        Accepted::Unix(s) => tokio::time::timeout(budget, builder.serve_connection(TokioIo::new(s), handler)).await,
        Accepted::Tcp(s) => tokio::time::timeout(budget, builder.serve_connection(TokioIo::new(s), handler)).await,
    };
}

/// One connection: HTTP/1.1 with keep-alive, requests one after another (one in flight).
async fn connection<S>(stream: S, api: Arc<Api>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origin = api.service.origin(1);
    let done = api.service.worker_done.clone();
    let handler = {
        let api = api.clone();
        hyper::service::service_fn(move |req| {
            let api = api.clone();
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(handle(req, &api, &origin).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(api.read_timeout).max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), handler);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        _ = done.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
        }
    }
}

type ResponseBody = Either<Full<Bytes>, EventBody>;

/// A refusal on its way to the client: the protocol's rejection and the HTTP details.
#[derive(Debug)]
struct ApiError {
    rejection: Rejection,
    /// Overrides the status the code maps to (413, 404, 405).
    status: Option<StatusCode>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(rejection: Rejection) -> Self {
        ApiError { rejection, status: None, retry_after_s: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(Rejection::new(ErrorCode::BadRequest, message))
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::bad(e.to_string())
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::TooLong | ErrorCode::Blocked => StatusCode::BAD_REQUEST,
        ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        // Nobody reads it: the client went away.
        ErrorCode::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let status = e.status.unwrap_or_else(|| status_of(e.rejection.code));
    let mut response = json_response(status, &ErrorResponse::new(&e.rejection));
    if let Some(s) = e.retry_after_s
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, document: &impl Serialize) -> Response<ResponseBody> {
    full(status, "application/json", openai::to_json(document))
}

async fn handle(req: Request<Incoming>, api: &Api, origin: &Origin) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(health(api)),
        (&Method::GET, "/metrics") => Ok(metrics(api)),
        (&Method::GET, "/v1/models") => {
            Ok(json_response(StatusCode::OK, &ModelList::new(vec![Model::new(&api.model)])))
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            if p["/v1/models/".len()..] == api.model {
                Ok(json_response(StatusCode::OK, &Model::new(&api.model)))
            } else {
                Err(ApiError::bad("no such model").with_status(StatusCode::NOT_FOUND))
            }
        }
        (&Method::POST, "/v1/chat/completions") => complete(req, api, origin, Kind::Chat).await,
        (&Method::POST, "/v1/completions") => complete(req, api, origin, Kind::Text).await,
        (&Method::POST, "/v1/embeddings") if api.embeddings_on => embeddings(req, api).await,
        (&Method::POST, "/v1/embeddings") => {
            Err(ApiError::bad("the embeddings endpoint is off (http.embeddings)").with_status(StatusCode::NOT_FOUND))
        }
        (_, "/health" | "/metrics" | "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            Err(ApiError::bad("method not allowed").with_status(StatusCode::METHOD_NOT_ALLOWED))
        }
        _ => Err(ApiError::bad("no such endpoint").with_status(StatusCode::NOT_FOUND)),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

fn health(api: &Api) -> Response<ResponseBody> {
    let doc = api.service.health();
    full(StatusCode::OK, "application/json", serde_json::to_vec(&doc).unwrap_or_default())
}

fn metrics(api: &Api) -> Response<ResponseBody> {
    let text = crate::metrics::render(&api.service.health(), &api.service.metrics);
    full(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The request body, within the size and time limits.
async fn read_body(req: Request<Incoming>, api: &Api) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(Rejection::new(ErrorCode::TooLong, format!("request body larger than {} bytes", api.max_body)))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.max_body as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), api.max_body);
    match tokio::time::timeout(api.read_timeout, body.collect()).await {
        Err(_) => Err(ApiError::new(Rejection::new(ErrorCode::Timeout, "the request body did not arrive in time"))
            .with_status(StatusCode::REQUEST_TIMEOUT)),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::bad("the request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

fn conversation_bytes(prompt: &str, conversation: Option<&Conversation>) -> usize {
    prompt.len()
        + conversation.map_or(0, |c| {
            c.system.as_ref().map_or(0, String::len) + c.turns.iter().map(|(u, a)| u.len() + a.len()).sum::<usize>()
        })
}

/// What a completion request asks for besides the prompt request itself.
struct Asked {
    request: PromptRequest,
    include_usage: bool,
}

/// A completion request, checked: the prompt, the conversation (chat), and the settings.
struct CheckedCompletion {
    prompt: String,
    conversation: Option<Conversation>,
    settings: CompletionSettings,
}

/// The part of a completion request that [`Service::parse`] reads, as a document of the socket
/// protocol: the prompt and the sampling fields meet the checks and limits a socket request
/// meets, in the one place they are made.
#[derive(Serialize)]
struct PromptDocument<'a> {
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'a Number>,
    stream: bool,
}

fn check_completion(body: &[u8], api: &Api, kind: Kind) -> Result<CheckedCompletion, ApiError> {
    let (prompt, conversation, options) = match kind {
        Kind::Chat => {
            let request: ChatCompletionRequest = openai::decode(body)?;
            let (prompt, conversation) = request.conversation(api.accept_system)?;
            (prompt, conversation, request.options)
        }
        Kind::Text => {
            let request: CompletionRequest = openai::decode(body)?;
            (request.prompt()?, None, request.options)
        }
    };
    let limit = api.service.config().limits.max_prompt_bytes;
    let size = conversation_bytes(&prompt, conversation.as_ref());
    if size > limit {
        return Err(ApiError::new(Rejection::new(
            ErrorCode::TooLong,
            format!("the messages are {size} bytes, the limit is {limit}"),
        )));
    }
    let mut settings = options.settings()?;
    // More tokens than the daemon allows are asked for routinely (clients default to large
    // values): the answer is cut at the limit and says so (`finish_reason: length`).
    let most = api.service.config().generation.max_new_tokens_limit as u64;
    if settings.max_tokens.as_ref().and_then(Number::as_u64).is_some_and(|n| n > most) {
        settings.max_tokens = Some(Number::from(most));
    }
    Ok(CheckedCompletion { prompt, conversation, settings })
}

/// A chat or text completion request as a protocol request: the prompt and the sampling
/// fields go through [`Service::parse`] (the limits, the id); the conversation and the stop
/// strings are added to what it returns. Every refusal is counted once.
fn parse_completion(body: &[u8], api: &Api, kind: Kind) -> Result<Asked, ApiError> {
    let checked = check_completion(body, api, kind).inspect_err(|e| api.service.refused(&e.rejection, TRANSPORT))?;
    let CheckedCompletion { prompt, conversation, settings } = checked;
    let document = PromptDocument {
        prompt: &prompt,
        max_tokens: settings.max_tokens.as_ref(),
        temperature: settings.temperature,
        top_p: settings.top_p,
        seed: settings.seed.as_ref(),
        stream: settings.stream,
    };
    let mut request = match api.service.parse(openai::to_json(&document).as_bytes(), TRANSPORT) {
        Ok(ProtocolRequest::Generate(r)) => r,
        Ok(_) => return Err(ApiError::bad("not a completion request")),
        // Counted by `parse`.
        Err(refused) => return Err(ApiError::new(refused.rejection)),
    };
    request.params.stop = settings.stop;
    request.conversation = conversation;
    Ok(Asked { request, include_usage: settings.include_usage })
}

/// `Retry-After` for a busy answer: the recent median time of a request, at least a second.
fn retry_after_s(api: &Api) -> u64 {
    let p50_ms = api.service.metrics.total_latency.percentiles(unix_now()).map_or(1000.0, |[p50, _, _]| p50);
    ((p50_ms / 1000.0).ceil() as u64).max(1)
}

async fn complete(
    req: Request<Incoming>,
    api: &Api,
    origin: &Origin,
    kind: Kind,
) -> Result<Response<ResponseBody>, ApiError> {
    let body = read_body(req, api).await.inspect_err(|e| api.service.refused(&e.rejection, TRANSPORT))?;
    let asked = parse_completion(&body, api, kind)?;
    let stream = asked.request.stream;
    let ticket = origin.submit(asked.request).map_err(|rejection| {
        // `submit` has counted it.
        let busy = rejection.code == ErrorCode::Busy;
        ApiError { retry_after_s: busy.then(|| retry_after_s(api)), ..ApiError::new(rejection) }
    })?;
    let answer = Answer::new(kind, &ticket.id, api.model.clone());
    if stream { stream_answer(ticket, answer, asked.include_usage).await } else { whole_answer(ticket, answer).await }
}

/// What every chunk or response of one answer carries.
#[derive(Debug, Clone)]
struct Answer {
    kind: Kind,
    /// OpenAI's id: `chatcmpl-` or `cmpl-` and the request's id.
    response_id: String,
    model: String,
    created: u64,
}

impl Answer {
    fn new(kind: Kind, request_id: &str, model: String) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let response_id = format!("{prefix}-{}", request_id.trim_start_matches("req-"));
        Answer { kind, response_id, model, created: unix_now() }
    }

    /// The envelope of a whole answer (`chunk` false) or of one chunk of a stream.
    fn envelope<C>(&self, chunk: bool, choices: Vec<C>) -> Completion<'_, C> {
        let object = match (self.kind, chunk) {
            (Kind::Chat, false) => CompletionObject::ChatCompletion,
            (Kind::Chat, true) => CompletionObject::ChatCompletionChunk,
            (Kind::Text, _) => CompletionObject::TextCompletion,
        };
        Completion {
            id: &self.response_id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage: None,
            edgellm: None,
        }
    }
}

/// Not streaming: waits for the final event; a client that leaves meanwhile drops this
/// future and, with it, the guard that cancels the request.
async fn whole_answer(mut ticket: Ticket, answer: Answer) -> Result<Response<ResponseBody>, ApiError> {
    let guard = ticket.cancel.clone().drop_guard();
    let done = loop {
        match ticket.events.recv().await {
            Some(Event::Token(_)) => continue,
            Some(Event::Done(done)) => break done,
            Some(Event::Error(r)) => {
                guard.disarm();
                return Err(ApiError::new(r));
            }
            None => {
                guard.disarm();
                return Err(ApiError::new(Rejection::new(ErrorCode::Internal, "internal error")));
            }
        }
    };
    guard.disarm();
    let (usage, edgellm) = (Some(Usage::from(&*done)), Some(Extras::from(&*done)));
    let finish_reason = done.finish_reason;
    Ok(match answer.kind {
        Kind::Chat => {
            let message = AssistantMessage { role: Role::Assistant, content: &done.text };
            let choice = ChatChoice { index: 0, message, logprobs: NoLogprobs, finish_reason };
            json_response(StatusCode::OK, &Completion { usage, edgellm, ..answer.envelope(false, vec![choice]) })
        }
        Kind::Text => {
            let finish_reason = Some(finish_reason);
            let choice = TextChoice { index: 0, text: &done.text, logprobs: NoLogprobs, finish_reason };
            json_response(StatusCode::OK, &Completion { usage, edgellm, ..answer.envelope(false, vec![choice]) })
        }
    })
}

/// Streaming: the first event decides the status (a refusal before any text, such as a
/// blocked prompt, is an HTTP error); then server-sent events, one chunk per piece, the
/// final chunk with the finish reason and the extras, and `data: [DONE]`.
async fn stream_answer(
    mut ticket: Ticket,
    answer: Answer,
    include_usage: bool,
) -> Result<Response<ResponseBody>, ApiError> {
    let guard = ticket.cancel.clone().drop_guard();
    let first = ticket.events.recv().await;
    guard.disarm();
    let first = match first {
        Some(Event::Error(r)) => return Err(ApiError::new(r)),
        None => return Err(ApiError::new(Rejection::new(ErrorCode::Internal, "internal error"))),
        Some(event) => event,
    };
    let mut body = EventBody { ticket, answer, include_usage, pending: VecDeque::new(), finished: false };
    if body.answer.kind == Kind::Chat {
        let delta = Delta { role: Some(Role::Assistant), content: Some("") };
        let opening = openai::to_json(
            &body.answer.envelope(true, vec![ChatChunkChoice { index: 0, delta, finish_reason: None }]),
        );
        body.push_data(&opening);
    }
    body.push_event(first);
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// A streamed answer: reads the request's events as the connection takes the chunks.
/// Dropped before the end (the client went away), it cancels the request.
struct EventBody {
    ticket: Ticket,
    answer: Answer,
    include_usage: bool,
    pending: VecDeque<Bytes>,
    finished: bool,
}

impl EventBody {
    fn push_data(&mut self, data: &str) {
        self.pending.push_back(Bytes::from(format!("data: {data}\n\n")));
    }

    /// One chunk with one choice: a piece of text, or (with the finish reason) the last,
    /// empty one, which carries the extras.
    fn piece(&self, text: &str, done: Option<&Done>) -> String {
        let finish_reason = done.map(|d| d.finish_reason);
        let edgellm = done.map(Extras::from);
        match self.answer.kind {
            Kind::Chat => {
                let delta = Delta { role: None, content: (!text.is_empty()).then_some(text) };
                let choice = ChatChunkChoice { index: 0, delta, finish_reason };
                openai::to_json(&Completion { edgellm, ..self.answer.envelope(true, vec![choice]) })
            }
            Kind::Text => {
                let choice = TextChoice { index: 0, text, logprobs: NoLogprobs, finish_reason };
                openai::to_json(&Completion { edgellm, ..self.answer.envelope(true, vec![choice]) })
            }
        }
    }

    fn push_event(&mut self, event: Event) {
        match event {
            Event::Token(text) => {
                let chunk = self.piece(&text, None);
                self.push_data(&chunk);
            }
            Event::Done(done) => {
                let last = self.piece("", Some(&done));
                self.push_data(&last);
                if self.include_usage {
                    // No choices: their type does not show in an empty list.
                    let no_choices: Vec<ChatChunkChoice<'_>> = Vec::new();
                    let usage = Some(Usage::from(&*done));
                    let usage_chunk = openai::to_json(&Completion { usage, ..self.answer.envelope(true, no_choices) });
                    self.push_data(&usage_chunk);
                }
                self.push_data("[DONE]");
                self.finished = true;
            }
            Event::Error(r) => {
                // After the headers, an error travels as an event (OpenAI's clients raise it).
                self.push_data(&openai::to_json(&ErrorResponse::new(&r)));
                self.push_data("[DONE]");
                self.finished = true;
            }
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(data) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.ticket.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => this.push_event(event),
                Poll::Ready(None) => {
                    this.push_event(Event::Error(Rejection::new(ErrorCode::Internal, "internal error")))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_empty()
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        if !self.finished {
            self.ticket.cancel.cancel();
        }
    }
}

/// The sentence-embedding model for `POST /v1/embeddings`, loaded on first use so that it
/// costs memory only when asked for. It is an instance of its own, not the worker's (the
/// worker takes prompts only): one embedding request runs at a time, beside generation.
#[derive(Debug)]
struct Embeddings {
    dir: PathBuf,
    max_tokens: usize,
    model: tokio::sync::OnceCell<Result<Arc<Embedder>, String>>,
    running: Semaphore,
}

impl Embeddings {
    fn new(config: &crate::config::Config) -> Self {
        let e = &config.grounding.embedding;
        Embeddings {
            dir: e.model_dir.clone().unwrap_or_default(),
            max_tokens: e.max_tokens,
            model: tokio::sync::OnceCell::new(),
            running: Semaphore::new(1),
        }
    }

    async fn model(&self) -> Result<Arc<Embedder>, String> {
        let load = || async {
            let (dir, max_tokens) = (self.dir.clone(), self.max_tokens);
            match tokio::task::spawn_blocking(move || Embedder::load(&dir, max_tokens)).await {
                Ok(Ok(model)) => {
                    tracing::info!(model = %model.info().id, load_ms = model.info().load_ms, "embedding model loaded for HTTP");
                    Ok(Arc::new(model))
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the embedding model could not be loaded");
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        self.model.get_or_init(load).await.clone()
    }
}

/// `input` within the size limit of a prompt.
fn embedding_inputs(request: &EmbeddingsRequest, max_bytes: usize) -> Result<Vec<String>, ApiError> {
    let inputs = request.inputs()?;
    if let Some(long) = inputs.iter().find(|s| s.len() > max_bytes) {
        return Err(ApiError::new(Rejection::new(
            ErrorCode::TooLong,
            format!("an input is {} bytes, the limit is {max_bytes}", long.len()),
        )));
    }
    Ok(inputs)
}

/// Standard base64 with padding, for `encoding_format: "base64"` (the `openai` package asks
/// for it by default): the floats as little-endian bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/embeddings`: the MiniLM sentence embeddings (unit length, mean-pooled).
async fn embeddings(req: Request<Incoming>, api: &Api) -> Result<Response<ResponseBody>, ApiError> {
    let refused = |e: ApiError| {
        api.service.refused(&e.rejection, TRANSPORT);
        e
    };
    let body = read_body(req, api).await.map_err(refused)?;
    let request: EmbeddingsRequest = openai::decode(&body).map_err(|e| refused(e.into()))?;
    let inputs = embedding_inputs(&request, api.service.config().limits.max_prompt_bytes).map_err(refused)?;
    let encoding = request.encoding_format().map_err(|e| refused(e.into()))?;
    if api.service.stop_accepting.is_cancelled() {
        return Err(refused(ApiError::new(Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"))));
    }
    let Ok(_permit) = api.embeddings.running.try_acquire() else {
        let e = ApiError::new(Rejection::new(ErrorCode::Busy, "another embedding request is running"));
        return Err(refused(ApiError { retry_after_s: Some(1), ..e }));
    };
    let model = api.embeddings.model().await.map_err(|_| {
        refused(ApiError::new(Rejection::new(ErrorCode::Internal, "the embedding model is not available")))
    })?;
    let worker = model.clone();
    let embedded = tokio::task::spawn_blocking(move || {
        inputs
            .iter()
            .map(|text| {
                let mut vector = vec![0.0f32; worker.dimension()];
                worker.embed(text, &mut vector).map(|tokens| (vector, tokens))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let embedded = match embedded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "embedding failed");
            return Err(refused(ApiError::new(Rejection::new(ErrorCode::Internal, "internal error"))));
        }
        Err(_) => return Err(refused(ApiError::new(Rejection::new(ErrorCode::Internal, "internal error")))),
    };
    let tokens: usize = embedded.iter().map(|(_, n)| n).sum();
    let data = embedded
        .into_iter()
        .enumerate()
        .map(|(index, (vector, _))| {
            let embedding = match encoding {
                EncodingFormat::Float => Vector::Float(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    Vector::Base64(base64(&bytes))
                }
            };
            Embedding::new(index, embedding)
        })
        .collect();
    Ok(json_response(StatusCode::OK, &EmbeddingList::new(data, &model.info().id, tokens)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&1.0f32.to_le_bytes()), "AACAPw==");
    }

    #[test]
    fn codes_map_to_openai_statuses() {
        assert_eq!(status_of(ErrorCode::Busy), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status_of(ErrorCode::Blocked), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorCode::ShuttingDown), StatusCode::SERVICE_UNAVAILABLE);
        let rejection = Rejection::new(ErrorCode::Blocked, "blocked by safety rule `x`");
        let body: serde_json::Value = serde_json::to_value(ErrorResponse::new(&rejection)).unwrap();
        assert_eq!(body["error"]["code"], "blocked");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn the_prompt_document_is_what_the_protocol_parses() {
        let (max_tokens, seed) = (Number::from(12), Number::from(-1));
        let document = PromptDocument {
            prompt: "Hi",
            max_tokens: Some(&max_tokens),
            temperature: Some(0.5),
            top_p: None,
            seed: Some(&seed),
            stream: true,
        };
        let limits = edgellm_protocol::ParseLimits { max_prompt_bytes: 100, max_new_tokens: 256 };
        let parse = |d: &PromptDocument<'_>| {
            edgellm_protocol::parse_request(openai::to_json(d).as_bytes(), limits, || "r".into())
        };
        // A negative seed reaches the protocol as sent, and is refused there by name.
        let refused = parse(&document).unwrap_err().rejection;
        assert!(refused.message.contains("`seed`"), "{}", refused.message);
        let seed = Number::from(7);
        let Ok(ProtocolRequest::Generate(request)) = parse(&PromptDocument { seed: Some(&seed), ..document }) else {
            panic!("not parsed")
        };
        assert_eq!((request.prompt.as_str(), request.stream), ("Hi", true));
        assert_eq!(request.params.max_tokens, Some(12));
        assert_eq!(request.params.temperature, Some(0.5));
        assert_eq!(request.params.seed, Some(7));
    }
}
