//! Pre-processing: clean the user's text, then render the model's chat template around it.
//!
//! Cleaning: invalid UTF-8 and empty prompts are refused; the text is NFKC-normalised;
//! control characters other than newline and tab, zero-width and bidi-override characters and
//! U+FFFD are removed; runs of spaces collapse to one; the result is trimmed.

use minijinja::{Environment, context};
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("prompt is not valid UTF-8")]
    InvalidUtf8,
    #[error("prompt is empty")]
    Empty,
    #[error("prompt is {bytes} bytes, the limit is {limit}")]
    TooManyBytes { bytes: usize, limit: usize },
    #[error("chat template: {0}")]
    Template(String),
}

/// Characters that change how text reads or renders without being visible.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
        | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // bidi isolates
        | '\u{FEFF}' // BOM / zero-width no-break space
        | '\u{00AD}' // soft hyphen
        | '\u{FFFD}' // replacement character
    )
}

/// Cleans raw prompt bytes; `max_bytes` applies to the raw input, before any work is done.
pub fn clean_bytes(raw: &[u8], max_bytes: usize) -> Result<String, PreprocessError> {
    if raw.len() > max_bytes {
        return Err(PreprocessError::TooManyBytes { bytes: raw.len(), limit: max_bytes });
    }
    let text = std::str::from_utf8(raw).map_err(|_| PreprocessError::InvalidUtf8)?;
    clean(text, max_bytes)
}

pub fn clean(text: &str, max_bytes: usize) -> Result<String, PreprocessError> {
    if text.len() > max_bytes {
        return Err(PreprocessError::TooManyBytes { bytes: text.len(), limit: max_bytes });
    }
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkc() {
        let c = if c == '\r' { '\n' } else { c };
        if c == ' ' || (c.is_whitespace() && c != '\n' && c != '\t') {
            pending_space = true;
            continue;
        }
        if (c.is_control() && c != '\n' && c != '\t') || is_invisible(c) {
            continue;
        }
        if pending_space && !out.is_empty() && c != '\n' && !out.ends_with('\n') {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    // Collapse three or more newlines into a paragraph break and trim.
    while out.contains("\n\n\n") {
        out = out.replace("\n\n\n", "\n\n");
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        return Err(PreprocessError::Empty);
    }
    Ok(trimmed.to_string())
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// The model's own chat template (from its manifest), rendered with minijinja.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self, PreprocessError> {
        let mut env = Environment::new();
        env.add_template_owned("chat", source.to_string()).map_err(|e| PreprocessError::Template(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Renders the conversation with the generation prompt (the assistant's turn opened).
    pub fn render(&self, messages: &[ChatMessage<'_>]) -> Result<String, PreprocessError> {
        let template = self.env.get_template("chat").map_err(|e| PreprocessError::Template(e.to_string()))?;
        template
            .render(context! { messages => messages, add_generation_prompt => true })
            .map_err(|e| PreprocessError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_controls_invisibles_and_spacing() {
        let raw = "  Hello\u{0007}  \u{200B}wor\u{202E}ld\t!\r\n\n\n\nBye\u{FFFD}  ";
        assert_eq!(clean(raw, 1000).unwrap(), "Hello world\t!\n\nBye");
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(clean("ｆｕｌｌ\u{FB01}x ①", 100).unwrap(), "fullfix 1");
    }

    #[test]
    fn refuses_empty_invalid_and_oversized() {
        assert_eq!(clean(" \u{200B}\u{0000} ", 100), Err(PreprocessError::Empty));
        assert_eq!(clean_bytes(b"abc\xff", 100), Err(PreprocessError::InvalidUtf8));
        assert_eq!(clean_bytes(&[b'a'; 101], 100), Err(PreprocessError::TooManyBytes { bytes: 101, limit: 100 }));
    }

    #[test]
    fn renders_chatml_template() {
        let source = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(source).unwrap();
        let out = t
            .render(&[
                ChatMessage { role: "system", content: "Be brief." },
                ChatMessage { role: "user", content: "Hi" },
            ])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
