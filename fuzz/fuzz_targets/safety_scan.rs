//! Any text through the safety rules, as the daemon runs them (cleaned first) and as given:
//! no panic; spans on character boundaries, ordered by start, within the text; a blocking
//! detection anywhere makes the report block; redaction removes every redacted span's text and
//! any text cleaning kept apart from invisible characters.
#![no_main]

use std::sync::LazyLock;

use edgellm_text::preprocess::{HIDDEN_OPEN, clean};
use edgellm_text::safety::{Action, SafetyConfig, SafetyRules};
use libfuzzer_sys::fuzz_target;

static RULES: LazyLock<SafetyRules> = LazyLock::new(|| SafetyRules::new(&SafetyConfig::default()).unwrap());

fn check(text: &str) {
    let report = RULES.scan(text);
    let mut last_start = 0;
    for d in &report.detections {
        assert!(d.start >= last_start && d.start < d.end && d.end <= text.len());
        assert!(text.is_char_boundary(d.start) && text.is_char_boundary(d.end));
        last_start = d.start;
    }
    assert_eq!(report.blocking_rule().is_some(), report.detections.iter().any(|d| d.action == Action::Block));
    let redacted = RULES.redact(text, &report);
    if report.detections.iter().any(|d| d.action == Action::Redact) {
        assert_ne!(redacted, text);
    }
    assert!(!redacted.contains(HIDDEN_OPEN));
    let _ = RULES.scan_answer(text);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check(text);
    if let Ok(cleaned) = clean(text, 8192) {
        check(&cleaned);
    }
});
