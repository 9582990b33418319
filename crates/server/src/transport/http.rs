//! The OpenAI-compatible HTTP API (HTTP/1.1, hyper): `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, `POST /v1/embeddings`, `GET /health`,
//! `GET /metrics`, on a Unix socket of its own (and on TCP when `http.listen` is set).
//!
//! Only a translation onto the [`Service`], like the other transports: a request becomes a
//! protocol request parsed with the same limits, admitted to the same queue, counted in the
//! same health; its refusals become OpenAI-style `error` objects with an HTTP status (`busy`
//! 429 with `Retry-After`, `blocked` 400, `shutting_down` 503). A client that goes away
//! cancels its request: hyper drops the response (streaming) or the handler (not
//! streaming), and with it the request's cancel guard.
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
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use edgellm_engine::Embedder;
use edgellm_protocol::{Conversation, Done, ErrorCode, Event, PromptRequest, Rejection, Request as ProtocolRequest};

use crate::config::ConfigError;
use crate::service::{Origin, Service, Ticket};

const TRANSPORT: &str = "http";

/// At most this many stop strings per request (as OpenAI's API), each as long as a
/// configured one may be.
const MAX_STOP: usize = 4;
const MAX_STOP_BYTES: usize = 64;

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

/// OpenAI's error `type` for a code.
fn error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest | ErrorCode::TooLong | ErrorCode::Blocked => "invalid_request_error",
        ErrorCode::Busy => "rate_limit_error",
        ErrorCode::Forbidden => "permission_error",
        ErrorCode::Cancelled => "cancelled",
        ErrorCode::Timeout | ErrorCode::ShuttingDown | ErrorCode::Internal => "server_error",
    }
}

/// The `{"error": {...}}` document: OpenAI's fields, with our stable code as `code`.
fn error_body(r: &Rejection) -> Value {
    json!({"error": {"message": r.message, "type": error_type(r.code), "param": null, "code": r.code.as_str()}})
}

fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let status = e.status.unwrap_or_else(|| status_of(e.rejection.code));
    let mut response = json_response(status, &error_body(&e.rejection));
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

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    full(status, "application/json", value.to_string())
}

async fn handle(req: Request<Incoming>, api: &Api, origin: &Origin) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(health(api)),
        (&Method::GET, "/metrics") => Ok(metrics(api)),
        (&Method::GET, "/v1/models") => {
            Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": [model_object(api)]})))
        }
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            if p["/v1/models/".len()..] == api.model {
                Ok(json_response(StatusCode::OK, &model_object(api)))
            } else {
                Err(ApiError::bad("no such model").with_status(StatusCode::NOT_FOUND))
            }
        }
        (&Method::POST, "/v1/chat/completions") => complete(req, api, origin, Kind::Chat).await,
        (&Method::POST, "/v1/completions") => complete(req, api, origin, Kind::Text).await,
        (&Method::POST, "/v1/embeddings") => embeddings(req, api).await,
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

fn model_object(api: &Api) -> Value {
    json!({"id": api.model, "object": "model", "created": 0, "owned_by": "edgellm"})
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The request body as a JSON object, within the size and time limits.
async fn read_json(req: Request<Incoming>, api: &Api) -> Result<Map<String, Value>, ApiError> {
    let too_large = || {
        ApiError::new(Rejection::new(ErrorCode::TooLong, format!("request body larger than {} bytes", api.max_body)))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.max_body as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), api.max_body);
    let bytes = match tokio::time::timeout(api.read_timeout, body.collect()).await {
        Err(_) => {
            return Err(ApiError::new(Rejection::new(ErrorCode::Timeout, "the request body did not arrive in time"))
                .with_status(StatusCode::REQUEST_TIMEOUT));
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(_)) => return Err(ApiError::bad("the request body could not be read")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => {
            // serde's syntax errors name a position, never the payload.
            let what = e.to_string();
            let what = what.split(" at line").next().unwrap_or("invalid JSON").to_string();
            Err(ApiError::bad(format!("invalid JSON: {what}")))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// The text of a message's `content`: a string, or the text parts of an array of parts.
fn content_text(content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(ApiError::bad("only text content parts are supported")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::bad("`content` must be a string or an array of text parts")),
    }
}

/// `messages` as the pipeline takes them: system messages (joined) as the system turn, the
/// earlier user and assistant messages as the conversation's turns, the last user message
/// as the prompt.
fn from_messages(messages: &Value, accept_system: bool) -> Result<(String, Option<Conversation>), ApiError> {
    let Some(messages) = messages.as_array().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad("`messages` must be a non-empty array"));
    };
    let mut systems: Vec<String> = Vec::new();
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut pending_user: Option<String> = None;
    let (last, earlier) = messages.split_last().unwrap_or((&Value::Null, &[]));
    let role_of = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_string);
    for message in earlier {
        let text = content_text(message.get("content"))?;
        match role_of(message).as_deref() {
            Some("system" | "developer") => systems.push(text),
            Some("user") => {
                pending_user = Some(match pending_user.take() {
                    Some(before) => format!("{before}\n\n{text}"),
                    None => text,
                });
            }
            Some("assistant") => match (pending_user.take(), turns.last_mut()) {
                (None, Some(previous)) => {
                    previous.1.push_str("\n\n");
                    previous.1.push_str(&text);
                }
                (user, _) => turns.push((user.unwrap_or_default(), text)),
            },
            Some(_) => return Err(ApiError::bad("only system, developer, user and assistant messages are supported")),
            None => return Err(ApiError::bad("every message needs a `role`")),
        }
    }
    if role_of(last).as_deref() != Some("user") {
        return Err(ApiError::bad("the last message must be the user's"));
    }
    let last_text = content_text(last.get("content"))?;
    let prompt = match pending_user {
        Some(before) => format!("{before}\n\n{last_text}"),
        None => last_text,
    };
    let system = (accept_system && !systems.is_empty()).then(|| systems.join("\n\n"));
    let conversation = (system.is_some() || !turns.is_empty()).then_some(Conversation { system, turns });
    Ok((prompt, conversation))
}

fn conversation_bytes(prompt: &str, conversation: Option<&Conversation>) -> usize {
    prompt.len()
        + conversation.map_or(0, |c| {
            c.system.as_ref().map_or(0, String::len) + c.turns.iter().map(|(u, a)| u.len() + a.len()).sum::<usize>()
        })
}

/// `stop`: a string or up to four strings.
fn stop_strings(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad("`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(ApiError::bad("`stop` must be a string or an array of strings")),
    };
    if list.len() > MAX_STOP || list.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad(format!(
            "`stop` takes at most {MAX_STOP} non-empty strings of at most {MAX_STOP_BYTES} bytes"
        )));
    }
    Ok(list)
}

/// What a completion request asks for besides the prompt request itself.
struct Asked {
    request: PromptRequest,
    include_usage: bool,
}

/// The parts of a completion request that [`Service::parse`] does not read: the prompt
/// document it does read (the prompt and the sampling fields), the conversation, the stop
/// strings, whether usage is streamed.
struct Fields {
    doc: Map<String, Value>,
    conversation: Option<Conversation>,
    stop: Vec<String>,
    include_usage: bool,
}

fn completion_fields(mut body: Map<String, Value>, api: &Api, kind: Kind) -> Result<Fields, ApiError> {
    let (prompt, conversation) = match kind {
        Kind::Chat => from_messages(body.get("messages").unwrap_or(&Value::Null), api.accept_system)?,
        Kind::Text => match body.get("prompt") {
            Some(Value::String(s)) => (s.clone(), None),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                (a[0].as_str().unwrap_or("").to_string(), None)
            }
            _ => return Err(ApiError::bad("`prompt` must be a string")),
        },
    };
    let limit = api.service.config().limits.max_prompt_bytes;
    let size = conversation_bytes(&prompt, conversation.as_ref());
    if size > limit {
        return Err(ApiError::new(Rejection::new(
            ErrorCode::TooLong,
            format!("the messages are {size} bytes, the limit is {limit}"),
        )));
    }
    if body.get("n").is_some_and(|n| !n.is_null() && n.as_u64() != Some(1)) {
        return Err(ApiError::bad("only `n` = 1 is supported"));
    }
    if body.get("model").is_some_and(|m| !m.is_string() && !m.is_null()) {
        return Err(ApiError::bad("`model` must be a string"));
    }
    let stop = stop_strings(body.get("stop"))?;
    let include_usage =
        body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
    // More tokens than the daemon allows are asked for routinely (clients default to large
    // values): the answer is cut at the limit and says so (`finish_reason: length`).
    let most = api.service.config().generation.max_new_tokens_limit as u64;
    let max_tokens = match body.remove("max_completion_tokens").filter(|v| !v.is_null()) {
        Some(v) => Some(v),
        None => body.remove("max_tokens"),
    }
    .map(|v| match v.as_u64() {
        Some(n) if n > most => Value::from(most),
        _ => v,
    });
    let mut doc = Map::new();
    doc.insert("prompt".into(), Value::String(prompt));
    if let Some(v) = max_tokens {
        doc.insert("max_tokens".into(), v);
    }
    for field in ["temperature", "top_p", "seed", "stream"] {
        if let Some(v) = body.remove(field) {
            doc.insert(field.into(), v);
        }
    }
    Ok(Fields { doc, conversation, stop, include_usage })
}

/// A chat or text completion request as a protocol request: the prompt and the sampling
/// fields go through [`Service::parse`] (the limits, the id); the conversation and the stop
/// strings are added to what it returns. Every refusal is counted once.
fn parse_completion(body: Map<String, Value>, api: &Api, kind: Kind) -> Result<Asked, ApiError> {
    let fields = completion_fields(body, api, kind).inspect_err(|e| api.service.refused(&e.rejection, TRANSPORT))?;
    let request = match api.service.parse(Value::Object(fields.doc).to_string().as_bytes(), TRANSPORT) {
        Ok(ProtocolRequest::Generate(r)) => r,
        Ok(_) => return Err(ApiError::bad("not a completion request")),
        // Counted by `parse`.
        Err(refused) => return Err(ApiError::new(refused.rejection)),
    };
    let params = with_stop(request.params, fields.stop);
    let request = PromptRequest { conversation: fields.conversation, params, ..request };
    Ok(Asked { request, include_usage: fields.include_usage })
}

fn with_stop(mut params: edgellm_protocol::GenerateParams, stop: Vec<String>) -> edgellm_protocol::GenerateParams {
    params.stop = stop;
    params
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
    let body = match read_json(req, api).await {
        Ok(body) => body,
        Err(e) => {
            api.service.refused(&e.rejection, TRANSPORT);
            return Err(e);
        }
    };
    let asked = parse_completion(body, api, kind)?;
    let stream = asked.request.stream;
    let ticket = origin.submit(asked.request).map_err(|rejection| {
        // `submit` has counted it.
        let busy = rejection.code == ErrorCode::Busy;
        ApiError { retry_after_s: busy.then(|| retry_after_s(api)), ..ApiError::new(rejection) }
    })?;
    let answer = Answer { kind, id: ticket.id.clone(), model: api.model.clone(), created: unix_now() };
    if stream { stream_answer(ticket, answer, asked.include_usage).await } else { whole_answer(ticket, answer).await }
}

/// What every chunk or response of one answer carries.
#[derive(Debug, Clone)]
struct Answer {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn response_id(&self) -> String {
        let prefix = if self.kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{}", self.id.trim_start_matches("req-"))
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.response_id().into());
        m.insert("object".into(), self.object(chunk).into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("choices".into(), choices);
        m
    }
}

fn usage(done: &Done) -> Value {
    let u = &done.usage;
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// The pipeline's extras, under `edgellm`.
fn extras(done: &Done) -> Value {
    json!({"sources": done.sources, "safety": done.safety, "timings": done.timings,
           "entities": done.entities, "cached": done.cached})
}

fn finish_reason(done: &Done) -> Value {
    serde_json::to_value(done.finish_reason).unwrap_or(Value::Null)
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
    let choice = match answer.kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": null, "finish_reason": finish_reason(&done)}),
        Kind::Text => json!({"index": 0, "text": done.text, "logprobs": null, "finish_reason": finish_reason(&done)}),
    };
    let mut body = answer.envelope(false, Value::Array(vec![choice]));
    body.insert("usage".into(), usage(&done));
    body.insert("edgellm".into(), extras(&done));
    Ok(json_response(StatusCode::OK, &Value::Object(body)))
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
        let choice = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null});
        body.push_chunk(body.answer.envelope(true, Value::Array(vec![choice])));
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

    fn push_chunk(&mut self, chunk: Map<String, Value>) {
        self.push_data(&Value::Object(chunk).to_string());
    }

    fn piece(&self, text: &str, finish: Value) -> Value {
        match self.answer.kind {
            Kind::Chat => {
                let delta = if text.is_empty() { json!({}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
            Kind::Text => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        }
    }

    fn push_event(&mut self, event: Event) {
        match event {
            Event::Token(text) => {
                let choice = self.piece(&text, Value::Null);
                self.push_chunk(self.answer.envelope(true, Value::Array(vec![choice])));
            }
            Event::Done(done) => {
                let choice = self.piece("", finish_reason(&done));
                let mut last = self.answer.envelope(true, Value::Array(vec![choice]));
                last.insert("edgellm".into(), extras(&done));
                self.push_chunk(last);
                if self.include_usage {
                    let mut usage_chunk = self.answer.envelope(true, Value::Array(Vec::new()));
                    usage_chunk.insert("usage".into(), usage(&done));
                    self.push_chunk(usage_chunk);
                }
                self.push_data("[DONE]");
                self.finished = true;
            }
            Event::Error(r) => {
                // After the headers, an error travels as an event (OpenAI's clients raise it).
                self.push_data(&error_body(&r).to_string());
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

/// At most this many inputs per embedding request.
const MAX_EMBED_INPUTS: usize = 64;

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

/// `input`: a string or an array of strings.
fn embedding_inputs(value: Option<&Value>, max_bytes: usize) -> Result<Vec<String>, ApiError> {
    let inputs = match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad("`input` must be a string or an array of strings"))?,
        _ => return Err(ApiError::bad("`input` must be a string or an array of strings")),
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS || inputs.iter().any(String::is_empty) {
        return Err(ApiError::bad(format!("`input` takes 1 to {MAX_EMBED_INPUTS} non-empty strings")));
    }
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
    let body = read_json(req, api).await.map_err(refused)?;
    let inputs = embedding_inputs(body.get("input"), api.service.config().limits.max_prompt_bytes).map_err(refused)?;
    let as_base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return Err(refused(ApiError::bad("`encoding_format` must be \"float\" or \"base64\""))),
    };
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
    let data: Vec<Value> = embedded
        .iter()
        .enumerate()
        .map(|(index, (vector, _))| {
            let embedding = if as_base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({"object": "list", "data": data, "model": model.info().id,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_map_onto_system_turns_and_prompt() {
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
        ]);
        let (prompt, conversation) = from_messages(&messages, true).unwrap();
        assert_eq!(prompt, "What is my name?");
        let c = conversation.unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!(c.turns, vec![("My name is Ada.".to_string(), "Hello Ada.".to_string())]);
        let (_, ignored) =
            from_messages(&json!([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]), false)
                .unwrap();
        assert!(ignored.is_none(), "system messages ignored when not accepted");
    }

    #[test]
    fn bad_messages_are_refused() {
        for messages in [
            json!([]),
            json!("hi"),
            json!([{"role": "assistant", "content": "hi"}]),
            json!([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}]),
            json!([{"content": "x"}, {"role": "user", "content": "hi"}]),
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        ] {
            let e = from_messages(&messages, true).unwrap_err();
            assert_eq!(e.rejection.code, ErrorCode::BadRequest, "{messages}");
        }
    }

    #[test]
    fn stop_takes_a_string_or_up_to_four() {
        assert_eq!(stop_strings(Some(&json!("\n"))).unwrap(), vec!["\n"]);
        assert_eq!(stop_strings(Some(&json!(["a", "b"]))).unwrap().len(), 2);
        assert!(stop_strings(Some(&json!(["a", "b", "c", "d", "e"]))).is_err());
        assert!(stop_strings(Some(&json!([""]))).is_err());
        assert!(stop_strings(Some(&json!(3))).is_err());
    }

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
        let body = error_body(&Rejection::new(ErrorCode::Blocked, "blocked by safety rule `x`"));
        assert_eq!(body["error"]["code"], "blocked");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
