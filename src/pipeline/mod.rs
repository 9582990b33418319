//! The prompt pipeline, in its fixed order:
//! pre-processing → inference → post-processing.
//!
//! [`Pipeline::prepare`] turns a raw prompt into model tokens; the engine generates; and
//! [`Pipeline::finish`] tidies the answer. Stages never see transports.

pub mod preprocess;
pub mod safety;

use crate::config::{Config, GenerationConfig, LimitsConfig};
use crate::engine::{Engine, EngineError};
use preprocess::{ChatMessage, ChatTemplate, PreprocessError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("prompt is {tokens} tokens after the chat template, the limit is {limit}")]
    TooManyTokens { tokens: usize, limit: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A prompt ready for the engine.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    pub ids: Vec<u32>,
    /// Leading tokens shared by every prompt (the system turn), whose KV state is reused.
    pub shared_prefix_len: usize,
}

pub struct Pipeline {
    template: ChatTemplate,
    system_prompt: String,
    limits: LimitsConfig,
    generation: GenerationConfig,
    /// Token ids of the rendered system turn alone.
    system_prefix_ids: Vec<u32>,
}

impl Pipeline {
    pub fn new(config: &Config, engine: &Engine) -> Result<Pipeline, PipelineError> {
        let manifest = engine.manifest();
        let template = ChatTemplate::new(&manifest.chat_template)?;
        let system_prompt = if config.generation.system_prompt.is_empty() {
            manifest.default_system_prompt.clone().unwrap_or_default()
        } else {
            config.generation.system_prompt.clone()
        };
        let mut pipeline = Pipeline {
            template,
            system_prompt,
            limits: config.limits.clone(),
            generation: config.generation.clone(),
            system_prefix_ids: Vec::new(),
        };
        pipeline.system_prefix_ids = pipeline.system_prefix(engine)?;
        Ok(pipeline)
    }

    /// The tokens every prompt starts with: the common prefix of two prompts that differ
    /// only in the user's text. `prepare` still checks that each prompt really starts with
    /// them, so an odd template costs speed, never correctness.
    fn system_prefix(&self, engine: &Engine) -> Result<Vec<u32>, PipelineError> {
        let (a, b) = (self.render_ids(engine, "alpha")?, self.render_ids(engine, "7 Zulu")?);
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        Ok(a[..common].to_vec())
    }

    /// The conversation rendered with the model's template, as token ids.
    fn render_ids(&self, engine: &Engine, user: &str) -> Result<Vec<u32>, PipelineError> {
        let mut messages = Vec::with_capacity(2);
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage { role: "system", content: &self.system_prompt });
        }
        messages.push(ChatMessage { role: "user", content: user });
        Ok(engine.encode(&self.template.render(&messages)?)?)
    }

    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Cleans the raw prompt, renders the chat template and tokenizes, enforcing the limits.
    pub fn prepare(&self, engine: &Engine, raw_prompt: &str) -> Result<PreparedPrompt, PipelineError> {
        let user = preprocess::clean(raw_prompt, self.limits.max_prompt_bytes)?;
        let ids = self.render_ids(engine, &user)?;
        if ids.len() > self.limits.max_prompt_tokens {
            return Err(PipelineError::TooManyTokens { tokens: ids.len(), limit: self.limits.max_prompt_tokens });
        }
        let shared_prefix_len = if ids.starts_with(&self.system_prefix_ids) { self.system_prefix_ids.len() } else { 0 };
        Ok(PreparedPrompt { ids, shared_prefix_len })
    }
}
