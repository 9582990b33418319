//! The engine against the real model: golden tokens from onnxruntime, streaming, limits,
//! cancellation, deadlines and seeded sampling.

mod common;

use std::time::Instant;

use edgellm_engine::{
    CacheOutcome, Engine, EngineError, EngineOptions, FinishReason, Flow, GenerateRequest, SamplingParams,
};
use edgellm_pipeline::{Pipeline, PipelineError, PromptInput};
use edgellm_server::config::Config;
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

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, repetition_penalty: 1.0, ..SamplingParams::default() }
}

fn request(ids: &[u32], max_new_tokens: usize, sampling: SamplingParams) -> GenerateRequest<'_> {
    GenerateRequest {
        prompt_ids: ids,
        shared_prefix_len: 0,
        max_new_tokens,
        sampling,
        stop_strings: &[],
        deadline: None,
        ignore_eos: false,
    }
}

#[test]
fn tract_greedy_tokens_equal_onnxruntime_golden_tokens() {
    let golden = golden();
    assert!(golden.cases.len() >= 3);
    let mut engine = common::shared_engine();
    for case in &golden.cases {
        let ids = engine.greedy_ids(&case.prompt_ids, case.greedy_ids.len()).unwrap();
        assert_eq!(ids, case.greedy_ids, "greedy tokens differ from onnxruntime for {:?}", case.question);
    }
}

fn golden() -> Golden {
    serde_json::from_str(&std::fs::read_to_string(common::model_dir().join("golden.json")).unwrap()).unwrap()
}

/// The compiled-model cache: written by the first load, used by the second, rebuilt when the
/// archive on disk is damaged or was written by another build; every engine still produces
/// onnxruntime's tokens.
#[test]
fn compiled_model_cache_is_written_reused_and_rebuilt_when_damaged() {
    let cache = tempfile::tempdir().unwrap();
    let load = || {
        let mut options = EngineOptions::new(common::model_dir());
        options.threads = 1;
        options.compiled_cache_dir = Some(cache.path().to_path_buf());
        Engine::load(options).unwrap()
    };
    let case = &golden().cases[0];
    let check = |engine: &mut Engine| {
        let ids = engine.greedy_ids(&case.prompt_ids, case.greedy_ids.len()).unwrap();
        assert_eq!(ids, case.greedy_ids, "greedy tokens differ from onnxruntime");
    };

    let mut first = load();
    assert_eq!(first.info().compiled_cache, CacheOutcome::Written);
    check(&mut first);
    let fused = first.graph_fusions();
    drop(first);
    let archives: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    assert_eq!(archives.len(), 1, "one archive, no temporary files left: {archives:?}");

    let mut second = load();
    assert_eq!(second.info().compiled_cache, CacheOutcome::Loaded);
    check(&mut second);
    // The archive's graph (back from NNEF) takes the same passes: every o_proj adds its zero
    // points itself, the products of shared activations are grouped (the last layer's, sliced to one position, may keep tract's correction).
    let layers = second.manifest().dims.layers;
    for (graph, fusions) in [("built", fused), ("loaded", second.graph_fusions())] {
        if fusions.q4_products > 0 {
            assert!(fusions.zero_points + 1 >= layers, "{graph}: {fusions:?}, {layers} layers");
            // q, k and v, and gate and up, read the same activations: five products a layer.
            assert!(fusions.grouped_products >= 5 * layers, "{graph}: {fusions:?}, {layers} layers");
        }
        assert!(fusions.axis_nodes_removed >= 10 * layers, "{graph}: {fusions:?}");
        // Every CPU with a vector attention head (AVX2 and up, NEON) runs every layer's on it,
        // and those that round prompt chunks (AVX2, AVX-512 VNNI) pack them for the wide tiles (four
        // packings a layer, fewer in the last, sliced to one position).
        let isa = edgellm_engine::Isa::current();
        if isa.fused_attention() {
            assert_eq!(fusions.fused_attention, layers, "{graph}: {fusions:?}");
        }
        if isa.rounds_chunk_activations() && fusions.q4_products > 0 {
            assert!(fusions.wide_packs >= 3 * layers, "{graph}: {fusions:?}, {layers} layers");
        }
    }
    drop(second);

    // One byte flipped in the middle of the weights.
    let mut bytes = std::fs::read(&archives[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&archives[0], &bytes).unwrap();
    let mut third = load();
    assert_eq!(third.info().compiled_cache, CacheOutcome::Written, "a damaged archive is rebuilt");
    check(&mut third);
    drop(third);

    // Written by another build (an upgrade, or a rebuilt binary): replaced, not trusted.
    let record = archives[0].with_extension("json");
    let mut sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    sidecar["build"] = "edgellm 0.0.1, another executable".into();
    std::fs::write(&record, serde_json::to_vec(&sidecar).unwrap()).unwrap();
    assert_eq!(load().info().compiled_cache, CacheOutcome::Written, "an archive of another build is replaced");
    assert_eq!(load().info().compiled_cache, CacheOutcome::Loaded);
    let files = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(files, 2, "one archive and its record");
}

/// The model is built while its checksum is computed; a file that parses but is not the one
/// its manifest names is refused, and what was built from it is not kept for later starts.
#[test]
fn altered_model_file_is_refused_and_leaves_no_compiled_cache() {
    let model = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::model_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, model.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    // One byte in the middle of the weights changed: still a valid ONNX file (checked below),
    // with different weights.
    let onnx = model.path().join("model.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x11;
    std::fs::write(&onnx, &bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let mut options = EngineOptions::new(model.path());
    options.threads = 1;
    options.compiled_cache_dir = Some(cache.path().to_path_buf());
    let error = Engine::load(options).err().expect("an altered model must be refused").to_string();
    assert!(error.contains("does not match its manifest"), "{error}");
    let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "nothing built from the altered file is kept: {left:?}");

    // Without a checksum in its manifest the same file loads: the refusal above was the check's.
    let manifest_path = model.path().join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("model_sha256");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let mut options = EngineOptions::new(model.path());
    options.threads = 1;
    assert!(Engine::load(options).is_ok(), "the altered file is still a loadable model");
}

#[test]
fn capital_of_france_is_paris() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt =
        pipeline.prepare(&engine, PromptInput { prompt: "What is the capital of France?", session: None }).unwrap();
    let g = engine.generate(&request(&prompt.ids, 32, greedy()), |_| Flow::Continue).unwrap();
    assert!(g.text.contains("Paris"), "answer: {:?}", g.text);
    assert_eq!(g.finish_reason, FinishReason::Stop);
}

#[test]
fn streamed_pieces_equal_the_final_text_and_the_decoded_tokens() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    // Accents and emoji span several byte-level tokens: pieces must still be whole characters.
    let prompt = pipeline
        .prepare(
            &engine,
            PromptInput {
                prompt: "Write one short sentence in French about crème brûlée, then an emoji.",
                session: None,
            },
        )
        .unwrap();
    let mut streamed = String::new();
    let mut pieces = 0;
    let g = engine
        .generate(&request(&prompt.ids, 48, greedy()), |piece| {
            streamed.push_str(piece);
            pieces += usize::from(!piece.is_empty());
            Flow::Continue
        })
        .unwrap();
    assert!(pieces > 5, "expected many streamed pieces, got {pieces}");
    assert_eq!(streamed, g.text);
    assert_eq!(g.text, engine.decode(&g.token_ids));
    assert!(!g.text.contains('\u{FFFD}'));
}

#[test]
fn stop_string_cuts_the_answer_before_it() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt =
        pipeline.prepare(&engine, PromptInput { prompt: "What is the capital of France?", session: None }).unwrap();
    let full = engine.generate(&request(&prompt.ids, 32, greedy()), |_| Flow::Continue).unwrap();
    let at = full.text.find("Paris").expect("answer names Paris");
    let stops = vec!["Paris".to_string()];
    let mut streamed = String::new();
    let cut = engine
        .generate(&GenerateRequest { stop_strings: &stops, ..request(&prompt.ids, 32, greedy()) }, |p| {
            streamed.push_str(p);
            Flow::Continue
        })
        .unwrap();
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    assert_eq!(cut.text, full.text[..at]);
    assert_eq!(streamed, cut.text, "no part of the stop string was streamed");
}

#[test]
fn too_long_prompt_is_a_clear_error() {
    let mut engine = common::shared_engine();
    let limit = engine.context_tokens();
    let ids = vec![100u32; limit + 5];
    match engine.generate(&request(&ids, 8, greedy()), |_| Flow::Continue) {
        Err(EngineError::PromptTooLong { tokens, limit: l }) => {
            assert_eq!(tokens, limit + 5);
            assert_eq!(l, limit);
        }
        other => panic!("expected PromptTooLong, got {:?}", other.map(|g| g.finish_reason)),
    }
    // And the pipeline counts tokens after the chat template.
    let mut config = Config::default_config();
    config.limits.max_prompt_tokens = 40;
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let err = pipeline.prepare(&engine, PromptInput { prompt: &"word ".repeat(50), session: None }).unwrap_err();
    assert!(matches!(err, PipelineError::TooManyTokens { limit: 40, .. }), "{err}");
}

#[test]
fn cancellation_stops_between_tokens() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt = pipeline
        .prepare(&engine, PromptInput { prompt: "Tell me a long story about a dragon.", session: None })
        .unwrap();
    let mut calls = 0;
    let g = engine
        .generate(&request(&prompt.ids, 100, greedy()), |_| {
            calls += 1;
            if calls == 5 { Flow::Cancel } else { Flow::Continue }
        })
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.completion_tokens, 5);
}

#[test]
fn deadline_ends_generation() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt = pipeline
        .prepare(&engine, PromptInput { prompt: "Tell me a long story about a dragon.", session: None })
        .unwrap();
    let started = Instant::now();
    let deadline = Some(started + std::time::Duration::from_millis(300));
    let g = engine
        .generate(&GenerateRequest { deadline, ..request(&prompt.ids, 500, greedy()) }, |_| Flow::Continue)
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Deadline);
    assert!(g.completion_tokens < 500);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt = pipeline.prepare(&engine, PromptInput { prompt: "Invent a name for a cat.", session: None }).unwrap();
    let sample = |engine: &mut edgellm_engine::Engine, seed| {
        let sampling = SamplingParams { temperature: 1.0, top_k: 50, top_p: 0.95, seed, ..SamplingParams::default() };
        engine.generate(&request(&prompt.ids, 24, sampling), |_| Flow::Continue).unwrap().token_ids
    };
    let a = sample(&mut engine, 42);
    assert_eq!(a, sample(&mut engine, 42), "same seed, same tokens");
    let others: Vec<_> = (43..46).map(|s| sample(&mut engine, s)).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds should sample differently");
}

#[test]
fn cached_system_prompt_gives_the_same_answer() {
    let mut engine = common::shared_engine();
    let config = Config::default_config();
    let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine).unwrap();
    let prompt = pipeline.prepare(&engine, PromptInput { prompt: "Name a primary colour.", session: None }).unwrap();
    assert!(prompt.shared_prefix_len > 10, "the system turn is a shared prefix");
    let cold = engine.generate(&request(&prompt.ids, 16, greedy()), |_| Flow::Continue).unwrap();
    let shared = GenerateRequest { shared_prefix_len: prompt.shared_prefix_len, ..request(&prompt.ids, 16, greedy()) };
    let first = engine.generate(&shared, |_| Flow::Continue).unwrap();
    let warm = engine.generate(&shared, |_| Flow::Continue).unwrap();
    assert_eq!(warm.timings.reused_prefix_tokens, prompt.shared_prefix_len);
    assert_eq!(cold.token_ids, first.token_ids);
    assert_eq!(cold.token_ids, warm.token_ids);
}
