//! Post-processing: output safety on the streamed answer, then tidying the final text.
//!
//! Streamed text passes through an [`OutputGuard`], which holds back the unfinished last word,
//! the last `hold` bytes when they look like part of a number, address or secret, and always
//! as many bytes as the longest span a custom rule or blocklist phrase can cover, so that a
//! span split across tokens is seen whole before any of it is sent. Each scan also reads the
//! end of what was already sent, so a rule sees the same text around a span as `scan` does.

use super::safety::{Action, Detection, MAX_DETECTIONS, SafetyRules, ScanReport};

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
    /// The end of the text already released, read again with the next pieces.
    context: String,
    pending: String,
    hold: usize,
    /// Held back always: the longest span a custom rule or blocklist phrase can cover.
    span_hold: usize,
    pub detections: heapless::Vec<Detection, MAX_DETECTIONS>,
}

impl<'r> OutputGuard<'r> {
    /// `rules` None passes text straight through.
    pub fn new(rules: Option<&'r SafetyRules>, hold: usize) -> Self {
        let span_hold = rules.map(SafetyRules::longest_custom_span).unwrap_or(0);
        OutputGuard {
            rules,
            context: String::new(),
            pending: String::new(),
            hold,
            span_hold,
            detections: heapless::Vec::new(),
        }
    }

    /// Scans what was released lately and what is held, stops at a blocking rule, and
    /// redacts (in what is held) every `redact` span that reaches into it. Returns the
    /// report of the text as it now is, and where the held text starts in it.
    fn check(&mut self) -> Result<(ScanReport, usize), Detection> {
        let rules = self.rules.expect("checked only with rules");
        let offset = self.context.len();
        let mut joined = format!("{}{}", self.context, self.pending);
        let mut report = rules.scan_answer(&joined);
        let in_pending = |d: &&Detection| d.end > offset;
        if let Some(block) = report.detections.iter().filter(in_pending).find(|d| d.action == Action::Block) {
            return Err(block.clone());
        }
        let mut redactions = ScanReport::default();
        for d in report.detections.iter().filter(in_pending).filter(|d| d.action == Action::Redact) {
            // Redacted spans leave `pending` now, so each is recorded once.
            let _ = self.detections.push(d.clone());
            let local = Detection { start: d.start.max(offset) - offset, end: d.end - offset, ..d.clone() };
            let _ = redactions.detections.push(local);
        }
        if !redactions.detections.is_empty() {
            self.pending = rules.redact(&self.pending, &redactions);
            joined = format!("{}{}", self.context, self.pending);
            report = rules.scan_answer(&joined);
        }
        Ok((report, offset))
    }

    /// Sends `pending[..cut]`: flagged spans that start in it are recorded, and the end of
    /// it is kept as context for the next scan.
    fn release(&mut self, cut: usize, report: &ScanReport, offset: usize) -> Guarded {
        let rest = self.pending.split_off(cut);
        let released = std::mem::replace(&mut self.pending, rest);
        for d in report.detections.iter().filter(|d| d.action == Action::Flag) {
            if (offset..offset + cut).contains(&d.start) {
                let _ = self.detections.push(d.clone());
            }
        }
        self.context.push_str(&released);
        let keep = self.hold.max(self.span_hold);
        if self.context.len() > keep {
            let mut from = self.context.len() - keep;
            while !self.context.is_char_boundary(from) {
                from += 1;
            }
            self.context.drain(..from);
        }
        Guarded::Release(released)
    }

    pub fn push(&mut self, piece: &str) -> Guarded {
        if self.rules.is_none() {
            return Guarded::Release(piece.to_string());
        }
        self.pending.push_str(piece);
        let (report, offset) = match self.check() {
            Ok(r) => r,
            Err(d) => return Guarded::Blocked(d),
        };
        // Hold back the last (possibly unfinished) word always, since a detector may need
        // all of it (an e-mail's local part comes before its '@'); the last `hold` bytes
        // when they hold what multi-word spans are made of (digits, '@', ':', '=', a key
        // block's dashes), so a number or a `password: …` split across tokens is seen whole;
        // and the longest span of a custom rule or blocklist phrase, whatever it looks like.
        let back = |bytes: usize| {
            let mut at = self.pending.len().saturating_sub(bytes);
            while !self.pending.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        let window = back(self.hold);
        let tail = &self.pending[window..];
        let risky =
            tail.contains(|c: char| c.is_ascii_digit() || matches!(c, '@' | ':' | '=')) || tail.contains("-----");
        let mut limit = if risky { window } else { self.pending.len() };
        if self.span_hold > 0 {
            limit = limit.min(back(self.span_hold));
        }
        let cut = self.pending[..limit].rfind(char::is_whitespace).map(|i| i + 1).unwrap_or(0);
        self.release(cut, &report, offset)
    }

    /// The held-back tail, checked, at the end of generation.
    pub fn finish(&mut self) -> Guarded {
        if self.rules.is_none() {
            return Guarded::Release(std::mem::take(&mut self.pending));
        }
        match self.check() {
            Ok((report, offset)) => {
                let all = self.pending.len();
                self.release(all, &report, offset)
            }
            Err(d) => Guarded::Blocked(d),
        }
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

    /// Streams `pieces` through a guard; returns what was sent, or the rule that blocked.
    fn stream(rules: &SafetyRules, pieces: &[&str]) -> Result<String, String> {
        let mut guard = OutputGuard::new(Some(rules), 64);
        let mut sent = String::new();
        for p in pieces {
            match guard.push(p) {
                Guarded::Release(t) => sent.push_str(&t),
                Guarded::Blocked(d) => return Err(d.rule),
            }
        }
        match guard.finish() {
            Guarded::Release(t) => sent.push_str(&t),
            Guarded::Blocked(d) => return Err(d.rule),
        }
        Ok(sent)
    }

    #[test]
    fn multi_word_custom_rules_apply_to_streamed_answers_as_scan_finds_them() {
        let mut config = SafetyConfig::default();
        config.custom.push(crate::safety::CustomRule {
            name: "welcome".into(),
            pattern: "(?i)welcome to my virtual".into(),
            action: Action::Block,
        });
        config.custom.push(crate::safety::CustomRule {
            name: "project".into(),
            pattern: r"project\s+blue\s+falcon".into(),
            action: Action::Redact,
        });
        let rules = SafetyRules::new(&config).unwrap();
        let answer = ["Hello", " and", " welcome", " to", " my", " virtual", " kitchen", "!"];
        assert!(rules.scan_answer(&answer.concat()).blocking_rule().is_some());
        assert_eq!(stream(&rules, &answer), Err("welcome".into()));
        // Word by word, the redacted phrase never leaves in part.
        let answer =
            ["It", " is", " called", " Project", " project", " blue", " falcon", " and", " more", " words", "."];
        let sent = stream(&rules, &answer).unwrap();
        assert_eq!(sent, "It is called Project [REDACTED] and more words.");
        // Flags are reported once, from the released text.
        let mut config = SafetyConfig::default();
        config.custom.push(crate::safety::CustomRule {
            name: "seen".into(),
            pattern: "blue sky".into(),
            action: Action::Flag,
        });
        let rules = SafetyRules::new(&config).unwrap();
        let mut guard = OutputGuard::new(Some(&rules), 64);
        for p in ["The", " blue", " sky", " is", " blue", " sky", " again", " and", " again", " and", " again"] {
            assert!(matches!(guard.push(p), Guarded::Release(_)));
        }
        assert!(matches!(guard.finish(), Guarded::Release(_)));
        assert_eq!(guard.detections.iter().filter(|d| d.rule == "seen").count(), 2);
    }

    #[test]
    fn blocking_rule_in_output_stops() {
        let rules = SafetyRules::new(&SafetyConfig::default()).unwrap();
        let mut guard = OutputGuard::new(Some(&rules), 64);
        assert!(matches!(guard.push("the key is AKIAIOSF"), Guarded::Release(_)));
        assert!(matches!(guard.push("ODNN7EXAMPLE ok"), Guarded::Blocked(d) if d.rule == "aws_key"));
    }
}
