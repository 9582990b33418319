//! Prompt screening with the injection detector's semantic layer: the safety rules read the
//! cleaned prompt, and when they do not block it already, the embedding model reads it too and
//! the fitted head ([`safety::InjectionHead`]) turns its embedding into a probability that the
//! rules weigh beside their cue score (`[safety.injection]`).
//!
//! The pipeline owns the embedder (through the engine); the text crate only receives the
//! number.

use edgellm_engine::{Embedder, EngineError};
use edgellm_text::safety::{self, SafetyError, SafetyRules, ScanReport, semantic};

use crate::PipelineError;

/// The semantic layer's working state: the prompt's embedding buffer, reused by every request.
#[derive(Debug)]
pub struct InjectionGuard {
    vector: Vec<f32>,
    /// The text `vector` is the embedding of (empty when this request's prompt was not
    /// embedded), so that retrieval reuses it for the same text instead of a second pass.
    embedded: String,
}

impl InjectionGuard {
    /// The guard for `rules`' head, if the semantic layer is on; refuses a head fitted for
    /// another embedding model (its weights would mean nothing).
    pub fn new(rules: &SafetyRules, embedder: &Embedder) -> Result<Option<InjectionGuard>, PipelineError> {
        let Some(head) = rules.injection_head() else { return Ok(None) };
        let info = embedder.info();
        if head.dimension() != info.dimension || head.model_sha256_prefix != info.sha256_prefix {
            return Err(PipelineError::Safety(SafetyError::Injection {
                key: "safety.injection.head_file",
                reason: format!(
                    "the head was fitted for {} ({}, {} dimensions), the embedding model is {} ({}, {}): \
                     refit it (tests/injection.rs, fit_the_semantic_head) or set safety.injection.semantic = false",
                    head.model_id,
                    head.model_sha256_prefix,
                    head.dimension(),
                    info.id,
                    info.sha256_prefix,
                    info.dimension
                ),
            }));
        }
        Ok(Some(InjectionGuard { vector: vec![0.0; info.dimension], embedded: String::new() }))
    }

    /// The head's probability that the prompt whose [`semantic::semantic_input`] is `input`
    /// is an attack.
    pub fn probability(
        &mut self,
        head: &safety::InjectionHead,
        embedder: &Embedder,
        input: &str,
    ) -> Result<f32, EngineError> {
        embedder.embed(input, &mut self.vector)?;
        Ok(head.probability(&self.vector))
    }

    /// The embedding of `text` if the last [`InjectionGuard::screen`] computed it.
    pub fn embedding_of(&self, text: &str) -> Option<&[f32]> {
        (!text.is_empty() && self.embedded == text).then_some(&self.vector[..])
    }

    /// The safety report of a cleaned prompt: the rules with the semantic layer's reading
    /// beside them (always taken: it can veto a narrow cue block as well as add one).
    pub fn screen(
        &mut self,
        rules: &SafetyRules,
        embedder: &Embedder,
        cleaned: &str,
    ) -> Result<ScanReport, PipelineError> {
        self.embedded.clear();
        let Some(head) = rules.injection_head() else { return Ok(rules.scan(cleaned)) };
        // Too short or not prose: the rules alone (their scan skips the reading too), and
        // no embedding to pay for.
        let Some(input) = semantic::semantic_input(cleaned, rules.injection_config().semantic_min_words) else {
            return Ok(rules.scan_prompt(cleaned, None));
        };
        let p = self.probability(head, embedder, &input)?;
        self.embedded = input;
        Ok(rules.scan_prompt(cleaned, Some(p)))
    }
}
