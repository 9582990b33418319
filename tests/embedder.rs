//! The embedding model through tract against onnxruntime's output for the same file.
mod common;

use edgellm_engine::Embedder;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    sentences: Vec<GoldenSentence>,
}

#[derive(Deserialize)]
struct GoldenSentence {
    text: String,
    embedding: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn tract_embeddings_equal_onnxruntime_golden_embeddings() {
    let dir = common::embedder_dir();
    let embedder = Embedder::load(&dir, 256).expect("the embedding model loads");
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    assert!(golden.sentences.len() >= 3);
    let mut out = vec![0.0; embedder.dimension()];
    for sentence in &golden.sentences {
        embedder.embed(&sentence.text, &mut out).unwrap();
        assert_eq!(out.len(), sentence.embedding.len());
        let norm = dot(&out, &out).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        let cosine = dot(&out, &sentence.embedding);
        assert!(cosine > 0.9999, "cosine {cosine} against onnxruntime on {:?}", sentence.text);
    }
}

#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    let embedder = Embedder::load(&common::embedder_dir(), 256).unwrap();
    let embed = |t: &str| {
        let mut v = vec![0.0; embedder.dimension()];
        embedder.embed(t, &mut v).unwrap();
        v
    };
    let question = embed("How do I get into the lab?");
    let fact = embed("The door code of the lab is 4417.");
    let unrelated = embed("Invoices are paid within thirty days of receipt.");
    assert!(dot(&question, &fact) > dot(&question, &unrelated) + 0.1);
}

#[test]
fn long_text_is_truncated_not_refused_and_a_wrong_buffer_is_an_error() {
    let embedder = Embedder::load(&common::embedder_dir(), 32).unwrap();
    let mut v = vec![0.0; embedder.dimension()];
    let tokens = embedder.embed(&"word ".repeat(500), &mut v).unwrap();
    assert_eq!(tokens, 32);
    let mut short = vec![0.0; 3];
    assert!(embedder.embed("hello", &mut short).is_err());
}

/// `make model` must not dirty the tree: a prepared golden file whose floats differ from the
/// committed one only in their last digits (onnxruntime on another CPU) is left alone, while
/// a real change (a token, an embedding off by more than 1e-4) replaces it.
#[test]
fn preparing_keeps_the_committed_golden_unless_it_really_changed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let same = |committed: &std::path::Path, prepared: &serde_json::Value| {
        let path = dir.path().join("prepared.json");
        std::fs::write(&path, prepared.to_string()).unwrap();
        let status = std::process::Command::new("python3")
            .arg(root.join("models/same_golden.py"))
            .arg(committed)
            .arg(&path)
            .status()
            .expect("python3 runs models/same_golden.py");
        status.code() == Some(0)
    };
    let minilm = root.join("models/minilm/golden.json");
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&minilm).unwrap()).unwrap();
    let nudged = |by: f64, only_first: bool| {
        let mut g = golden.clone();
        for (i, sentence) in g["sentences"].as_array_mut().unwrap().iter_mut().enumerate() {
            for x in sentence["embedding"].as_array_mut().unwrap() {
                if !only_first || i == 0 {
                    *x = serde_json::json!(x.as_f64().unwrap() + by);
                }
            }
        }
        g
    };
    assert!(same(&minilm, &golden));
    assert!(same(&minilm, &nudged(3e-6, false)), "last-digit drift keeps the committed file");
    assert!(!same(&minilm, &nudged(1e-2, true)), "a real change replaces it");

    let smollm = root.join("models/smollm2/golden.json");
    let mut tokens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&smollm).unwrap()).unwrap();
    assert!(same(&smollm, &tokens));
    let first = &mut tokens["cases"][0]["greedy_ids"][0];
    *first = serde_json::json!(first.as_u64().unwrap() + 1);
    assert!(!same(&smollm, &tokens), "a different token replaces it");
}
