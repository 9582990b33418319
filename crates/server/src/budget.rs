//! The memory budget implied by a config: every bounded structure at its capacity. The daemon
//! cannot grow past these bounds; the figure is what `check-config` prints and what the
//! health report compares RSS against.

use serde::Serialize;

use crate::config::Config;
use edgellm_engine::{EmbedderManifest, ModelManifest};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct BudgetLine {
    pub item: &'static str,
    pub mib: f64,
    pub how: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryBudget {
    pub lines: Vec<BudgetLine>,
}

impl MemoryBudget {
    pub fn estimate(config: &Config) -> MemoryBudget {
        let mut lines = Vec::new();
        let mut add = |item, bytes: f64, how: String| {
            lines.push(BudgetLine { item, mib: (bytes / MIB * 10.0).round() / 10.0, how })
        };
        let manifest = ModelManifest::load(&config.model.dir).ok().map(|(m, _)| m);
        let file_bytes = manifest
            .as_ref()
            .and_then(|m| std::fs::metadata(m.model_path(&config.model.dir)).ok())
            .map(|m| m.len() as f64)
            .unwrap_or(0.0);
        add("model weights", file_bytes, format!("size of the model file in {}", config.model.dir.display()));
        add("runtime", 48.0 * MIB, "tract plan, tokenizer, thread stacks, allocator (measured)".into());
        if let Some(m) = &manifest {
            let d = &m.dims;
            let per_token = (d.layers * 2 * d.kv_heads * d.head_dim * 4) as f64;
            let ctx = config.model.context_tokens as f64;
            add(
                "KV cache",
                per_token * ctx * 2.0,
                format!(
                    "{} layers x K,V x {} heads x {} dims x f32 = {:.0} KiB/token, x {} tokens, x2 while a step appends",
                    d.layers,
                    d.kv_heads,
                    d.head_dim,
                    per_token / 1024.0,
                    config.model.context_tokens
                ),
            );
            let chunk = config.model.prefill_chunk_tokens as f64;
            add(
                "activations",
                chunk * (d.vocab as f64 * 4.0 * 2.0 + (d.heads as f64 * ctx * 4.0) * 2.0),
                format!("prefill chunk of {} tokens: logits and attention scores", config.model.prefill_chunk_tokens),
            );
            add("sampler", d.vocab as f64 * 8.0, "one candidate buffer of vocabulary size".into());
        }
        let g = &config.grounding;
        if g.knowledge_dir.is_some() {
            add(
                "knowledge",
                g.max_chunks as f64 * (g.chunk_bytes as f64 * 3.0 + 256.0) * 2.0,
                format!(
                    "{} chunks x {} bytes, with their term index; x2 while a reload builds the new one",
                    g.max_chunks, g.chunk_bytes
                ),
            );
            if g.embedding.enabled {
                add(
                    "vector store",
                    g.max_chunks as f64 * (embedding_dimension(config) * 4.0 + 8.0) * 2.0,
                    format!(
                        "{} chunks x {} f32, preallocated; x2 while a reload builds the new one",
                        g.max_chunks,
                        embedding_dimension(config)
                    ),
                );
            }
        }
        // The embedding model serves dense retrieval and the injection detector's semantic
        // layer; it is loaded once for either.
        let i = &config.safety.injection;
        let semantic = config.safety.enabled && i.enabled && i.semantic;
        let e = &g.embedding;
        let embedder_dir = e.model_dir.clone().unwrap_or_default();
        let embedder_bytes = EmbedderManifest::load(&embedder_dir)
            .ok()
            .and_then(|m| std::fs::metadata(embedder_dir.join(&m.model_file)).ok())
            .map(|m| m.len() as f64)
            .unwrap_or(0.0)
            * 3.5
            + e.max_tokens as f64 * embedding_dimension(config) * 4.0 * 32.0;
        if (g.knowledge_dir.is_some() && g.embedding.enabled) || semantic {
            add(
                "embedding model",
                embedder_bytes,
                format!(
                    "tract keeps the int8 embedding table and folds the int8 matrices to f32 (x3.5 the file in {}, measured), activations for {} tokens",
                    embedder_dir.display(),
                    e.max_tokens
                ),
            );
        }
        add(
            "sessions",
            g.sessions as f64 * (g.session_bytes as f64 + 256.0),
            format!("{} sessions x {} bytes of earlier turns", g.sessions, g.session_bytes),
        );
        add(
            "answer cache",
            g.answer_cache_bytes as f64 + g.answer_cache_entries as f64 * 160.0,
            format!("{} bytes in at most {} entries", g.answer_cache_bytes, g.answer_cache_entries),
        );
        let q = &config.queue;
        let per_request =
            config.limits.max_prompt_bytes as f64 + (config.generation.max_new_tokens_limit + 2) as f64 * 48.0 + 1024.0;
        add(
            "queue",
            (q.capacity + 1) as f64 * per_request,
            format!("{} queued + 1 running request, each prompt and its event channel", q.capacity),
        );
        if config.socket.enabled {
            let s = &config.socket;
            add(
                "socket clients",
                s.max_connections as f64 * (s.max_line_bytes as f64 + 64.0 * 1024.0),
                format!("{} connections x (line buffer + reply buffer)", s.max_connections),
            );
        }
        if config.http.enabled {
            let h = &config.http;
            add(
                "HTTP clients",
                h.max_connections as f64 * (h.max_body_bytes as f64 + 64.0 * 1024.0),
                format!("{} connections x (request body + hyper's read buffer)", h.max_connections),
            );
            if h.embeddings {
                add(
                    "HTTP embeddings",
                    embedder_bytes,
                    "POST /v1/embeddings: a MiniLM instance of its own, loaded on first use".to_string(),
                );
            }
        }
        if config.mqtt.enabled {
            let m = &config.mqtt;
            add(
                "MQTT",
                (m.reply_buffer + 16) as f64 * m.max_payload_bytes as f64 + m.dedup_window as f64 * 160.0,
                format!(
                    "{} buffered replies x {} bytes, {} remembered ids",
                    m.reply_buffer, m.max_payload_bytes, m.dedup_window
                ),
            );
        }
        MemoryBudget { lines }
    }

    pub fn total_mib(&self) -> f64 {
        self.lines.iter().map(|l| l.mib).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::from("memory budget (upper bounds at full capacity):\n");
        for l in &self.lines {
            out.push_str(&format!("  {:<16} {:>8.1} MiB  {}\n", l.item, l.mib, l.how));
        }
        out.push_str(&format!("  {:<16} {:>8.1} MiB\n", "total", self.total_mib()));
        out
    }
}

/// Makes the allocator's footprint follow the program's, so that RSS depends on the config and
/// not on uptime. glibc raises its mmap threshold each time a large block is freed, after which
/// blocks like a prefill chunk's logits (64 × 49152 f32 = 12 MiB) come from the heap and stay
/// resident when freed; a soak saw RSS step up by 12 MiB after 1,600 requests. A fixed
/// threshold keeps such blocks mmapped and returns them on free, and two arenas keep the
/// runtime's threads from each growing a heap of their own. Call before any thread starts.
/// Elsewhere (musl) a no-op.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes plain integers and is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The embedding model's dimension, from its manifest (MiniLM's when it cannot be read).
fn embedding_dimension(config: &Config) -> f64 {
    let dir = config.grounding.embedding.model_dir.clone().unwrap_or_default();
    EmbedderManifest::load(&dir).map_or(384.0, |m| m.dimension as f64)
}
