//! edgellm's text stages, which need no model: what the fuzz targets build.
//!
//! - [`preprocess`]: clean the prompt (NFKC, controls, invisibles, spacing), the chat template.
//! - [`safety`]: detectors for sensitive data, offensive terms and prompt injection, with a
//!   block / redact / flag action per kind.
//! - [`grounding`]: entities, the local knowledge index (keyword and dense retrieval), session
//!   memory and the answer cache.
//! - [`postprocess`]: output safety on the streamed answer, and tidying the final text.
//!
//! Each stage owns its section of the config file ([`safety::SafetyConfig`],
//! [`grounding::GroundingConfig`]).

pub mod grounding;
pub mod postprocess;
pub mod preprocess;
pub mod safety;
