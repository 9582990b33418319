//! The pipeline's own sections of the config file: generation settings and limits, with the
//! text stages' sections ([`GroundingConfig`], [`SafetyConfig`]) they are read beside.

use serde::{Deserialize, Serialize};

use edgellm_engine::SamplingParams;
use edgellm_protocol::GenerateParams;
use edgellm_text::grounding::GroundingConfig;
use edgellm_text::safety::SafetyConfig;

/// Everything the pipeline reads from the config, taken whole at start-up and at each reload.
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub generation: GenerationConfig,
    pub limits: LimitsConfig,
    pub grounding: GroundingConfig,
    pub safety: SafetyConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Empty means the model's own default system prompt.
    pub system_prompt: String,
    /// Used when a request does not say.
    pub max_new_tokens: usize,
    /// The most a request may ask for.
    pub max_new_tokens_limit: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub stop_strings: Vec<String>,
    /// Deadline of one request from admission, queue time included.
    pub request_timeout_ms: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            system_prompt: String::new(),
            max_new_tokens: 128,
            max_new_tokens_limit: 512,
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.1,
            stop_strings: Vec::new(),
            request_timeout_ms: 120_000,
        }
    }
}

impl GenerationConfig {
    /// A request's sampling settings and answer length: its own values where given, the
    /// config's otherwise, the length capped at `max_new_tokens_limit`.
    pub fn for_request(&self, params: &GenerateParams) -> (SamplingParams, usize) {
        let sampling = SamplingParams {
            temperature: params.temperature.unwrap_or(self.temperature),
            top_p: params.top_p.unwrap_or(self.top_p),
            top_k: params.top_k.unwrap_or(self.top_k),
            seed: params.seed.unwrap_or(0),
            ..self.sampling()
        };
        (sampling, params.max_tokens.unwrap_or(self.max_new_tokens).min(self.max_new_tokens_limit))
    }

    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            ..SamplingParams::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Raw prompt size, checked before any work.
    pub max_prompt_bytes: usize,
    /// Prompt tokens after the chat template is applied.
    pub max_prompt_tokens: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_prompt_bytes: 8192, max_prompt_tokens: 1024 }
    }
}
