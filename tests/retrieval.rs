//! Retrieval evaluation: keyword, dense and hybrid recall@3 on a knowledge set written for
//! the test (tests/data/retrieval), with half of the questions paraphrased so that they share
//! no search term with the chunk that answers them.
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use edgellm_engine::Embedder;
use edgellm_text::grounding::{
    self, DenseIndex, GroundingConfig, KnowledgeIndex, Retrieval, extract_entities, query_terms,
};

struct Question {
    paraphrase: bool,
    fact: String,
    text: String,
}

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval")
}

fn questions() -> Vec<Question> {
    std::fs::read_to_string(data().join("questions.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "kind, fact, question: {l}");
            assert!(matches!(cols[0], "keyword" | "paraphrase"), "{l}");
            Question { paraphrase: cols[0] == "paraphrase", fact: cols[1].into(), text: cols[2].into() }
        })
        .collect()
}

fn config() -> GroundingConfig {
    let mut config = GroundingConfig {
        knowledge_dir: Some(data().join("knowledge")),
        // One fact per chunk, so that a hit is right or wrong without ambiguity.
        chunk_bytes: 160,
        top_chunks: 3,
        ..Default::default()
    };
    config.embedding.max_tokens = 128;
    config
}

#[test]
fn hybrid_retrieval_finds_paraphrases_and_beats_keywords() {
    let config = config();
    let index = KnowledgeIndex::load(&config, &|t| t.len() / 4).unwrap();
    let questions = questions();
    assert!(questions.len() >= 40);
    assert_eq!(questions.iter().filter(|q| q.paraphrase).count() * 2, questions.len(), "half are paraphrases");
    assert_eq!(index.chunks.len(), 24, "one chunk per fact");

    // The answering chunk of each question, and the paraphrases' promise: no shared term.
    let answer_of = |q: &Question| -> usize {
        let found: Vec<usize> =
            index.chunks.iter().enumerate().filter(|(_, c)| c.text.contains(&q.fact)).map(|(i, _)| i).collect();
        assert_eq!(found.len(), 1, "exactly one chunk holds {:?}", q.fact);
        found[0]
    };
    for q in questions.iter().filter(|q| q.paraphrase) {
        let chunk_terms: BTreeSet<String> = grounding::terms(&index.chunks[answer_of(q)].text).collect();
        let shared: Vec<String> = grounding::terms(&q.text).filter(|t| chunk_terms.contains(t)).collect();
        assert!(shared.is_empty(), "paraphrase {:?} shares {shared:?} with its chunk", q.text);
    }

    let embedder = Embedder::load(&common::embedder_dir(), config.embedding.max_tokens).unwrap();
    let mut embed = |text: &str, out: &mut [f32]| embedder.embed(text, out).map(|_| ()).map_err(|e| e.to_string());
    let (dense, embedded) =
        DenseIndex::build(&index, embedder.dimension(), config.max_chunks, None, &mut embed).unwrap();
    assert_eq!(embedded, index.chunks.len());

    let modes = [("keyword", Retrieval::Keyword), ("dense", Retrieval::Dense), ("hybrid", Retrieval::Hybrid)];
    // recall[mode][0 = keyword questions, 1 = paraphrases]
    let mut found = [[0usize; 2]; 3];
    let mut missed_by_hybrid = Vec::new();
    let mut vector = vec![0.0; embedder.dimension()];
    for q in &questions {
        let answer = answer_of(q);
        let entities = extract_entities(&q.text, &index);
        let terms = query_terms(&q.text, &entities);
        embedder.embed(&q.text, &mut vector).unwrap();
        for (m, (_, how)) in modes.iter().enumerate() {
            let hits = grounding::retrieve(&index, Some((&dense, &vector)), &terms, *how, &config);
            assert!(hits.len() <= 3);
            if hits.iter().any(|h| h.chunk == answer) {
                found[m][q.paraphrase as usize] += 1;
            } else if *how == Retrieval::Hybrid {
                missed_by_hybrid.push(q.text.clone());
            }
        }
    }
    let half = questions.len() / 2;
    let recall = |m: usize| (found[m][0] + found[m][1]) as f64 / questions.len() as f64;
    println!("recall@3 over {} questions ({half} keyword, {half} paraphrases):", questions.len());
    println!("  {:<8} {:>8} {:>9} {:>11}", "", "overall", "keyword", "paraphrase");
    for (m, (name, _)) in modes.iter().enumerate() {
        println!(
            "  {:<8} {:>8.3} {:>9.3} {:>11.3}",
            name,
            recall(m),
            found[m][0] as f64 / half as f64,
            found[m][1] as f64 / half as f64
        );
    }
    println!("  missed by hybrid: {missed_by_hybrid:?}");
    let (keyword, hybrid) = (recall(0), recall(2));
    assert!(hybrid >= 0.9, "hybrid recall@3 {hybrid:.3} is below 0.9");
    assert!(hybrid >= keyword, "hybrid recall@3 {hybrid:.3} is below keyword alone ({keyword:.3})");
}
