//! Notes for the prompt: the sentences of the retrieved chunks ranked against the prompt, so
//! that the most relevant sentence comes first and a small model is not handed whole
//! paragraphs to pick a number from.

use serde::{Deserialize, Serialize};

use super::{DenseIndex, GroundingConfig, Hit, KnowledgeIndex, sentences, terms};

/// One sentence of a retrieved chunk, scored against the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Index of the chunk in the knowledge index.
    pub chunk: usize,
    pub text: String,
    pub score: f32,
}

/// The source sentence an answer is checked against, as reported in `done.grounding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub file: String,
    pub chunk: usize,
    pub text: String,
}

/// The sentences of `hits`' chunks (at most `config.note_candidates` of them, in the hits'
/// order), best first. Each scores its cosine similarity to the prompt's vector (from the
/// dense index's sentence rows, embedded with the chunk's heading at start-up, since "Its
/// code is 5093" means nothing alone: no model call per request), plus `keyword_weight` ×
/// its share of the prompt's keywords, plus a small part of its chunk's rank, so a tie goes
/// to the better chunk. Without vectors, keywords and rank alone decide.
pub fn rank_notes(
    knowledge: &KnowledgeIndex,
    hits: &[Hit],
    query: &[(String, f32)],
    dense: Option<(&DenseIndex, &[f32])>,
    config: &GroundingConfig,
) -> Vec<Note> {
    let mut notes = Vec::new();
    let query_weight: f32 = query.iter().map(|(_, w)| w).sum();
    'hits: for (rank, hit) in hits.iter().enumerate() {
        let Some(chunk) = knowledge.chunks.get(hit.chunk) else { continue };
        for (j, sentence) in sentences(&chunk.text).into_iter().enumerate() {
            let sentence = sentence.trim_start_matches('#').trim();
            if sentence.is_empty() {
                continue;
            }
            if notes.len() >= config.note_candidates {
                break 'hits;
            }
            let mut score = -0.02 * rank as f32;
            if let Some((vectors, query_vector)) = dense {
                score += vectors.sentence_similarity(hit.chunk, j, query_vector);
            }
            if query_weight > 0.0 {
                let own: Vec<String> = terms(sentence).chain(terms(chunk.heading.as_deref().unwrap_or(""))).collect();
                let shared: f32 = query.iter().filter(|(t, _)| own.contains(t)).map(|(_, w)| w).sum();
                score += config.embedding.keyword_weight * shared / query_weight;
            }
            notes.push(Note { chunk: hit.chunk, text: sentence.to_string(), score });
        }
    }
    notes.sort_by(|a, b| b.score.total_cmp(&a.score));
    notes
}

/// The user's turn: the best `config.note_sentences` notes, best first, then the question.
/// (A format the default 135M model follows: it ignores notes placed after the question, and
/// copies a number from a short note far more reliably than from a paragraph.)
pub fn notes_turn(notes: &[Note], user_text: &str, config: &GroundingConfig) -> String {
    if notes.is_empty() || config.note_sentences == 0 {
        return user_text.to_string();
    }
    let mut turn = String::from("Information:");
    for note in notes.iter().take(config.note_sentences) {
        turn.push(' ');
        turn.push_str(&note.text);
        if !note.text.ends_with(['.', '!', '?', ':']) {
            turn.push('.');
        }
    }
    turn.push_str("\n\nQuestion: ");
    turn.push_str(user_text);
    if !config.note_instruction.is_empty() {
        turn.push('\n');
        turn.push_str(&config.note_instruction);
    }
    turn
}
