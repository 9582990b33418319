//! Entities in the prompt, from rules and a gazetteer built from the knowledge files.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{KnowledgeIndex, MAX_ENTITIES, STOPWORDS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub text: String,
    pub kind: EntityKind,
    pub start: usize,
    pub end: usize,
}

/// What an entity is; reported with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Email,
    Url,
    Date,
    Number,
    Name,
    Organization,
    Place,
}

impl EntityKind {
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Email => "email",
            EntityKind::Url => "url",
            EntityKind::Date => "date",
            EntityKind::Number => "number",
            EntityKind::Name => "name",
            EntityKind::Organization => "organization",
            EntityKind::Place => "place",
        }
    }
}

static ENTITY_RULES: LazyLock<Vec<(EntityKind, Regex)>> = LazyLock::new(|| {
    let months = "January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";
    vec![
        (EntityKind::Email, Regex::new(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b").unwrap()),
        (EntityKind::Url, Regex::new(r#"\b(?:https?://|www\.)[^\s<>"']+[^\s<>"'.,;:!?)]"#).unwrap()),
        (
            EntityKind::Date,
            Regex::new(&format!(
                r"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}[./]\d{{1,2}}[./]\d{{2,4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{months})\.?(?:\s+\d{{4}})?|(?:{months})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?|(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|today|tomorrow|yesterday))\b"
            ))
            .unwrap(),
        ),
        (EntityKind::Number, Regex::new(r"\b\d+(?:[.,]\d+)?%?").unwrap()),
    ]
});

const ORG_SUFFIXES: &[&str] = &[
    "Inc",
    "Ltd",
    "GmbH",
    "AG",
    "Corp",
    "Corporation",
    "University",
    "Lab",
    "Labs",
    "Institute",
    "Foundation",
    "Company",
    "Bank",
    "Society",
];
const PLACE_CUES: &[&str] = &["in", "at", "from", "to", "near", "visit", "visiting"];

/// Entities in `text`: rules first, then gazetteer phrases, then other capitalised phrases.
pub fn extract_entities(text: &str, index: &KnowledgeIndex) -> heapless::Vec<Entity, MAX_ENTITIES> {
    let mut found: Vec<Entity> = Vec::new();
    for (kind, regex) in ENTITY_RULES.iter() {
        for m in regex.find_iter(text) {
            found.push(Entity { text: m.as_str().to_string(), kind: *kind, start: m.start(), end: m.end() });
        }
    }
    if let Some(gazetteer) = &index.gazetteer {
        let bytes = text.as_bytes();
        for m in gazetteer.find_iter(text) {
            let before_ok = m.start() == 0 || !bytes[m.start() - 1].is_ascii_alphanumeric();
            let after_ok = m.end() == bytes.len() || !bytes[m.end()].is_ascii_alphanumeric();
            if before_ok && after_ok {
                let canonical = &index.gazetteer_terms[m.pattern().as_usize()];
                found.push(Entity {
                    text: canonical.clone(),
                    kind: classify(canonical, text, m.start()),
                    start: m.start(),
                    end: m.end(),
                });
            }
        }
    }
    for m in CAPITALIZED.find_iter(text) {
        let first = m.as_str().split_whitespace().next().unwrap_or("");
        let at_start = text[..m.start()].trim_end().chars().last().is_none_or(|c| matches!(c, '.' | '!' | '?' | '\n'));
        let is_question_word = STOPWORDS.contains(&first.to_lowercase().as_str());
        if !(is_question_word || at_start && !m.as_str().contains(' ')) {
            found.push(Entity {
                text: m.as_str().to_string(),
                kind: classify(m.as_str(), text, m.start()),
                start: m.start(),
                end: m.end(),
            });
        }
    }
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out = heapless::Vec::new();
    let mut last_end = 0;
    for e in found {
        if e.start < last_end {
            continue;
        }
        last_end = e.end;
        if out.push(e).is_err() {
            break;
        }
    }
    out
}

fn classify(phrase: &str, text: &str, start: usize) -> EntityKind {
    if phrase.split_whitespace().last().is_some_and(|w| ORG_SUFFIXES.contains(&w)) {
        return EntityKind::Organization;
    }
    let previous = text[..start].split_whitespace().last().unwrap_or("").to_lowercase();
    if PLACE_CUES.contains(&previous.as_str()) {
        return EntityKind::Place;
    }
    EntityKind::Name
}

static CAPITALIZED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b\p{Lu}[\p{Ll}\p{Lu}'-]+(?:\s+(?:of\s+|de\s+|von\s+)?\p{Lu}[\p{Ll}\p{Lu}'-]+)*").unwrap()
});

/// Capitalised phrases that are not just a sentence's first word.
pub(super) fn capitalized_phrases(text: &str) -> Vec<String> {
    CAPITALIZED
        .find_iter(text)
        .filter(|m| {
            let first_word = m.as_str().split_whitespace().next().unwrap_or("");
            let sentence_start = text[..m.start()]
                .trim_end()
                .chars()
                .last()
                .is_none_or(|c| matches!(c, '.' | '!' | '?' | '#' | '\n' | ':' | '-' | '*'));
            let single = !m.as_str().contains(char::is_whitespace);
            !(STOPWORDS.contains(&first_word.to_lowercase().as_str()) || single && sentence_start)
        })
        .map(|m| m.as_str().to_string())
        .filter(|p| p.len() >= 3 && p.len() <= 64)
        .collect()
}
