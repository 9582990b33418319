//! edgellm: an on-device LLM daemon.
//!
//! Data flows one way through these modules:
//!
//! - [`config`]: the one TOML file, typed and validated.
//! - [`pipeline`]: the prompt's stages in fixed order — [`pipeline::preprocess`] (clean,
//!   chat template, token limits), then inference, then post-processing.
//! - [`engine`]: the ONNX model run by tract, the tokenizer, sampling and streaming.
//! - [`protocol`]: the request/event format shared by the transports.
//! - [`transport`]: the Unix socket and MQTT, which feed the [`daemon`]'s bounded queue.
//! - [`daemon`]: admission, the inference worker thread, lifecycle (signals, drain, systemd).
//! - [`health`]: counters, latency histograms, the health document; [`budget`]: memory bounds.
//! - [`cli`]: the commands (`generate`, `serve`, `ask`, ...), each a thin layer over the above.

#![deny(unsafe_code)]

#[cfg(feature = "runtime")]
pub mod budget;
#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod daemon;
#[cfg(feature = "runtime")]
pub mod engine;
#[cfg(feature = "runtime")]
pub mod health;
pub mod pipeline;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod transport;

#[cfg(feature = "runtime")]
/// Process exit codes, documented in the README; systemd's `RestartPreventExitStatus=` uses
/// the bad-config one.
pub mod exit_code {
    pub const OK: i32 = 0;
    /// Bad command-line arguments (clap's own code).
    pub const USAGE: i32 = 2;
    /// The configuration file is missing, unreadable or invalid.
    pub const BAD_CONFIG: i32 = 3;
    /// The model could not be loaded (missing, truncated, not ONNX, checksum mismatch).
    pub const MODEL_LOAD: i32 = 4;
    /// Any failure after start-up.
    pub const RUNTIME: i32 = 5;
}
