//! The engine on `models/tiny` (written by `models/tiny.py`: the real model's graph at toy
//! size, with fixed random 4-bit weights): onnxruntime's greedy tokens, on one thread and two,
//! with each prompt in one chunk and in chunks of 16 tokens, so that the one-column and the
//! several-column products and both attention paths run. It loads in a moment and runs in
//! seconds, so it is the golden test that tools/arm.sh runs under QEMU for every ARM target
//! and CPU, and with `EDGELLM_ISA` for every kernel path of the machine.

use std::path::PathBuf;

use edgellm_engine::{Engine, EngineOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    question: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny")
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(tiny_dir().join("golden.json")).expect("models/tiny/golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

#[test]
fn tiny_model_greedy_tokens_equal_onnxruntime_golden_tokens() {
    let golden = golden();
    assert!(golden.cases.len() >= 3);
    for threads in [1, 2] {
        for chunk in [512, 16] {
            let mut options = EngineOptions::new(tiny_dir());
            options.threads = threads;
            options.prefill_chunk_tokens = chunk;
            let mut engine = Engine::load(options).expect("the tiny model loads");
            for case in &golden.cases {
                assert!(case.prompt_ids.len() > chunk || chunk > 100, "prompts longer than a chunk");
                let ids = engine.greedy_ids(&case.prompt_ids, case.greedy_ids.len()).unwrap();
                assert_eq!(
                    ids,
                    case.greedy_ids,
                    "greedy tokens differ from onnxruntime for {:?} ({threads} threads, chunks of {chunk}, EDGELLM_ISA {:?})",
                    case.question,
                    std::env::var("EDGELLM_ISA").ok()
                );
            }
        }
    }
}
