//! Helpers shared by the integration tests: the real model, loaded once per test binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use edgellm::engine::{Engine, EngineOptions};

/// The prepared default model (`make model`); tests fail loudly when it is missing.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("EDGELLM_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2"));
    assert!(
        dir.join("model.onnx").exists(),
        "model not prepared at {}: run `make model` (models/prepare.sh) first",
        dir.display()
    );
    dir
}

/// One engine per test binary: loading takes seconds, and tests take turns on it.
pub fn shared_engine() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut options = EngineOptions::new(model_dir());
        options.threads = 1;
        Mutex::new(Engine::load(options).expect("the default model loads"))
    });
    engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
