//! Any bytes as a prompt: cleaning never panics, and what it accepts is non-empty, trimmed,
//! free of control and invisible characters, and within the byte limit.
#![no_main]

use edgellm_text::preprocess::clean_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = clean_bytes(data, 8192) {
        assert!(!text.is_empty());
        assert_eq!(text.trim(), text);
        assert!(!text.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{200B}' || c == '\u{FFFD}'));
        assert!(!text.contains("  "));
    }
});
