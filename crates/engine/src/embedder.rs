//! A sentence-embedding model (BERT-style encoder, e.g. all-MiniLM-L6-v2) run by tract, for
//! dense retrieval beside the keyword index.
//!
//! The graph returns per-token hidden states; mean pooling over the attention mask and L2
//! normalisation are done here, so a dot product of two embeddings is their cosine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use tract_onnx::prelude::*;

use super::{EngineError, checked_sha256};

/// The manifest `models/embedder.py` writes next to the embedding model.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderManifest {
    pub id: String,
    pub quantization: String,
    pub model_file: String,
    #[serde(default)]
    pub model_sha256: Option<String>,
    pub tokenizer_file: String,
    pub dimension: usize,
    /// The longest input the model was trained on; longer texts are truncated.
    pub max_tokens: usize,
}

/// What `check-config` and the health report say about the embedding model.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedderInfo {
    pub id: String,
    pub quantization: String,
    pub sha256_prefix: String,
    pub dimension: usize,
    pub max_tokens: usize,
    pub file_bytes: u64,
    pub load_ms: u64,
}

/// Positions of the encoder's inputs, found by name (exporters order them differently).
#[derive(Debug)]
struct EncoderIo {
    n_inputs: usize,
    input_ids: usize,
    attention_mask: Option<usize>,
    token_type_ids: Option<usize>,
}

pub struct Embedder {
    plan: Arc<TypedRunnableModel>,
    io: EncoderIo,
    tokenizer: Tokenizer,
    info: EmbedderInfo,
    max_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("info", &self.info).finish()
    }
}

impl EmbedderManifest {
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", path.display())))?;
        let manifest: EmbedderManifest = serde_json::from_str(&text)
            .map_err(|e| EngineError::Model(format!("{} is not a valid manifest: {e}", path.display())))?;
        if manifest.dimension == 0 || manifest.max_tokens < 3 {
            return Err(EngineError::Model(format!("{}: inconsistent dimension or max_tokens", path.display())));
        }
        Ok(manifest)
    }
}

impl Embedder {
    /// Loads the model in `dir` (manifest.json, model, tokenizer), truncating inputs at
    /// `max_tokens` (capped by the model's own limit).
    pub fn load(dir: &Path, max_tokens: usize) -> Result<Embedder, EngineError> {
        let started = Instant::now();
        let manifest = EmbedderManifest::load(dir)?;
        let model_path: PathBuf = dir.join(&manifest.model_file);
        let file_bytes = std::fs::metadata(&model_path)
            .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", model_path.display())))?
            .len();
        let sha = checked_sha256(&model_path, manifest.model_sha256.as_deref())?;
        let tokenizer_path = dir.join(&manifest.tokenizer_file);
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        let (plan, io) =
            build_plan(&model_path).map_err(|e| EngineError::Model(format!("{}: {e:#}", model_path.display())))?;
        let embedder = Embedder {
            plan,
            io,
            tokenizer,
            max_tokens: max_tokens.clamp(3, manifest.max_tokens),
            info: EmbedderInfo {
                id: manifest.id,
                quantization: manifest.quantization,
                sha256_prefix: sha[..12].to_string(),
                dimension: manifest.dimension,
                max_tokens: manifest.max_tokens,
                file_bytes,
                load_ms: 0,
            },
        };
        // One call checks that the graph really produces vectors of the declared dimension,
        // and warms tract's buffers so the first request does not pay for it.
        let mut probe = vec![0.0; embedder.dimension()];
        embedder.embed("warm-up", &mut probe)?;
        let mut embedder = embedder;
        embedder.info.load_ms = started.elapsed().as_millis() as u64;
        Ok(embedder)
    }

    pub fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    pub fn dimension(&self) -> usize {
        self.info.dimension
    }

    /// Writes the unit-length embedding of `text` into `out` (`dimension()` floats); returns
    /// the number of tokens the model saw.
    pub fn embed(&self, text: &str, out: &mut [f32]) -> Result<usize, EngineError> {
        if out.len() != self.dimension() {
            return Err(EngineError::Inference(format!(
                "embedding buffer holds {}, the model gives {}",
                out.len(),
                self.dimension()
            )));
        }
        let enc = self.tokenizer.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > self.max_tokens {
            // Keep [CLS] … and the closing [SEP].
            let last = *ids.last().unwrap_or(&0);
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        let n = ids.len();
        let tensor = |data: Vec<i64>| -> Result<TValue, EngineError> {
            Ok(Tensor::from_shape(&[1, n], &data).map_err(EngineError::inference)?.into_tvalue())
        };
        let mut inputs: Vec<Option<TValue>> = vec![None; self.io.n_inputs];
        inputs[self.io.input_ids] = Some(tensor(ids)?);
        if let Some(ix) = self.io.attention_mask {
            inputs[ix] = Some(tensor(vec![1; n])?);
        }
        if let Some(ix) = self.io.token_type_ids {
            inputs[ix] = Some(tensor(vec![0; n])?);
        }
        let inputs: TVec<TValue> = inputs.into_iter().map(|v| v.expect("every input is fed")).collect();
        let outputs = self.plan.run(inputs).map_err(EngineError::inference)?;
        let hidden = outputs[0].to_plain_array_view::<f32>().map_err(EngineError::inference)?;
        let flat = hidden.as_slice().ok_or_else(|| EngineError::Inference("hidden states not contiguous".into()))?;
        let dim = self.dimension();
        if flat.len() != n * dim {
            return Err(EngineError::Inference(format!("hidden states have shape {:?}", hidden.shape())));
        }
        out.fill(0.0);
        for row in flat.chunks_exact(dim) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for o in out.iter_mut() {
            *o /= norm;
        }
        Ok(n)
    }
}

fn build_plan(path: &Path) -> TractResult<(Arc<TypedRunnableModel>, EncoderIo)> {
    // Exporters' value_info annotations are not always consistent; tract infers its own.
    let mut model = tract_onnx::onnx().with_ignore_value_info(true).model_for_path(path)?;
    let names: Vec<String> = model.inputs.iter().map(|o| model.node(o.node).name.clone()).collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    let io = EncoderIo {
        n_inputs: names.len(),
        input_ids: find("input_ids").ok_or_else(|| anyhow::anyhow!("model has no input_ids input"))?,
        attention_mask: find("attention_mask"),
        token_type_ids: find("token_type_ids"),
    };
    let known = 1 + usize::from(io.attention_mask.is_some()) + usize::from(io.token_type_ids.is_some());
    anyhow::ensure!(known == names.len(), "unexpected encoder inputs: {names:?}");
    // One sequence at a time, of any length.
    let seq = model.symbols.sym("sequence");
    for ix in 0..names.len() {
        model.set_input_fact(ix, InferenceFact::dt_shape(i64::datum_type(), tvec!(1.to_dim(), seq.to_dim())))?;
    }
    let output_names: Vec<String> =
        model.outputs.iter().map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string()).collect();
    if let Some(ix) = output_names.iter().position(|n| n == "last_hidden_state") {
        let hidden = model.outputs[ix];
        model.select_output_outlets(&[hidden])?;
    }
    let typed = model.into_optimized()?;
    let plan = typed.into_runnable()?;
    Ok((plan, io))
}
