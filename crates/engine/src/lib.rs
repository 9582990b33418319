//! The inference engine: a decoder-only ONNX model (Optimum `text-generation-with-past`
//! layout) run by tract, with its tokenizer and a generation loop.
//!
//! The engine is single-threaded by design: one OS thread owns it (see `daemon::worker`).
//! Inside a step, a [`SpinTeam`] shares out the fused 4-bit products
//! ([`q4_matvec`]): every decode step's, and a prompt chunk's where the CPU has AVX-512.
//! Elsewhere tract's thread pool parallelises a prompt chunk's products.
//!
//! The KV cache lives inside tract's model state when tract-transformers recognises the
//! `past -> Concat -> present` pattern, and is passed in and out explicitly otherwise. Either
//! way a [`DecodeState`] can be cloned cheaply (tensors are shared), which is how the state
//! after the fixed system prompt is kept and reused by later requests.

mod attention;
mod axis_chain;
mod compiled_cache;
pub mod embedder;
pub mod family;
mod manifest;
mod profile;
mod q4_matvec;
pub mod sampler;
mod stream;
#[allow(unsafe_code)] // inventory's registration is a link-time constructor
mod tuning;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokenizers::Tokenizer;
use tract_onnx::prelude::*;

pub use compiled_cache::CacheOutcome;
/// The kernel path this CPU runs (and `EDGELLM_ISA` may lower), for callers that report it.
pub use edgellm_kernels::Isa;
/// A thread's time on a core and waiting for one: benchmarks read how much of a core a request had.
pub use edgellm_kernels::spin_team::CpuTimes;
pub use embedder::{Embedder, EmbedderInfo, EmbedderManifest};
pub use family::ModelFamily;
pub use manifest::{ModelDims, ModelManifest, SpecialTokens};
pub use profile::{OpCost, PhaseProfile};
pub use sampler::{SamplingParams, SeededRng};
pub use stream::TextStream;

use edgellm_kernels::neighbours;
use edgellm_kernels::spin_team::{self, SpinTeam};
use sampler::Sampler;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt is {tokens} tokens, the limit is {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("inference failed: {0}")]
    Inference(String),
}

impl EngineError {
    fn inference(e: impl std::fmt::Display) -> Self {
        EngineError::Inference(format!("{e:#}"))
    }
}

/// How the engine is set up; filled from the `[model]` section of the config.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_dir: PathBuf,
    /// Threads for tract's matrix products (1 = no pool).
    pub threads: usize,
    /// Hard limit on prompt + generated tokens.
    pub context_tokens: usize,
    /// Keep the KV state of the common prompt prefix (system prompt) between requests.
    pub reuse_prefix: bool,
    /// Prompt tokens per forward pass: bounds logits and attention memory during prefill.
    pub prefill_chunk_tokens: usize,
    /// Where the decluttered model is kept between starts (`None`: rebuilt from ONNX each time).
    pub compiled_cache_dir: Option<PathBuf>,
}

impl EngineOptions {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            model_dir: model_dir.into(),
            threads: 2,
            context_tokens: 2048,
            reuse_prefix: true,
            prefill_chunk_tokens: 64,
            compiled_cache_dir: None,
        }
    }
}

/// What the health report and `check-config` say about the loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub quantization: String,
    pub sha256_prefix: String,
    pub parameters: Option<u64>,
    pub file_bytes: u64,
    pub load_ms: u64,
    pub kv_cache: &'static str,
    pub compiled_cache: CacheOutcome,
    pub threads: usize,
    pub context_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` or the context limit.
    Length,
    Cancelled,
    Deadline,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub prompt_ids: &'a [u32],
    /// Leading tokens that many requests share (system prompt): their KV state is cached.
    pub shared_prefix_len: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: &'a [String],
    pub deadline: Option<Instant>,
    /// Keep going past end-of-sequence (benchmarks want a fixed number of tokens).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub time_to_first_token_ms: f64,
    /// Tokens served from the cached prefix instead of being computed.
    pub reused_prefix_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub token_ids: Vec<u32>,
    pub timings: Timings,
}

/// Whether to go on after a streamed piece (the sender may have gone away).
pub enum Flow {
    Continue,
    Cancel,
}

/// Positions of the model's inputs and outputs, found by name.
#[derive(Debug)]
struct ModelIo {
    n_inputs: usize,
    input_ids: usize,
    attention_mask: Option<usize>,
    position_ids: Option<usize>,
    /// Explicit past key/value inputs, in model order (empty when the cache is in the state).
    past: Vec<usize>,
    logits: usize,
    /// Outputs feeding each `past` input on the next step, same order.
    present: Vec<usize>,
    kv_heads: usize,
    head_dim: usize,
}

/// What the graph passes after tract's optimisation changed in the plan (see `build_plan`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GraphFusions {
    /// 4-bit products on edgellm's kernels ([`q4_matvec`]).
    pub q4_products: usize,
    /// Of those, products that add their weight's zero points themselves.
    pub zero_points: usize,
    /// Packings of prompt chunks in panels of 8 columns for the 16-bit tiles.
    pub wide_packs: usize,
    /// Products that share their activations with others in one job (q, k, v; gate, up).
    pub grouped_products: usize,
    /// Axis nodes (reshapes, moves) gone from the plan ([`axis_chain`]).
    pub axis_nodes_removed: usize,
    /// Layers whose attention runs as one op on edgellm's kernels ([`attention`]).
    pub fused_attention: usize,
}

/// The model state of one sequence: cheap to clone, since tensors are shared.
#[derive(Clone)]
pub struct DecodeState {
    state: TypedSimpleState,
    past: Vec<TValue>,
    tokens: Vec<u32>,
}

struct PrefixSnapshot {
    state: DecodeState,
}

pub struct Engine {
    plan: Arc<TypedRunnableModel>,
    fusions: GraphFusions,
    /// tract's thread pool, for prompt chunks the team does not take (see `forward`).
    executor: Option<tract_linalg::multithread::Executor>,
    /// Spinning helpers for the fused 4-bit products (see `spin_team`).
    team: Option<Arc<SpinTeam>>,
    io: ModelIo,
    tokenizer: Tokenizer,
    manifest: ModelManifest,
    family: &'static ModelFamily,
    info: ModelInfo,
    options: EngineOptions,
    sampler: Sampler,
    prefix: Option<PrefixSnapshot>,
    /// The sentence-embedding model for dense retrieval, when the config asks for it.
    embedder: Option<Embedder>,
}

impl Engine {
    /// Loads and optimises the model; this is the slow part of start-up.
    pub fn load(options: EngineOptions) -> Result<Engine, EngineError> {
        let started = Instant::now();
        if options.threads > 1 {
            // The neighbours' watcher sizes up the other processes while the model loads, so
            // that the first prompt's helpers already know whether to yield their cores.
            neighbours::at_work();
        }
        let dir = &options.model_dir;
        let (manifest, _) = ModelManifest::load(dir)?;
        let model_path = manifest.model_path(dir);
        let file_bytes = std::fs::metadata(&model_path)
            .map_err(|e| EngineError::Model(format!("cannot read {}: {e}", model_path.display())))?
            .len();
        let tokenizer = Tokenizer::from_file(manifest.tokenizer_path(dir))
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", manifest.tokenizer_path(dir).display())))?;
        let build = |sha: &str| {
            build_plan(&model_path, sha, &manifest, options.compiled_cache_dir.as_deref())
                .map_err(|e| EngineError::Model(format!("{}: {e:#}", model_path.display())))
        };
        let check = || {
            let hashing = Instant::now();
            let sha = checked_sha256(&model_path, manifest.model_sha256.as_deref());
            tracing::debug!(sha256_ms = hashing.elapsed().as_millis() as u64, "model file checked");
            sha
        };
        // With a checksum in the manifest, the model is built on its word while a second thread
        // checks the file, and nothing built is used unless the file matches.
        let (sha, (plan, io, compiled_cache, fusions)) = match manifest.model_sha256.as_deref() {
            Some(expected) => std::thread::scope(|scope| {
                let expected = expected.to_ascii_lowercase();
                let checking = scope.spawn(check);
                let built = build(&expected);
                let sha = checking.join().map_err(|_| EngineError::Model("hashing the model panicked".into()))?;
                if sha.is_err()
                    && let (Ok((_, _, CacheOutcome::Written, _)), Some(dir)) = (&built, &options.compiled_cache_dir)
                {
                    // Built from a file that is not the one the manifest names: not to be reused.
                    compiled_cache::discard(dir, &expected);
                }
                Ok::<_, EngineError>((sha?, built?))
            })?,
            None => {
                let sha = check()?;
                let built = build(&sha)?;
                (sha, built)
            }
        };
        let info = ModelInfo {
            id: manifest.id.clone(),
            quantization: manifest.quantization.clone(),
            sha256_prefix: sha[..12].to_string(),
            parameters: manifest.parameters,
            file_bytes,
            load_ms: started.elapsed().as_millis() as u64,
            kv_cache: if io.past.is_empty() { "in_state" } else { "explicit" },
            compiled_cache,
            threads: options.threads,
            context_tokens: options.context_tokens,
        };
        let sampler = Sampler::new(manifest.dims.vocab);
        let family = manifest.family()?;
        // Where the fused products take prompt chunks, the team runs them and tract's pool is
        // left out: its threads made the rest of a chunk slower, not faster (measured).
        let chunks_on_team = fusions.q4_products > 0 && q4_matvec::wide_kernel_available();
        let executor = (options.threads > 1 && !chunks_on_team)
            .then(|| tract_linalg::multithread::Executor::multithread_with_name(options.threads, "edgellm-mm"));
        let team = match options.threads {
            0 | 1 => None,
            n => Some(Arc::new(
                SpinTeam::new(n).map_err(|e| EngineError::Model(format!("cannot start {n} threads: {e}")))?,
            )),
        };
        Ok(Engine {
            plan,
            fusions,
            executor,
            team,
            io,
            tokenizer,
            manifest,
            family,
            info,
            options,
            sampler,
            prefix: None,
            embedder: None,
        })
    }

    /// How the helper threads ran the products so far (`None` with one thread).
    pub fn team_stats(&self) -> Option<spin_team::TeamStats> {
        self.team.as_ref().map(|team| team.stats())
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// What edgellm's graph passes did to tract's plan of this model.
    pub fn graph_fusions(&self) -> GraphFusions {
        self.fusions
    }

    /// Loads the embedding model in `dir`; it stays loaded for the engine's life.
    pub fn load_embedder(&mut self, dir: &Path, max_tokens: usize) -> Result<(), EngineError> {
        self.embedder = Some(Embedder::load(dir, max_tokens)?);
        Ok(())
    }

    /// What the model's family changes in the pipeline (template markers, system turn).
    pub fn family(&self) -> &'static ModelFamily {
        self.family
    }

    pub fn embedder(&self) -> Option<&Embedder> {
        self.embedder.as_ref()
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn context_tokens(&self) -> usize {
        self.options.context_tokens
    }

    /// Tokenizes text in which the chat template's special markers are real special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.manifest.special.add_bos
            && let Some(bos) = self.manifest.special.bos_id
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// A fresh, empty sequence.
    pub fn new_state(&self) -> Result<DecodeState, EngineError> {
        let state = self.plan.spawn().map_err(EngineError::inference)?;
        let empty_kv = || -> TractResult<TValue> {
            Ok(Tensor::zero_dt(self.family.kv_dtype, &[1, self.io.kv_heads, 0, self.io.head_dim])?.into_tvalue())
        };
        let past =
            self.io.past.iter().map(|_| empty_kv()).collect::<TractResult<Vec<_>>>().map_err(EngineError::inference)?;
        Ok(DecodeState { state, past, tokens: Vec::with_capacity(self.options.context_tokens) })
    }

    /// Runs `ids` through the model after what `seq` already holds; returns the logits of the
    /// last position.
    fn forward(&self, seq: &mut DecodeState, ids: &[u32], logits_out: &mut Vec<f32>) -> Result<(), EngineError> {
        self.forward_with(seq, ids, logits_out, tract_onnx::tract_core::plan::eval)
    }

    /// [`Engine::forward`] with tract's per-node evaluation supplied by the caller (the
    /// profiler wraps it in a timer).
    fn forward_with<Eval, E>(
        &self,
        seq: &mut DecodeState,
        ids: &[u32],
        logits_out: &mut Vec<f32>,
        eval: Eval,
    ) -> Result<(), EngineError>
    where
        Eval: for<'a, 'b, 'c> FnMut(
            &'a tract_onnx::tract_core::internal::EvalContext<'a>,
            Option<&'b mut (dyn tract_onnx::tract_core::internal::OpState + 'static)>,
            &'c TypedNode,
            TVec<TValue>,
        ) -> Result<TVec<TValue>, E>,
        E: Into<anyhow::Error> + Send + Sync + 'static,
    {
        let past_len = seq.tokens.len();
        let n = ids.len();
        let mut inputs: Vec<Option<TValue>> = vec![None; self.io.n_inputs];
        let to_tensor = |shape: &[usize], data: Vec<i64>| -> Result<TValue, EngineError> {
            Ok(Tensor::from_shape(shape, &data).map_err(EngineError::inference)?.into_tvalue())
        };
        inputs[self.io.input_ids] = Some(to_tensor(&[1, n], ids.iter().map(|&i| i as i64).collect())?);
        if let Some(ix) = self.io.attention_mask {
            inputs[ix] = Some(to_tensor(&[1, past_len + n], vec![1i64; past_len + n])?);
        }
        if let Some(ix) = self.io.position_ids {
            inputs[ix] = Some(to_tensor(&[1, n], (past_len as i64..(past_len + n) as i64).collect())?);
        }
        for (slot, value) in self.io.past.iter().zip(seq.past.drain(..)) {
            inputs[*slot] = Some(value);
        }
        let inputs: TVec<TValue> = inputs
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| EngineError::Inference(format!("model input {i} is not fed"))))
            .collect::<Result<_, _>>()?;
        let mut outputs = match &self.executor {
            // The 4-bit products share out their panels over the team; tract's own products
            // use its pool for a prompt chunk and stay on this thread for one token.
            Some(pool) if n >= parallel_min_tokens() => spin_team::with_team(self.team.as_ref(), || {
                tract_linalg::multithread::multithread_tract_scope(pool.clone(), || {
                    seq.state.run_plan_with_eval(inputs, eval)
                })
            }),
            _ => spin_team::with_team(self.team.as_ref(), || seq.state.run_plan_with_eval(inputs, eval)),
        }
        .map_err(EngineError::inference)?;
        for &out in &self.io.present {
            seq.past.push(std::mem::replace(&mut outputs[out], Tensor::zero::<f32>(&[0]).unwrap().into_tvalue()));
        }
        seq.tokens.extend_from_slice(ids);
        let logits = outputs[self.io.logits].to_plain_array_view::<f32>().map_err(EngineError::inference)?;
        let vocab = *logits.shape().last().unwrap_or(&0);
        let flat = logits.as_slice().ok_or_else(|| EngineError::Inference("logits not contiguous".into()))?;
        logits_out.clear();
        logits_out.extend_from_slice(&flat[flat.len() - vocab..]);
        Ok(())
    }

    /// Runs a prompt in chunks of `prefill_chunk_tokens`; the logits are the last position's.
    fn prefill(&self, seq: &mut DecodeState, ids: &[u32], logits: &mut Vec<f32>) -> Result<(), EngineError> {
        for chunk in ids.chunks(self.options.prefill_chunk_tokens.max(1)) {
            self.forward(seq, chunk, logits)?;
        }
        Ok(())
    }

    /// The state after `prefix`, from the snapshot when it matches, else computed (and kept).
    fn state_for_prefix(&mut self, prefix: &[u32], logits: &mut Vec<f32>) -> Result<(DecodeState, bool), EngineError> {
        if let Some(snapshot) = &self.prefix
            && snapshot.state.tokens == prefix
        {
            return Ok((snapshot.state.clone(), true));
        }
        let mut seq = self.new_state()?;
        self.prefill(&mut seq, prefix, logits)?;
        if self.options.reuse_prefix && !prefix.is_empty() {
            self.prefix = Some(PrefixSnapshot { state: seq.clone() });
        }
        Ok((seq, false))
    }

    /// Generates a completion, calling `on_piece` after every token with the text that became
    /// final (often empty); returning [`Flow::Cancel`] stops generation.
    pub fn generate(
        &mut self,
        req: &GenerateRequest<'_>,
        mut on_piece: impl FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let prompt = req.prompt_ids;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let limit = self.options.context_tokens;
        if prompt.len() >= limit {
            return Err(EngineError::PromptTooLong { tokens: prompt.len(), limit });
        }
        let mut logits = Vec::with_capacity(self.manifest.dims.vocab);
        // The prefix must leave at least one token to run, which yields the first logits.
        let shared = if self.options.reuse_prefix { req.shared_prefix_len.min(prompt.len() - 1) } else { 0 };
        let (mut seq, reused) = self.state_for_prefix(&prompt[..shared], &mut logits)?;
        self.prefill(&mut seq, &prompt[shared..], &mut logits)?;
        let prefill = started.elapsed();

        let mut rng = SeededRng::new(req.sampling.seed);
        let max_new = req.max_new_tokens.min(limit - prompt.len());
        let mut stream = TextStream::new(req.stop_strings, max_new.max(1));
        let mut generated: Vec<u32> = Vec::with_capacity(max_new);
        let mut text = String::new();
        let mut first_token_at: Option<Duration> = None;
        let mut finish = FinishReason::Length;
        let decode_started = Instant::now();
        while generated.len() < max_new {
            if req.deadline.is_some_and(|d| Instant::now() >= d) {
                finish = FinishReason::Deadline;
                break;
            }
            // The repetition penalty looks at the answer only: penalising prompt tokens would
            // stop the model from quoting the grounding notes it was given.
            let id = self.sampler.sample(&mut logits, &generated, &req.sampling, &mut rng);
            first_token_at.get_or_insert_with(|| started.elapsed());
            if !req.ignore_eos && self.manifest.is_stop_token(id) {
                finish = FinishReason::Stop;
                break;
            }
            generated.push(id);
            let piece = stream.push(&self.tokenizer, id);
            text.push_str(piece.text);
            let stopped_by_string = piece.stopped;
            // Called for every token, even when no text is final yet, so that a
            // cancellation is seen between any two tokens.
            if let Flow::Cancel = on_piece(piece.text) {
                finish = FinishReason::Cancelled;
                break;
            }
            if stopped_by_string {
                finish = FinishReason::Stop;
                break;
            }
            if generated.len() == max_new {
                break;
            }
            self.forward(&mut seq, &[id], &mut logits)?;
        }
        // Text held back as a possible stop-string start is final now.
        if finish != FinishReason::Cancelled {
            let tail = stream.finish();
            if !tail.is_empty() {
                text.push_str(tail);
                on_piece(tail);
            }
        }
        let decode = decode_started.elapsed();
        Ok(Generation {
            text,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
            token_ids: generated,
            timings: Timings {
                prefill_ms: prefill.as_secs_f64() * 1e3,
                decode_ms: decode.as_secs_f64() * 1e3,
                time_to_first_token_ms: first_token_at.unwrap_or(prefill).as_secs_f64() * 1e3,
                reused_prefix_tokens: if reused { shared } else { 0 },
            },
        })
    }

    /// Greedy token ids for `prompt_ids`, with no text handling: what the golden test compares.
    pub fn greedy_ids(&mut self, prompt_ids: &[u32], max_new: usize) -> Result<Vec<u32>, EngineError> {
        let mut seq = self.new_state()?;
        let mut logits = Vec::new();
        self.prefill(&mut seq, prompt_ids, &mut logits)?;
        let mut out = Vec::new();
        for _ in 0..max_new {
            let id = sampler::argmax(&logits);
            out.push(id);
            if self.manifest.is_stop_token(id) {
                break;
            }
            self.forward(&mut seq, &[id], &mut logits)?;
        }
        Ok(out)
    }

    /// Forgets the cached prefix state (e.g. when the system prompt changes on reload).
    pub fn clear_prefix_cache(&mut self) {
        self.prefix = None;
    }
}

/// The file's sha256, refused when its manifest names another.
fn checked_sha256(path: &Path, expected: Option<&str>) -> Result<String, EngineError> {
    let actual = sha256_file(path)?;
    match expected {
        Some(expected) if !actual.eq_ignore_ascii_case(expected) => Err(EngineError::Model(format!(
            "{} does not match its manifest (sha256 {actual}, expected {expected})",
            path.display()
        ))),
        _ => Ok(actual),
    }
}

fn sha256_file(path: &Path) -> Result<String, EngineError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).map_err(|e| EngineError::Model(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Steps with fewer tokens than this run on one thread: for a single decode token the
/// matrices are too thin for a second thread to pay for its synchronisation (measured).
fn parallel_min_tokens() -> usize {
    std::env::var("EDGELLM_PARALLEL_MIN_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

fn build_plan(
    path: &Path,
    sha256: &str,
    manifest: &ModelManifest,
    cache_dir: Option<&Path>,
) -> TractResult<(Arc<TypedRunnableModel>, ModelIo, CacheOutcome, GraphFusions)> {
    let started = Instant::now();
    let (mut typed, cache) = match cache_dir {
        Some(dir) => compiled_cache::load_or_build(dir, sha256, || decluttered_from_onnx(path, manifest))?,
        None => (decluttered_from_onnx(path, manifest)?, CacheOutcome::Off),
    };
    let decluttered = started.elapsed();
    let io = model_io(&typed, manifest)?;
    typed.optimize()?;
    let vectorized = tuning::vectorize_same_shape_binaries(&mut typed)?;
    let fused_ropes = tuning::fuse_rotary_embeddings(&mut typed);
    let fused_softmaxes = tuning::fuse_scaled_masked_softmaxes(&mut typed);
    // EDGELLM_TRACT_Q4=1 leaves the 4-bit products to tract alone, for side-by-side measurements.
    let q4_matvecs =
        if std::env::var_os("EDGELLM_TRACT_Q4").is_some() { 0 } else { q4_matvec::accelerate_q4_matvecs(&mut typed) };
    let zero_points_fused = q4_matvec::fuse_zero_point_corrections(&mut typed)?;
    let wide_packs = if std::env::var_os("EDGELLM_TRACT_PANELS").is_some() {
        0
    } else {
        q4_matvec::pack_chunks_for_wide_tiles(&mut typed)?
    };
    // EDGELLM_UNGROUPED_PRODUCTS=1 keeps one node per product, for side-by-side measurements.
    let grouped_products = if std::env::var_os("EDGELLM_UNGROUPED_PRODUCTS").is_some() {
        0
    } else {
        q4_matvec::group_products_of_shared_activations(&mut typed)?
    };
    let axis_nodes_fused = if std::env::var_os("EDGELLM_KEEP_AXIS_NODES").is_some() {
        0
    } else {
        // Then the packings and the residual adds read through the reshapes next to them
        // (those chains go too).
        axis_chain::fuse_axis_chains(&mut typed)?
            + q4_matvec::pack_through_reshapes(&mut typed)?
            + tuning::binaries_through_reshapes(&mut typed)?
    };
    let fused_attention = typed.nodes().iter().filter(|n| n.op_is::<attention::FusedAttention>()).count();
    let optimized = started.elapsed();
    // No executor in the plan: `forward` picks one per step.
    let plan = typed.into_runnable_with_options(&RunOptions::default())?;
    tracing::debug!(
        ?cache,
        decluttered_ms = decluttered.as_millis() as u64,
        optimize_ms = (optimized - decluttered).as_millis() as u64,
        plan_ms = (started.elapsed() - optimized).as_millis() as u64,
        vectorized,
        fused_ropes,
        fused_softmaxes,
        q4_matvecs,
        zero_points_fused,
        wide_packs,
        grouped_products,
        axis_nodes_fused,
        "model load phases"
    );
    let fusions = GraphFusions {
        q4_products: q4_matvecs,
        zero_points: zero_points_fused,
        wide_packs,
        grouped_products,
        axis_nodes_removed: axis_nodes_fused,
        fused_attention,
    };
    Ok((plan, io, cache, fusions))
}

/// The ONNX graph parsed, typed, simplified, with the KV cache moved into the model state
/// where tract-transformers recognises it: the slow part of a start without the cache.
fn decluttered_from_onnx(path: &Path, manifest: &ModelManifest) -> TractResult<TypedModel> {
    let model = tract_onnx::onnx().model_for_path(path)?;
    let mut typed = model.into_typed()?;
    logits_for_last_position_only(&mut typed)?;
    let mut typed = typed.into_decluttered()?;
    if let Some(transform) = tract_onnx::tract_core::transform::get_transform("transformers_detect_all")? {
        transform.transform(&mut typed)?;
    }
    typed.declutter()?;
    if manifest.family()?.fused_attention {
        let fused_attention = attention::fuse_attention(&mut typed)?;
        tracing::debug!(fused_attention, "attention fused");
    }
    Ok(typed)
}

/// Generation only ever reads the last position's logits, so the output is sliced to it and
/// tract's decluttering pushes that slice up through the position-wise nodes before it: the
/// output head (a fifth of a prompt's arithmetic for this model), the final norm, the last
/// MLP. A prefill chunk then also needs one vocabulary-wide row of logits instead of 64.
fn logits_for_last_position_only(model: &mut TypedModel) -> TractResult<()> {
    let Some(slot) = model.outputs.iter().position(|o| model.outlet_label(*o) == Some("logits")) else {
        return Ok(());
    };
    let logits = model.outputs[slot];
    let shape = model.outlet_fact(logits)?.shape.clone();
    if shape.rank() != 3 {
        return Ok(());
    }
    let positions = shape[1].clone();
    let last = model.wire_node(
        "edgellm.logits_last_position",
        tract_onnx::tract_core::ops::array::Slice::new(1, positions.clone() - 1, positions),
        &[logits],
    )?[0];
    model.outputs[slot] = last;
    model.set_outlet_label(last, "logits".to_string())?;
    Ok(())
}

fn model_io(model: &TypedModel, manifest: &ModelManifest) -> TractResult<ModelIo> {
    let input_names: Vec<String> = model.inputs.iter().map(|o| model.node(o.node).name.clone()).collect();
    let output_names: Vec<String> = model
        .outputs
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let find_in = |name: &str| input_names.iter().position(|n| n == name);
    let input_ids = find_in("input_ids").context("model has no input_ids input")?;
    let logits = output_names.iter().position(|n| n == "logits").context("model has no logits output")?;
    let mut past = Vec::new();
    let mut present = Vec::new();
    for (ix, name) in input_names.iter().enumerate() {
        if let Some(rest) = name.strip_prefix("past_key_values.") {
            let out_name = format!("present.{rest}");
            let out = output_names
                .iter()
                .position(|n| *n == out_name)
                .with_context(|| format!("input {name} has no matching {out_name} output"))?;
            past.push(ix);
            present.push(out);
        }
    }
    let known = 1 + past.len() + ["attention_mask", "position_ids"].iter().filter(|n| find_in(n).is_some()).count();
    anyhow::ensure!(known == input_names.len(), "unexpected model inputs: {input_names:?}");
    Ok(ModelIo {
        n_inputs: input_names.len(),
        input_ids,
        attention_mask: find_in("attention_mask"),
        position_ids: find_in("position_ids"),
        past,
        logits,
        present,
        kv_heads: manifest.dims.kv_heads,
        head_dim: manifest.dims.head_dim,
    })
}
