//! Post-processing: output safety on the streamed answer, then tidying the final text.
//!
//! Streamed text passes through an [`OutputGuard`], which holds back the last `hold` bytes so
//! that a sensitive span split across tokens is still seen whole before any of it is sent.

use super::safety::{Action, Detection, MAX_DETECTIONS, SafetyRules};

/// Tidies the final answer: the model family's template markers removed, trailing spaces and runs of blank lines
/// collapsed, and, when generation was cut by the length limit, an unfinished trailing
/// fragment removed (back to the last sentence end, if that keeps most of the answer).
pub fn tidy(text: &str, cut_by_length: bool, template_markers: &[&str]) -> String {
    let mut t = text.to_string();
    for marker in template_markers {
        t = t.replace(marker, "");
    }
    let mut lines: Vec<&str> = t.lines().map(str::trim_end).collect();
    lines.dedup_by(|a, b| a.is_empty() && b.is_empty());
    let mut out = lines.join("\n").trim().to_string();
    if cut_by_length
        && !out.ends_with(['.', '!', '?', ':', ')', '"', '`'])
        && let Some(end) = out.rfind(['.', '!', '?', '\n'])
        && end + 1 >= out.len() * 6 / 10
    {
        out.truncate(end + 1);
        out = out.trim_end().to_string();
    }
    out
}

/// What the guard says after a piece of streamed text.
#[derive(Debug, PartialEq)]
pub enum Guarded {
    /// Text that may be sent now (possibly empty).
    Release(String),
    /// A blocking rule matched: stop, and name the rule.
    Blocked(Detection),
}

#[derive(Debug)]
pub struct OutputGuard<'r> {
    rules: Option<&'r SafetyRules>,
    pending: String,
    hold: usize,
    pub detections: heapless::Vec<Detection, MAX_DETECTIONS>,
}

impl<'r> OutputGuard<'r> {
    /// `rules` None passes text straight through.
    pub fn new(rules: Option<&'r SafetyRules>, hold: usize) -> Self {
        OutputGuard { rules, pending: String::new(), hold, detections: heapless::Vec::new() }
    }

    fn check(&mut self) -> Result<(), Detection> {
        let Some(rules) = self.rules else { return Ok(()) };
        let report = rules.scan(&self.pending);
        if let Some(block) = report.blocking_rule() {
            return Err(block.clone());
        }
        // Redacted spans leave `pending` now, so each is recorded once; flagged ones are
        // recorded when released.
        for d in report.detections.iter().filter(|d| d.action == Action::Redact) {
            let _ = self.detections.push(d.clone());
        }
        if report.detections.iter().any(|d| d.action == Action::Redact) {
            self.pending = rules.redact(&self.pending, &report);
        }
        Ok(())
    }

    fn release(&mut self, text: String) -> Guarded {
        if let Some(rules) = self.rules {
            for d in rules.scan(&text).detections.iter().filter(|d| d.action == Action::Flag) {
                let _ = self.detections.push(d.clone());
            }
        }
        Guarded::Release(text)
    }

    pub fn push(&mut self, piece: &str) -> Guarded {
        if self.rules.is_none() {
            return Guarded::Release(piece.to_string());
        }
        self.pending.push_str(piece);
        if let Err(d) = self.check() {
            return Guarded::Blocked(d);
        }
        // Hold back the last (possibly unfinished) word always, since a detector may need
        // all of it (an e-mail's local part comes before its '@'); and the last `hold` bytes
        // when they hold what multi-word spans are made of (digits, '@', ':', '=', a key
        // block's dashes), so a number or a `password: …` split across tokens is seen whole.
        let mut window = self.pending.len().saturating_sub(self.hold);
        while !self.pending.is_char_boundary(window) {
            window -= 1;
        }
        let tail = &self.pending[window..];
        let risky =
            tail.contains(|c: char| c.is_ascii_digit() || matches!(c, '@' | ':' | '=')) || tail.contains("-----");
        let limit = if risky { window } else { self.pending.len() };
        let cut = self.pending[..limit].rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
        let rest = self.pending.split_off(cut);
        let released = std::mem::replace(&mut self.pending, rest);
        self.release(released)
    }

    /// The held-back tail, checked, at the end of generation.
    pub fn finish(&mut self) -> Guarded {
        if let Err(d) = self.check() {
            return Guarded::Blocked(d);
        }
        let rest = std::mem::take(&mut self.pending);
        self.release(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::SafetyConfig;

    const CHATML: &[&str] = &["<|im_start|>", "<|im_end|>", "<|endoftext|>"];

    #[test]
    fn tidy_removes_markers_blank_runs_and_unfinished_tail() {
        assert_eq!(tidy("Hello.<|im_end|>  \n\n\n\nBye.  ", false, CHATML), "Hello.\n\nBye.");
        assert_eq!(
            tidy("One sentence. Two sentences. And an unfinished", true, CHATML),
            "One sentence. Two sentences."
        );
        assert_eq!(
            tidy("Short. A long unfinished fragment that goes on and on", true, CHATML),
            "Short. A long unfinished fragment that goes on and on"
        );
    }

    #[test]
    fn a_split_email_is_redacted_before_any_part_is_sent() {
        let rules = SafetyRules::new(&SafetyConfig::default()).unwrap();
        let mut guard = OutputGuard::new(Some(&rules), 64);
        let pieces = ["You can write to ", "jane", ".doe@", "exam", "ple.org", " any time", " you like", "."];
        let mut sent = String::new();
        for p in pieces {
            match guard.push(p) {
                Guarded::Release(t) => sent.push_str(&t),
                Guarded::Blocked(d) => panic!("blocked by {}", d.rule),
            }
            assert!(!sent.contains("jane"), "part of the address was sent: {sent:?}");
        }
        let Guarded::Release(tail) = guard.finish() else { panic!() };
        sent.push_str(&tail);
        assert_eq!(sent, "You can write to [EMAIL] any time you like.");
        assert_eq!(guard.detections.len(), 1);
    }

    #[test]
    fn plain_words_stream_at_once_numbers_are_held() {
        let rules = SafetyRules::new(&SafetyConfig::default()).unwrap();
        let mut guard = OutputGuard::new(Some(&rules), 64);
        assert_eq!(guard.push("The capital "), Guarded::Release("The capital ".into()));
        assert_eq!(guard.push("of Fra"), Guarded::Release("of ".into()));
        assert_eq!(guard.push("nce is"), Guarded::Release("France ".into()));
        // A card number split over pieces: nothing of it leaves before it is complete.
        let mut sent = String::new();
        for p in [" card 4111", " 1111", " 1111", " 1111", " thanks.", " Bye for now, see you."] {
            if let Guarded::Release(t) = guard.push(p) {
                sent.push_str(&t);
            }
            assert!(!sent.contains("4111"), "{sent:?}");
        }
        if let Guarded::Release(t) = guard.finish() {
            sent.push_str(&t);
        }
        assert!(sent.contains("[CARD]"), "{sent:?}");
    }

    #[test]
    fn blocking_rule_in_output_stops() {
        let rules = SafetyRules::new(&SafetyConfig::default()).unwrap();
        let mut guard = OutputGuard::new(Some(&rules), 64);
        assert!(matches!(guard.push("the key is AKIAIOSF"), Guarded::Release(_)));
        assert!(matches!(guard.push("ODNN7EXAMPLE ok"), Guarded::Blocked(d) if d.rule == "aws_key"));
    }
}
