//! The answer cache: exact-match answers for repeated prompts, bounded in entries and bytes.

use std::collections::HashMap;

use crate::safety::Finding;

/// An answer as it was delivered, with what the output safety rules found in it, so that a
/// repeated prompt gets the same report as the first.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    /// Generation stopped at `max_tokens` rather than at the end of the answer.
    pub cut_by_length: bool,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub output_findings: Vec<Finding>,
}

impl CachedAnswer {
    /// Bytes counted against the cache's bound: the text, the findings' rule names, and a
    /// fixed overhead per entry and per finding.
    fn size(&self) -> usize {
        self.text.len() + 96 + self.output_findings.iter().map(|f| f.rule.len() + 24).sum::<usize>()
    }
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
        let size = answer.size();
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.remove(&key) {
            self.bytes -= old.size();
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) else { break };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.size();
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
