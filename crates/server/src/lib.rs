//! edgellm's daemon: the one TOML file, the transports, the inference worker and health.
//!
//! A request flows one way through these modules:
//!
//! - [`config`]: the one TOML file, typed and validated; each lower crate owns its sections.
//! - [`transport`]: the Unix socket, MQTT and the OpenAI-compatible HTTP API; each only
//!   translates between its wire and the [`service`] layer, which parses with the limits,
//!   admits to the bounded queue, tracks each client's requests in flight and cancels them.
//! - [`daemon`]: admission, lifecycle (signals, reload, drain, systemd) and the [`worker`]
//!   thread that owns the engine and runs [`edgellm_pipeline::Pipeline`].
//! - [`health`]: counters, latency histograms, the health document; [`metrics`]: the same
//!   in Prometheus' text format; [`budget`]: memory bounds.

pub mod budget;
pub mod config;
pub mod daemon;
pub mod health;
pub mod metrics;
mod notify;
pub mod service;
pub mod transport;
mod worker;

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
