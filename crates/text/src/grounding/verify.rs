//! The check after generation: does the answer say what the best source sentence says? A
//! small model paraphrases and sometimes takes the wrong number from its notes; the verdict
//! and the sentence go back with the answer so that an app can show the source line.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{Evidence, STOPWORDS, terms};

/// Whether the answer agrees with its evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every number, code and name of the answer is in the evidence (or the question), and
    /// the answer gives at least one of the evidence's own.
    Supported,
    /// The answer names a number, code or name the evidence does not hold, or gives none of
    /// the evidence's.
    Unsupported,
}

/// What the check found, reported as `grounding` in the `done` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundingReport {
    pub verdict: Verdict,
    /// The best source sentence for the prompt: show it beside the answer.
    pub evidence: String,
    /// The file and chunk the evidence comes from.
    pub file: String,
    pub chunk: usize,
    /// The answer's numbers, codes or names that are not in the evidence (or the question).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched: Vec<String>,
}

/// Numbers (times, decimals, thousands), codes that mix letters and digits (`DV-3`, `A12`,
/// `NG-5562`) and capitalised words that do not open a sentence.
static ITEMS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:[A-Za-z]{1,4}-?\d[\w-]*|\d+(?:[.,:]\d+)*[A-Za-z]?\d*)\b|\b\p{Lu}[\p{Ll}'-]+\b").unwrap()
});

/// The checkable items of a text, normalised: lower case, leading zeros and thousands
/// separators dropped (`08:00` = `8:00`, `3,000` = `3000`), `DV 3` = `dv-3` = `dv3`.
fn items(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Spelled numbers count as their digits ("thirty days" = "30 days").
    for word in text.split(|c: char| !c.is_alphabetic()) {
        if let Some(n) = NUMBER_WORDS.iter().position(|w| w.eq_ignore_ascii_case(word)) {
            out.push(NUMBER_VALUES[n].to_string());
        }
    }
    for m in ITEMS.find_iter(text) {
        let s = m.as_str();
        if s.chars().next().is_some_and(char::is_uppercase) && !s.chars().any(|c| c.is_ascii_digit()) {
            // A capitalised word: a name unless it opens a sentence or is a common word.
            let before = text[..m.start()].trim_end();
            let opens = before.is_empty() || before.ends_with(['.', '!', '?', ':', '\n', '"', '(']);
            let lower = s.to_lowercase();
            if opens || STOPWORDS.contains(&lower.as_str()) || COMMON_CAPITALISED.contains(&lower.as_str()) {
                continue;
            }
            out.push(lower);
            continue;
        }
        out.push(normalise_number(s));
    }
    out
}

const NUMBER_WORDS: &[&str] = &[
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen", "twenty",
    "thirty", "forty", "fifty", "sixty", "ninety", "hundred", "thousand",
];
const NUMBER_VALUES: &[u32] = &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 20, 30, 40, 50, 60, 90, 100, 1000];

/// Words that turn a clause into its negation.
const NEGATIONS: &[&str] = &["not", "no", "never", "cannot", "none", "nobody", "nothing", "without"];

fn negated(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .any(|w| NEGATIONS.iter().any(|n| n.eq_ignore_ascii_case(w)) || w.to_lowercase().ends_with("n't"))
}

/// The part of the evidence the question asks about: its clauses (split at commas,
/// semicolons and "and"/"but"/"then") that share the most search terms with the question,
/// or the whole sentence when none shares any. "The front door code is 4417 and the store
/// room code is 5093" answers a question about the store room with its second clause only.
fn asked_clauses<'a>(evidence: &'a str, question: &str) -> Vec<&'a str> {
    let asked: Vec<String> = terms(question).collect();
    let mut clauses: Vec<&str> = Vec::new();
    for part in evidence.split([',', ';']) {
        let mut rest = part;
        while let Some(at) = [" and ", " but ", " then "].iter().filter_map(|w| rest.find(w)).min() {
            clauses.push(&rest[..at]);
            rest = &rest[at + 1..];
        }
        clauses.push(rest);
    }
    let shared = |c: &str| terms(c).filter(|t| asked.contains(t)).count();
    let best = clauses.iter().map(|c| shared(c)).max().unwrap_or(0);
    if best == 0 {
        return vec![evidence];
    }
    clauses.into_iter().filter(|c| shared(c) == best).collect()
}

/// Words a sentence-case answer capitalises without naming anything.
const COMMON_CAPITALISED: &[&str] = &["yes", "no", "not", "note", "answer", "information", "question", "however"];

fn normalise_number(s: &str) -> String {
    let lower = s.to_lowercase().replace('-', "");
    // "3,000" → "3000"; a comma before exactly three digits is a thousands separator.
    let mut cleaned = String::with_capacity(lower.len());
    let chars: Vec<char> = lower.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let thousands = *c == ','
            && chars.get(i + 1..i + 4).is_some_and(|d| d.iter().all(char::is_ascii_digit))
            && chars.get(i + 4).is_none_or(|d| !d.is_ascii_digit());
        if !thousands {
            cleaned.push(*c);
        }
    }
    // Leading zeros of each digit group: "08:00" → "8:0".
    let mut out = String::with_capacity(cleaned.len());
    let mut group_start = true;
    let chars: Vec<char> = cleaned.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if group_start && *c == '0' && next_is_digit {
            continue;
        }
        group_start = !c.is_ascii_digit();
        out.push(*c);
    }
    out
}

/// Checks `answer` against `evidence`: items of the answer found in neither the evidence
/// nor the question contradict it; an answer that gives none of the evidence's own numbers,
/// codes or names (or, when it has none, no word of it) does not state its fact either.
///
/// `context` is the rest of what the model read (the other notes): an item found there is no
/// invention, though the answer must still give one of the evidence's own to be supported.
pub fn verify(answer: &str, evidence: &Evidence, question: &str, context: &str) -> GroundingReport {
    let known: Vec<String> = items(&evidence.text).into_iter().chain(items(question)).chain(items(context)).collect();
    let mut unmatched: Vec<String> = Vec::new();
    for item in items(answer) {
        if !known.contains(&item) && !unmatched.contains(&item) {
            unmatched.push(item);
        }
    }
    // The evidence's own facts: what it names that the question does not, in the clauses the
    // question asks about when they name any (the 135M model likes the sentence's other number).
    let asked = items(question);
    let focus = asked_clauses(&evidence.text, question);
    let own = |text: &str| -> Vec<String> { items(text).into_iter().filter(|i| !asked.contains(i)).collect() };
    let mut facts: Vec<String> = focus.iter().flat_map(|c| own(c)).collect();
    if facts.is_empty() {
        facts = own(&evidence.text);
    }
    let answered = items(answer).iter().any(|i| facts.contains(i));
    // Without numbers, codes or names, the answer must still say something of the evidence
    // beyond the question's own words ("accepts cash" to "is cash accepted?" says nothing).
    let question_terms: Vec<String> = terms(question).collect();
    let evidence_terms: Vec<String> = terms(&evidence.text).filter(|t| !question_terms.contains(t)).collect();
    let shares = terms(answer).any(|t| evidence_terms.contains(&t));
    let says_it = if facts.is_empty() { shares } else { answered };
    // "Cash is not accepted" is not answered by "the canteen accepts cash".
    let contradicts = focus.iter().any(|c| negated(c)) && !negated(answer);
    let verdict =
        if unmatched.is_empty() && says_it && !contradicts { Verdict::Supported } else { Verdict::Unsupported };
    GroundingReport {
        verdict,
        evidence: evidence.text.clone(),
        file: evidence.file.clone(),
        chunk: evidence.chunk,
        unmatched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(text: &str) -> Evidence {
        Evidence { file: "a.md".into(), chunk: 0, text: text.into() }
    }

    #[test]
    fn numbers_codes_and_names_are_normalised() {
        assert_eq!(
            items("Handover is at 08:00, DV-3 holds 3,000 litres; ask Fiona Reid."),
            vec!["8:0", "dv3", "3000", "fiona", "reid"]
        );
        assert_eq!(items("The gate code is 2741."), vec!["2741"]);
    }

    #[test]
    fn a_wrong_number_is_unsupported_and_a_copied_one_supported() {
        let e = evidence("A31 trips when the chlorine residual goes above 1.8 mg/l.");
        let q = "At what level does alarm A31 trip?";
        let good = verify("Alarm A31 trips above 1.8 mg/l of chlorine.", &e, q, "");
        assert_eq!(good.verdict, Verdict::Supported, "{good:?}");
        let bad = verify("Alarm A31 trips above 1.2 mg/l of chlorine.", &e, q, "");
        assert_eq!(bad.verdict, Verdict::Unsupported);
        assert_eq!(bad.unmatched, vec!["1.2"]);
        assert_eq!(bad.evidence, e.text);
        let drift = verify("Chlorine is a chemical element used to disinfect water.", &e, q, "");
        assert_eq!(drift.verdict, Verdict::Unsupported, "it does not give the level");
        let plain = evidence("Contractors sign in at the control room and are escorted at all times.");
        let yes = verify("No, contractors are escorted at all times.", &plain, "Can a fitter walk around alone?", "");
        assert_eq!(yes.verdict, Verdict::Supported, "{yes:?}");
        let echo = verify("A fitter can walk around alone.", &plain, "Can a fitter walk around alone?", "");
        assert_eq!(echo.verdict, Verdict::Unsupported, "only the question's words: {echo:?}");
        let card = evidence("Payments in the canteen are made by staff card only; cash is not accepted at the tills.");
        let q = "Does the canteen accept cash?";
        assert_eq!(verify("The canteen accepts cash only.", &card, q, "").verdict, Verdict::Unsupported);
        assert_eq!(verify("No, cash is not accepted there.", &card, q, "").verdict, Verdict::Supported);
        let codes = evidence("The front door code is 4417 and the store room code is 5093.");
        let q = "What is the code of the store room?";
        assert_eq!(verify("The code is 4417.", &codes, q, "").verdict, Verdict::Unsupported, "the other clause's");
        assert_eq!(verify("It is 5093.", &codes, q, "").verdict, Verdict::Supported);
        let claims = evidence("Expense claims must be filed within thirty days.");
        let q = "When are expense claims due?";
        assert_eq!(verify("Within 31 days.", &claims, q, "").verdict, Verdict::Unsupported);
        assert_eq!(verify("Within 30 days.", &claims, q, "").verdict, Verdict::Supported);
        let elsewhere = verify("I am sorry, I cannot help with that.", &plain, "Can a fitter walk around alone?", "");
        assert_eq!(elsewhere.verdict, Verdict::Unsupported, "nothing in common with the evidence");
        let name =
            verify("Tell Gareth Lloyd.", &evidence("Swaps are sent to Fiona Reid by Thursday noon."), "Who?", "");
        assert_eq!(name.verdict, Verdict::Unsupported);
        let door = evidence("The door code of the lab is 4417.");
        let notes = "The door code of the lab is 4417. It changes on the first Monday of each quarter.";
        let more =
            verify("The code is 4417. It changes on the first Monday of each quarter.", &door, "Door code?", notes);
        assert_eq!(more.verdict, Verdict::Supported, "another note's fact beside the evidence's: {more:?}");
        let other = verify("It changes on the first Monday.", &door, "Door code?", notes);
        assert_eq!(other.verdict, Verdict::Unsupported, "another note's fact instead of the evidence's");
    }
}
