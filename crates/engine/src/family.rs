//! Model families: what differs between llama-, qwen2- and gemma-style decoders, in one place,
//! chosen by the manifest's `dims.architecture`. A new family is one more entry here (and its
//! conversion in `models/`); the engine and the pipeline read everything else from the ONNX
//! graph, the tokenizer and the manifest's chat template.

use tract_onnx::prelude::DatumType;

use crate::EngineError;

/// The properties of a family that the code depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFamily {
    /// `dims.architecture` in the manifest.
    pub architecture: &'static str,
    /// Special strings of the chat template that never belong in an answer; removed when the
    /// answer is tidied.
    pub template_markers: &'static [&'static str],
    /// The template has a system role; without one the system prompt opens the first user turn.
    pub system_turn: bool,
    /// Its attention is the `q·kᵀ → scaled masked softmax → ·v` chain that the fused attention
    /// op replaces (checked on the graph too: a chain that does not match stays tract's).
    pub fused_attention: bool,
    /// Element type of the KV cache the ONNX graph takes and returns.
    pub kv_dtype: DatumType,
}

const CHATML_MARKERS: &[&str] = &["<|im_start|>", "<|im_end|>", "<|endoftext|>"];

/// Llama and its ChatML-speaking descendants (SmolLM2, the default model).
pub const LLAMA: ModelFamily = ModelFamily {
    architecture: "llama",
    template_markers: CHATML_MARKERS,
    system_turn: true,
    fused_attention: true,
    kv_dtype: DatumType::F32,
};

/// Qwen2: llama's layout with biases on the q/k/v projections; ChatML template.
pub const QWEN2: ModelFamily = ModelFamily { architecture: "qwen2", ..LLAMA };

/// Gemma: its own turn markers and no system role.
pub const GEMMA: ModelFamily = ModelFamily {
    architecture: "gemma",
    template_markers: &["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>"],
    system_turn: false,
    fused_attention: true,
    kv_dtype: DatumType::F32,
};

const FAMILIES: &[ModelFamily] = &[LLAMA, QWEN2, GEMMA];

impl ModelFamily {
    /// The family of a manifest's `dims.architecture`; an unknown one is a load error that
    /// names the families this build knows.
    pub fn for_architecture(architecture: &str) -> Result<&'static ModelFamily, EngineError> {
        FAMILIES.iter().find(|f| f.architecture == architecture).ok_or_else(|| {
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.architecture).collect();
            EngineError::Model(format!(
                "model architecture `{architecture}` is not supported (known: {})",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_found_by_architecture_and_unknown_ones_refused() {
        assert_eq!(ModelFamily::for_architecture("llama").unwrap().architecture, "llama");
        assert!(!ModelFamily::for_architecture("gemma").unwrap().system_turn);
        let err = ModelFamily::for_architecture("mamba").unwrap_err().to_string();
        assert!(err.contains("mamba") && err.contains("llama"), "{err}");
    }
}
