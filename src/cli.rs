//! The command line: argument types and the commands that need no daemon.
//! `main.rs` only parses, dispatches and maps errors to exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde::Serialize;

use edgellm_engine::{CpuTimes, Engine, Flow, GenerateRequest, SamplingParams};
use edgellm_pipeline::{AnswerRequest, AnswerSink, Pipeline, PromptInput};
use edgellm_protocol::GenerateParams;
pub use edgellm_server::budget::MemoryBudget;
use edgellm_server::config::Config;

#[derive(Debug, Parser)]
#[command(name = "edgellm", version, about = "On-device LLM daemon: a quantized ONNX model run by tract")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one prompt with the model, streaming to the terminal (no daemon needed).
    Generate {
        prompt: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Model directory (overrides the config's model.dir).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        #[arg(long)]
        max_tokens: Option<usize>,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print token counts and speed to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Measure load time, prefill and decode speed and memory, for 1 and 2 threads.
    Bench {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Thread counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2])]
        threads: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        decode_tokens: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also time every tract operator over a prefill and 32 decode steps.
        #[arg(long)]
        profile: bool,
    },
    /// Validate a config file and print the effective config and its memory budget.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the daemon: Unix socket and MQTT, until SIGTERM/SIGINT (SIGHUP reloads).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running daemon over its Unix socket; the answer is streamed.
    Ask {
        prompt: String,
        /// Socket path (default: the config's socket.path).
        #[arg(long, short)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        max_tokens: Option<usize>,
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long)]
        seed: Option<u64>,
        /// Print the final JSON event instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Run each line of text (stdin or a file) through what the daemon runs on a prompt
    /// (cleaning, then the safety rules): one JSON object per line with every detection (rule,
    /// kind, byte span in the cleaned line, action) and the blocking rule, or why the line
    /// would be refused.
    Scan {
        /// File to read; stdin when absent.
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the running daemon's health document (from its Unix socket).
    Health {
        #[arg(long, short)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Sets up logging: the config's level unless RUST_LOG says otherwise; plain lines without
/// timestamps under systemd (the journal adds its own).
pub fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    let _ = if under_journal { builder.without_time().try_init() } else { builder.try_init() };
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// One request over the daemon's socket; streams token text to stdout. Returns the final
/// event (done or error) as JSON.
pub async fn ask(socket: &Path, request: serde_json::Value, print_tokens: bool) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    // A refused connection (forbidden, busy, shutting down) gets one error line and is closed,
    // possibly before the request is written: read that line rather than report a broken pipe.
    let sent = write.write_all(format!("{request}\n").as_bytes()).await;
    let mut lines = BufReader::new(read).lines();
    let mut stdout = std::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let event: serde_json::Value = serde_json::from_str(&line)?;
        match event["event"].as_str() {
            Some("token") if print_tokens => {
                stdout.write_all(event["text"].as_str().unwrap_or("").as_bytes())?;
                stdout.flush()?;
            }
            Some("token") => {}
            _ => return Ok(event),
        }
    }
    sent.map_err(|e| anyhow::anyhow!("cannot send the request to {}: {e}", socket.display()))?;
    anyhow::bail!("the daemon closed the connection without an answer")
}

/// The daemon's error event as an error for the user: its code and message.
pub fn daemon_error(event: &serde_json::Value) -> anyhow::Error {
    anyhow::anyhow!(
        "the daemon answered {}: {}",
        event["code"].as_str().unwrap_or("an unexpected event"),
        event["message"].as_str().unwrap_or("")
    )
}

/// Loads the config file when given, else the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, edgellm_server::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default_config()),
    }
}

/// `edgellm generate`: the main job without a daemon.
pub fn generate(
    config: &Config,
    engine: &mut Engine,
    prompt: &str,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    seed: u64,
    stats: bool,
) -> anyhow::Result<()> {
    let mut pipeline = Pipeline::new(&config.pipeline_config(), engine)?;
    let params = GenerateParams { max_tokens, temperature, seed: Some(seed), ..GenerateParams::default() };
    let request = AnswerRequest {
        prompt,
        session: None,
        params: &params,
        stream: true,
        admitted: Instant::now(),
        deadline: None,
        conversation: None,
    };
    let mut sink = StdoutSink { out: std::io::stdout().lock() };
    let done = pipeline.answer(engine, request, &mut sink)?;
    writeln!(sink.out)?;
    sink.out.flush()?;
    if stats {
        let t = &done.timings;
        let decode_ms = t.decode_ms.unwrap_or(0.0);
        eprintln!(
            "prompt {} tokens, answer {} tokens ({:?}); prefill {:.0} ms, first token {:.0} ms, decode {:.1} tokens/s",
            done.usage.prompt_tokens,
            done.usage.completion_tokens,
            done.finish_reason,
            t.prefill_ms.unwrap_or(0.0),
            t.time_to_first_token_ms.unwrap_or(0.0),
            done.usage.completion_tokens as f64 / (decode_ms / 1e3).max(1e-9)
        );
    }
    Ok(())
}

/// `generate` streams the answer to the terminal as it passes output safety.
struct StdoutSink<W: Write> {
    out: W,
}

impl<W: Write> AnswerSink for StdoutSink<W> {
    fn piece(&mut self, text: &str) -> bool {
        self.out.write_all(text.as_bytes()).and_then(|_| self.out.flush()).is_ok()
    }

    fn keep_going(&mut self) -> bool {
        true
    }
}

/// `edgellm scan`: each line of `input` through exactly what the daemon runs on a prompt:
/// cleaning (`preprocess::clean` with `limits.max_prompt_bytes`), then the safety rules. Spans
/// are byte offsets in the cleaned line; a line the daemon would refuse says why (`error`).
pub fn scan(config: &Config, input: impl std::io::BufRead, mut out: impl Write) -> anyhow::Result<()> {
    let rules = edgellm_text::safety::SafetyRules::new(&config.safety)?;
    for (n, line) in input.split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let result = match edgellm_text::preprocess::clean_bytes(line, config.limits.max_prompt_bytes) {
            Err(e) => serde_json::json!({"line": n + 1, "error": e.to_string()}),
            Ok(cleaned) => {
                let report = rules.scan(&cleaned);
                let detections: Vec<_> = report
                    .detections
                    .iter()
                    .map(|d| serde_json::json!({"rule": d.rule, "kind": d.kind, "start": d.start, "end": d.end, "action": d.action}))
                    .collect();
                let blocked = report.blocking_rule().map(|d| d.rule.clone());
                serde_json::json!({"line": n + 1, "detections": detections, "overflow": report.overflow, "blocked": blocked})
            }
        };
        writeln!(out, "{result}")?;
    }
    Ok(())
}

/// A ~20-token question for the time to first token after the system prompt.
pub const BENCH_QUESTION: &str = "Which vegetables grow well on a sunny balcony in a hot city summer?";

/// A ~70-token question, the same one `bench/compare.py` gives onnxruntime.
pub const BENCH_PROMPT: &str = "I am planning a small vegetable garden on a sunny balcony in a city with hot summers \
and mild winters. Which vegetables grow well in containers, how often should I water them, \
and what should I do about pests without using strong chemicals?";

#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub threads: usize,
    pub load_ms: f64,
    /// Whether the load read the compiled-model cache or built (and wrote) it.
    pub compiled_cache: edgellm_engine::CacheOutcome,
    pub prompt_tokens: usize,
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub time_to_first_token_ms: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    /// A ~20-token question after the system prompt: time to first token with the system
    /// prompt's KV state computed afresh, and reused from the cache.
    pub question_ttft_cold_ms: f64,
    pub question_ttft_cached_ms: f64,
    pub question_new_tokens: usize,
    pub system_prefix_tokens: usize,
    pub rss_mib: f64,
    /// Jobs of the measured prompt and decode shared with the helper threads, and run on the
    /// calling thread alone (helpers judged too slow to help, or every core taken by others).
    pub team_jobs: u64,
    pub solo_jobs: u64,
    /// The part of the measured prompt and decode the calling thread spent on a core rather
    /// than waiting for one (`null` where the kernel does not say): beside busy processes it
    /// tells the scheduler's luck of a run from the engine's own speed.
    pub caller_core_share: Option<f64>,
    /// Per-operator times (with `--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<edgellm_engine::PhaseProfile>>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    /// The measured prompt, so other runtimes can be given exactly the same tokens.
    pub prompt_ids: Vec<u32>,
    pub quantization: String,
    pub kv_cache: String,
    pub rows: Vec<BenchRow>,
    pub peak_rss_mib: f64,
}

pub fn bench(
    config: &Config,
    model_dir: Option<&Path>,
    threads: &[usize],
    decode_tokens: usize,
    profile: bool,
) -> anyhow::Result<BenchReport> {
    let mut rows = Vec::new();
    let mut meta = (String::new(), String::new(), String::new());
    let mut prompt_ids = Vec::new();
    for &n in threads {
        let mut options = config.engine_options(model_dir);
        options.threads = n;
        options.reuse_prefix = true;
        let started = Instant::now();
        let mut engine = Engine::load(options)?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut pipeline = Pipeline::new(&config.pipeline_config(), &mut engine)?;
        let prepared = pipeline.prepare(&engine, PromptInput { prompt: BENCH_PROMPT, session: None })?;
        let request = GenerateRequest {
            prompt_ids: &prepared.ids,
            shared_prefix_len: 0,
            max_new_tokens: decode_tokens,
            sampling: SamplingParams { temperature: 0.0, repetition_penalty: 1.0, ..SamplingParams::default() },
            stop_strings: &[],
            deadline: None,
            ignore_eos: true,
        };
        // One warm-up pass so both thread counts are measured with warm caches.
        engine.generate(&GenerateRequest { max_new_tokens: 4, ..request.clone() }, |_| Flow::Continue)?;
        // Prefill is measured from scratch (shared_prefix_len 0: no cached system prompt).
        let team_before = engine.team_stats().unwrap_or_default();
        let times_before = CpuTimes::of_this_thread();
        let g = engine.generate(&request, |_| Flow::Continue)?;
        let caller_core_share =
            CpuTimes::of_this_thread().zip(times_before).and_then(|(end, start)| end.since(start).share());
        let team = engine.team_stats().unwrap_or_default();
        let t = &g.timings;
        // Prefix reuse, before and after.
        let question = pipeline.prepare(&engine, PromptInput { prompt: BENCH_QUESTION, session: None })?;
        let ask = |shared: usize| GenerateRequest {
            prompt_ids: &question.ids,
            shared_prefix_len: shared,
            max_new_tokens: 1,
            ..request.clone()
        };
        let cold = engine.generate(&ask(0), |_| Flow::Continue)?.timings.time_to_first_token_ms;
        engine.generate(&ask(question.shared_prefix_len), |_| Flow::Continue)?;
        let cached = engine.generate(&ask(question.shared_prefix_len), |_| Flow::Continue)?;
        anyhow::ensure!(cached.timings.reused_prefix_tokens == question.shared_prefix_len, "the prefix was not reused");
        // The first token comes from the prefill logits; decode covers the forward passes after it.
        let decode_steps = g.completion_tokens.saturating_sub(1).max(1);
        rows.push(BenchRow {
            threads: n,
            load_ms,
            compiled_cache: engine.info().compiled_cache,
            prompt_tokens: g.prompt_tokens,
            prefill_ms: t.prefill_ms,
            prefill_tokens_per_s: g.prompt_tokens as f64 / (t.prefill_ms / 1e3),
            time_to_first_token_ms: t.time_to_first_token_ms,
            decode_tokens: g.completion_tokens,
            decode_tokens_per_s: decode_steps as f64 / (t.decode_ms / 1e3),
            question_ttft_cold_ms: cold,
            question_ttft_cached_ms: cached.timings.time_to_first_token_ms,
            question_new_tokens: question.ids.len() - question.shared_prefix_len,
            system_prefix_tokens: question.shared_prefix_len,
            rss_mib: rss_mib().0,
            team_jobs: team.team_jobs - team_before.team_jobs,
            solo_jobs: team.solo_jobs - team_before.solo_jobs,
            caller_core_share,
            profile: if profile { Some(engine.profile(&prepared.ids, PROFILED_DECODE_STEPS)?) } else { None },
        });
        prompt_ids = prepared.ids.clone();
        let info = engine.info();
        meta = (info.id.clone(), info.quantization.clone(), info.kv_cache.to_string());
    }
    Ok(BenchReport {
        model: meta.0,
        prompt_ids,
        quantization: meta.1,
        kv_cache: meta.2,
        rows,
        peak_rss_mib: rss_mib().1,
    })
}

/// Enough single-token steps for stable per-operator figures, few enough to stay quick.
const PROFILED_DECODE_STEPS: usize = 32;

pub fn print_bench_table(report: &BenchReport) {
    println!("model {} ({}), KV cache {}", report.model, report.quantization, report.kv_cache);
    println!(
        "{:>7} {:>9} {:>7} {:>11} {:>10} {:>11} {:>10} {:>8} {:>22} {:>12}",
        "threads",
        "load ms",
        "prompt",
        "prefill t/s",
        "TTFT ms",
        "decode t/s",
        "decoded",
        "RSS MiB",
        "question TTFT cold/cached",
        "model cache"
    );
    for r in &report.rows {
        println!(
            "{:>7} {:>9.0} {:>7} {:>11.1} {:>10.1} {:>11.1} {:>10} {:>8.1} {:>12.1} / {:>7.1} {:>12}",
            r.threads,
            r.load_ms,
            r.prompt_tokens,
            r.prefill_tokens_per_s,
            r.time_to_first_token_ms,
            r.decode_tokens_per_s,
            r.decode_tokens,
            r.rss_mib,
            r.question_ttft_cold_ms,
            r.question_ttft_cached_ms,
            serde_json::to_value(r.compiled_cache)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        );
    }
    if let Some(r) = report.rows.first() {
        println!(
            "question: {} new tokens after a {}-token system prompt (cached: its KV state reused)",
            r.question_new_tokens, r.system_prefix_tokens
        );
    }
    println!("peak RSS {:.1} MiB", report.peak_rss_mib);
    for r in &report.rows {
        for phase in r.profile.iter().flatten() {
            println!(
                "\nprofile, {} thread(s), {}: {} step(s), {} token(s), {:.1} ms ({:.2} ms per step)",
                r.threads,
                phase.phase,
                phase.steps,
                phase.tokens,
                phase.ms,
                phase.ms / phase.steps.max(1) as f64
            );
            let share = |ms: f64| 100.0 * ms / phase.ms.max(1e-9);
            for (heading, costs) in [("operator", &phase.ops), ("node (layers folded)", &phase.nodes)] {
                println!("{heading:<48} {:>8} {:>10} {:>7}", "calls", "ms", "share");
                for cost in costs.iter().take(15) {
                    println!("{:<48} {:>8} {:>10.2} {:>6.1}%", cost.name, cost.calls, cost.ms, share(cost.ms));
                }
            }
            let between = phase.ms - phase.ops.iter().map(|o| o.ms).sum::<f64>();
            println!("{:<48} {:>8} {:>10.2} {:>6.1}%", "(between nodes)", "", between, share(between));
        }
    }
}

/// (current, peak) resident set size of this process in MiB, from /proc.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
