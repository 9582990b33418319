//! Grounding: a local, bounded cache of what helps answer a prompt in context.
//!
//! - [`KnowledgeIndex`]: the files of a knowledge directory, chunked and indexed with BM25 at
//!   start-up and on reload; the best chunks for a prompt are added within a token budget and
//!   reported as sources (file and chunk).
//! - [`DenseIndex`]: the same chunks as unit vectors from a sentence-embedding model, in a
//!   store preallocated at `max_chunks` × dimension; it finds paraphrases that share no
//!   keyword. [`fuse`] merges both rankings (reciprocal rank fusion) and remembers which
//!   retriever found each chunk.
//! - [`extract_entities`]: names, places, organisations, dates, numbers, e-mails and URLs in
//!   the prompt, from rules and a gazetteer built from the knowledge files; they boost
//!   retrieval and are reported with the answer.
//! - [`SessionMemory`]: the last turns per session id; fixed number of sessions (least
//!   recently used evicted) and fixed bytes per session.
//! - [`AnswerCache`]: exact-match answers for repeated prompts, bounded in entries and bytes.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Entities kept per prompt.
pub const MAX_ENTITIES: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroundingConfig {
    /// Text and Markdown files to ground answers in; empty: no local knowledge.
    pub knowledge_dir: Option<PathBuf>,
    pub max_files: usize,
    pub max_file_bytes: usize,
    pub max_chunks: usize,
    /// Target size of a chunk (paragraphs are merged up to it, long ones split).
    pub chunk_bytes: usize,
    /// Chunks added to a prompt at most.
    pub top_chunks: usize,
    pub knowledge_token_budget: usize,
    /// Sessions remembered; the least recently used is evicted.
    pub sessions: usize,
    /// Bytes of earlier turns kept per session.
    pub session_bytes: usize,
    pub history_token_budget: usize,
    pub answer_cache_entries: usize,
    pub answer_cache_bytes: usize,
    pub embedding: EmbeddingConfig,
}

/// Dense retrieval with a sentence-embedding model, beside keyword retrieval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// Used only when a knowledge directory is set; off: keyword retrieval alone.
    pub enabled: bool,
    /// The embedding model's directory; unset: `minilm` beside the LLM's directory.
    pub model_dir: Option<PathBuf>,
    /// Tokens of a chunk or prompt the model reads; the rest is truncated.
    pub max_tokens: usize,
    /// Cosine similarity below which a dense match does not count.
    pub min_similarity: f32,
    /// Candidates each retriever contributes to the fusion.
    pub candidates: usize,
    /// The reciprocal rank fusion constant: larger flattens the ranks' weights.
    pub rrf_k: f32,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            enabled: true,
            model_dir: None,
            max_tokens: 128,
            min_similarity: 0.25,
            candidates: 8,
            rrf_k: 60.0,
        }
    }
}

impl Default for GroundingConfig {
    fn default() -> Self {
        GroundingConfig {
            knowledge_dir: None,
            max_files: 256,
            max_file_bytes: 256 * 1024,
            max_chunks: 2048,
            chunk_bytes: 600,
            top_chunks: 3,
            knowledge_token_budget: 256,
            sessions: 64,
            session_bytes: 4096,
            history_token_budget: 384,
            answer_cache_entries: 128,
            answer_cache_bytes: 256 * 1024,
            embedding: EmbeddingConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroundingError {
    #[error("knowledge directory {path}: {reason}")]
    Knowledge { path: String, reason: String },
    #[error("embedding chunk {file}#{chunk}: {reason}")]
    Embedding { file: String, chunk: usize, reason: String },
}

// ---------------------------------------------------------------------------------------------
// Terms

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "in", "is", "it",
    "its", "me", "my", "of", "on", "or", "our", "should", "so", "that", "the", "their", "there", "this", "to", "was",
    "we", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your", "please", "tell", "about",
    "have", "has", "did", "would", "could", "into", "than", "then", "them", "they", "these", "those", "been", "if",
];

/// Lower-cased word terms without stopwords, with a light plural folding.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") { w[..w.len() - 1].to_string() } else { w })
}

// ---------------------------------------------------------------------------------------------
// Knowledge

#[derive(Debug, Clone)]
pub struct Chunk {
    /// Path relative to the knowledge directory.
    pub source: String,
    pub index: usize,
    pub text: String,
    /// Model tokens in `text`, counted at index time.
    pub tokens: usize,
    terms: Vec<(u32, u16)>,
    length: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceRef {
    pub file: String,
    pub chunk: usize,
    pub score: f32,
    pub retriever: &'static str,
}

#[derive(Debug, Default)]
pub struct KnowledgeIndex {
    pub chunks: Vec<Chunk>,
    vocab: HashMap<String, u32>,
    doc_freq: Vec<u32>,
    avg_length: f32,
    gazetteer: Option<AhoCorasick>,
    gazetteer_terms: Vec<String>,
    pub files: usize,
    pub skipped: Vec<String>,
}

/// What a load did, for the log.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: usize,
    pub chunks: usize,
    pub skipped: Vec<String>,
}

impl KnowledgeIndex {
    /// Reads, chunks and indexes the knowledge directory. `count_tokens` measures chunks in
    /// model tokens so the prompt budget can be kept exactly.
    pub fn load(
        config: &GroundingConfig,
        count_tokens: &dyn Fn(&str) -> usize,
    ) -> Result<KnowledgeIndex, GroundingError> {
        let Some(dir) = &config.knowledge_dir else { return Ok(KnowledgeIndex::default()) };
        let err = |reason: String| GroundingError::Knowledge { path: dir.display().to_string(), reason };
        let mut files = Vec::new();
        collect_files(dir, &mut files, config.max_files * 4, 0).map_err(|e| err(e.to_string()))?;
        files.sort();
        let mut index = KnowledgeIndex::default();
        let mut gazetteer: HashMap<String, String> = HashMap::new();
        for path in files {
            let relative = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            if index.files >= config.max_files {
                index.skipped.push(format!("{relative}: over max_files"));
                continue;
            }
            let text = match std::fs::metadata(&path) {
                Ok(m) if m.len() as usize > config.max_file_bytes => {
                    index.skipped.push(format!("{relative}: larger than max_file_bytes"));
                    continue;
                }
                Ok(_) => match std::fs::read(&path).map(String::from_utf8) {
                    Ok(Ok(t)) => t,
                    Ok(Err(_)) => {
                        index.skipped.push(format!("{relative}: not UTF-8"));
                        continue;
                    }
                    Err(e) => {
                        index.skipped.push(format!("{relative}: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    index.skipped.push(format!("{relative}: {e}"));
                    continue;
                }
            };
            index.files += 1;
            for phrase in capitalized_phrases(&text) {
                gazetteer.entry(phrase.to_lowercase()).or_insert(phrase);
            }
            for (i, chunk_text) in chunk(&text, config.chunk_bytes).into_iter().enumerate() {
                if index.chunks.len() >= config.max_chunks {
                    index.skipped.push(format!("{relative}#{i}: over max_chunks"));
                    break;
                }
                let mut counts: HashMap<u32, u16> = HashMap::new();
                let mut length = 0u32;
                for term in terms(&chunk_text) {
                    let next = index.vocab.len() as u32;
                    let id = *index.vocab.entry(term).or_insert(next);
                    if id as usize == index.doc_freq.len() {
                        index.doc_freq.push(0);
                    }
                    *counts.entry(id).or_default() = counts.get(&id).copied().unwrap_or(0).saturating_add(1);
                    length += 1;
                }
                for id in counts.keys() {
                    index.doc_freq[*id as usize] += 1;
                }
                let tokens = count_tokens(&chunk_text);
                index.chunks.push(Chunk {
                    source: relative.clone(),
                    index: i,
                    text: chunk_text,
                    tokens,
                    terms: counts.into_iter().collect(),
                    length,
                });
            }
        }
        index.avg_length = index.chunks.iter().map(|c| c.length as f32).sum::<f32>() / index.chunks.len().max(1) as f32;
        let mut entries: Vec<String> = gazetteer.into_values().collect();
        entries.sort();
        entries.truncate(4096);
        if !entries.is_empty() {
            index.gazetteer = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&entries)
                .ok();
        }
        index.gazetteer_terms = entries;
        Ok(index)
    }

    /// The best chunks for weighted query terms (BM25, k1 = 1.2, b = 0.75), best first.
    pub fn search(&self, query: &[(String, f32)], k: usize) -> Vec<(usize, f32)> {
        if self.chunks.is_empty() || k == 0 {
            return Vec::new();
        }
        let n = self.chunks.len() as f32;
        let ids: Vec<(u32, f32, f32)> = query
            .iter()
            .filter_map(|(t, w)| {
                let id = *self.vocab.get(t)?;
                let df = self.doc_freq[id as usize] as f32;
                let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                Some((id, idf, *w))
            })
            .collect();
        let mut scored: Vec<(usize, f32)> = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let mut score = 0.0;
                for (id, idf, weight) in &ids {
                    if let Some((_, tf)) = c.terms.iter().find(|(t, _)| t == id) {
                        let tf = *tf as f32;
                        let norm = 1.2 * (0.25 + 0.75 * c.length as f32 / self.avg_length.max(1.0));
                        score += weight * idf * tf * 2.2 / (tf + norm);
                    }
                }
                (score > 0.0).then_some((i, score))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        scored
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, cap: usize, depth: usize) -> std::io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&path, out, cap, depth + 1)?;
        } else if kind.is_file()
            && matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "md" | "markdown"))
            && out.len() < cap
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Paragraphs merged up to `target` bytes; a longer paragraph is split at sentence ends.
fn chunk(text: &str, target: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, chunks: &mut Vec<String>| {
        let t = current.trim();
        if !t.is_empty() {
            chunks.push(t.to_string());
        }
        current.clear();
    };
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let pieces: Vec<&str> = if paragraph.len() > target { split_sentences(paragraph) } else { vec![paragraph] };
        for piece in pieces {
            if !current.is_empty() && current.len() + piece.len() + 1 > target {
                flush(&mut current, &mut chunks);
            }
            if !current.is_empty() {
                current.push('\n');
            }
            // A single sentence longer than the target is cut at a character boundary.
            let mut end = piece.len().min(target * 2);
            while !piece.is_char_boundary(end) {
                end -= 1;
            }
            current.push_str(&piece[..end]);
        }
    }
    flush(&mut current, &mut chunks);
    chunks
}

fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | '\n') {
            let end = i + c.len_utf8();
            if text[end..].starts_with(' ') || text[end..].starts_with('\n') || end == text.len() {
                out.push(text[start..end].trim());
                start = end;
            }
        }
    }
    if start < text.len() {
        out.push(text[start..].trim());
    }
    out.retain(|s| !s.is_empty());
    out
}

static CAPITALIZED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b\p{Lu}[\p{Ll}\p{Lu}'-]+(?:\s+(?:of\s+|de\s+|von\s+)?\p{Lu}[\p{Ll}\p{Lu}'-]+)*").unwrap()
});

/// Capitalised phrases that are not just a sentence's first word.
fn capitalized_phrases(text: &str) -> Vec<String> {
    CAPITALIZED
        .find_iter(text)
        .filter(|m| {
            let first_word = m.as_str().split_whitespace().next().unwrap_or("");
            let sentence_start = text[..m.start()]
                .trim_end()
                .chars()
                .last()
                .is_none_or(|c| matches!(c, '.' | '!' | '?' | '#' | '\n' | ':' | '-' | '*'));
            let single = !m.as_str().contains(char::is_whitespace);
            !(STOPWORDS.contains(&first_word.to_lowercase().as_str()) || single && sentence_start)
        })
        .map(|m| m.as_str().to_string())
        .filter(|p| p.len() >= 3 && p.len() <= 64)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dense retrieval

/// Unit-length chunk embeddings in one buffer allocated at its full capacity up front, so the
/// store never grows after start-up or reload. Row `i` belongs to `KnowledgeIndex::chunks[i]`.
#[derive(Debug)]
pub struct DenseIndex {
    dimension: usize,
    vectors: Vec<f32>,
    len: usize,
    /// Hash of each row's chunk text, so a reload re-embeds only what changed.
    text_hashes: Vec<u64>,
}

/// Writes the embedding of a text into a buffer of the index's dimension.
pub type EmbedFn<'a> = dyn FnMut(&str, &mut [f32]) -> Result<(), String> + 'a;

impl DenseIndex {
    pub fn with_capacity(dimension: usize, capacity: usize) -> DenseIndex {
        DenseIndex {
            dimension,
            vectors: vec![0.0; dimension * capacity],
            len: 0,
            text_hashes: Vec::with_capacity(capacity),
        }
    }

    /// Embeds every chunk of `index`; rows whose text is unchanged since `previous` are copied.
    /// Returns the index and how many chunks were embedded anew.
    pub fn build(
        index: &KnowledgeIndex,
        dimension: usize,
        capacity: usize,
        previous: Option<&DenseIndex>,
        embed: &mut EmbedFn<'_>,
    ) -> Result<(DenseIndex, usize), GroundingError> {
        let mut dense = DenseIndex::with_capacity(dimension, capacity);
        let reusable: HashMap<u64, usize> = previous
            .filter(|p| p.dimension == dimension)
            .map(|p| p.text_hashes.iter().enumerate().map(|(row, h)| (*h, row)).collect())
            .unwrap_or_default();
        let mut embedded = 0;
        for chunk in index.chunks.iter().take(capacity) {
            let hash = text_hash(&chunk.text);
            let row = dense.len;
            let target = &mut dense.vectors[row * dimension..(row + 1) * dimension];
            match (reusable.get(&hash), previous) {
                (Some(&old), Some(p)) => target.copy_from_slice(p.row(old)),
                _ => {
                    embed(&chunk.text, target).map_err(|reason| GroundingError::Embedding {
                        file: chunk.source.clone(),
                        chunk: chunk.index,
                        reason,
                    })?;
                    embedded += 1;
                }
            }
            dense.text_hashes.push(hash);
            dense.len += 1;
        }
        Ok((dense, embedded))
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dimension..(i + 1) * self.dimension]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Bytes held, all allocated at construction.
    pub fn bytes(&self) -> usize {
        self.vectors.capacity() * 4 + self.text_hashes.capacity() * 8
    }

    /// The `k` rows most similar to the unit vector `query` with at least `min_similarity`,
    /// best first (an exhaustive scan: a few thousand rows take well under a millisecond).
    pub fn search(&self, query: &[f32], k: usize, min_similarity: f32) -> Vec<(usize, f32)> {
        if query.len() != self.dimension || k == 0 {
            return Vec::new();
        }
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for i in 0..self.len {
            let score: f32 = self.row(i).iter().zip(query).map(|(a, b)| a * b).sum();
            if score < min_similarity || best.len() == k && score <= best[k - 1].1 {
                continue;
            }
            let at = best.partition_point(|(_, s)| *s >= score);
            best.insert(at, (i, score));
            best.truncate(k);
        }
        best
    }
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Which retrievers ranked a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundBy {
    pub keyword: bool,
    pub dense: bool,
}

impl FoundBy {
    pub fn name(self) -> &'static str {
        match (self.keyword, self.dense) {
            (true, true) => "hybrid",
            (false, true) => "dense",
            _ => "keyword",
        }
    }
}

/// A chunk chosen for a prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub chunk: usize,
    pub score: f32,
    pub found_by: FoundBy,
}

/// Which retrievers rank the knowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    Keyword,
    Dense,
    Hybrid,
}

/// The best `config.top_chunks` chunks for a prompt's weighted `terms` and, for dense and
/// hybrid retrieval, its embedding (`dense`: the chunk vectors and the prompt's vector).
/// Without vectors every mode falls back to keywords.
pub fn retrieve(
    knowledge: &KnowledgeIndex,
    dense: Option<(&DenseIndex, &[f32])>,
    terms: &[(String, f32)],
    how: Retrieval,
    config: &GroundingConfig,
) -> Vec<Hit> {
    let top = config.top_chunks;
    let e = &config.embedding;
    let candidates = e.candidates.max(top);
    let as_hits = |ranking: Vec<(usize, f32)>, found_by: FoundBy| -> Vec<Hit> {
        ranking.into_iter().map(|(chunk, score)| Hit { chunk, score, found_by }).collect()
    };
    match (how, dense) {
        (Retrieval::Dense, Some((vectors, query))) => {
            as_hits(vectors.search(query, top, e.min_similarity), FoundBy { keyword: false, dense: true })
        }
        (Retrieval::Hybrid, Some((vectors, query))) => {
            let keyword = knowledge.search(terms, candidates);
            let similar = vectors.search(query, candidates, e.min_similarity);
            fuse(&keyword, &similar, e.rrf_k, top)
        }
        _ => as_hits(knowledge.search(terms, top), FoundBy { keyword: true, dense: false }),
    }
}

/// A prompt's search terms, with the words of its entities counted twice.
pub fn query_terms(text: &str, entities: &[Entity]) -> Vec<(String, f32)> {
    let mut query: Vec<(String, f32)> = terms(text).map(|t| (t, 1.0)).collect();
    for entity in entities {
        query.extend(terms(&entity.text).map(|t| (t, 1.0)));
    }
    query
}

/// Reciprocal rank fusion of the keyword and dense rankings (best first each): a chunk scores
/// `Σ 1 / (k + rank)` over the rankings it appears in, so agreement wins and neither
/// retriever's raw score scale matters.
pub fn fuse(keyword: &[(usize, f32)], dense: &[(usize, f32)], rrf_k: f32, top: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = Vec::with_capacity(keyword.len() + dense.len());
    for (ranking, is_dense) in [(keyword, false), (dense, true)] {
        for (rank, (chunk, _)) in ranking.iter().enumerate() {
            let add = 1.0 / (rrf_k + rank as f32 + 1.0);
            match hits.iter_mut().find(|h| h.chunk == *chunk) {
                Some(hit) => {
                    hit.score += add;
                    hit.found_by.dense |= is_dense;
                    hit.found_by.keyword |= !is_dense;
                }
                None => hits.push(Hit {
                    chunk: *chunk,
                    score: add,
                    found_by: FoundBy { keyword: !is_dense, dense: is_dense },
                }),
            }
        }
    }
    // Ties (the same rank in one list each) go to the dense side: a keyword match on a common
    // word is likelier to be spurious than a close embedding, and the keyword side's chunk
    // still comes next.
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.found_by.dense.cmp(&a.found_by.dense)));
    hits.truncate(top);
    hits
}

// ---------------------------------------------------------------------------------------------
// Entities

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    pub text: String,
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
}

static ENTITY_RULES: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    let months = "January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";
    vec![
        ("email", Regex::new(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b").unwrap()),
        ("url", Regex::new(r#"\b(?:https?://|www\.)[^\s<>"']+[^\s<>"'.,;:!?)]"#).unwrap()),
        (
            "date",
            Regex::new(&format!(
                r"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}[./]\d{{1,2}}[./]\d{{2,4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{months})\.?(?:\s+\d{{4}})?|(?:{months})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|today|tomorrow|yesterday))\b"
            ))
            .unwrap(),
        ),
        ("number", Regex::new(r"\b\d+(?:[.,]\d+)?%?").unwrap()),
    ]
});

const ORG_SUFFIXES: &[&str] = &[
    "Inc",
    "Ltd",
    "GmbH",
    "AG",
    "Corp",
    "Corporation",
    "University",
    "Lab",
    "Labs",
    "Institute",
    "Foundation",
    "Company",
    "Bank",
    "Society",
];
const PLACE_CUES: &[&str] = &["in", "at", "from", "to", "near", "visit", "visiting"];

/// Entities in `text`: rules first, then gazetteer phrases, then other capitalised phrases.
pub fn extract_entities(text: &str, index: &KnowledgeIndex) -> heapless::Vec<Entity, MAX_ENTITIES> {
    let mut found: Vec<Entity> = Vec::new();
    for (kind, regex) in ENTITY_RULES.iter() {
        for m in regex.find_iter(text) {
            found.push(Entity { text: m.as_str().to_string(), kind, start: m.start(), end: m.end() });
        }
    }
    if let Some(gazetteer) = &index.gazetteer {
        let bytes = text.as_bytes();
        for m in gazetteer.find_iter(text) {
            let before_ok = m.start() == 0 || !bytes[m.start() - 1].is_ascii_alphanumeric();
            let after_ok = m.end() == bytes.len() || !bytes[m.end()].is_ascii_alphanumeric();
            if before_ok && after_ok {
                let canonical = &index.gazetteer_terms[m.pattern().as_usize()];
                found.push(Entity {
                    text: canonical.clone(),
                    kind: classify(canonical, text, m.start()),
                    start: m.start(),
                    end: m.end(),
                });
            }
        }
    }
    for m in CAPITALIZED.find_iter(text) {
        let first = m.as_str().split_whitespace().next().unwrap_or("");
        let at_start = text[..m.start()].trim_end().chars().last().is_none_or(|c| matches!(c, '.' | '!' | '?' | '\n'));
        let is_question_word = STOPWORDS.contains(&first.to_lowercase().as_str());
        if !(is_question_word || at_start && !m.as_str().contains(' ')) {
            found.push(Entity {
                text: m.as_str().to_string(),
                kind: classify(m.as_str(), text, m.start()),
                start: m.start(),
                end: m.end(),
            });
        }
    }
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out = heapless::Vec::new();
    let mut last_end = 0;
    for e in found {
        if e.start < last_end {
            continue;
        }
        last_end = e.end;
        if out.push(e).is_err() {
            break;
        }
    }
    out
}

fn classify(phrase: &str, text: &str, start: usize) -> &'static str {
    if phrase.split_whitespace().last().is_some_and(|w| ORG_SUFFIXES.contains(&w)) {
        return "organization";
    }
    let previous = text[..start].split_whitespace().last().unwrap_or("").to_lowercase();
    if PLACE_CUES.contains(&previous.as_str()) {
        return "place";
    }
    "name"
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[derive(Debug, Clone)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
}

#[derive(Debug)]
struct Session {
    turns: VecDeque<Turn>,
    bytes: usize,
    last_used: u64,
}

/// Earlier turns per session id, within fixed bounds.
#[derive(Debug)]
pub struct SessionMemory {
    sessions: HashMap<String, Session>,
    capacity: usize,
    bytes_per_session: usize,
    clock: u64,
}

impl SessionMemory {
    pub fn new(capacity: usize, bytes_per_session: usize) -> Self {
        SessionMemory { sessions: HashMap::with_capacity(capacity), capacity, bytes_per_session, clock: 0 }
    }

    /// The session's turns, oldest first.
    pub fn turns(&mut self, id: &str) -> Vec<Turn> {
        self.clock += 1;
        match self.sessions.get_mut(id) {
            Some(s) => {
                s.last_used = self.clock;
                s.turns.iter().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    pub fn remember(&mut self, id: &str, user: &str, assistant: &str) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        if !self.sessions.contains_key(id) && self.sessions.len() >= self.capacity {
            // Evict the least recently used session.
            if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                self.sessions.remove(&oldest);
            }
        }
        let limit = self.bytes_per_session;
        let session = self.sessions.entry(id.to_string()).or_insert_with(|| Session {
            turns: VecDeque::new(),
            bytes: 0,
            last_used: 0,
        });
        session.last_used = self.clock;
        let turn = Turn { user: truncate(user, limit / 2), assistant: truncate(assistant, limit / 2) };
        session.bytes += turn.user.len() + turn.assistant.len();
        session.turns.push_back(turn);
        while session.bytes > limit {
            let Some(old) = session.turns.pop_front() else { break };
            session.bytes -= old.user.len() + old.assistant.len();
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn session_bytes(&self, id: &str) -> usize {
        self.sessions.get(id).map(|s| s.bytes).unwrap_or(0)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

// ---------------------------------------------------------------------------------------------
// Answer cache

#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Exact-match answers keyed by a sha256 of everything that determines them.
#[derive(Debug)]
pub struct AnswerCache {
    entries: HashMap<[u8; 32], (CachedAnswer, u64)>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
}

impl AnswerCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        AnswerCache { entries: HashMap::with_capacity(max_entries), max_entries, max_bytes, bytes: 0, clock: 0 }
    }

    pub fn key(parts: &[&[u8]]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().into()
    }

    pub fn get(&mut self, key: &[u8; 32]) -> Option<CachedAnswer> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(a, used)| {
            *used = clock;
            a.clone()
        })
    }

    pub fn insert(&mut self, key: [u8; 32], answer: CachedAnswer) {
        let size = answer.text.len() + 96;
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.remove(&key) {
            self.bytes -= old.text.len() + 96;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) else { break };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.text.len() + 96;
            }
        }
        self.bytes += size;
        self.entries.insert(key, (answer, self.clock));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knowledge(files: &[(&str, &str)]) -> (tempfile::TempDir, KnowledgeIndex) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let config = GroundingConfig { knowledge_dir: Some(dir.path().into()), ..Default::default() };
        let index = KnowledgeIndex::load(&config, &|t| t.len() / 4).unwrap();
        (dir, index)
    }

    #[test]
    fn bm25_finds_the_chunk_with_the_fact() {
        let (_dir, index) = knowledge(&[
            ("lab.md", "# The lab\n\nThe door code of the lab is 4417.\n\nThe lab is on the third floor."),
            ("kitchen.txt", "The kitchen has a coffee machine.\n\nThe fridge is cleaned on Fridays."),
        ]);
        assert_eq!(index.files, 2);
        let query: Vec<(String, f32)> = terms("What is the door code of the lab?").map(|t| (t, 1.0)).collect();
        let hits = index.search(&query, 2);
        assert_eq!(index.chunks[hits[0].0].source, "lab.md");
        assert!(index.chunks[hits[0].0].text.contains("4417"));
    }

    #[test]
    fn dense_index_is_preallocated_and_reuses_unchanged_rows_on_rebuild() {
        let (_dir, index) = knowledge(&[("a.md", "alpha beta\n\ngamma delta\n\nepsilon")]);
        assert_eq!(index.chunks.len(), 1, "small paragraphs merge into one chunk");
        let mut calls = 0;
        let mut embed = |text: &str, out: &mut [f32]| {
            calls += 1;
            out.fill(0.0);
            out[text.len() % out.len()] = 1.0;
            Ok(())
        };
        let (dense, embedded) = DenseIndex::build(&index, 4, 10, None, &mut embed).unwrap();
        assert_eq!((dense.len(), embedded), (1, 1));
        assert_eq!(dense.bytes(), 4 * 10 * 4 + 10 * 8, "the full capacity up front");
        let (again, embedded) = DenseIndex::build(&index, 4, 10, Some(&dense), &mut embed).unwrap();
        assert_eq!((again.len(), embedded), (1, 0));
        let (_dir2, bigger) = knowledge(&[("a.md", &"word. ".repeat(200))]);
        let (capped, _) = DenseIndex::build(&bigger, 4, 1, None, &mut embed).unwrap();
        assert_eq!(capped.len(), 1, "never more rows than the capacity");
        assert_eq!(calls, 2, "one embedding for the first build, none for the rebuild, one for the capped one");
    }

    #[test]
    fn dense_search_ranks_by_cosine_and_drops_weak_matches() {
        let mut dense = DenseIndex::with_capacity(2, 4);
        for v in [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]] {
            let row = dense.len;
            dense.vectors[row * 2..row * 2 + 2].copy_from_slice(&v);
            dense.text_hashes.push(row as u64);
            dense.len += 1;
        }
        let hits = dense.search(&[0.8, 0.6], 2, 0.0);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 0]);
        let strong = dense.search(&[0.0, 1.0], 3, 0.7);
        assert_eq!(strong.iter().map(|h| h.0).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn fusion_rewards_agreement_and_says_who_found_what() {
        let keyword = [(3, 9.0), (1, 5.0)];
        let dense = [(1, 0.9), (7, 0.8)];
        let hits = fuse(&keyword, &dense, 60.0, 3);
        assert_eq!(hits[0].chunk, 1, "found by both");
        assert_eq!(hits[0].found_by.name(), "hybrid");
        assert_eq!((hits[1].chunk, hits[1].found_by.name()), (3, "keyword"));
        assert_eq!((hits[2].chunk, hits[2].found_by.name()), (7, "dense"));
        assert_eq!(fuse(&keyword, &[], 60.0, 1).len(), 1);
        let tie = fuse(&[(3, 9.0)], &[(7, 0.5)], 60.0, 2);
        assert_eq!(tie.iter().map(|h| h.chunk).collect::<Vec<_>>(), vec![7, 3], "a tie goes to the dense side");
    }

    #[test]
    fn entities_from_rules_and_gazetteer() {
        let (_dir, index) = knowledge(&[("people.md", "Our contact is Maria Rossi at Acme Robotics Inc in Zurich.")]);
        let text = "Did maria rossi email bob@example.org on 12 May 2024 about 3 robots from www.acme.example?";
        let entities = extract_entities(text, &index);
        let kinds: Vec<(&str, &str)> = entities.iter().map(|e| (e.kind, e.text.as_str())).collect();
        assert!(kinds.contains(&("name", "Maria Rossi")), "{kinds:?}");
        assert!(kinds.contains(&("email", "bob@example.org")), "{kinds:?}");
        assert!(kinds.contains(&("date", "12 May 2024")), "{kinds:?}");
        assert!(kinds.contains(&("number", "3")), "{kinds:?}");
        assert!(kinds.iter().any(|(k, t)| *k == "url" && t.starts_with("www.acme")), "{kinds:?}");
        let entities = extract_entities("I met the team of Acme Robotics Inc in Geneva", &index);
        let kinds: Vec<(&str, &str)> = entities.iter().map(|e| (e.kind, e.text.as_str())).collect();
        assert!(kinds.contains(&("organization", "Acme Robotics Inc")), "{kinds:?}");
        assert!(kinds.contains(&("place", "Geneva")), "{kinds:?}");
    }

    #[test]
    fn sessions_are_bounded_in_count_and_bytes() {
        let mut memory = SessionMemory::new(2, 100);
        memory.remember("a", "hello", "hi");
        memory.remember("b", "hello", "hi");
        memory.turns("a"); // a is now more recent than b
        memory.remember("c", "hello", "hi");
        assert_eq!(memory.len(), 2);
        assert!(memory.turns("b").is_empty(), "b was least recently used");
        assert_eq!(memory.turns("a").len(), 1);
        for i in 0..20 {
            memory.remember("a", &format!("question {i} is rather long"), "and so is the answer");
        }
        assert!(memory.session_bytes("a") <= 100);
        assert!(memory.turns("a").last().unwrap().user.contains("19"));
    }

    #[test]
    fn answer_cache_is_bounded_in_entries_and_bytes() {
        let mut cache = AnswerCache::new(3, 400);
        let answer =
            |t: &str| CachedAnswer { text: t.into(), finish_reason: "stop", prompt_tokens: 1, completion_tokens: 1 };
        for i in 0..5u8 {
            cache.insert(AnswerCache::key(&[&[i]]), answer("short"));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&AnswerCache::key(&[&[0]])).is_none());
        assert!(cache.get(&AnswerCache::key(&[&[4]])).is_some());
        cache.insert(AnswerCache::key(&[b"big"]), answer(&"x".repeat(250)));
        assert!(cache.bytes() <= 400);
        cache.insert(AnswerCache::key(&[b"huge"]), answer(&"x".repeat(1000)));
        assert!(cache.get(&AnswerCache::key(&[b"huge"])).is_none(), "larger than the whole cache");
    }
}
