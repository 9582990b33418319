//! Any text through the safety rules: no panic, spans on character boundaries, ordered and
//! non-overlapping, and redaction removes every redacted span's text.
#![no_main]

use std::sync::LazyLock;

use edgellm_text::safety::{Action, SafetyConfig, SafetyRules};
use libfuzzer_sys::fuzz_target;

static RULES: LazyLock<SafetyRules> = LazyLock::new(|| SafetyRules::new(&SafetyConfig::default()).unwrap());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let report = RULES.scan(text);
    let mut last_end = 0;
    for d in &report.detections {
        assert!(d.start >= last_end && d.start < d.end && d.end <= text.len());
        assert!(text.is_char_boundary(d.start) && text.is_char_boundary(d.end));
        last_end = d.end;
    }
    let redacted = RULES.redact(text, &report);
    if report.detections.iter().any(|d| d.action == Action::Redact) {
        assert_ne!(redacted, text);
    }
});
