//! The knowledge directory: files chunked at start-up and on reload, indexed with BM25.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde::{Deserialize, Serialize};

use super::entities::capitalized_phrases;
use super::{GroundingConfig, GroundingError, terms};

#[derive(Debug, Clone)]
pub struct Chunk {
    /// Path relative to the knowledge directory.
    pub source: String,
    pub index: usize,
    /// The Markdown heading the chunk sits under, if any: embedded and indexed with the text,
    /// since a section's heading often names what its lines are about.
    pub heading: Option<String>,
    pub text: String,
    /// Model tokens in `text`, counted at index time.
    pub tokens: usize,
    terms: Vec<(u32, u16)>,
    length: u32,
}

impl Chunk {
    /// What the embedding model reads for the chunk: its heading, then its text.
    pub fn embedding_text(&self) -> String {
        match &self.heading {
            Some(h) => format!("{h}\n{}", self.text),
            None => self.text.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRef {
    pub file: String,
    pub chunk: usize,
    pub score: f32,
    pub retriever: super::Retrieval,
}

#[derive(Debug, Default)]
pub struct KnowledgeIndex {
    pub chunks: Vec<Chunk>,
    vocab: HashMap<String, u32>,
    doc_freq: Vec<u32>,
    avg_length: f32,
    pub(super) gazetteer: Option<AhoCorasick>,
    pub(super) gazetteer_terms: Vec<String>,
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
            for (i, (heading, chunk_text)) in chunk(&text, config.chunk_bytes).into_iter().enumerate() {
                if index.chunks.len() >= config.max_chunks {
                    index.skipped.push(format!("{relative}#{i}: over max_chunks"));
                    break;
                }
                let mut counts: HashMap<u32, u16> = HashMap::new();
                let mut length = 0u32;
                for term in terms(heading.as_deref().unwrap_or("")).chain(terms(&chunk_text)) {
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
                    heading,
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

    /// The share of the query's term weight (each term's weight × idf) that a chunk's terms
    /// cover, in 0..=1. A term the knowledge never uses counts as the rarest, so a prompt
    /// whose words are mostly not in the files covers little of any chunk.
    pub fn coverage(&self, query: &[(String, f32)], chunk: usize) -> f32 {
        let Some(c) = self.chunks.get(chunk) else { return 0.0 };
        let n = self.chunks.len() as f32;
        let idf = |df: f32| ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        let (mut covered, mut total) = (0.0, 0.0);
        for (t, w) in query {
            match self.vocab.get(t) {
                Some(&id) => {
                    let weight = w * idf(self.doc_freq[id as usize] as f32);
                    total += weight;
                    if c.terms.iter().any(|(t, _)| *t == id) {
                        covered += weight;
                    }
                }
                None => total += w * idf(0.0),
            }
        }
        if total > 0.0 { covered / total } else { 0.0 }
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

/// Paragraphs merged up to `target` bytes; a longer paragraph is split at sentence ends. A
/// Markdown heading (`# ...`) ends the chunk before it and is carried, not merged, by the
/// chunks under it, so that one section's lines never share a chunk with the next's.
fn chunk(text: &str, target: usize) -> Vec<(Option<String>, String)> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut heading: Option<String> = None;
    let flush = |current: &mut String, heading: &Option<String>, chunks: &mut Vec<(Option<String>, String)>| {
        let t = current.trim();
        if !t.is_empty() {
            chunks.push((heading.clone(), t.to_string()));
        }
        current.clear();
    };
    let add = |block: &str, current: &mut String, heading: &Option<String>, chunks: &mut Vec<_>| {
        let block = block.trim();
        if block.is_empty() {
            return;
        }
        let pieces: Vec<&str> = if block.len() > target { split_sentences(block) } else { vec![block] };
        for piece in pieces {
            if !current.is_empty() && current.len() + piece.len() + 1 > target {
                flush(current, heading, chunks);
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
    };
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let mut block_start = 0;
        let mut offset = 0;
        for line in paragraph.split_inclusive('\n') {
            let trimmed = line.trim();
            if trimmed.starts_with('#') {
                add(&paragraph[block_start..offset], &mut current, &heading, &mut chunks);
                flush(&mut current, &heading, &mut chunks);
                let title = trimmed.trim_start_matches('#').trim();
                heading = (!title.is_empty()).then(|| title.chars().take(200).collect());
                block_start = offset + line.len();
            }
            offset += line.len();
        }
        add(&paragraph[block_start..], &mut current, &heading, &mut chunks);
    }
    flush(&mut current, &heading, &mut chunks);
    chunks
}

/// A chunk's sentences (line ends count as sentence ends).
pub fn sentences(text: &str) -> Vec<&str> {
    split_sentences(text)
}

fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | '\n') {
            let end = i + c.len_utf8();
            let at_break =
                c == '\n' || text[end..].starts_with(' ') || text[end..].starts_with('\n') || end == text.len();
            if at_break && !(c == '.' && is_abbreviation(&text[start..i])) {
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

/// Whether the word before a full stop is a title, an initial or a short form ("Dr. Weber",
/// "J. Smith", "e.g. a pump"), whose stop ends no sentence.
fn is_abbreviation(before: &str) -> bool {
    let word = before.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("");
    const SHORT: &[&str] =
        &["dr", "mr", "mrs", "ms", "prof", "st", "no", "nr", "e.g", "i.e", "approx", "vs", "ca", "cf"];
    let single_initial = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
    single_initial || SHORT.contains(&word.to_lowercase().as_str())
}
