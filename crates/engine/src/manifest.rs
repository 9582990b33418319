//! The model manifest written by `models/convert.py` (or by hand for an Optimum export):
//! what the engine must know about a model that the ONNX file does not say.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::EngineError;
use crate::family::{LLAMA, ModelFamily};

#[derive(Debug, Clone, Deserialize)]
pub struct ModelDims {
    /// The model family ([`ModelFamily`]); manifests written before it existed are llama.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    #[serde(default)]
    pub context_length: Option<usize>,
}

fn default_architecture() -> String {
    LLAMA.architecture.to_string()
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpecialTokens {
    pub eos_id: u32,
    #[serde(default)]
    pub bos_id: Option<u32>,
    #[serde(default)]
    pub add_bos: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelManifest {
    pub id: String,
    pub quantization: String,
    pub model_file: String,
    #[serde(default)]
    pub model_sha256: Option<String>,
    pub tokenizer_file: String,
    #[serde(default)]
    pub parameters: Option<u64>,
    pub dims: ModelDims,
    pub special: SpecialTokens,
    /// Token ids that end generation besides `special.eos_id`.
    #[serde(default)]
    pub stop_ids: Vec<u32>,
    pub chat_template: String,
    #[serde(default)]
    pub default_system_prompt: Option<String>,
}

impl ModelManifest {
    pub fn load(dir: &Path) -> Result<(Self, PathBuf), EngineError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", path.display())))?;
        let manifest: ModelManifest = serde_json::from_str(&text)
            .map_err(|e| EngineError::Model(format!("{} is not a valid manifest: {e}", path.display())))?;
        if manifest.dims.heads == 0
            || manifest.dims.kv_heads == 0
            || !manifest.dims.heads.is_multiple_of(manifest.dims.kv_heads)
            || manifest.dims.vocab == 0
        {
            return Err(EngineError::Model(format!("{}: inconsistent dims", path.display())));
        }
        if let Some(sha) = &manifest.model_sha256
            && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(EngineError::Model(format!("{}: model_sha256 is not 64 hex digits", path.display())));
        }
        manifest.family()?;
        Ok((manifest, path))
    }

    /// The model's family, from `dims.architecture` (checked when the manifest is loaded).
    pub fn family(&self) -> Result<&'static ModelFamily, EngineError> {
        ModelFamily::for_architecture(&self.dims.architecture)
    }

    pub fn model_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.model_file)
    }

    pub fn tokenizer_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.tokenizer_file)
    }

    pub fn is_stop_token(&self, id: u32) -> bool {
        id == self.special.eos_id || self.stop_ids.contains(&id)
    }
}
