//! The wire protocol shared by the Unix socket (newline-delimited JSON) and MQTT (one JSON
//! document per message): requests in, events out. Parsing is strict and every failure maps
//! to a stable error code; nothing from outside is trusted.

use edgellm_text::grounding::{Entity, GroundingReport, SourceRef};
use edgellm_text::safety::Finding;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stable error codes, part of the protocol (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLong,
    Busy,
    Blocked,
    Cancelled,
    Timeout,
    ShuttingDown,
    Forbidden,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Busy => "busy",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
        }
    }

    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLong,
        ErrorCode::Busy,
        ErrorCode::Blocked,
        ErrorCode::Cancelled,
        ErrorCode::Timeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];
}

/// A short, client-safe error: a code and one sentence, never internal details or user text.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }
}

/// Optional per-request generation settings; absent fields take the config's values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    /// Stop strings of this request, in addition to the configured ones (the HTTP API's `stop`).
    pub stop: Vec<String>,
}

/// A conversation the client keeps itself (the HTTP API's `messages`): its system prompt and
/// earlier turns take the place of the configured system prompt and the session memory.
/// The pipeline checks every part of it with the same safety rules as the prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub system: Option<String>,
    /// Earlier (user, assistant) turns, oldest first.
    pub turns: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptRequest {
    pub id: String,
    pub prompt: String,
    pub session: Option<String>,
    pub params: GenerateParams,
    pub stream: bool,
    /// Only from transports that carry a whole conversation (HTTP); never parsed from JSON lines.
    pub conversation: Option<Conversation>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Generate(PromptRequest),
    Cancel { id: String },
    Health { id: Option<String> },
}

impl Request {
    /// The request's id, when it has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Request::Generate(r) => Some(&r.id),
            Request::Cancel { id } => Some(id),
            Request::Health { id } => id.as_deref(),
        }
    }
}

/// The fields a request may have; anything else is refused by name.
const FIELDS: [&str; 10] =
    ["op", "id", "prompt", "session", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream"];

/// Longest request id, session id; ids appear in MQTT topics, so their alphabet is limited.
pub const MAX_ID_LEN: usize = 128;

pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn bad(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadRequest, message)
}

fn id_field(value: Option<Value>, field: &str) -> Result<Option<String>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if valid_id(&s) => Ok(Some(s)),
        Some(Value::Number(n)) if valid_id(&n.to_string()) => Ok(Some(n.to_string())),
        Some(_) => Err(bad(format!("`{field}` must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9-_.:]"))),
    }
}

fn uint_field(value: Option<Value>, field: &str, min: u64, max: u64) -> Result<Option<u64>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(bad(format!("`{field}` must be an integer between {min} and {max}"))),
        },
        Some(_) => Err(bad(format!("`{field}` must be a number"))),
    }
}

fn float_field(value: Option<Value>, field: &str, min: f64, max: f64) -> Result<Option<f32>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (min..=max).contains(&v) => Ok(Some(v as f32)),
            _ => Err(bad(format!("`{field}` must be between {min} and {max}"))),
        },
        Some(_) => Err(bad(format!("`{field}` must be a number"))),
    }
}

/// Limits applied while parsing, from the config.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_prompt_bytes: usize,
    pub max_new_tokens: usize,
}

/// A request that was refused, with its id when the document carried a valid one, so that a
/// client with several requests in flight knows which one failed.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub id: Option<String>,
    pub rejection: Rejection,
}

/// A client-given name, made safe to quote in a reply or a log line: control characters and
/// quotes escaped, at most 32 characters.
fn quoted_name(name: &str) -> String {
    let mut out: String = name.chars().take(32).flat_map(char::escape_default).collect();
    if name.chars().count() > 32 {
        out.push_str("...");
    }
    out
}

/// Parses one request document: a JSON object whose fields are checked one by one. No part
/// of a refusal's message quotes the payload, except a field name, escaped and shortened.
/// `fallback_id` names requests that carry no id.
pub fn parse_request(
    bytes: &[u8],
    limits: ParseLimits,
    fallback_id: impl FnOnce() -> String,
) -> Result<Request, BadRequest> {
    let refuse = |id: Option<String>, rejection: Rejection| BadRequest { id, rejection };
    let text = std::str::from_utf8(bytes).map_err(|_| refuse(None, bad("request is not valid UTF-8")))?;
    if !text.trim_start().starts_with('{') {
        return Err(refuse(None, bad("a request must be a JSON object")));
    }
    let mut fields: serde_json::Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        // serde's syntax errors name a position, never the payload.
        let what = e.to_string();
        let what = what.split(" at line").next().unwrap_or("invalid JSON");
        refuse(None, bad(format!("invalid request: {what}")))
    })?;
    let given_id = fields.get("id").cloned();
    // The id, if valid, labels every refusal below.
    let id = id_field(given_id, "id").map_err(|r| refuse(None, r))?;
    let fail = |r: Rejection| refuse(id.clone(), r);
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(fail(bad(format!("invalid request: unknown field `{}`", quoted_name(unknown)))));
    }
    let mut take = |name: &str| fields.remove(name);
    let op = match take("op") {
        None | Some(Value::Null) => "generate".to_string(),
        Some(Value::String(op)) => op,
        Some(_) => return Err(fail(bad("`op` must be a string"))),
    };
    match op.as_str() {
        "generate" => {
            let prompt = match take("prompt") {
                Some(Value::String(s)) => s,
                None | Some(Value::Null) => return Err(fail(bad("`prompt` is required"))),
                Some(_) => return Err(fail(bad("`prompt` must be a string"))),
            };
            if prompt.len() > limits.max_prompt_bytes {
                return Err(fail(Rejection::new(
                    ErrorCode::TooLong,
                    format!("prompt is {} bytes, the limit is {}", prompt.len(), limits.max_prompt_bytes),
                )));
            }
            let stream = match take("stream") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err(fail(bad("`stream` must be true or false"))),
            };
            let params = (|| -> Result<GenerateParams, Rejection> {
                Ok(GenerateParams {
                    max_tokens: uint_field(take("max_tokens"), "max_tokens", 1, limits.max_new_tokens as u64)?
                        .map(|v| v as usize),
                    temperature: float_field(take("temperature"), "temperature", 0.0, 5.0)?,
                    top_p: float_field(take("top_p"), "top_p", 0.01, 1.0)?,
                    top_k: uint_field(take("top_k"), "top_k", 0, 1000)?.map(|v| v as usize),
                    seed: uint_field(take("seed"), "seed", 0, u64::MAX)?,
                    stop: Vec::new(),
                })
            })()
            .map_err(&fail)?;
            let session = id_field(take("session"), "session").map_err(&fail)?;
            Ok(Request::Generate(PromptRequest {
                id: id.clone().unwrap_or_else(fallback_id),
                prompt,
                session,
                params,
                stream,
                conversation: None,
            }))
        }
        "cancel" => match id {
            Some(id) => Ok(Request::Cancel { id }),
            None => Err(fail(bad("`cancel` needs the `id` of the request"))),
        },
        "health" => Ok(Request::Health { id }),
        _ => Err(fail(bad("unknown `op` (expected generate, cancel or health)"))),
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Why generation ended, for an answer that was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// Where the time of one request went, in milliseconds. An answer from the cache has only
/// its total.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<f64>,
    pub total_ms: f64,
    /// Prompt tokens whose KV state was reused (the system prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_prefix_tokens: Option<usize>,
}

/// What the safety rules found on the prompt and on the answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SafetyReport {
    pub input: Vec<Finding>,
    pub output: Vec<Finding>,
}

/// The final event of an answered request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Done {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// The knowledge chunks put into the prompt.
    pub sources: Vec<SourceRef>,
    /// The answer checked against the best source sentence (`verdict`, `evidence`), when
    /// knowledge was put into the prompt; absent otherwise. With `append_evidence` (the
    /// default), an `unsupported` answer's `text` ends with `Source: <evidence>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grounding: Option<GroundingReport>,
    pub entities: Vec<Entity>,
    pub safety: SafetyReport,
    /// Answered from the answer cache, without inference.
    pub cached: bool,
}

/// What flows back to the sender of a request.
#[derive(Debug, Clone)]
pub enum Event {
    Token(String),
    Done(Box<Done>),
    Error(Rejection),
}

/// One event on the wire: the request id, the kind, and its fields.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum WireEvent<'a> {
    Token {
        id: &'a str,
        text: &'a str,
    },
    Done {
        id: &'a str,
        #[serde(flatten)]
        done: &'a Done,
    },
    Error {
        id: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
}

fn to_line(event: &WireEvent<'_>) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no foreign types.
    serde_json::to_string(event).unwrap_or_else(|_| String::from(r#"{"event":"error","code":"internal"}"#))
}

impl Event {
    pub fn is_final(&self) -> bool {
        !matches!(self, Event::Token(_))
    }

    /// The event as one JSON document carrying the request id.
    pub fn to_json(&self, id: &str) -> String {
        match self {
            Event::Token(text) => to_line(&WireEvent::Token { id, text }),
            Event::Done(done) => to_line(&WireEvent::Done { id, done }),
            Event::Error(r) => error_json(Some(id), r),
        }
    }
}

/// An error event; `id` is the request's when it is known.
pub fn error_json(id: Option<&str>, rejection: &Rejection) -> String {
    to_line(&WireEvent::Error { id, code: rejection.code, message: &rejection.message })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits { max_prompt_bytes: 100, max_new_tokens: 256 };

    fn parse(s: &str) -> Result<Request, Rejection> {
        parse_request(s.as_bytes(), LIMITS, || "gen-1".into()).map_err(|e| e.rejection)
    }

    #[test]
    fn full_request_parses() {
        let r = parse(
            r#"{"id":"a1","prompt":"hi","session":"s","max_tokens":12,"temperature":0.5,"seed":7,"stream":true}"#,
        );
        let Ok(Request::Generate(p)) = r else { panic!("{r:?}") };
        assert_eq!(p.id, "a1");
        assert_eq!(p.session.as_deref(), Some("s"));
        assert_eq!(p.params.max_tokens, Some(12));
        assert_eq!(p.params.seed, Some(7));
        assert!(p.stream);
    }

    #[test]
    fn only_prompt_is_required() {
        let Ok(Request::Generate(p)) = parse(r#"{"prompt":"hi"}"#) else { panic!() };
        assert_eq!(p.id, "gen-1");
        assert!(!p.stream);
    }

    #[test]
    fn hostile_requests_get_their_errors() {
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("not json", ErrorCode::BadRequest, "JSON object"),
            ("{not json", ErrorCode::BadRequest, "invalid request"),
            (r#"{"prompt":"x","max_tokens":-1}"#, ErrorCode::BadRequest, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":1e300}"#, ErrorCode::BadRequest, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":99999999999999999999999}"#, ErrorCode::BadRequest, "max_tokens"),
            (r#"{"prompt":"x","temperature":"hot"}"#, ErrorCode::BadRequest, "temperature"),
            (r#"{"prompt":"x","extra":1}"#, ErrorCode::BadRequest, "extra"),
            (r#"{"prompt":7}"#, ErrorCode::BadRequest, "prompt"),
            (r#"{"id":"a/b","prompt":"x"}"#, ErrorCode::BadRequest, "id"),
            (r#"{"op":"dance"}"#, ErrorCode::BadRequest, "op"),
            (r#"{"op":"cancel"}"#, ErrorCode::BadRequest, "id"),
            (r#"{}"#, ErrorCode::BadRequest, "prompt"),
        ];
        for (input, code, mentions) in cases {
            let err = parse(input).unwrap_err();
            assert_eq!(err.code, *code, "{input}");
            assert!(err.message.contains(mentions), "{input}: {}", err.message);
        }
        let long = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(101));
        assert_eq!(parse(&long).unwrap_err().code, ErrorCode::TooLong);
        let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse(&nested).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse_request(b"{\"prompt\":\"\xff\"}", LIMITS, || "x".into()).unwrap_err().rejection.code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn refusals_carry_the_request_id_when_it_is_valid() {
        let refused = |s: &str| parse_request(s.as_bytes(), LIMITS, || "gen".into()).unwrap_err();
        let e = refused(r#"{"id":"r7","prompt":"x","max_tokens":-1}"#);
        assert_eq!((e.id.as_deref(), e.rejection.code), (Some("r7"), ErrorCode::BadRequest));
        assert_eq!(refused(r#"{"id":"r8","prompt":"x","bogus":1}"#).id.as_deref(), Some("r8"));
        assert_eq!(refused(r#"{"id":9,"prompt":7}"#).id.as_deref(), Some("9"));
        assert_eq!(refused(r#"{"id":"a/b","prompt":"x"}"#).id, None, "an invalid id is not echoed");
        assert_eq!(refused(r#"{"id":"r9","prompt":"x""#).id, None, "no id from a broken document");
    }

    #[test]
    fn only_an_object_is_a_request() {
        for input in [r#"["generate","x","Say OK"]"#, r#""prompt""#, "42", "null", r#"  [{"prompt":"x"}]"#] {
            let err = parse(input).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{input}");
            assert!(err.message.contains("JSON object"), "{input}: {}", err.message);
        }
    }

    #[test]
    fn field_names_are_quoted_escaped_and_short() {
        // In JSON, `\n` in a key decodes to a newline.
        let key = format!("evil\\nERROR forged line {}", "x".repeat(100));
        let err = parse(&format!(r#"{{"prompt":"x","{key}":1}}"#)).unwrap_err();
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert!(err.message.contains("evil\\nERROR"), "{}", err.message);
        assert!(err.message.len() < 120, "{}", err.message);
    }

    #[test]
    fn error_messages_never_echo_the_payload() {
        let err = parse(r#"{"prompt":"secret-words", "bogus": "secret-value"}"#).unwrap_err();
        assert!(!err.message.contains("secret"), "{}", err.message);
    }

    #[test]
    fn events_serialize_with_id_and_kind() {
        let e = Event::Error(Rejection::new(ErrorCode::Busy, "queue is full"));
        let v: Value = serde_json::from_str(&e.to_json("r1")).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["event"], "error");
        assert_eq!(v["code"], "busy");
    }

    #[test]
    fn done_has_its_documented_fields() {
        let done = Done {
            text: "Paris.".into(),
            finish_reason: FinishReason::Length,
            usage: Usage { prompt_tokens: 3, completion_tokens: 2 },
            timings: Timings { total_ms: 1.5, ..Timings::default() },
            sources: Vec::new(),
            grounding: None,
            entities: Vec::new(),
            safety: SafetyReport::default(),
            cached: true,
        };
        let v: Value = serde_json::from_str(&Event::Done(Box::new(done.clone())).to_json("r2")).unwrap();
        assert_eq!((v["id"].as_str(), v["event"].as_str()), (Some("r2"), Some("done")));
        assert_eq!(v["finish_reason"], "length");
        assert_eq!(v["timings"], serde_json::json!({"total_ms": 1.5}));
        assert_eq!(v["safety"], serde_json::json!({"input": [], "output": []}));
        assert!(v.get("grounding").is_none(), "absent without knowledge");
        let report = GroundingReport {
            verdict: edgellm_text::grounding::Verdict::Unsupported,
            evidence: "Handover is at 08:00.".into(),
            file: "oncall.md".into(),
            chunk: 0,
            unmatched: vec!["9:0".into()],
        };
        let grounded = Done { grounding: Some(report), ..done.clone() };
        let v: Value = serde_json::from_str(&Event::Done(Box::new(grounded)).to_json("r2")).unwrap();
        assert_eq!(v["grounding"]["verdict"], "unsupported");
        assert_eq!(v["grounding"]["evidence"], "Handover is at 08:00.");
        let token: Value = serde_json::from_str(&Event::Token("Pa".into()).to_json("r2")).unwrap();
        assert_eq!(token, serde_json::json!({"id": "r2", "event": "token", "text": "Pa"}));
        let unnamed: Value = serde_json::from_str(&error_json(None, &Rejection::new(ErrorCode::TooLong, "x"))).unwrap();
        assert_eq!(unnamed["id"], Value::Null);
    }
}
