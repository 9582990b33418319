//! Health: lock-free counters that the stages and transports increment, fixed-size latency
//! histograms, and the health document built from them (the same on MQTT and the socket).
//!
//! The document (`HealthDoc`, JSON) has these fields, documented in the README:
//! `device_id`, `version`, `state` (`starting` | `ready` | `degraded` | `draining`),
//! `degraded_reasons`, `uptime_s`, `model`, `memory`, `cpu`, `temperature_c`, `disk`,
//! `queue`, `counters`, `latency_ms` (`time_to_first_token` and `total`, p50/p95/p99 over the
//! recent window), `tokens_per_second`, `mqtt` (`connected`, `reconnects`), `last_error`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use edgellm_engine::ModelInfo;
use edgellm_protocol::ErrorCode;
use edgellm_text::safety::{Action, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    Ready,
    Degraded,
    Draining,
}

/// How long a session takeover keeps the daemon `degraded`: long enough for a fleet manager
/// to see it between two of the rivals' reconnects.
const MQTT_TAKEOVER_MEMORY_S: u64 = 600;

/// Log-spaced buckets from 1 ms: bucket i holds values up to 1.25^i ms; the last is open.
const BUCKETS: usize = 64;

fn bucket_upper_ms(i: usize) -> f64 {
    1.25f64.powi(i as i32)
}

fn bucket_of(ms: f64) -> usize {
    if ms <= 1.0 {
        return 0;
    }
    ((ms.ln() / 1.25f64.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// `N` counters over a recent window: two fixed halves, the older one cleared when the window
/// turns, so the sums cover between one and two half-windows. Memory is fixed; adding is an
/// atomic add (and, once per half-window, a compare-exchange).
#[derive(Debug)]
pub struct WindowedCounters<const N: usize> {
    halves: [[AtomicU64; N]; 2],
    current: AtomicUsize,
    turned_at_s: AtomicU64,
    half_window_s: u64,
}

impl<const N: usize> WindowedCounters<N> {
    pub fn new(window_s: u64) -> Self {
        WindowedCounters {
            halves: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            current: AtomicUsize::new(0),
            turned_at_s: AtomicU64::new(0),
            half_window_s: window_s.max(2) / 2,
        }
    }

    fn maybe_turn(&self, now_s: u64) {
        let turned = self.turned_at_s.load(Relaxed);
        if now_s >= turned + self.half_window_s
            && self.turned_at_s.compare_exchange(turned, now_s, Relaxed, Relaxed).is_ok()
        {
            let next = 1 - self.current.load(Relaxed);
            for b in &self.halves[next] {
                b.store(0, Relaxed);
            }
            self.current.store(next, Relaxed);
        }
    }

    pub fn add(&self, index: usize, value: u64, now_s: u64) {
        self.maybe_turn(now_s);
        self.halves[self.current.load(Relaxed)][index].fetch_add(value, Relaxed);
    }

    /// Each counter summed over the window.
    pub fn sums(&self, now_s: u64) -> [u64; N] {
        self.maybe_turn(now_s);
        std::array::from_fn(|i| self.halves[0][i].load(Relaxed) + self.halves[1][i].load(Relaxed))
    }
}

/// A latency histogram over a recent window, with log-spaced buckets.
#[derive(Debug)]
pub struct WindowedHistogram(WindowedCounters<BUCKETS>);

impl WindowedHistogram {
    pub fn new(window_s: u64) -> Self {
        WindowedHistogram(WindowedCounters::new(window_s))
    }

    pub fn record(&self, ms: f64, now_s: u64) {
        self.0.add(bucket_of(ms), 1, now_s);
    }

    /// (p50, p95, p99) in ms, as bucket upper bounds; None without samples.
    pub fn percentiles(&self, now_s: u64) -> Option<[f64; 3]> {
        let counts = self.0.sums(now_s);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let quantile = |q: f64| {
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (bucket_upper_ms(i) * 10.0).round() / 10.0;
                }
            }
            bucket_upper_ms(BUCKETS - 1)
        };
        Some([quantile(0.50), quantile(0.95), quantile(0.99)])
    }
}

/// Everything the daemon counts. Stages and transports only increment; the reporter reads.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    state: AtomicU8,
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub cancellations: AtomicU64,
    pub busy_rejections: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub tokens_generated: AtomicU64,
    /// Prompts that reached the model (not blocked, not answered from the cache).
    pub inference_runs: AtomicU64,
    /// Per action (block, redact, flag) and kind.
    safety: [[AtomicU64; Kind::ALL.len()]; 3],
    errors_by_code: [AtomicU64; ErrorCode::ALL.len()],
    pub queue_depth: AtomicUsize,
    pub queue_capacity: AtomicUsize,
    /// Connected and subscribed to the prompt topic (not merely connected).
    pub mqtt_connected: AtomicBool,
    pub mqtt_reconnects: AtomicU64,
    /// When (unix seconds) the broker last ended our session because another client connected
    /// with our client id; 0 never.
    pub mqtt_taken_over_at: AtomicU64,
    pub mqtt_replies_dropped: AtomicU64,
    pub knowledge_reload_failed: AtomicBool,
    /// Bumped by the inference worker each step: the watchdog's proof of progress.
    pub worker_heartbeat: AtomicU64,
    pub worker_busy: AtomicBool,
    last_error: Mutex<Option<(ErrorCode, u64)>>,
    pub ttft: WindowedHistogram,
    pub total_latency: WindowedHistogram,
    /// Decoded tokens (0) and decode microseconds (1) over the recent window.
    decode: WindowedCounters<2>,
    /// The same latencies since start, for Prometheus (`GET /metrics`).
    pub latency: crate::metrics::LatencyHistograms,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Metrics {
    pub fn new(window_s: u64) -> Self {
        Metrics {
            started: Instant::now(),
            state: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancellations: AtomicU64::new(0),
            busy_rejections: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            tokens_generated: AtomicU64::new(0),
            inference_runs: AtomicU64::new(0),
            safety: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            errors_by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            queue_depth: AtomicUsize::new(0),
            queue_capacity: AtomicUsize::new(0),
            mqtt_connected: AtomicBool::new(false),
            mqtt_reconnects: AtomicU64::new(0),
            mqtt_taken_over_at: AtomicU64::new(0),
            mqtt_replies_dropped: AtomicU64::new(0),
            knowledge_reload_failed: AtomicBool::new(false),
            worker_heartbeat: AtomicU64::new(0),
            worker_busy: AtomicBool::new(false),
            last_error: Mutex::new(None),
            ttft: WindowedHistogram::new(window_s),
            total_latency: WindowedHistogram::new(window_s),
            decode: WindowedCounters::new(window_s),
            latency: Default::default(),
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Relaxed) {
            0 => State::Starting,
            1 => State::Ready,
            _ => State::Draining,
        }
    }

    pub fn set_ready(&self) {
        self.state.store(1, Relaxed);
    }

    pub fn set_draining(&self) {
        self.state.store(2, Relaxed);
    }

    pub fn record_error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors_by_code[i].fetch_add(1, Relaxed);
        }
        match code {
            ErrorCode::Busy => {
                self.busy_rejections.fetch_add(1, Relaxed);
            }
            ErrorCode::Cancelled => {
                self.cancellations.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((code, unix_now()));
        }
    }

    pub fn record_safety(&self, kind: Kind, action: Action) {
        let a = match action {
            Action::Block => 0,
            Action::Redact => 1,
            Action::Flag => 2,
        };
        if let Some(k) = Kind::ALL.iter().position(|x| *x == kind) {
            self.safety[a][k].fetch_add(1, Relaxed);
        }
    }

    /// Safety actions by kind, non-zero counts only.
    fn safety_counts(&self) -> SafetyCounts {
        let by_kind = |a: usize| -> BTreeMap<Kind, u64> {
            Kind::ALL.iter().zip(&self.safety[a]).map(|(k, n)| (*k, n.load(Relaxed))).filter(|(_, n)| *n > 0).collect()
        };
        SafetyCounts { blocked: by_kind(0), redacted: by_kind(1), flagged: by_kind(2) }
    }

    pub fn record_completion(&self, ttft_ms: f64, total_ms: f64, tokens: usize, decode_ms: f64) {
        let now = unix_now();
        self.completed.fetch_add(1, Relaxed);
        self.tokens_generated.fetch_add(tokens as u64, Relaxed);
        self.ttft.record(ttft_ms, now);
        self.total_latency.record(total_ms, now);
        self.latency.time_to_first_token.record(ttft_ms);
        self.latency.total.record(total_ms);
        self.decode.add(0, tokens as u64, now);
        self.decode.add(1, (decode_ms * 1e3) as u64, now);
    }

    /// Decode speed over the recent window; None without samples.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let [tokens, us] = self.decode.sums(unix_now());
        (us > 0 && tokens > 0).then(|| (tokens as f64 / (us as f64 / 1e6) * 10.0).round() / 10.0)
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn errors(&self) -> BTreeMap<ErrorCode, u64> {
        ErrorCode::ALL.iter().zip(&self.errors_by_code).map(|(c, n)| (*c, n.load(Relaxed))).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthDoc {
    pub device_id: String,
    pub version: &'static str,
    pub state: State,
    pub degraded_reasons: Vec<String>,
    pub uptime_s: u64,
    pub model: Option<ModelInfo>,
    pub memory: MemorySection,
    pub cpu: CpuSection,
    pub temperature_c: Option<f32>,
    pub disk: DiskSection,
    pub queue: QueueSection,
    pub counters: Counters,
    pub latency_ms: LatencySection,
    pub tokens_per_second: Option<f64>,
    pub mqtt: MqttSection,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemorySection {
    pub rss_mib: f64,
    /// What the config allows for (`edgellm check-config`).
    pub budget_mib: f64,
    pub system_available_mib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuSection {
    pub process_percent: f32,
    /// 1, 5 and 15 minutes.
    pub load_average: [f64; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskSection {
    pub model_dir_free_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueSection {
    pub depth: usize,
    pub capacity: usize,
    pub worker_busy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub requests: u64,
    pub completed: u64,
    /// Every refusal and failure, by error code.
    pub errors: BTreeMap<ErrorCode, u64>,
    pub busy_rejections: u64,
    pub cancellations: u64,
    pub tokens_generated: u64,
    pub inference_runs: u64,
    pub cache_hits: u64,
    pub cache_hit_rate: f64,
    pub safety: SafetyCounts,
}

/// Safety actions taken, by kind (kinds with no action are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SafetyCounts {
    pub blocked: BTreeMap<Kind, u64>,
    pub redacted: BTreeMap<Kind, u64>,
    pub flagged: BTreeMap<Kind, u64>,
}

/// Percentiles over the recent window (bucket bounds, within 25%); null without samples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencySection {
    pub time_to_first_token: Option<Percentiles>,
    pub total: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MqttSection {
    pub connected: bool,
    pub reconnects: u64,
    pub replies_dropped: u64,
}

/// The last failure: its code and when, never its text.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LastError {
    pub code: ErrorCode,
    pub at_unix_s: u64,
}

/// The reply to a `health` request: `{"id": ..., "event": "health", "health": {...}}`.
pub fn health_event(id: Option<&str>, health: &HealthDoc) -> String {
    #[derive(Serialize)]
    struct HealthEvent<'a> {
        id: Option<&'a str>,
        event: &'static str,
        health: &'a HealthDoc,
    }
    // Nothing in the document can fail to serialise (string keys, finite numbers or null).
    serde_json::to_string(&HealthEvent { id, event: "health", health }).unwrap_or_default()
}

/// Reads the system figures (sysinfo) and the counters into a [`HealthDoc`].
#[derive(Debug)]
pub struct Reporter {
    device_id: String,
    model: Mutex<Option<ModelInfo>>,
    model_dir: std::path::PathBuf,
    memory_degraded_mib: u64,
    min_tokens_per_second: f64,
    budget_mib: f64,
    system: Mutex<sysinfo::System>,
}

impl Reporter {
    pub fn new(config: &crate::config::Config, budget_mib: f64) -> Self {
        Reporter {
            device_id: config.device_id.clone(),
            model: Mutex::new(None),
            model_dir: config.model.dir.clone(),
            memory_degraded_mib: config.health.memory_degraded_mib,
            min_tokens_per_second: config.health.min_tokens_per_second,
            budget_mib,
            system: Mutex::new(sysinfo::System::new()),
        }
    }

    pub fn set_model(&self, info: ModelInfo) {
        if let Ok(mut m) = self.model.lock() {
            *m = Some(info);
        }
    }

    pub fn snapshot(&self, metrics: &Metrics) -> HealthDoc {
        use sysinfo::{Components, Disks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
        let now = unix_now();
        let pid = Pid::from_u32(std::process::id());
        let (rss_mib, cpu_percent, available_mib) = match self.system.lock() {
            Ok(mut sys) => {
                sys.refresh_memory();
                sys.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    true,
                    ProcessRefreshKind::nothing().with_memory().with_cpu(),
                );
                let (rss, cpu) =
                    sys.process(pid).map(|p| (p.memory() as f64 / 1048576.0, p.cpu_usage())).unwrap_or((0.0, 0.0));
                (rss, cpu, sys.available_memory() as f64 / 1048576.0)
            }
            Err(_) => (0.0, 0.0, 0.0),
        };
        let load = System::load_average();
        let temperature_c =
            Components::new_with_refreshed_list().iter().filter_map(|c| c.temperature()).reduce(f32::max);
        let model_dir = std::fs::canonicalize(&self.model_dir).unwrap_or_else(|_| self.model_dir.clone());
        let disk_free_mib = Disks::new_with_refreshed_list()
            .iter()
            .filter(|d| model_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| d.available_space() as f64 / 1048576.0);

        let tokens_per_second = metrics.tokens_per_second();
        let mut degraded_reasons = Vec::new();
        if metrics.knowledge_reload_failed.load(Relaxed) {
            degraded_reasons.push("knowledge reload failed".to_string());
        }
        let taken_over_at = metrics.mqtt_taken_over_at.load(Relaxed);
        if taken_over_at > 0 && unix_now().saturating_sub(taken_over_at) < MQTT_TAKEOVER_MEMORY_S {
            degraded_reasons
                .push("another MQTT client connects with this client id (duplicate device_id?)".to_string());
        }
        if self.memory_degraded_mib > 0 && rss_mib > self.memory_degraded_mib as f64 {
            degraded_reasons.push(format!("memory {rss_mib:.0} MiB above {} MiB", self.memory_degraded_mib));
        }
        if self.min_tokens_per_second > 0.0
            && let Some(tps) = tokens_per_second
            && tps < self.min_tokens_per_second
        {
            degraded_reasons.push(format!("decode {tps:.1} tokens/s below {}", self.min_tokens_per_second));
        }
        let mut state = metrics.state();
        if state == State::Ready && !degraded_reasons.is_empty() {
            state = State::Degraded;
        }
        let percentiles =
            |h: &WindowedHistogram| h.percentiles(now).map(|[p50, p95, p99]| Percentiles { p50, p95, p99 });
        let last_error =
            metrics.last_error.lock().ok().and_then(|e| *e).map(|(code, at_unix_s)| LastError { code, at_unix_s });
        let hits = metrics.cache_hits.load(Relaxed);
        let misses = metrics.cache_misses.load(Relaxed);
        HealthDoc {
            device_id: self.device_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            state,
            degraded_reasons,
            uptime_s: metrics.uptime_s(),
            model: self.model.lock().ok().and_then(|m| m.clone()),
            memory: MemorySection {
                rss_mib: (rss_mib * 10.0).round() / 10.0,
                budget_mib: (self.budget_mib * 10.0).round() / 10.0,
                system_available_mib: available_mib.round(),
            },
            cpu: CpuSection {
                process_percent: (cpu_percent * 10.0).round() / 10.0,
                load_average: [load.one, load.five, load.fifteen],
            },
            temperature_c,
            disk: DiskSection { model_dir_free_mib: disk_free_mib.map(f64::round) },
            queue: QueueSection {
                depth: metrics.queue_depth.load(Relaxed),
                capacity: metrics.queue_capacity.load(Relaxed),
                worker_busy: metrics.worker_busy.load(Relaxed),
            },
            counters: Counters {
                requests: metrics.requests.load(Relaxed),
                completed: metrics.completed.load(Relaxed),
                errors: metrics.errors(),
                busy_rejections: metrics.busy_rejections.load(Relaxed),
                cancellations: metrics.cancellations.load(Relaxed),
                tokens_generated: metrics.tokens_generated.load(Relaxed),
                inference_runs: metrics.inference_runs.load(Relaxed),
                cache_hits: hits,
                cache_hit_rate: if hits + misses > 0 { hits as f64 / (hits + misses) as f64 } else { 0.0 },
                safety: metrics.safety_counts(),
            },
            latency_ms: LatencySection {
                time_to_first_token: percentiles(&metrics.ttft),
                total: percentiles(&metrics.total_latency),
            },
            tokens_per_second,
            mqtt: MqttSection {
                connected: metrics.mqtt_connected.load(Relaxed),
                reconnects: metrics.mqtt_reconnects.load(Relaxed),
                replies_dropped: metrics.mqtt_replies_dropped.load(Relaxed),
            },
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_follow_the_samples() {
        let h = WindowedHistogram::new(600);
        for i in 1..=100 {
            h.record(i as f64 * 10.0, 1000);
        }
        let [p50, p95, p99] = h.percentiles(1000).unwrap();
        // Bucket bounds are within 25% of the true value.
        assert!((500.0..=625.0).contains(&p50), "{p50}");
        assert!((950.0..=1190.0).contains(&p95), "{p95}");
        assert!(p99 >= p95 && p99 <= 1250.0, "{p99}");
    }

    #[test]
    fn histogram_forgets_old_windows() {
        let h = WindowedHistogram::new(10);
        h.record(5000.0, 100);
        assert!(h.percentiles(100).is_some());
        h.record(1.0, 106);
        h.record(1.0, 112);
        let [p50, _, p99] = h.percentiles(112).unwrap();
        assert_eq!(p50, 1.0);
        assert_eq!(p99, 1.0, "the 5 s sample from two windows ago is gone");
    }

    #[test]
    fn error_counters_by_code() {
        let m = Metrics::new(60);
        m.record_error(ErrorCode::Busy);
        m.record_error(ErrorCode::Busy);
        m.record_error(ErrorCode::Timeout);
        assert_eq!(m.busy_rejections.load(Relaxed), 2);
        assert_eq!(m.errors()[&ErrorCode::Busy], 2);
        assert_eq!(m.errors()[&ErrorCode::Timeout], 1);
    }
}
