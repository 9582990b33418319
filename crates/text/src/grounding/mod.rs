//! Grounding: a local, bounded cache of what helps answer a prompt in context.
//!
//! - [`KnowledgeIndex`]: the files of a knowledge directory, chunked and indexed with BM25 at
//!   start-up and on reload; the best chunks for a prompt are added within a token budget and
//!   reported as sources (file and chunk).
//! - [`DenseIndex`]: the same chunks as unit vectors from a sentence-embedding model, in a
//!   store preallocated at `max_chunks` × dimension; it finds paraphrases that share no
//!   keyword. [`fuse_weighted`] (the default) or [`fuse`] (reciprocal rank fusion) merges both
//!   rankings and remembers which retriever found each chunk.
//! - [`rank_notes`]: the retrieved chunks' sentences ranked against the prompt; the best go
//!   into the prompt first, and the very best is the evidence [`verify`] checks the answer
//!   against (numbers, codes, names, the clause the question asks about, negation).
//! - [`extract_entities`]: names, places, organisations, dates, numbers, e-mails and URLs in
//!   the prompt, from rules and a gazetteer built from the knowledge files; they boost
//!   retrieval and are reported with the answer.
//! - [`SessionMemory`]: the last turns per session id; fixed number of sessions (least
//!   recently used evicted) and fixed bytes per session.
//! - [`AnswerCache`]: exact-match answers for repeated prompts, bounded in entries and bytes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod cache;
mod dense;
mod entities;
mod knowledge;
mod memory;
mod notes;
mod verify;

pub use cache::*;
pub use dense::*;
pub use entities::*;
pub use knowledge::*;
pub use memory::*;
pub use notes::*;
pub use verify::*;

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
    /// Sentences of the retrieved chunks ranked against the prompt.
    pub note_candidates: usize,
    /// The best-ranked sentences written into the prompt, best first.
    pub note_sentences: usize,
    /// Written after the question when notes are given: what to do with them.
    pub note_instruction: String,
    /// When the answer is `unsupported`, the evidence sentence is added after it
    /// ("Source: ..."), streamed like the answer, so the fact reaches the reader even when a
    /// small model misquotes it.
    pub append_evidence: bool,
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
    /// Cosine similarity the best chunk must reach for any dense match to count (a prompt
    /// under it is not about the knowledge); the next best are ranked after it.
    pub min_similarity: f32,
    /// Candidates each retriever contributes to the fusion.
    pub candidates: usize,
    /// How the keyword and dense rankings are merged.
    pub fusion: Fusion,
    /// `weighted` fusion: a chunk scores its cosine similarity to the prompt plus this weight
    /// times the share of the prompt's keyword weight it covers.
    pub keyword_weight: f32,
    /// The reciprocal rank fusion constant (`rrf` fusion): larger flattens the ranks' weights.
    pub rrf_k: f32,
}

/// How hybrid retrieval merges its two rankings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    /// Every candidate of either retriever is scored by its cosine similarity plus
    /// `keyword_weight` × its keyword coverage: a keyword match on one common word adds little,
    /// so it cannot push out a close paraphrase.
    Weighted,
    /// Reciprocal rank fusion (the earlier default): ranks only, so any keyword match, however
    /// weak, counts as much as the best dense one of the same rank.
    Rrf,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            enabled: true,
            model_dir: None,
            max_tokens: 128,
            min_similarity: 0.25,
            candidates: 8,
            fusion: Fusion::Weighted,
            keyword_weight: 0.2,
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
            note_candidates: 8,
            note_sentences: 1,
            note_instruction: "Answer in one short sentence that gives the fact from the information.".into(),
            append_evidence: true,
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

pub(super) const STOPWORDS: &[&str] = &[
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
        assert_eq!((dense.len(), dense.sentence_rows(), embedded), (1, 3, 4), "the chunk and its three lines");
        let sentences = 10 * SENTENCE_ROWS_PER_CHUNK;
        assert_eq!(dense.bytes(), 4 * 10 * 4 + 10 * 8 + 10 * 8 + 4 * sentences * 4 + sentences * 8, "all up front");
        let (again, embedded) = DenseIndex::build(&index, 4, 10, Some(&dense), &mut embed).unwrap();
        assert_eq!((again.len(), embedded), (1, 0));
        let (_dir2, bigger) = knowledge(&[("a.md", &"word. ".repeat(200))]);
        let (capped, _) = DenseIndex::build(&bigger, 4, 1, None, &mut embed).unwrap();
        assert_eq!(
            (capped.len(), capped.sentence_rows()),
            (1, SENTENCE_ROWS_PER_CHUNK),
            "never more than the capacity"
        );
        assert_eq!(calls, 8, "four embeddings for the first build, none for the rebuild, four for the capped one");
    }

    #[test]
    fn dense_search_ranks_by_cosine_when_the_best_match_is_strong_enough() {
        let mut dense = DenseIndex::with_capacity(2, 4);
        for v in [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]] {
            let row = dense.len;
            dense.vectors[row * 2..row * 2 + 2].copy_from_slice(&v);
            dense.text_hashes.push(row as u64);
            dense.len += 1;
        }
        let hits = dense.search(&[0.8, 0.6], 2, 0.0);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 0]);
        // The best (1.0) reaches the floor, so the weaker rows (0.8, 0.0) are ranked after it.
        let strong = dense.search(&[0.0, 1.0], 3, 0.7);
        assert_eq!(strong.iter().map(|h| h.0).collect::<Vec<_>>(), vec![2, 1, 0]);
        // The best (0.96) is under the floor: the prompt matches nothing.
        assert!(dense.search(&[0.8, 0.6], 3, 0.97).is_empty());
        assert_eq!(dense.search(&[0.8, 0.6], 1, 0.95).len(), 1);
    }

    #[test]
    fn a_prompt_sharing_a_word_with_the_knowledge_gets_its_dense_ranking_under_the_floor() {
        let (_dir, index) = knowledge(&[
            ("a.md", "# Parking\nStaff park in bays 1 to 6."),
            ("b.md", "# Radio\nCarry the Safelink radio on site."),
            ("c.md", "# Canteen\nLunch is served at noon."),
        ]);
        // One axis per chunk, by its heading.
        let mut embed = |text: &str, out: &mut [f32]| {
            out.fill(0.0);
            out[["Parking", "Radio", "Canteen"].iter().position(|h| text.contains(h)).unwrap()] = 1.0;
            Ok(())
        };
        let (dense, _) = DenseIndex::build(&index, 3, 10, None, &mut embed).unwrap();
        let chunk_of = |file: &str| index.chunks.iter().position(|c| c.source == file).unwrap();
        // Closest to the parking chunk, but under the floor (0.25).
        let query = [0.2, 0.1, 0.0];
        let config = GroundingConfig::default();
        let retrieve = |terms: &[(String, f32)], how| {
            let mut hits: Vec<usize> =
                retrieve(&index, Some((&dense, &query)), terms, how, &config).iter().map(|h| h.chunk).collect();
            hits.sort();
            hits
        };
        let lunch: Vec<(String, f32)> = terms("When is lunch?").map(|t| (t, 1.0)).collect();
        let nothing: Vec<(String, f32)> = terms("How tall is Everest?").map(|t| (t, 1.0)).collect();
        assert!(retrieve(&nothing, Retrieval::Dense).is_empty(), "no chunk reaches the floor");
        assert!(retrieve(&nothing, Retrieval::Hybrid).is_empty(), "nor shares a word");
        assert!(retrieve(&lunch, Retrieval::Dense).is_empty(), "dense alone ignores the shared word");
        assert_eq!(
            retrieve(&lunch, Retrieval::Hybrid),
            vec![chunk_of("a.md"), chunk_of("b.md"), chunk_of("c.md")],
            "the keyword match and, beside it, the dense ranking under the floor"
        );
    }

    #[test]
    fn fusion_rewards_agreement_and_says_who_found_what() {
        let keyword = [(3, 9.0), (1, 5.0)];
        let dense = [(1, 0.9), (7, 0.8)];
        let hits = fuse(&keyword, &dense, 60.0, 3);
        assert_eq!(hits[0].chunk, 1, "found by both");
        assert_eq!(hits[0].found_by.retriever(), Retrieval::Hybrid);
        assert_eq!((hits[1].chunk, hits[1].found_by.retriever()), (3, Retrieval::Keyword));
        assert_eq!((hits[2].chunk, hits[2].found_by.retriever()), (7, Retrieval::Dense));
        assert_eq!(fuse(&keyword, &[], 60.0, 1).len(), 1);
        let tie = fuse(&[(3, 9.0)], &[(7, 0.5)], 60.0, 2);
        assert_eq!(tie.iter().map(|h| h.chunk).collect::<Vec<_>>(), vec![7, 3], "a tie goes to the dense side");
    }

    #[test]
    fn a_heading_starts_a_chunk_and_goes_with_its_lines() {
        let (_dir, index) = knowledge(&[(
            "ops.md",
            "Intro line.\n\n# Key safe\nKeys hang in the key safe. Its code is 5093.\n\n# Parking\nStaff park in bays 1 to 6.\nBay 7 is for Dr. Lloyd.",
        )]);
        let chunks: Vec<(Option<&str>, &str)> =
            index.chunks.iter().map(|c| (c.heading.as_deref(), c.text.as_str())).collect();
        assert_eq!(
            chunks,
            vec![
                (None, "Intro line."),
                (Some("Key safe"), "Keys hang in the key safe. Its code is 5093."),
                (Some("Parking"), "Staff park in bays 1 to 6.\nBay 7 is for Dr. Lloyd."),
            ]
        );
        assert_eq!(index.chunks[1].embedding_text(), "Key safe\nKeys hang in the key safe. Its code is 5093.");
        assert_eq!(sentences(&index.chunks[2].text), vec!["Staff park in bays 1 to 6.", "Bay 7 is for Dr. Lloyd."]);
        let query: Vec<(String, f32)> = terms("What is the code of the key safe?").map(|t| (t, 1.0)).collect();
        assert_eq!(index.search(&query, 1)[0].0, 1, "the heading's words are indexed");
        assert!(index.coverage(&query, 1) > 0.99, "every term of the query is in the section");
        assert_eq!(index.coverage(&query, 2), 0.0);
    }

    #[test]
    fn weighted_fusion_judges_a_keyword_only_hit_by_its_meaning() {
        // Chunk 3: a keyword match on one common word, far in meaning; chunk 7: a paraphrase.
        let measure = |chunk| if chunk == 3 { (0.10, 0.2) } else { (0.55, 0.0) };
        let hits = fuse_weighted(&[(3, 4.0)], &[(7, 0.55)], 0.3, 1, measure);
        assert_eq!((hits[0].chunk, hits[0].found_by.retriever()), (7, Retrieval::Dense));
        // A chunk that covers the whole query wins over a slightly closer one.
        let measure = |chunk| if chunk == 3 { (0.45, 1.0) } else { (0.55, 0.0) };
        let hits = fuse_weighted(&[(3, 9.0)], &[(7, 0.55), (3, 0.45)], 0.3, 2, measure);
        assert_eq!(hits.iter().map(|h| h.chunk).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(hits[0].found_by.retriever(), Retrieval::Hybrid);
    }

    #[test]
    fn notes_put_the_best_sentence_first() {
        let (_dir, index) = knowledge(&[(
            "alarms.md",
            "# Alarm A31\nA31 trips above 1.8 mg/l. Close valve DV-3 and phone extension 5120.",
        )]);
        let config = GroundingConfig { note_sentences: 1, note_instruction: String::new(), ..Default::default() };
        let query = query_terms("Which valve do I close on an A31 alarm?", &[]);
        let hits = [Hit { chunk: 0, score: 1.0, found_by: FoundBy { keyword: true, dense: false } }];
        let notes = rank_notes(&index, &hits, &query, None, &config);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].text.starts_with("Close valve DV-3"), "{notes:?}");
        let turn = notes_turn(&notes, "Which valve?", &config);
        assert_eq!(turn, "Information: Close valve DV-3 and phone extension 5120.\n\nQuestion: Which valve?");
    }

    #[test]
    fn entities_from_rules_and_gazetteer() {
        let (_dir, index) = knowledge(&[("people.md", "Our contact is Maria Rossi at Acme Robotics Inc in Zurich.")]);
        let text = "Did maria rossi email bob@example.org on 12 May 2024 about 3 robots from www.acme.example?";
        let entities = extract_entities(text, &index);
        let kinds: Vec<(&str, &str)> = entities.iter().map(|e| (e.kind.name(), e.text.as_str())).collect();
        assert!(kinds.contains(&("name", "Maria Rossi")), "{kinds:?}");
        assert!(kinds.contains(&("email", "bob@example.org")), "{kinds:?}");
        assert!(kinds.contains(&("date", "12 May 2024")), "{kinds:?}");
        assert!(kinds.contains(&("number", "3")), "{kinds:?}");
        assert!(kinds.iter().any(|(k, t)| *k == "url" && t.starts_with("www.acme")), "{kinds:?}");
        let entities = extract_entities("I met the team of Acme Robotics Inc in Geneva", &index);
        let kinds: Vec<(&str, &str)> = entities.iter().map(|e| (e.kind.name(), e.text.as_str())).collect();
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
        let answer = |t: &str| CachedAnswer {
            text: t.into(),
            cut_by_length: false,
            prompt_tokens: 1,
            completion_tokens: 1,
            output_findings: Vec::new(),
        };
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
