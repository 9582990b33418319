//! Grounded answers with the real default model: both knowledge sets of the retrieval
//! evaluation (a research lab, tests/data/retrieval, and a pumping station,
//! tests/data/grounding_ops) answered through `Pipeline::answer` with the daemon's default
//! grounding settings. Per set it prints recall@3 of the cited sources, how many answers hold
//! the fact (a regex per question), how the `done.grounding` verdict agrees with that, and the
//! per-request cost of retrieval (embedding the prompt and the candidate sentences included)
//! and of the verification. It fails when fewer than 0.75 of a set's answers (`done.text`,
//! with the evidence sentence the check adds to an unsupported answer) hold the fact, or under
//! the recall floors below. It also prints how often the model's own words hold it.
mod common;

use std::path::PathBuf;
use std::time::Instant;

use edgellm_pipeline::{AnswerRequest, AnswerSink, Pipeline};
use edgellm_protocol::GenerateParams;
use edgellm_server::config::Config;
use edgellm_text::grounding::{self, KnowledgeIndex, Verdict};
use regex::Regex;

/// Answers are short facts; a longer limit only lets the model wander (and costs time).
const MAX_TOKENS: usize = 40;

struct Question {
    paraphrase: bool,
    fact: String,
    answer: Regex,
    text: String,
}

fn data(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(dir)
}

/// `(question, regex)` columns: the lab set has (kind, fact, question, answer_regex), the
/// station set (kind, fact, answer_regex, question).
fn questions(dir: &str, file: &str, question: usize, regex: usize) -> Vec<Question> {
    std::fs::read_to_string(data(dir).join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 4, "four columns: {l}");
            Question {
                paraphrase: cols[0] == "paraphrase",
                fact: cols[1].into(),
                answer: Regex::new(cols[regex]).unwrap_or_else(|e| panic!("{l}: {e}")),
                text: cols[question].into(),
            }
        })
        .collect()
}

struct Quiet;

impl AnswerSink for Quiet {
    fn piece(&mut self, _text: &str) -> bool {
        true
    }
    fn keep_going(&mut self) -> bool {
        true
    }
}

#[derive(Default)]
struct Tally {
    questions: usize,
    paraphrases: usize,
    /// A cited source holds the fact.
    recalled: [usize; 2],
    /// The answer (`done.text`, the evidence added when unsupported) matches the question's regex.
    answered: [usize; 2],
    /// The model's own words (without the added evidence) match it.
    generated_right: [usize; 2],
    /// The evidence was added after the answer.
    appended: usize,
    /// The evidence sentence holds the fact.
    evidence_right: usize,
    /// [answer right][verdict supported]
    verdicts: [[usize; 2]; 2],
    /// Answered without any source.
    ungrounded: usize,
    retrieval_ms: Vec<f64>,
    verify_us: Vec<f64>,
    total_ms: Vec<f64>,
    wrong: Vec<String>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn run_set(name: &str, dir: &str, questions: &[Question]) -> Tally {
    let mut config = Config::default_config();
    config.grounding.knowledge_dir = Some(data(dir).join("knowledge"));
    config.grounding.embedding.model_dir = Some(common::embedder_dir());
    if let Ok(v) = std::env::var("EDGELLM_NOTE_SENTENCES") {
        config.grounding.note_sentences = v.parse().unwrap();
    }
    if let Ok(v) = std::env::var("EDGELLM_NOTE_INSTRUCTION") {
        config.grounding.note_instruction = v;
    }
    if let Ok(v) = std::env::var("EDGELLM_SYSTEM_PROMPT") {
        config.generation.system_prompt = v;
    }
    let pipeline_config = config.pipeline_config();
    // The same chunks as the pipeline's, to tell whether a cited (file, chunk) holds the fact.
    let index = KnowledgeIndex::load(&pipeline_config.grounding, &|t| t.len() / 4).unwrap();
    let chunk_text = |file: &str, chunk: usize| -> String {
        let c = index.chunks.iter().find(|c| c.source == file && c.index == chunk).unwrap();
        c.embedding_text()
    };
    let mut engine = common::shared_engine();
    let mut pipeline = Pipeline::new(&pipeline_config, &mut engine).unwrap();
    assert!(pipeline.dense_retrieval(), "{name}: dense retrieval is on");
    let params = GenerateParams { max_tokens: Some(MAX_TOKENS), ..Default::default() };
    let mut tally = Tally { questions: questions.len(), ..Default::default() };
    for q in questions {
        let kind = q.paraphrase as usize;
        tally.paraphrases += kind;
        let request = AnswerRequest {
            prompt: &q.text,
            session: None,
            params: &params,
            stream: false,
            admitted: Instant::now(),
            deadline: None,
            conversation: None,
        };
        // The injection guard reads every prompt too: a question it blocks is a wrong answer.
        let done = match pipeline.answer(&mut engine, request, &mut Quiet) {
            Ok(done) => done,
            Err(e) => {
                tally.wrong.push(format!("{:?} -> refused: {e}", q.text));
                continue;
            }
        };
        assert!(!done.cached, "every question is new");
        if done.sources.iter().any(|s| chunk_text(&s.file, s.chunk).contains(&q.fact)) {
            tally.recalled[kind] += 1;
        }
        let right_in_text = q.answer.is_match(&done.text);
        tally.answered[kind] += right_in_text as usize;
        // The model's own words: `done.text` without the evidence the check added.
        let generated = match &done.grounding {
            Some(g) if g.verdict == Verdict::Unsupported => {
                let suffix = format!("Source: {}", g.evidence);
                assert!(done.text.ends_with(&suffix), "an unsupported answer carries its evidence: {:?}", done.text);
                tally.appended += 1;
                done.text[..done.text.len() - suffix.len()].trim_end()
            }
            _ => done.text.as_str(),
        };
        let right = q.answer.is_match(generated);
        tally.generated_right[kind] += right as usize;
        // No source at all (nothing close enough): no notes, no verdict.
        let verdict = match &done.grounding {
            Some(report) => {
                let evidence = grounding::Evidence {
                    file: report.file.clone(),
                    chunk: report.chunk,
                    text: report.evidence.clone(),
                };
                let started = Instant::now();
                // The pipeline's check also reads the rest of the prompt; its cost is the same.
                let again = grounding::verify(&done.text, &evidence, &q.text, &report.evidence);
                tally.verify_us.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(again.evidence, report.evidence);
                tally.evidence_right += report.evidence.contains(&q.fact) as usize;
                tally.verdicts[right as usize][(report.verdict == Verdict::Supported) as usize] += 1;
                Some((report.verdict, report.evidence.clone()))
            }
            None => {
                tally.ungrounded += 1;
                None
            }
        };
        if std::env::var_os("EDGELLM_GROUNDING_TRACE").is_some() {
            println!("{name}: {right} {:?} -> {:?} {verdict:?}", q.text, done.text);
        }
        tally.retrieval_ms.push(done.timings.retrieval_ms.unwrap_or_default());
        tally.total_ms.push(done.timings.total_ms);
        if !right_in_text {
            tally.wrong.push(format!("{:?} -> {:?} [{verdict:?}]", q.text, done.text));
        }
    }
    tally
}

fn report(name: &str, t: &mut Tally) -> (f64, f64, f64) {
    let n = t.questions as f64;
    let keywords = t.questions - t.paraphrases;
    let recall = (t.recalled[0] + t.recalled[1]) as f64 / n;
    let paraphrase_recall = t.recalled[1] as f64 / t.paraphrases as f64;
    let answered = (t.answered[0] + t.answered[1]) as f64 / n;
    let generated = (t.generated_right[0] + t.generated_right[1]) as f64 / n;
    println!(
        "{name}: {} questions ({keywords} keyword, {} paraphrases), max_tokens {MAX_TOKENS}",
        t.questions, t.paraphrases
    );
    println!(
        "  recall@3 of the cited sources: {recall:.3} (keyword {}/{keywords}, paraphrase {}/{})",
        t.recalled[0], t.recalled[1], t.paraphrases
    );
    println!(
        "  answers holding the fact (done.text): {answered:.3} (keyword {}/{keywords}, paraphrase {}/{})",
        t.answered[0], t.answered[1], t.paraphrases
    );
    println!(
        "  the model's own words hold it: {generated:.3} (keyword {}/{keywords}, paraphrase {}/{}); evidence added to {} answers",
        t.generated_right[0], t.generated_right[1], t.paraphrases, t.appended
    );
    println!(
        "  evidence sentence holds the fact: {}/{} ({} answered without a source)",
        t.evidence_right, t.questions, t.ungrounded
    );
    println!(
        "  verdict vs answer: right+supported {}, right+unsupported {}, wrong+supported {}, wrong+unsupported {}",
        t.verdicts[1][1], t.verdicts[1][0], t.verdicts[0][1], t.verdicts[0][0]
    );
    println!(
        "  per request (median): retrieval {:.1} ms, verification {:.1} µs, whole answer {:.0} ms",
        median(&mut t.retrieval_ms),
        median(&mut t.verify_us),
        median(&mut t.total_ms)
    );
    for w in &t.wrong {
        println!("  wrong: {w}");
    }
    (recall, paraphrase_recall, answered)
}

#[test]
fn grounded_answers_hold_the_fact_on_both_sets() {
    // (name, directory, question column, regex column, recall@3 floor: overall, paraphrases).
    // Recall's goal test is tests/retrieval.rs; here, through the whole pipeline, the lab set
    // loses one paraphrase ("Will someone guide me when I join?") to the injection guard and
    // still meets the goal (0.958, 0.917), and the station set is BELOW THE GOAL (0.931,
    // 0.862): these are regression floors.
    // lab-own: questions on the lab's files written after the check was tuned (second clauses,
    // negations, paraphrases), as a check of the check; it meets the recall goal.
    let sets = [
        ("lab", "retrieval", "questions.tsv", 2, 3, (0.95, 0.9)),
        ("lab-own", "retrieval", "own_questions.tsv", 2, 3, (0.95, 0.9)),
        ("station", "grounding_ops", "questions.tsv", 3, 2, (0.93, 0.86)),
    ];
    let mut failures = Vec::new();
    let (mut right, mut total) = (0, 0);
    for (name, dir, file, question, regex, floor) in sets {
        if std::env::var("EDGELLM_SET").is_ok_and(|only| only != name) {
            continue;
        }
        let questions = questions(dir, file, question, regex);
        let mut tally = run_set(name, dir, &questions);
        let (recall, paraphrase_recall, answered) = report(name, &mut tally);
        right += tally.answered[0] + tally.answered[1];
        total += tally.questions;
        if recall < floor.0 || paraphrase_recall < floor.1 {
            failures.push(format!("{name}: recall@3 {recall:.3}, on paraphrases {paraphrase_recall:.3}"));
        }
        if answered < 0.75 {
            failures.push(format!("{name}: {answered:.3} of the answers hold the fact"));
        }
    }
    println!("both sets: {right}/{total} answers hold the fact ({:.3})", right as f64 / total as f64);
    assert!(failures.is_empty(), "under the answer goal (0.75) or the recall floors: {failures:?}");
}
