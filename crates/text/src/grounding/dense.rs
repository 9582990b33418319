//! Dense retrieval (a sentence embedding per chunk) and its fusion with the keyword ranking.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Chunk, Entity, Fusion, GroundingConfig, GroundingError, KnowledgeIndex, terms};

/// Unit-length chunk embeddings in one buffer allocated at its full capacity up front, so the
/// store never grows after start-up or reload. Row `i` belongs to `KnowledgeIndex::chunks[i]`.
/// Beside them, the sentences of chunks with more than one (read with the chunk's heading),
/// in a store of [`SENTENCE_ROWS_PER_CHUNK`] × the capacity: a chunk is as close to a prompt
/// as its closest row, so a question about one sentence of a section is not diluted by the
/// others.
#[derive(Debug)]
pub struct DenseIndex {
    pub(super) dimension: usize,
    pub(super) vectors: Vec<f32>,
    pub(super) len: usize,
    /// Hash of each row's chunk text, so a reload re-embeds only what changed.
    pub(super) text_hashes: Vec<u64>,
    /// The sentence rows (none in an index made `with_capacity`).
    pub(super) sentences: Option<Box<DenseIndex>>,
    /// Per chunk row: its first sentence row and how many it has.
    pub(super) sentence_rows: Vec<(u32, u32)>,
}

/// Sentence rows preallocated per chunk of capacity (on average; a long chunk may use more).
pub const SENTENCE_ROWS_PER_CHUNK: usize = 3;

/// Writes the embedding of a text into a buffer of the index's dimension.
pub type EmbedFn<'a> = dyn FnMut(&str, &mut [f32]) -> Result<(), String> + 'a;

impl DenseIndex {
    pub fn with_capacity(dimension: usize, capacity: usize) -> DenseIndex {
        DenseIndex {
            dimension,
            vectors: vec![0.0; dimension * capacity],
            len: 0,
            text_hashes: Vec::with_capacity(capacity),
            sentences: None,
            sentence_rows: Vec::new(),
        }
    }

    /// Embeds every chunk of `index`, and the sentences of those with several; rows whose text
    /// is unchanged since `previous` are copied. Returns the index and how many texts (chunks
    /// and sentences) were embedded anew.
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
            let text = chunk.embedding_text();
            embedded += usize::from(dense.push_row(&text, &reusable, previous, embed, chunk)?);
        }
        // The sentences, while the store has room.
        let mut store = DenseIndex::with_capacity(dimension, capacity * SENTENCE_ROWS_PER_CHUNK);
        let old_store = previous.and_then(|p| p.sentences.as_deref()).filter(|p| p.dimension == dimension);
        let reusable: HashMap<u64, usize> =
            old_store.map(|p| p.text_hashes.iter().enumerate().map(|(row, h)| (*h, row)).collect()).unwrap_or_default();
        let room = capacity * SENTENCE_ROWS_PER_CHUNK;
        dense.sentence_rows = Vec::with_capacity(capacity);
        for chunk in index.chunks.iter().take(capacity) {
            let first = store.len as u32;
            let sentences = super::sentences(&chunk.text);
            if sentences.len() > 1 {
                for sentence in sentences {
                    if store.len >= room {
                        break;
                    }
                    let text = match &chunk.heading {
                        Some(h) => format!("{h}\n{sentence}"),
                        None => sentence.to_string(),
                    };
                    embedded += usize::from(store.push_row(&text, &reusable, old_store, embed, chunk)?);
                }
            }
            dense.sentence_rows.push((first, store.len as u32 - first));
        }
        dense.sentences = Some(Box::new(store));
        Ok((dense, embedded))
    }

    /// Cosine similarity of chunk `i` to the unit vector `query`: that of its closest row (the
    /// chunk's own or one of its sentences'); 0 for a chunk out of range.
    pub fn similarity(&self, i: usize, query: &[f32]) -> f32 {
        if i >= self.len || query.len() != self.dimension {
            return 0.0;
        }
        let dot = |row: &[f32]| -> f32 { row.iter().zip(query).map(|(a, b)| a * b).sum() };
        let mut best = dot(self.row(i));
        if let (Some(store), Some(&(first, count))) = (&self.sentences, self.sentence_rows.get(i)) {
            for row in first..first + count {
                best = best.max(dot(store.row(row as usize)));
            }
        }
        best
    }

    /// Appends the vector of `text` (of `chunk`): the row of `previous` that held the same
    /// text (`reusable`: text hash to row), else a new embedding. Returns whether it embedded.
    fn push_row(
        &mut self,
        text: &str,
        reusable: &HashMap<u64, usize>,
        previous: Option<&DenseIndex>,
        embed: &mut EmbedFn<'_>,
        chunk: &Chunk,
    ) -> Result<bool, GroundingError> {
        let hash = text_hash(text);
        let row = self.len;
        let target = &mut self.vectors[row * self.dimension..(row + 1) * self.dimension];
        let embedded = match (reusable.get(&hash), previous) {
            (Some(&old), Some(p)) => {
                target.copy_from_slice(p.row(old));
                false
            }
            _ => {
                embed(text, target).map_err(|reason| GroundingError::Embedding {
                    file: chunk.source.clone(),
                    chunk: chunk.index,
                    reason,
                })?;
                true
            }
        };
        self.text_hashes.push(hash);
        self.len += 1;
        Ok(embedded)
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dimension..(i + 1) * self.dimension]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Cosine similarity of sentence `j` of chunk `i` (in [`super::sentences`] order) to
    /// `query`, from the sentence store; a chunk of one sentence is its own row.
    pub fn sentence_similarity(&self, i: usize, j: usize, query: &[f32]) -> f32 {
        match (&self.sentences, self.sentence_rows.get(i)) {
            (Some(store), Some(&(first, count))) if (j as u32) < count && query.len() == self.dimension => {
                store.row((first + j as u32) as usize).iter().zip(query).map(|(a, b)| a * b).sum()
            }
            _ if i < self.len && query.len() == self.dimension => {
                self.row(i).iter().zip(query).map(|(a, b)| a * b).sum()
            }
            _ => 0.0,
        }
    }

    /// Rows of the sentence store.
    pub fn sentence_rows(&self) -> usize {
        self.sentences.as_ref().map_or(0, |s| s.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Bytes held, all allocated at construction.
    pub fn bytes(&self) -> usize {
        self.vectors.capacity() * 4
            + self.text_hashes.capacity() * 8
            + self.sentence_rows.capacity() * 8
            + self.sentences.as_ref().map_or(0, |s| s.bytes())
    }

    /// The `k` rows most similar to the unit vector `query`, best first, or none when even the
    /// best is under `min_similarity` (the prompt is not about the knowledge). The floor gates
    /// the prompt, not each row: a paraphrase's right chunk often scores well under the floor
    /// beside a better-matching neighbour (an exhaustive scan: a few thousand rows take well
    /// under a millisecond).
    pub fn search(&self, query: &[f32], k: usize, min_similarity: f32) -> Vec<(usize, f32)> {
        if query.len() != self.dimension || k == 0 {
            return Vec::new();
        }
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for i in 0..self.len {
            let score = self.similarity(i, query);
            if best.len() == k && score <= best[k - 1].1 {
                continue;
            }
            let at = best.partition_point(|(_, s)| *s >= score);
            best.insert(at, (i, score));
            best.truncate(k);
        }
        if best.first().is_none_or(|(_, score)| *score < min_similarity) {
            best.clear();
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
    pub fn retriever(self) -> Retrieval {
        match (self.keyword, self.dense) {
            (true, true) => Retrieval::Hybrid,
            (false, true) => Retrieval::Dense,
            _ => Retrieval::Keyword,
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

/// Which retrievers rank the knowledge, or found a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
            // A prompt that shares a search term with the knowledge gets its keyword matches
            // in any case: its dense ranking then competes with them, floor or not.
            let floor = if keyword.is_empty() { e.min_similarity } else { -1.0 };
            let similar = vectors.search(query, candidates, floor);
            match e.fusion {
                Fusion::Rrf => fuse(&keyword, &similar, e.rrf_k, top),
                Fusion::Weighted => fuse_weighted(&keyword, &similar, e.keyword_weight, top, |chunk| {
                    (vectors.similarity(chunk, query), knowledge.coverage(terms, chunk))
                }),
            }
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

/// Weighted fusion: each candidate of either ranking scores `cosine + keyword_weight ×
/// coverage` (`measure(chunk)` gives both), so a chunk found by keyword alone is judged by its
/// meaning too, and a keyword match on a common word (low coverage) adds little.
pub fn fuse_weighted(
    keyword: &[(usize, f32)],
    dense: &[(usize, f32)],
    keyword_weight: f32,
    top: usize,
    measure: impl Fn(usize) -> (f32, f32),
) -> Vec<Hit> {
    let mut hits: Vec<Hit> = Vec::with_capacity(keyword.len() + dense.len());
    for (chunk, is_dense) in keyword.iter().map(|k| (k.0, false)).chain(dense.iter().map(|d| (d.0, true))) {
        match hits.iter_mut().find(|h| h.chunk == chunk) {
            Some(hit) => {
                hit.found_by.dense |= is_dense;
                hit.found_by.keyword |= !is_dense;
            }
            None => {
                let (cosine, coverage) = measure(chunk);
                hits.push(Hit {
                    chunk,
                    score: cosine + keyword_weight * coverage,
                    found_by: FoundBy { keyword: !is_dense, dense: is_dense },
                });
            }
        }
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.found_by.dense.cmp(&a.found_by.dense)));
    hits.truncate(top);
    hits
}
