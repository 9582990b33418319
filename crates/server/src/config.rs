//! The one TOML configuration file: typed, strict (unknown keys are errors) and validated with
//! errors that name the key. The documented default is embedded (`config/edgellm.toml`).
//!
//! Every capacity the daemon has comes from here; [`Config::memory_budget`] adds them up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use edgellm_engine::EngineOptions;
pub use edgellm_pipeline::{GenerationConfig, LimitsConfig, PipelineConfig};
pub use edgellm_text::grounding::GroundingConfig;
pub use edgellm_text::safety::SafetyConfig;

/// The documented default configuration, as shipped in `/etc/edgellm/edgellm.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/edgellm.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A file or directory the daemon will open is missing or unreadable.
    #[error("`{key}`: cannot open {path}: {reason}")]
    Missing { key: &'static str, path: PathBuf, reason: String },
}

/// The file (or directory) at `path` must be readable; `key` names the setting it comes from.
fn must_open(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let missing = |reason: String| ConfigError::Missing { key, path: path.into(), reason };
    let meta = std::fs::metadata(path).map_err(|e| missing(e.to_string()))?;
    if meta.is_dir() {
        std::fs::read_dir(path).map(drop).map_err(|e| missing(e.to_string()))
    } else {
        std::fs::File::open(path).map(drop).map_err(|e| missing(e.to_string()))
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this device in MQTT topics and health reports; empty means the host name.
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub generation: GenerationConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub grounding: GroundingConfig,
    #[serde(default)]
    pub safety: SafetyConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub socket: SocketConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Directory holding manifest.json, the ONNX file and tokenizer.json. Empty: the first of
    /// $EDGELLM_MODEL_DIR, ./models/smollm2 and /usr/share/edgellm/models/smollm2 that exists.
    pub dir: PathBuf,
    /// Threads for matrix products.
    pub threads: usize,
    /// Hard limit on prompt + answer tokens (the KV cache is sized by it).
    pub context_tokens: usize,
    /// Keep the KV state of the system prompt between requests.
    pub reuse_prefix: bool,
    /// Prompt tokens run through the model per step; bounds the activation memory.
    pub prefill_chunk_tokens: usize,
    /// Keep the decluttered model between starts (tract NNEF, about the model file's size):
    /// later starts skip parsing the ONNX graph.
    pub compiled_cache: bool,
    /// Empty: $CACHE_DIRECTORY (systemd's CacheDirectory=), else $XDG_CACHE_HOME/edgellm,
    /// else ~/.cache/edgellm.
    pub compiled_cache_dir: PathBuf,
}

impl ModelConfig {
    /// Where the compiled-model cache lives, `None` when it is off or no place is known.
    pub fn compiled_cache_dir(&self) -> Option<PathBuf> {
        if !self.compiled_cache {
            return None;
        }
        if !self.compiled_cache_dir.as_os_str().is_empty() {
            return Some(self.compiled_cache_dir.clone());
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        // systemd may pass several directories separated by ':'; the first is ours.
        if let Some(dirs) = var("CACHE_DIRECTORY") {
            return dirs.to_str().and_then(|d| d.split(':').next()).map(PathBuf::from);
        }
        var("XDG_CACHE_HOME").map(|d| d.join("edgellm")).or_else(|| var("HOME").map(|h| h.join(".cache/edgellm")))
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dir: PathBuf::new(),
            threads: 2,
            context_tokens: 2048,
            reuse_prefix: true,
            prefill_chunk_tokens: 64,
            compiled_cache: true,
            compiled_cache_dir: PathBuf::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests waiting for the inference worker; past it senders get `busy`.
    pub capacity: usize,
    /// On SIGTERM, how long in-flight work may take before it is answered `shutting_down`.
    pub drain_timeout_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { capacity: 8, drain_timeout_ms: 20_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    pub enabled: bool,
    pub path: PathBuf,
    /// File mode of the socket, octal as a string ("0660").
    pub mode: String,
    /// When either is non-empty, only these peer uids or gids may connect (list 0 for root).
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub max_connections: usize,
    pub max_line_bytes: usize,
    /// Requests one connection may have in flight at once.
    pub max_inflight_per_connection: usize,
    /// Once a line has begun, the rest must arrive within this (a client that stalls mid-line
    /// is answered `timeout` and closed, so it cannot hold a connection slot).
    pub line_timeout_ms: u64,
    /// A connection with nothing in flight and no line begun is closed after this.
    pub idle_timeout_ms: u64,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            enabled: true,
            path: PathBuf::from("/run/edgellm/edgellm.sock"),
            mode: "0660".into(),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            max_connections: 16,
            max_line_bytes: 65_536,
            max_inflight_per_connection: 4,
            line_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl SocketConfig {
    pub fn mode_bits(&self) -> Result<u32, ConfigError> {
        let digits = self.mode.trim_start_matches("0o");
        let bits =
            u32::from_str_radix(digits, 8).map_err(|_| invalid("socket.mode", "must be octal, like \"0660\""))?;
        if bits > 0o777 {
            return Err(invalid("socket.mode", "must be at most 0777"));
        }
        Ok(bits)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Empty means `edgellm-<device_id>`.
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// Read the password from this file instead (keeps it out of the config).
    pub password_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    /// Empty means `edgellm/<device_id>`.
    pub topic_prefix: String,
    pub qos: u8,
    /// When set, prompts are read through `$share/<group>/<prefix>/prompt`.
    pub shared_group: String,
    /// Keep the session (and queued QoS 1 prompts) across reconnects.
    pub persistent_session: bool,
    pub session_expiry_secs: u32,
    pub max_payload_bytes: usize,
    /// Replies kept while the broker is away; past it the oldest are dropped and counted.
    pub reply_buffer: usize,
    /// Request ids remembered to recognise duplicate deliveries.
    pub dedup_window: usize,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub tls: Option<TlsConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: None,
            keep_alive_secs: 30,
            topic_prefix: String::new(),
            qos: 1,
            shared_group: String::new(),
            persistent_session: true,
            session_expiry_secs: 3600,
            max_payload_bytes: 65_536,
            reply_buffer: 64,
            dedup_window: 256,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            tls: None,
        }
    }
}

/// The OpenAI-compatible HTTP API: HTTP/1.1 on a Unix socket of its own, with the prompt
/// socket's mode and peer-credential allow-lists (`[socket]`); TCP only when `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Empty: `http.sock` beside `socket.path` (`/run/edgellm/http.sock` by default).
    pub path: PathBuf,
    /// `"127.0.0.1:8080"` also serves the API over TCP, with no peer checks. Empty: off.
    pub listen: String,
    pub max_connections: usize,
    /// Largest request body; a larger one is answered 413 before it is read.
    pub max_body_bytes: usize,
    /// A request's headers and body must arrive within this.
    pub read_timeout_ms: u64,
    /// Whether a client's `system` messages replace the configured system prompt (else they
    /// are ignored).
    pub accept_system_messages: bool,
    /// Serve `POST /v1/embeddings`: it loads a MiniLM instance of its own on first use
    /// (counted in the memory budget); false answers 404 and never loads it.
    pub embeddings: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            path: PathBuf::new(),
            listen: String::new(),
            max_connections: 16,
            max_body_bytes: 262_144,
            read_timeout_ms: 10_000,
            accept_system_messages: true,
            embeddings: true,
        }
    }
}

impl HttpConfig {
    /// Where the HTTP socket is: `path`, else `http.sock` in the prompt socket's directory.
    pub fn socket_path(&self, socket: &SocketConfig) -> PathBuf {
        if !self.path.as_os_str().is_empty() {
            return self.path.clone();
        }
        socket.path.parent().map(|dir| dir.join("http.sock")).unwrap_or_else(|| PathBuf::from("http.sock"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub interval_secs: u64,
    /// RSS above this many MiB makes the daemon `degraded` (0 = off).
    pub memory_degraded_mib: u64,
    /// Decode speed below this many tokens/s makes it `degraded` (0 = off).
    pub min_tokens_per_second: f64,
    /// Publish Home Assistant MQTT discovery messages for the main figures.
    pub home_assistant: bool,
    pub home_assistant_prefix: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: 30,
            memory_degraded_mib: 0,
            min_tokens_per_second: 0.0,
            home_assistant: false,
            home_assistant_prefix: "homeassistant".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// tracing filter, e.g. "info" or "edgellm=debug"; RUST_LOG overrides it.
    pub level: String,
    /// Log prompt and answer text at debug level. Off by default: user text stays private.
    pub log_user_text: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: "info".into(), log_user_text: false }
    }
}

/// The first candidate directory that holds a prepared model (a manifest), else the first
/// candidate, so that the error names where the model was expected.
fn first_prepared(candidates: impl IntoIterator<Item = PathBuf>) -> PathBuf {
    let mut first = None;
    for candidate in candidates {
        if candidate.join("manifest.json").exists() {
            return candidate;
        }
        first.get_or_insert(candidate);
    }
    first.unwrap_or_default()
}

/// Where the default model is looked for, in order.
fn default_model_dir() -> PathBuf {
    first_prepared(
        std::env::var_os("EDGELLM_MODEL_DIR")
            .map(PathBuf::from)
            .into_iter()
            .chain([PathBuf::from("models/smollm2"), PathBuf::from("/usr/share/edgellm/models/smollm2")]),
    )
}

/// Where the embedding model is looked for: $EDGELLM_EMBEDDING_DIR, then `minilm` beside the
/// LLM's directory, then the usual places.
fn default_embedding_dir(model_dir: &Path) -> PathBuf {
    first_prepared(
        std::env::var_os("EDGELLM_EMBEDDING_DIR")
            .map(PathBuf::from)
            .into_iter()
            .chain(model_dir.parent().map(|p| p.join("minilm")))
            .chain([PathBuf::from("models/minilm"), PathBuf::from("/usr/share/edgellm/models/minilm")]),
    )
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn default_config() -> Config {
        Self::from_toml(DEFAULT_CONFIG).expect("the embedded default config is valid")
    }

    /// Checks every value and fills the derived defaults (device id, topic prefix, client id).
    pub fn validate(mut self) -> Result<Config, ConfigError> {
        if self.device_id.is_empty() {
            self.device_id =
                nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "edgellm".into());
        }
        if !self.device_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(invalid("device_id", "only letters, digits, '-', '_' and '.' (it is used in MQTT topics)"));
        }
        if self.model.dir.as_os_str().is_empty() {
            self.model.dir = default_model_dir();
        }
        let m = &self.model;
        if m.threads == 0 || m.threads > 64 {
            return Err(invalid("model.threads", "must be between 1 and 64"));
        }
        if !(16..=32_768).contains(&m.context_tokens) {
            return Err(invalid("model.context_tokens", "must be between 16 and 32768"));
        }
        if !(1..=1024).contains(&m.prefill_chunk_tokens) {
            return Err(invalid("model.prefill_chunk_tokens", "must be between 1 and 1024"));
        }
        let g = &self.generation;
        if g.max_new_tokens == 0 || g.max_new_tokens > g.max_new_tokens_limit {
            return Err(invalid(
                "generation.max_new_tokens",
                "must be at least 1 and at most generation.max_new_tokens_limit",
            ));
        }
        if g.max_new_tokens_limit >= m.context_tokens {
            return Err(invalid("generation.max_new_tokens_limit", "must be below model.context_tokens"));
        }
        if !(0.0..=5.0).contains(&g.temperature) || !g.temperature.is_finite() {
            return Err(invalid("generation.temperature", "must be between 0 and 5"));
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return Err(invalid("generation.top_p", "must be in (0, 1]"));
        }
        if !(1.0..=3.0).contains(&g.repetition_penalty) {
            return Err(invalid("generation.repetition_penalty", "must be between 1 and 3"));
        }
        if g.stop_strings.len() > 8 || g.stop_strings.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Err(invalid("generation.stop_strings", "at most 8 non-empty strings of at most 64 bytes"));
        }
        if g.request_timeout_ms == 0 {
            return Err(invalid("generation.request_timeout_ms", "must be positive"));
        }
        let l = &self.limits;
        if l.max_prompt_bytes == 0 || l.max_prompt_bytes > 1 << 20 {
            return Err(invalid("limits.max_prompt_bytes", "must be between 1 and 1048576"));
        }
        if l.max_prompt_tokens == 0 || l.max_prompt_tokens + g.max_new_tokens_limit > m.context_tokens {
            return Err(invalid(
                "limits.max_prompt_tokens",
                "must be positive and leave room for generation.max_new_tokens_limit within model.context_tokens",
            ));
        }
        let gr = &self.grounding;
        if gr.max_files > 100_000 || gr.max_chunks > 1_000_000 || gr.max_file_bytes > 64 << 20 {
            return Err(invalid("grounding.max_chunks", "grounding bounds are unreasonably large"));
        }
        if !(64..=8192).contains(&gr.chunk_bytes) {
            return Err(invalid("grounding.chunk_bytes", "must be between 64 and 8192"));
        }
        if gr.knowledge_token_budget + gr.history_token_budget >= l.max_prompt_tokens {
            return Err(invalid(
                "grounding.knowledge_token_budget",
                "knowledge and history budgets together must stay below limits.max_prompt_tokens",
            ));
        }
        if gr.sessions > 100_000 || gr.session_bytes > 1 << 20 {
            return Err(invalid("grounding.sessions", "at most 100000 sessions of at most 1 MiB"));
        }
        if gr.answer_cache_entries > 100_000 || gr.answer_cache_bytes > 256 << 20 {
            return Err(invalid("grounding.answer_cache_bytes", "at most 100000 entries and 256 MiB"));
        }
        let e = &mut self.grounding.embedding;
        if !(8..=512).contains(&e.max_tokens) {
            return Err(invalid("grounding.embedding.max_tokens", "must be between 8 and 512"));
        }
        if !(-1.0..=1.0).contains(&e.min_similarity) {
            return Err(invalid("grounding.embedding.min_similarity", "a cosine similarity, between -1 and 1"));
        }
        if e.candidates == 0 || e.candidates > 1000 {
            return Err(invalid("grounding.embedding.candidates", "must be between 1 and 1000"));
        }
        if !(e.rrf_k.is_finite() && e.rrf_k >= 0.0) {
            return Err(invalid("grounding.embedding.rrf_k", "must be zero or positive"));
        }
        if e.model_dir.as_ref().is_none_or(|d| d.as_os_str().is_empty()) {
            e.model_dir = Some(default_embedding_dir(&self.model.dir));
        }
        // Custom rules (an empty pattern, or one that matches the empty string, would match
        // everywhere), the blocklist file and the injection thresholds, each under its key.
        if let Err(e) = edgellm_text::safety::SafetyRules::new(&self.safety) {
            return Err(invalid(e.key(), e.to_string()));
        }
        if self.queue.capacity == 0 || self.queue.capacity > 4096 {
            return Err(invalid("queue.capacity", "must be between 1 and 4096"));
        }
        let s = &self.socket;
        s.mode_bits()?;
        if s.enabled && s.path.as_os_str().is_empty() {
            return Err(invalid("socket.path", "must not be empty"));
        }
        if s.path.as_os_str().len() > 100 {
            return Err(invalid("socket.path", "must be shorter than 100 bytes (sun_path limit)"));
        }
        if s.max_connections == 0 || s.max_connections > 4096 {
            return Err(invalid("socket.max_connections", "must be between 1 and 4096"));
        }
        if s.max_line_bytes < 256 || s.max_line_bytes > 16 << 20 {
            return Err(invalid("socket.max_line_bytes", "must be between 256 and 16777216"));
        }
        if s.max_inflight_per_connection == 0 {
            return Err(invalid("socket.max_inflight_per_connection", "must be positive"));
        }
        if !(100..=600_000).contains(&s.line_timeout_ms) {
            return Err(invalid("socket.line_timeout_ms", "must be between 100 and 600000"));
        }
        if !(100..=86_400_000).contains(&s.idle_timeout_ms) {
            return Err(invalid("socket.idle_timeout_ms", "must be between 100 and 86400000"));
        }
        let q = &mut self.mqtt;
        if q.client_id.is_empty() {
            q.client_id = format!("edgellm-{}", self.device_id);
        }
        if q.topic_prefix.is_empty() {
            q.topic_prefix = format!("edgellm/{}", self.device_id);
        }
        if q.topic_prefix.contains(['#', '+']) || q.topic_prefix.ends_with('/') {
            return Err(invalid("mqtt.topic_prefix", "no wildcards and no trailing '/'"));
        }
        if q.shared_group.contains(['#', '+', '/']) {
            return Err(invalid("mqtt.shared_group", "no wildcards or '/'"));
        }
        if q.qos > 2 {
            return Err(invalid("mqtt.qos", "must be 0, 1 or 2"));
        }
        if q.enabled && q.host.is_empty() {
            return Err(invalid("mqtt.host", "must not be empty"));
        }
        if q.keep_alive_secs < 5 {
            return Err(invalid("mqtt.keep_alive_secs", "must be at least 5"));
        }
        if q.max_payload_bytes < 256 || q.max_payload_bytes > 16 << 20 {
            return Err(invalid("mqtt.max_payload_bytes", "must be between 256 and 16777216"));
        }
        if q.reply_buffer == 0 || q.dedup_window == 0 {
            return Err(invalid("mqtt.reply_buffer", "mqtt.reply_buffer and mqtt.dedup_window must be positive"));
        }
        if q.reconnect_min_ms == 0 || q.reconnect_min_ms > q.reconnect_max_ms {
            return Err(invalid("mqtt.reconnect_min_ms", "must be positive and at most mqtt.reconnect_max_ms"));
        }
        if !q.password.is_empty() && q.password_file.is_some() {
            return Err(invalid("mqtt.password_file", "set either mqtt.password or mqtt.password_file"));
        }
        if let Some(tls) = &q.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            return Err(invalid("mqtt.tls.client_key", "client_cert and client_key go together"));
        }
        let h = &self.http;
        if h.socket_path(&self.socket).as_os_str().len() > 100 {
            return Err(invalid("http.path", "must be shorter than 100 bytes (sun_path limit)"));
        }
        if h.enabled && h.socket_path(&self.socket) == self.socket.path {
            return Err(invalid("http.path", "must differ from socket.path"));
        }
        if !h.listen.is_empty() && h.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("http.listen", "an address and port, like \"127.0.0.1:8080\", or empty"));
        }
        if h.max_connections == 0 || h.max_connections > 4096 {
            return Err(invalid("http.max_connections", "must be between 1 and 4096"));
        }
        if !(1024..=16 << 20).contains(&h.max_body_bytes) {
            return Err(invalid("http.max_body_bytes", "must be between 1024 and 16777216"));
        }
        if !(100..=600_000).contains(&h.read_timeout_ms) {
            return Err(invalid("http.read_timeout_ms", "must be between 100 and 600000"));
        }
        let ha = &self.health.home_assistant_prefix;
        if ha.is_empty() || ha.contains(['#', '+']) || ha.ends_with('/') {
            return Err(invalid("health.home_assistant_prefix", "a topic prefix without wildcards or trailing '/'"));
        }
        if self.health.interval_secs == 0 {
            return Err(invalid("health.interval_secs", "must be positive"));
        }
        if self.logging.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(invalid("logging.level", "not a valid tracing filter"));
        }
        Ok(self)
    }

    /// Every file `serve` cannot run without besides the models: the MQTT password file and
    /// TLS files. Checked before the model is loaded, so a typo fails at once (exit 3) instead
    /// of after a load of many seconds.
    pub fn check_service_files(&self) -> Result<(), ConfigError> {
        if !self.mqtt.enabled {
            return Ok(());
        }
        if let Some(path) = &self.mqtt.password_file {
            must_open("mqtt.password_file", path)?;
        }
        if let Some(tls) = &self.mqtt.tls {
            must_open("mqtt.tls.ca_file", &tls.ca_file)?;
            if let Some(cert) = &tls.client_cert {
                must_open("mqtt.tls.client_cert", cert)?;
            }
            if let Some(key) = &tls.client_key {
                must_open("mqtt.tls.client_key", key)?;
            }
        }
        Ok(())
    }

    /// The model files `serve` loads: the language model's manifest, weights and tokenizer,
    /// and the embedding model's when dense retrieval is on. `check-config` runs this too.
    pub fn check_model_files(&self) -> Result<(), ConfigError> {
        let dir = &self.model.dir;
        let (manifest, _) = edgellm_engine::ModelManifest::load(dir).map_err(|e| ConfigError::Missing {
            key: "model.dir",
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        must_open("model.dir", &manifest.model_path(dir))?;
        must_open("model.dir", &manifest.tokenizer_path(dir))?;
        let embedding = &self.grounding.embedding;
        if embedding.enabled
            && self.grounding.knowledge_dir.is_some()
            && let Some(dir) = &embedding.model_dir
        {
            let key = "grounding.embedding.model_dir";
            let manifest = edgellm_engine::EmbedderManifest::load(dir).map_err(|e| ConfigError::Missing {
                key,
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            must_open(key, &dir.join(&manifest.model_file))?;
            must_open(key, &dir.join(&manifest.tokenizer_file))?;
        }
        Ok(())
    }

    /// The engine's settings; `model_dir` overrides the config's (`--model-dir`).
    pub fn engine_options(&self, model_dir: Option<&Path>) -> EngineOptions {
        EngineOptions {
            model_dir: model_dir.map(Path::to_path_buf).unwrap_or_else(|| self.model.dir.clone()),
            threads: self.model.threads,
            context_tokens: self.model.context_tokens,
            reuse_prefix: self.model.reuse_prefix,
            prefill_chunk_tokens: self.model.prefill_chunk_tokens,
            compiled_cache_dir: self.model.compiled_cache_dir(),
        }
    }

    /// The sections the pipeline reads.
    pub fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            generation: self.generation.clone(),
            limits: self.limits.clone(),
            grounding: self.grounding.clone(),
            safety: self.safety.clone(),
        }
    }

    /// Files the daemon runs without, `degraded`, when they cannot be opened (the knowledge
    /// directory): `check-config` warns about them.
    pub fn check_optional_files(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Some(dir) = &self.grounding.knowledge_dir
            && let Err(e) = must_open("grounding.knowledge_dir", dir)
        {
            problems.push(e);
        }
        problems
    }

    /// Reads the MQTT password from wherever the config says it is.
    pub fn mqtt_password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.mqtt.password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
        }
        Ok((!self.mqtt.password.is_empty()).then(|| self.mqtt.password.clone()))
    }

    /// The config as TOML with secrets masked, for `check-config`.
    pub fn to_display_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.mqtt.password.is_empty() {
            shown.mqtt.password = "********".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.queue.capacity, 8);
        assert_eq!(c.mqtt.topic_prefix, format!("edgellm/{}", c.device_id));
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[queue]\ncapacity = 4\nsize = 3\n").unwrap_err().to_string();
        assert!(err.contains("size"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::from_toml("[queue]\ncapacity = 0\n").unwrap_err().to_string();
        assert!(err.contains("queue.capacity"), "{err}");
        let err = Config::from_toml("[socket]\nmode = \"rw\"\n").unwrap_err().to_string();
        assert!(err.contains("socket.mode"), "{err}");
        let err = Config::from_toml("[generation]\nmax_new_tokens = 4000\n").unwrap_err().to_string();
        assert!(err.contains("generation.max_new_tokens"), "{err}");
    }

    #[test]
    fn safety_patterns_that_match_everywhere_are_refused_with_their_key() {
        for pattern in ["", "  ", "a*", "(?:)", "\\b", "^", "x?|y"] {
            let toml = format!("[safety]\ncustom = [{{ name = \"bad\", pattern = '{pattern}' }}]\n");
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("safety.custom") && err.contains("bad"), "{pattern:?}: {err}");
        }
        assert!(Config::from_toml("[safety]\ncustom = [{ name = \"ok\", pattern = 'EMP-\\d{6}' }]\n").is_ok());
        let err = Config::from_toml("[safety.injection]\nblock_score = 0.2\n").unwrap_err().to_string();
        assert!(err.contains("safety.injection.block_score"), "{err}");
        let err = Config::from_toml("[safety.injection]\nthreshold = 1\n").unwrap_err().to_string();
        assert!(err.contains("threshold"), "{err}");
    }

    #[test]
    fn semantic_injection_keys_are_checked_with_their_key() {
        for (toml, key) in [
            ("semantic_flag = 0.0", "safety.injection.semantic_flag"),
            ("semantic_flag = 1.0", "safety.injection.semantic_flag"),
            ("semantic_block = 0.3", "safety.injection.semantic_block"),
            ("semantic_block = 1.5", "safety.injection.semantic_block"),
            ("head_file = \"/nonexistent/head.txt\"", "safety.injection.head_file"),
        ] {
            let err = Config::from_toml(&format!("[safety.injection]\n{toml}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("head.txt");
        std::fs::write(&head, "model m 0123456789ab\nbias 0\nweights 1 2 oops\n").unwrap();
        let err = Config::from_toml(&format!("[safety.injection]\nhead_file = \"{}\"\n", head.display()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("safety.injection.head_file") && err.contains("weights"), "{err}");
        // Off, the head is not read.
        assert!(Config::from_toml("[safety.injection]\nsemantic = false\nhead_file = \"/nonexistent\"\n").is_ok());
    }

    #[test]
    fn display_masks_password() {
        let c = Config::from_toml("[mqtt]\npassword = \"hunter2\"\n").unwrap();
        let shown = c.to_display_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("********"));
    }
}
