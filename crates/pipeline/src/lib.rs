//! The prompt pipeline, in its fixed order:
//!
//! 1. [`preprocess`]: clean the text (NFKC, controls, invisibles, spacing), limits.
//! 2. [`safety`] on the prompt: block, redact or flag before the model sees anything; the
//!    injection detector's semantic layer reads the prompt's embedding ([`injection_guard`]).
//! 3. [`grounding`]: entities, local knowledge, the session's earlier turns; the answer cache.
//! 4. Chat template and tokenization, within the token budgets.
//! 5. Inference (the engine, driven by the caller).
//! 6. [`postprocess`]: output safety on the stream ([`postprocess::OutputGuard`]), tidying,
//!    and remembering the turn.
//!
//! [`Pipeline::prepare`] runs 1–4 and [`Pipeline::finish`] runs 6. Stages never see
//! transports.

mod answer;
mod config;
pub mod injection_guard;

pub use answer::{AnswerRequest, AnswerSink};
pub use config::{GenerationConfig, LimitsConfig, PipelineConfig};
pub use edgellm_text::{grounding, postprocess, preprocess, safety};

use edgellm_engine::{Embedder, Engine, EngineError};
use edgellm_protocol::Conversation;
use grounding::{
    AnswerCache, CachedAnswer, DenseIndex, Entity, GroundingConfig, Hit, KnowledgeIndex, Retrieval, SessionMemory,
    SourceRef,
};
use postprocess::OutputGuard;
use preprocess::{ChatMessage, ChatTemplate, PreprocessError};
use safety::{Kind, SafetyRules, ScanReport};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("prompt is {tokens} tokens after the chat template, the limit is {limit}")]
    TooManyTokens { tokens: usize, limit: usize },
    /// The message names the rule, never the matched text.
    #[error("blocked by safety rule `{rule}` ({})", kind.name())]
    Blocked { rule: String, kind: Kind },
    #[error(transparent)]
    Safety(#[from] safety::SafetyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The answer broke a `block` rule while it was generated; nothing of the span was sent.
    #[error("answer blocked by safety rule `{rule}` ({})", kind.name())]
    AnswerBlocked { rule: String, kind: Kind },
    /// The sink stopped listening, or asked to stop.
    #[error("cancelled")]
    Cancelled,
    #[error("the request's deadline passed")]
    DeadlinePassed,
}

/// A prompt ready for the engine, with what grounding and safety found.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub ids: Vec<u32>,
    /// Leading tokens shared by every prompt (the system turn), whose KV state is reused.
    pub shared_prefix_len: usize,
    /// The user's text as the model sees it (cleaned, redacted).
    pub user_text: String,
    /// The whole rendered prompt (template, history, notes): exactly what the model reads.
    pub rendered: String,
    pub sources: Vec<SourceRef>,
    /// The best source sentence for the prompt, which the answer is checked against.
    pub evidence: Option<grounding::Evidence>,
    pub entities: heapless::Vec<Entity, { grounding::MAX_ENTITIES }>,
    pub input_safety: ScanReport,
    /// Time spent finding the knowledge chunks (embedding the prompt included).
    pub retrieval_ms: f64,
}

/// What the caller passes in for one request.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    pub prompt: &'a str,
    pub session: Option<&'a str>,
}

/// Streamed answer text held back for output safety: long enough for the spans the detectors
/// look for (cards, IBANs, phone numbers, most e-mail addresses), short enough to keep
/// streaming lively.
pub const OUTPUT_HOLD_BYTES: usize = 64;

pub struct Pipeline {
    template: ChatTemplate,
    system_prompt: String,
    /// The model family's template has a system role (else see `render`).
    system_turn: bool,
    /// The family's template markers, removed from answers.
    template_markers: &'static [&'static str],
    limits: LimitsConfig,
    generation: GenerationConfig,
    grounding: GroundingConfig,
    safety: SafetyRules,
    /// The injection detector's semantic layer, when it is on (it uses the engine's embedder).
    injection_guard: Option<injection_guard::InjectionGuard>,
    knowledge: KnowledgeIndex,
    /// The knowledge chunks' embeddings, when dense retrieval is on.
    dense: Option<DenseIndex>,
    /// The prompt's embedding, reused by every request.
    query_vector: Vec<f32>,
    knowledge_error: Option<String>,
    sessions: SessionMemory,
    cache: AnswerCache,
    /// Token ids of the system turn every prompt starts with.
    system_prefix_ids: Vec<u32>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("chunks", &self.knowledge.chunks.len()).finish()
    }
}

impl Pipeline {
    /// Builds every stage from the config. A knowledge directory that cannot be read is not
    /// fatal: the pipeline runs without it and [`Pipeline::knowledge_error`] says why.
    /// When dense retrieval is on, the engine's embedding model is loaded (once) and the
    /// chunks are embedded; `previous` lends the vectors of chunks that did not change.
    pub fn new(config: &PipelineConfig, engine: &mut Engine) -> Result<Pipeline, PipelineError> {
        Self::rebuild(config, engine, None, &|_| {})
    }

    /// [`Pipeline::new`] that calls `progress(chunks embedded so far)` while it embeds the
    /// knowledge, which can take a while: the daemon keeps its watchdog and start-up
    /// timeout alive with it.
    pub fn with_progress(
        config: &PipelineConfig,
        engine: &mut Engine,
        progress: &dyn Fn(usize),
    ) -> Result<Pipeline, PipelineError> {
        Self::rebuild(config, engine, None, progress)
    }

    /// [`Pipeline::new`] for a reload: conversation memory and unchanged chunk embeddings
    /// carry over from the pipeline this one replaces.
    pub fn reload(
        config: &PipelineConfig,
        engine: &mut Engine,
        old: &mut Pipeline,
        progress: &dyn Fn(usize),
    ) -> Result<Pipeline, PipelineError> {
        let mut pipeline = Self::rebuild(config, engine, Some(old), progress)?;
        pipeline.sessions = std::mem::replace(&mut old.sessions, SessionMemory::new(0, 0));
        Ok(pipeline)
    }

    fn rebuild(
        config: &PipelineConfig,
        engine: &mut Engine,
        previous: Option<&Pipeline>,
        progress: &dyn Fn(usize),
    ) -> Result<Pipeline, PipelineError> {
        let e = &config.grounding.embedding;
        let wants_dense = e.enabled && config.grounding.knowledge_dir.is_some();
        let safety = SafetyRules::new(&config.safety)?;
        // The injection detector reads embeddings too, with or without knowledge.
        if (wants_dense || safety.injection_head().is_some()) && engine.embedder().is_none() {
            let dir = e.model_dir.clone().unwrap_or_default();
            engine.load_embedder(&dir, e.max_tokens)?;
            if let Some(embedder) = engine.embedder() {
                let info = embedder.info();
                tracing::info!(model = %info.id, load_ms = info.load_ms, dimension = info.dimension, "embedding model loaded");
            }
        }
        let engine: &Engine = engine;
        let manifest = engine.manifest();
        let template = ChatTemplate::new(&manifest.chat_template)?;
        let system_prompt = if config.generation.system_prompt.is_empty() {
            manifest.default_system_prompt.clone().unwrap_or_default()
        } else {
            config.generation.system_prompt.clone()
        };
        let count_tokens = |text: &str| engine.encode(text).map(|ids| ids.len()).unwrap_or(text.len());
        let (knowledge, knowledge_error) = match KnowledgeIndex::load(&config.grounding, &count_tokens) {
            Ok(k) => {
                for skipped in &k.skipped {
                    tracing::warn!(%skipped, "knowledge file skipped");
                }
                if config.grounding.knowledge_dir.is_some() {
                    tracing::info!(files = k.files, chunks = k.chunks.len(), "knowledge indexed");
                }
                (k, None)
            }
            Err(e) => {
                tracing::error!(error = %e, "knowledge not loaded; answering without it");
                (KnowledgeIndex::default(), Some(e.to_string()))
            }
        };
        let g = &config.grounding;
        let mut dense = None;
        let mut query_vector = Vec::new();
        if let (true, Some(embedder)) = (wants_dense, engine.embedder())
            && !knowledge.chunks.is_empty()
        {
            let started = Instant::now();
            let old = previous.and_then(|p| p.dense.as_ref());
            let mut done = 0;
            let mut embed = |text: &str, out: &mut [f32]| {
                embedder.embed(text, out).map_err(|e| e.to_string())?;
                done += 1;
                progress(done);
                Ok(())
            };
            let (index, embedded) = DenseIndex::build(&knowledge, embedder.dimension(), g.max_chunks, old, &mut embed)
                .map_err(|e| PipelineError::Engine(EngineError::Inference(e.to_string())))?;
            tracing::info!(
                chunks = index.len(),
                embedded,
                sentences = index.sentence_rows(),
                reused = (index.len() + index.sentence_rows()).saturating_sub(embedded),
                ms = started.elapsed().as_millis() as u64,
                "knowledge embedded"
            );
            query_vector = vec![0.0; embedder.dimension()];
            dense = Some(index);
        }
        let mut pipeline = Pipeline {
            template,
            system_prompt,
            system_turn: engine.family().system_turn,
            template_markers: engine.family().template_markers,
            limits: config.limits.clone(),
            generation: config.generation.clone(),
            grounding: g.clone(),
            injection_guard: match engine.embedder() {
                Some(embedder) => injection_guard::InjectionGuard::new(&safety, embedder)?,
                None => None,
            },
            safety,
            knowledge,
            dense,
            query_vector,
            knowledge_error,
            sessions: SessionMemory::new(g.sessions, g.session_bytes),
            cache: AnswerCache::new(g.answer_cache_entries, g.answer_cache_bytes),
            system_prefix_ids: Vec::new(),
        };
        pipeline.system_prefix_ids = pipeline.system_prefix(engine)?;
        Ok(pipeline)
    }

    pub fn knowledge_error(&self) -> Option<&str> {
        self.knowledge_error.as_deref()
    }

    pub fn knowledge_chunks(&self) -> usize {
        self.knowledge.chunks.len()
    }

    /// Whether knowledge is searched by meaning as well as by keyword.
    pub fn dense_retrieval(&self) -> bool {
        self.dense.is_some()
    }

    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The tokens every prompt starts with: the common prefix of two prompts that differ
    /// only in the user's text. `prepare` still checks that each prompt really starts with
    /// them, so an odd template costs speed, never correctness.
    fn system_prefix(&self, engine: &Engine) -> Result<Vec<u32>, PipelineError> {
        let render = |user: &str| -> Result<Vec<u32>, PipelineError> {
            let (_, ids) = self.render(engine, None, &[], user)?;
            Ok(ids)
        };
        let (a, b) = (render("alpha")?, render("7 Zulu")?);
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        Ok(a[..common].to_vec())
    }

    /// The conversation rendered with the model's template: text and token ids.
    fn render(
        &self,
        engine: &Engine,
        system: Option<&str>,
        history: &[grounding::Turn],
        user: &str,
    ) -> Result<(String, Vec<u32>), PipelineError> {
        let system_prompt = system.unwrap_or(&self.system_prompt);
        let mut messages = Vec::with_capacity(2 + history.len() * 2);
        // A family without a system role reads the system prompt at the head of the first
        // user turn instead.
        let merge = !self.system_turn && !system_prompt.is_empty();
        if self.system_turn && !system_prompt.is_empty() {
            messages.push(ChatMessage { role: "system", content: system_prompt });
        }
        let first = history.first().map_or(user, |t| t.user.as_str());
        let opening_user = if merge { format!("{system_prompt}\n\n{first}") } else { String::new() };
        for (i, turn) in history.iter().enumerate() {
            let text = if merge && i == 0 { opening_user.as_str() } else { turn.user.as_str() };
            messages.push(ChatMessage { role: "user", content: text });
            messages.push(ChatMessage { role: "assistant", content: &turn.assistant });
        }
        let text = if merge && history.is_empty() { opening_user.as_str() } else { user };
        messages.push(ChatMessage { role: "user", content: text });
        let rendered = self.template.render(&messages)?;
        let ids = engine.encode(&rendered)?;
        Ok((rendered, ids))
    }

    /// Stages 1–4: clean, check, ground, render and tokenize within the limits.
    pub fn prepare(&mut self, engine: &Engine, input: PromptInput<'_>) -> Result<PreparedPrompt, PipelineError> {
        self.prepare_conversation(engine, input, None)
    }

    /// [`Pipeline::prepare`] for a client that keeps its conversation itself (the HTTP API):
    /// its system prompt and turns replace the configured system prompt and the session
    /// memory. Each part is cleaned and checked by the safety rules like the prompt (a forged
    /// earlier turn is as much the client's text as the prompt is).
    pub fn prepare_conversation(
        &mut self,
        engine: &Engine,
        input: PromptInput<'_>,
        conversation: Option<&Conversation>,
    ) -> Result<PreparedPrompt, PipelineError> {
        let checked = |text: &str| -> Result<String, PipelineError> {
            let cleaned = preprocess::clean(text, self.limits.max_prompt_bytes)?;
            let report = self.safety.scan(&cleaned);
            if let Some(block) = report.blocking_rule() {
                return Err(PipelineError::Blocked { rule: block.rule.clone(), kind: block.kind });
            }
            Ok(self.safety.redact(&cleaned, &report))
        };
        let (system, given_turns) = match conversation {
            Some(c) => {
                let system = c.system.as_deref().map(checked).transpose()?;
                let mut turns = Vec::with_capacity(c.turns.len());
                for (user, assistant) in &c.turns {
                    turns.push(grounding::Turn { user: checked(user)?, assistant: checked(assistant)? });
                }
                (system, Some(turns))
            }
            None => (None, None),
        };
        let cleaned = preprocess::clean(input.prompt, self.limits.max_prompt_bytes)?;
        let input_safety = match (&mut self.injection_guard, engine.embedder()) {
            (Some(guard), Some(embedder)) => guard.screen(&self.safety, embedder, &cleaned)?,
            _ => self.safety.scan(&cleaned),
        };
        if let Some(block) = input_safety.blocking_rule() {
            return Err(PipelineError::Blocked { rule: block.rule.clone(), kind: block.kind });
        }
        let user_text = self.safety.redact(&cleaned, &input_safety);

        let entities = grounding::extract_entities(&user_text, &self.knowledge);
        let query = grounding::query_terms(&user_text, &entities);
        let retrieval_started = Instant::now();
        let mut hits = Vec::new();
        let mut knowledge_tokens = 0;
        for hit in self.retrieve(engine.embedder(), &user_text, &query)? {
            let chunk = &self.knowledge.chunks[hit.chunk];
            if knowledge_tokens + chunk.tokens > self.grounding.knowledge_token_budget {
                continue;
            }
            knowledge_tokens += chunk.tokens;
            hits.push(hit);
        }
        // The prompt's vector is the one `retrieve` just computed.
        let vectors = self.dense.as_ref().filter(|_| engine.embedder().is_some()).map(|d| (d, &self.query_vector[..]));
        let notes = grounding::rank_notes(&self.knowledge, &hits, &query, vectors, &self.grounding);
        let retrieval_ms = retrieval_started.elapsed().as_secs_f64() * 1e3;
        let mut history = match (given_turns, input.session) {
            (Some(turns), _) => turns,
            (None, Some(id)) => self.sessions.turns(id),
            (None, None) => Vec::new(),
        };
        // Newest turns first within the history budget.
        let mut history_tokens = 0;
        let mut keep_from = history.len();
        for (i, turn) in history.iter().enumerate().rev() {
            let cost = engine.encode(&turn.user)?.len() + engine.encode(&turn.assistant)?.len() + 8;
            if history_tokens + cost > self.grounding.history_token_budget {
                break;
            }
            history_tokens += cost;
            keep_from = i;
        }
        history.drain(..keep_from);

        // Render; if the whole is over the limit, drop history, then notes, before giving up.
        loop {
            let notes: Vec<grounding::Note> =
                notes.iter().filter(|n| hits.iter().any(|h| h.chunk == n.chunk)).cloned().collect();
            let user_turn = grounding::notes_turn(&notes, &user_text, &self.grounding);
            let (rendered, ids) = self.render(engine, system.as_deref(), &history, &user_turn)?;
            if ids.len() <= self.limits.max_prompt_tokens {
                let shared_prefix_len =
                    if ids.starts_with(&self.system_prefix_ids) { self.system_prefix_ids.len() } else { 0 };
                let sources = hits
                    .iter()
                    .map(|hit| {
                        let c = &self.knowledge.chunks[hit.chunk];
                        // Fused scores are small (1/61 at best per retriever): keep 4 digits.
                        let scale = if self.dense.is_some() { 10_000.0 } else { 100.0 };
                        SourceRef {
                            file: c.source.clone(),
                            chunk: c.index,
                            score: (hit.score * scale).round() / scale,
                            retriever: hit.found_by.retriever(),
                        }
                    })
                    .collect();
                let evidence = notes.first().map(|n| {
                    let c = &self.knowledge.chunks[n.chunk];
                    grounding::Evidence { file: c.source.clone(), chunk: c.index, text: n.text.clone() }
                });
                return Ok(PreparedPrompt {
                    ids,
                    shared_prefix_len,
                    user_text,
                    rendered,
                    sources,
                    evidence,
                    entities,
                    input_safety,
                    retrieval_ms,
                });
            }
            if !history.is_empty() {
                history.remove(0);
            } else if hits.pop().is_none() {
                return Err(PipelineError::TooManyTokens { tokens: ids.len(), limit: self.limits.max_prompt_tokens });
            }
        }
    }

    /// The best chunks for the prompt: BM25 alone, or fused with the dense ranking.
    fn retrieve(
        &mut self,
        embedder: Option<&Embedder>,
        user_text: &str,
        query: &[(String, f32)],
    ) -> Result<Vec<Hit>, PipelineError> {
        let (Some(dense), Some(embedder)) = (&self.dense, embedder) else {
            return Ok(grounding::retrieve(&self.knowledge, None, query, Retrieval::Keyword, &self.grounding));
        };
        if self.knowledge.chunks.is_empty() {
            return Ok(Vec::new());
        }
        // The injection guard has often just embedded this very text (no redaction, no
        // disguise): one model pass per prompt, not two.
        match self.injection_guard.as_ref().and_then(|g| g.embedding_of(user_text)) {
            Some(vector) => self.query_vector.copy_from_slice(vector),
            None => {
                embedder.embed(user_text, &mut self.query_vector)?;
            }
        }
        let vectors = Some((dense, &self.query_vector[..]));
        Ok(grounding::retrieve(&self.knowledge, vectors, query, Retrieval::Hybrid, &self.grounding))
    }

    /// A guard for the streamed answer; it holds back enough text to catch split spans.
    pub fn output_guard(&self) -> OutputGuard<'_> {
        OutputGuard::new(self.safety.scan_output.then_some(&self.safety), OUTPUT_HOLD_BYTES)
    }

    /// Stage 6 after generation: tidies the text, remembers the turn, caches the answer.
    pub fn finish(
        &mut self,
        prepared: &PreparedPrompt,
        session: Option<&str>,
        released_text: &str,
        cut_by_length: bool,
        cache: Option<([u8; 32], CachedAnswer)>,
    ) -> String {
        let text = postprocess::tidy(released_text, cut_by_length, self.template_markers);
        if let Some(id) = session {
            self.sessions.remember(id, &prepared.user_text, &text);
        }
        if let Some((key, mut answer)) = cache {
            answer.text = text.clone();
            self.cache.insert(key, answer);
        }
        text
    }
}
