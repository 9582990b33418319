//! The OpenAI wire format, as far as this API speaks it: the bodies of the chat completion,
//! text completion and embeddings requests, and every document the API answers with.
//!
//! Here rather than in `edgellm-protocol`: that crate holds the daemon's own messages, which
//! every transport and the pipeline share; these are one transport's foreign format, which
//! the HTTP transport translates onto those messages and nothing below it may depend on.
//!
//! Requests are decoded leniently, then checked strictly. Unknown fields are ignored (OpenAI's
//! clients send many). Every known field decodes as a [`Field`], which keeps a value of the
//! wrong type instead of failing, so that the check afterwards refuses it by the field's name:
//! serde's own message would name the expected type, not the field, and quote the value.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Number;

use edgellm_protocol::{Conversation, Done, ErrorCode, FinishReason, Rejection, SafetyReport, Timings};
use edgellm_text::grounding::{Entity, SourceRef};

/// At most this many stop strings per request (as OpenAI's API), each as long as a
/// configured one may be.
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_BYTES: usize = 64;

/// At most this many inputs per embedding request.
pub const MAX_EMBED_INPUTS: usize = 64;

/// Why a request body does not fit the OpenAI format. Messages name fields, never values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("invalid request: {0}")]
    Shape(String),
    #[error("`messages` must be a non-empty array")]
    Messages,
    #[error("every message needs a `role`")]
    MissingRole,
    #[error("only system, developer, user and assistant messages are supported")]
    UnsupportedRole,
    #[error("the last message must be the user's")]
    LastNotUser,
    #[error("`content` must be a string or an array of text parts")]
    Content,
    #[error("only text content parts are supported")]
    ContentPart,
    #[error("`prompt` must be a string")]
    Prompt,
    #[error("only `n` = 1 is supported")]
    N,
    #[error("`model` must be a string")]
    Model,
    #[error("`stop` must be a string or an array of strings")]
    Stop,
    #[error("`stop` takes at most {MAX_STOP} non-empty strings of at most {MAX_STOP_BYTES} bytes")]
    StopLimits,
    #[error("`stream` must be true or false")]
    Stream,
    #[error("`stream_options` must be an object whose `include_usage` is true or false")]
    StreamOptions,
    #[error("`{0}` must be a number")]
    NotANumber(&'static str),
    #[error("`input` must be a string or an array of strings")]
    Input,
    #[error("`input` takes 1 to {MAX_EMBED_INPUTS} non-empty strings")]
    InputCount,
    #[error("`encoding_format` must be \"float\" or \"base64\"")]
    EncodingFormat,
}

/// A request body as `T`. A refusal never quotes the body: serde's syntax errors name a
/// position, which is dropped, and type errors do not arise, every known field being a
/// [`Field`].
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, InvalidRequest> {
    let without_position = |e: serde_json::Error| {
        let what = e.to_string();
        what.split(" at line").next().unwrap_or("invalid JSON").to_string()
    };
    // Checked first: serde would take an array for a struct, its fields by position.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => InvalidRequest::NotAnObject,
            Err(e) => InvalidRequest::Json(without_position(e)),
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            // A field given twice; its name is ours, not the client's. Anything else is
            // summed up rather than quoted.
            let what = without_position(e);
            if what.starts_with("duplicate field `") {
                InvalidRequest::Shape(what)
            } else {
                InvalidRequest::Shape("a field does not have its expected shape".into())
            }
        }
        _ => InvalidRequest::Json(without_position(e)),
    })
}

/// A known field as the client sent it: of the expected type, or anything else, to be refused
/// by name. Absent and `null` are `None` around it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Field<T> {
    Valid(T),
    Invalid(IgnoredAny),
}

impl<T> Field<T> {
    fn valid(&self) -> Option<&T> {
        match self {
            Field::Valid(v) => Some(v),
            Field::Invalid(_) => None,
        }
    }
}

/// An optional field's value, or `wrong` when it has the wrong type.
fn checked<T: Clone>(field: &Option<Field<T>>, wrong: InvalidRequest) -> Result<Option<T>, InvalidRequest> {
    match field {
        None => Ok(None),
        Some(Field::Valid(v)) => Ok(Some(v.clone())),
        Some(Field::Invalid(_)) => Err(wrong),
    }
}

/// A string or an array of strings, as `stop`, `prompt` and `input` take them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(list) => list,
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Option<Field<Vec<Field<ChatMessage>>>>,
    #[serde(flatten)]
    pub options: CompletionOptions,
}

/// One of `messages`. A message that is not an object is one without a role.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: Option<Field<Role>>,
    pub content: Option<Field<MessageContent>>,
}

/// Who speaks a message; both `system` and the newer `developer` set the system turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    /// `tool`, `function` and whatever comes next: refused.
    #[serde(other)]
    Other,
}

/// A message's `content`: a string, or an array of parts of which only text is taken.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Field<ContentPart>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
}

impl ChatMessage {
    /// The text of `content`: absent is empty, parts are joined.
    fn text(&self) -> Result<String, InvalidRequest> {
        match &self.content {
            None => Ok(String::new()),
            Some(Field::Valid(MessageContent::Text(text))) => Ok(text.clone()),
            Some(Field::Valid(MessageContent::Parts(parts))) => parts
                .iter()
                .map(|part| match part {
                    Field::Valid(ContentPart::Text { text }) => Ok(text.as_str()),
                    Field::Invalid(_) => Err(InvalidRequest::ContentPart),
                })
                .collect(),
            Some(Field::Invalid(_)) => Err(InvalidRequest::Content),
        }
    }

    fn role(&self) -> Option<Role> {
        self.role.as_ref().and_then(Field::valid).copied()
    }
}

impl ChatCompletionRequest {
    /// `messages` as the pipeline takes them: system messages (joined) as the system turn,
    /// the earlier user and assistant messages as the conversation's turns, the last user
    /// message as the prompt. System messages are dropped unless `accept_system`.
    pub fn conversation(&self, accept_system: bool) -> Result<(String, Option<Conversation>), InvalidRequest> {
        let Some((last, earlier)) = self.messages.as_ref().and_then(Field::valid).and_then(|m| m.split_last()) else {
            return Err(InvalidRequest::Messages);
        };
        let mut systems: Vec<String> = Vec::new();
        let mut turns: Vec<(String, String)> = Vec::new();
        let mut pending_user: Option<String> = None;
        for message in earlier {
            let Some(message) = message.valid() else { return Err(InvalidRequest::MissingRole) };
            let text = message.text()?;
            match message.role() {
                Some(Role::System | Role::Developer) => systems.push(text),
                Some(Role::User) => {
                    pending_user = Some(match pending_user.take() {
                        Some(before) => format!("{before}\n\n{text}"),
                        None => text,
                    });
                }
                Some(Role::Assistant) => match (pending_user.take(), turns.last_mut()) {
                    (None, Some(previous)) => {
                        previous.1.push_str("\n\n");
                        previous.1.push_str(&text);
                    }
                    (user, _) => turns.push((user.unwrap_or_default(), text)),
                },
                Some(Role::Other) => return Err(InvalidRequest::UnsupportedRole),
                None => return Err(InvalidRequest::MissingRole),
            }
        }
        let Some(last) = last.valid().filter(|m| m.role() == Some(Role::User)) else {
            return Err(InvalidRequest::LastNotUser);
        };
        let last_text = last.text()?;
        let prompt = match pending_user {
            Some(before) => format!("{before}\n\n{last_text}"),
            None => last_text,
        };
        let system = (accept_system && !systems.is_empty()).then(|| systems.join("\n\n"));
        let conversation = (system.is_some() || !turns.is_empty()).then_some(Conversation { system, turns });
        Ok((prompt, conversation))
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Option<Field<OneOrMany>>,
    #[serde(flatten)]
    pub options: CompletionOptions,
}

impl CompletionRequest {
    /// `prompt`: a string, or an array of exactly one (a batch of prompts is not supported).
    pub fn prompt(&self) -> Result<String, InvalidRequest> {
        match self.prompt.as_ref().and_then(Field::valid) {
            Some(OneOrMany::One(prompt)) => Ok(prompt.clone()),
            Some(OneOrMany::Many(prompts)) if prompts.len() == 1 => Ok(prompts[0].clone()),
            _ => Err(InvalidRequest::Prompt),
        }
    }
}

/// The fields chat and text completions share.
#[derive(Debug, Default, Deserialize)]
pub struct CompletionOptions {
    /// Any name is answered by the one model; only its type is checked.
    pub model: Option<Field<String>>,
    /// Integers stay as sent (negative, fractional, past `u64`): their ranges are checked where
    /// a socket request's are, by the protocol's parser.
    pub max_tokens: Option<Field<Number>>,
    pub max_completion_tokens: Option<Field<Number>>,
    pub temperature: Option<Field<f64>>,
    pub top_p: Option<Field<f64>>,
    pub seed: Option<Field<Number>>,
    pub n: Option<Field<u64>>,
    pub stream: Option<Field<bool>>,
    pub stream_options: Option<Field<StreamOptions>>,
    pub stop: Option<Field<OneOrMany>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// A last chunk, with no choices, carries the usage.
    pub include_usage: Option<bool>,
}

/// [`CompletionOptions`] checked for type and for what this API supports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionSettings {
    /// `max_completion_tokens`, or else the older `max_tokens`.
    pub max_tokens: Option<Number>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<Number>,
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<String>,
}

impl CompletionOptions {
    pub fn settings(&self) -> Result<CompletionSettings, InvalidRequest> {
        if checked(&self.n, InvalidRequest::N)?.is_some_and(|n| n != 1) {
            return Err(InvalidRequest::N);
        }
        checked(&self.model, InvalidRequest::Model)?;
        let stop = checked(&self.stop, InvalidRequest::Stop)?.map(OneOrMany::into_vec).unwrap_or_default();
        if stop.len() > MAX_STOP || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(InvalidRequest::StopLimits);
        }
        let stream_options = checked(&self.stream_options, InvalidRequest::StreamOptions)?.unwrap_or_default();
        let stream = checked(&self.stream, InvalidRequest::Stream)?.unwrap_or(false);
        let number = |name| InvalidRequest::NotANumber(name);
        let max_completion_tokens = checked(&self.max_completion_tokens, number("max_completion_tokens"))?;
        let max_tokens = checked(&self.max_tokens, number("max_tokens"))?;
        Ok(CompletionSettings {
            max_tokens: max_completion_tokens.or(max_tokens),
            temperature: checked(&self.temperature, number("temperature"))?,
            top_p: checked(&self.top_p, number("top_p"))?,
            seed: checked(&self.seed, number("seed"))?,
            stream,
            include_usage: stream_options.include_usage.unwrap_or(false),
            stop,
        })
    }
}

/// `POST /v1/embeddings`. `model` is not read: there is one embedding model.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: Option<Field<OneOrMany>>,
    pub encoding_format: Option<Field<EncodingFormat>>,
}

/// How the vectors are sent: JSON numbers, or the `f32`s' little-endian bytes in base64 (the
/// `openai` package asks for that by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

impl EmbeddingsRequest {
    /// `input` as 1 to [`MAX_EMBED_INPUTS`] non-empty strings (token arrays are not taken).
    pub fn inputs(&self) -> Result<Vec<String>, InvalidRequest> {
        let inputs = checked(&self.input, InvalidRequest::Input)?.ok_or(InvalidRequest::Input)?.into_vec();
        if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS || inputs.iter().any(String::is_empty) {
            return Err(InvalidRequest::InputCount);
        }
        Ok(inputs)
    }

    pub fn encoding_format(&self) -> Result<EncodingFormat, InvalidRequest> {
        Ok(checked(&self.encoding_format, InvalidRequest::EncodingFormat)?.unwrap_or_default())
    }
}

/// A document as JSON text. Serialising these types cannot fail (no maps with non-string
/// keys, no hand-written serialisers), so the fallback, an internal error, is never sent.
pub fn to_json(document: &impl Serialize) -> String {
    serde_json::to_string(document).unwrap_or_else(|_| INTERNAL_ERROR.to_string())
}

const INTERNAL_ERROR: &str =
    r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal"}}"#;

/// `{"error": {...}}`: OpenAI's fields, with the daemon's stable code as `code`.
#[derive(Debug, Serialize)]
pub struct ErrorResponse<'a> {
    pub error: ErrorObject<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `null`: messages name the field instead.
    pub param: Option<&'a str>,
    pub code: ErrorCode,
}

impl<'a> ErrorResponse<'a> {
    pub fn new(rejection: &'a Rejection) -> Self {
        let kind = match rejection.code {
            ErrorCode::BadRequest | ErrorCode::TooLong | ErrorCode::Blocked => "invalid_request_error",
            ErrorCode::Busy => "rate_limit_error",
            ErrorCode::Forbidden => "permission_error",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Timeout | ErrorCode::ShuttingDown | ErrorCode::Internal => "server_error",
        };
        ErrorResponse { error: ErrorObject { message: &rejection.message, kind, param: None, code: rejection.code } }
    }
}

/// `GET /v1/models/{id}`, and each entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl<'a> Model<'a> {
    pub fn new(id: &'a str) -> Self {
        Model { id, object: "model", created: 0, owned_by: "edgellm" }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

impl<'a> ModelList<'a> {
    pub fn new(data: Vec<Model<'a>>) -> Self {
        ModelList { object: "list", data }
    }
}

/// What a completion document is, in its `object` field. Streamed text completions keep
/// the name of the whole one, as OpenAI's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
    #[serde(rename = "text_completion")]
    TextCompletion,
}

/// A chat or text completion, whole or one chunk of a stream: the envelope around the choices
/// (`C` is one of [`ChatChoice`], [`ChatChunkChoice`], [`TextChoice`]).
#[derive(Debug, Serialize)]
pub struct Completion<'a, C> {
    pub id: &'a str,
    pub object: CompletionObject,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<C>,
    /// Whole answers, and the last chunk when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The pipeline's extras: whole answers, and the chunk with the finish reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edgellm: Option<Extras<'a>>,
}

/// OpenAI's `logprobs`, always `null`: no log probabilities are computed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NoLogprobs;

#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: NoLogprobs,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: Role,
    pub content: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    /// `null` until the last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// What a chunk adds to the message: the role in the first, text in the others, nothing in
/// the last.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

/// A text completion's choice, whole or streamed.
#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub logprobs: NoLogprobs,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<&Done> for Usage {
    fn from(done: &Done) -> Self {
        let u = &done.usage;
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The pipeline's extras, under `edgellm` (OpenAI's clients keep unknown fields).
#[derive(Debug, Serialize)]
pub struct Extras<'a> {
    pub sources: &'a [SourceRef],
    pub safety: &'a SafetyReport,
    pub timings: &'a Timings,
    pub entities: &'a [Entity],
    pub cached: bool,
}

impl<'a> From<&'a Done> for Extras<'a> {
    fn from(done: &'a Done) -> Self {
        Extras {
            sources: &done.sources,
            safety: &done.safety,
            timings: &done.timings,
            entities: &done.entities,
            cached: done.cached,
        }
    }
}

/// `POST /v1/embeddings`'s answer.
#[derive(Debug, Serialize)]
pub struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

impl<'a> EmbeddingList<'a> {
    pub fn new(data: Vec<Embedding>, model: &'a str, tokens: usize) -> Self {
        EmbeddingList {
            object: "list",
            data,
            model,
            usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// One embedding in the encoding the request asked for.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

impl Embedding {
    pub fn new(index: usize, embedding: Vector) -> Self {
        Embedding { object: "embedding", index, embedding }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn chat(body: Value) -> ChatCompletionRequest {
        decode(body.to_string().as_bytes()).unwrap()
    }

    fn messages_as_conversation(
        messages: Value,
        accept_system: bool,
    ) -> Result<(String, Option<Conversation>), InvalidRequest> {
        chat(json!({ "messages": messages })).conversation(accept_system)
    }

    #[test]
    fn messages_map_onto_system_turns_and_prompt() {
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
        ]);
        let (prompt, conversation) = messages_as_conversation(messages, true).unwrap();
        assert_eq!(prompt, "What is my name?");
        let c = conversation.unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!(c.turns, vec![("My name is Ada.".to_string(), "Hello Ada.".to_string())]);
        let (_, ignored) = messages_as_conversation(
            json!([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]),
            false,
        )
        .unwrap();
        assert!(ignored.is_none(), "system messages ignored when not accepted");
    }

    #[test]
    fn consecutive_messages_of_one_side_are_joined() {
        let (prompt, c) = messages_as_conversation(
            json!([
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "assistant", "content": "c"},
                {"role": "user", "content": "d"},
                {"role": "user", "content": null},
            ]),
            true,
        )
        .unwrap();
        assert_eq!(prompt, "d\n\n");
        assert_eq!(c.unwrap().turns, vec![("a".to_string(), "b\n\nc".to_string())]);
    }

    #[test]
    fn bad_messages_are_refused_by_what_is_wrong() {
        let cases = [
            (json!([]), InvalidRequest::Messages),
            (json!("hi"), InvalidRequest::Messages),
            (json!(null), InvalidRequest::Messages),
            (json!([{"role": "assistant", "content": "hi"}]), InvalidRequest::LastNotUser),
            (json!(["hi"]), InvalidRequest::LastNotUser),
            (
                json!([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}]),
                InvalidRequest::UnsupportedRole,
            ),
            (json!([{"content": "x"}, {"role": "user", "content": "hi"}]), InvalidRequest::MissingRole),
            (json!([{"role": 5, "content": "x"}, {"role": "user", "content": "hi"}]), InvalidRequest::MissingRole),
            (json!([7, {"role": "user", "content": "hi"}]), InvalidRequest::MissingRole),
            (json!([{"role": "user", "content": 5}]), InvalidRequest::Content),
            (
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
                InvalidRequest::ContentPart,
            ),
            (json!([{"role": "user", "content": [{"type": "text", "text": 5}]}]), InvalidRequest::ContentPart),
        ];
        for (messages, expected) in cases {
            assert_eq!(messages_as_conversation(messages.clone(), true).unwrap_err(), expected, "{messages}");
        }
        assert_eq!(chat(json!({})).conversation(true).unwrap_err(), InvalidRequest::Messages);
    }

    fn settings(fields: Value) -> Result<CompletionSettings, InvalidRequest> {
        chat(fields).options.settings()
    }

    #[test]
    fn stop_takes_a_string_or_up_to_four() {
        assert_eq!(settings(json!({"stop": "\n"})).unwrap().stop, vec!["\n"]);
        assert_eq!(settings(json!({"stop": ["a", "b"]})).unwrap().stop.len(), 2);
        assert_eq!(settings(json!({"stop": null})).unwrap().stop, Vec::<String>::new());
        assert_eq!(settings(json!({"stop": ["a", "b", "c", "d", "e"]})), Err(InvalidRequest::StopLimits));
        assert_eq!(settings(json!({"stop": [""]})), Err(InvalidRequest::StopLimits));
        assert_eq!(settings(json!({"stop": ["x".repeat(MAX_STOP_BYTES + 1)]})), Err(InvalidRequest::StopLimits));
        assert_eq!(settings(json!({"stop": 3})), Err(InvalidRequest::Stop));
        assert_eq!(settings(json!({"stop": ["a", 3]})), Err(InvalidRequest::Stop));
    }

    #[test]
    fn settings_take_the_openai_fields() {
        let s = settings(json!({
            "model": "gpt-4o", "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0,
            "top_p": 0.5, "seed": 7, "n": 1, "stream": true, "stream_options": {"include_usage": true},
            "user": "extra fields are ignored", "logit_bias": {"1": 2},
        }))
        .unwrap();
        assert_eq!(s.max_tokens, Some(Number::from(20)), "max_completion_tokens wins");
        assert_eq!((s.temperature, s.top_p), (Some(0.0), Some(0.5)));
        assert_eq!(s.seed, Some(Number::from(7)));
        assert!(s.stream && s.include_usage);
        assert_eq!(settings(json!({"max_tokens": 10})).unwrap().max_tokens, Some(Number::from(10)));
        // Out-of-range integers are the protocol's to refuse, as sent.
        assert_eq!(settings(json!({"max_tokens": -1})).unwrap().max_tokens, Some(Number::from(-1)));
        assert_eq!(settings(json!({"n": null, "model": null, "stream": null})), Ok(CompletionSettings::default()));
    }

    #[test]
    fn a_wrong_type_is_refused_by_the_field_name_without_the_value() {
        let cases = [
            (json!({"n": 2}), "`n`"),
            (json!({"n": 1.5}), "`n`"),
            (json!({"model": 7}), "`model`"),
            (json!({"stream": "secret"}), "`stream`"),
            (json!({"stream_options": "secret"}), "`stream_options`"),
            (json!({"stream_options": {"include_usage": "secret"}}), "`stream_options`"),
            (json!({"max_tokens": "secret"}), "`max_tokens`"),
            (json!({"max_completion_tokens": "secret"}), "`max_completion_tokens`"),
            (json!({"temperature": "secret"}), "`temperature`"),
            (json!({"top_p": ["secret"]}), "`top_p`"),
            (json!({"seed": {"secret": 1}}), "`seed`"),
            (json!({"stop": {"secret": "secret"}}), "`stop`"),
        ];
        for (fields, name) in cases {
            let message = settings(fields.clone()).unwrap_err().to_string();
            assert!(message.contains(name), "{fields}: {message}");
            assert!(!message.contains("secret"), "{fields}: {message}");
        }
    }

    #[test]
    fn text_prompt_is_one_string() {
        let prompt = |body: Value| decode::<CompletionRequest>(body.to_string().as_bytes()).unwrap().prompt();
        assert_eq!(prompt(json!({"prompt": "Hi"})).unwrap(), "Hi");
        assert_eq!(prompt(json!({"prompt": ["Hi"]})).unwrap(), "Hi");
        for bad in [json!({}), json!({"prompt": ["a", "b"]}), json!({"prompt": 3}), json!({"prompt": [[1, 2]]})] {
            assert_eq!(prompt(bad.clone()), Err(InvalidRequest::Prompt), "{bad}");
        }
    }

    #[test]
    fn embeddings_take_strings_and_an_encoding() {
        let request = |body: Value| decode::<EmbeddingsRequest>(body.to_string().as_bytes()).unwrap();
        assert_eq!(request(json!({"input": "a"})).inputs().unwrap(), vec!["a"]);
        assert_eq!(request(json!({"input": ["a", "b"], "model": 1})).inputs().unwrap().len(), 2);
        assert_eq!(request(json!({"input": []})).inputs(), Err(InvalidRequest::InputCount));
        assert_eq!(request(json!({"input": ["a", ""]})).inputs(), Err(InvalidRequest::InputCount));
        assert_eq!(
            request(json!({"input": vec!["a"; MAX_EMBED_INPUTS + 1]})).inputs(),
            Err(InvalidRequest::InputCount)
        );
        assert_eq!(request(json!({"input": [1, 2]})).inputs(), Err(InvalidRequest::Input));
        assert_eq!(request(json!({})).inputs(), Err(InvalidRequest::Input));
        assert_eq!(request(json!({})).encoding_format(), Ok(EncodingFormat::Float));
        assert_eq!(request(json!({"encoding_format": "base64"})).encoding_format(), Ok(EncodingFormat::Base64));
        assert_eq!(request(json!({"encoding_format": "hex"})).encoding_format(), Err(InvalidRequest::EncodingFormat));
    }

    #[test]
    fn bodies_that_are_not_objects_or_not_json_are_refused_without_quoting() {
        let refusal = |body: &str| decode::<ChatCompletionRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(refusal("[1]"), InvalidRequest::NotAnObject);
        assert_eq!(refusal(r#"["secret", "x"]"#), InvalidRequest::NotAnObject);
        assert_eq!(refusal(r#" "secret" "#), InvalidRequest::NotAnObject);
        assert_eq!(refusal(""), InvalidRequest::Json("EOF while parsing a value".into()));
        for body in ["{not json", r#"{"messages": "secret"#, r#"{"a": 1} secret"#, "[secret"] {
            let message = refusal(body).to_string();
            assert!(message.starts_with("invalid JSON: ") && !message.contains("secret"), "{body}: {message}");
            assert!(!message.contains("line"), "no position: {message}");
        }
        let twice = refusal(r#"{"messages": [], "messages": []}"#);
        assert_eq!(twice, InvalidRequest::Shape("duplicate field `messages`".into()));
    }

    #[test]
    fn answers_have_openai_shapes() {
        let rejection = Rejection::new(ErrorCode::Blocked, "blocked by safety rule `x`");
        let error: Value = serde_json::from_str(&to_json(&ErrorResponse::new(&rejection))).unwrap();
        assert_eq!(
            error,
            json!({"error": {"message": "blocked by safety rule `x`", "type": "invalid_request_error",
                             "param": null, "code": "blocked"}})
        );
        let chunk = Completion {
            id: "chatcmpl-1",
            object: CompletionObject::ChatCompletionChunk,
            created: 3,
            model: "m",
            choices: vec![ChatChunkChoice {
                index: 0,
                delta: Delta { role: Some(Role::Assistant), content: Some("") },
                finish_reason: None,
            }],
            usage: None,
            edgellm: None,
        };
        let chunk: Value = serde_json::from_str(&to_json(&chunk)).unwrap();
        assert_eq!(
            chunk,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 3, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        );
        let text =
            TextChoice { index: 0, text: "Paris", logprobs: NoLogprobs, finish_reason: Some(FinishReason::Stop) };
        assert_eq!(
            serde_json::to_value(&text).unwrap(),
            json!({"index": 0, "text": "Paris", "logprobs": null, "finish_reason": "stop"})
        );
        let models = serde_json::to_value(ModelList::new(vec![Model::new("smol")])).unwrap();
        assert_eq!(
            models,
            json!({"object": "list", "data": [{"id": "smol", "object": "model", "created": 0, "owned_by": "edgellm"}]})
        );
        let list = EmbeddingList::new(
            vec![Embedding::new(0, Vector::Float(vec![0.5])), Embedding::new(1, Vector::Base64("AA==".into()))],
            "mini",
            4,
        );
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({"object": "list", "model": "mini", "usage": {"prompt_tokens": 4, "total_tokens": 4},
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.5]},
                            {"object": "embedding", "index": 1, "embedding": "AA=="}]})
        );
    }
}
