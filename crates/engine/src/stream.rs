//! Turning generated token ids into text as they arrive: UTF-8 safe (a character split over
//! several byte-level tokens is held back until it is whole) and stop-string aware (text that
//! could be the start of a stop string is held back until it is known not to be one).

use tokenizers::Tokenizer;

/// Incremental detokenizer. Decodes a small window of recent tokens rather than the whole
/// answer, so each step costs the same however long the answer grows.
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the window that is re-decoded to get context for the next piece.
    prefix_offset: usize,
    /// Tokens before this index have been turned into text already.
    read_offset: usize,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop_strings: Vec<String>,
    stopped: bool,
}

/// What one step produced.
pub struct Piece<'a> {
    /// New text that may be shown now (possibly empty).
    pub text: &'a str,
    /// A stop string was reached; `text` ends before it.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop_strings: &[String], capacity: usize) -> Self {
        TextStream {
            ids: Vec::with_capacity(capacity),
            prefix_offset: 0,
            read_offset: 0,
            text: String::with_capacity(capacity * 4),
            emitted: 0,
            stop_strings: stop_strings.iter().filter(|s| !s.is_empty()).cloned().collect(),
            stopped: false,
        }
    }

    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Piece<'_> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], false).unwrap_or_default();
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], false).unwrap_or_default();
        // A trailing replacement character means an incomplete UTF-8 sequence: wait for more.
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            if let Some(new) = after.get(before.len()..) {
                self.text.push_str(new);
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        self.release()
    }

    fn release(&mut self) -> Piece<'_> {
        if self.stopped {
            return Piece { text: "", stopped: true };
        }
        // Search only where a stop string could newly end.
        let longest = self.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut search_from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let hit = self
            .stop_strings
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|at| search_from + at))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            let start = self.emitted.min(at);
            self.emitted = at;
            return Piece { text: &self.text[start..at], stopped: true };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut safe_end = self.text.len();
        for s in &self.stop_strings {
            for (cut, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..cut]) {
                    safe_end = safe_end.min(self.text.len() - cut);
                }
            }
        }
        let safe_end = safe_end.max(self.emitted);
        let start = self.emitted;
        self.emitted = safe_end;
        Piece { text: &self.text[start..safe_end], stopped: false }
    }

    /// The rest of the text when generation ends for another reason than a stop string.
    pub fn finish(&mut self) -> &str {
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }
}
