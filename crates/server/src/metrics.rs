//! Prometheus text exposition (`GET /metrics` on the HTTP API): the health counters under
//! Prometheus names (`edgellm_..._total` counters, `_seconds` and `_bytes` units), and
//! latency histograms that only grow.
//!
//! The health document's latency figures are percentiles over a recent window, which a
//! scraper cannot add up; [`Cumulative`] keeps counts since start instead, as Prometheus
//! histograms must, in fixed memory.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use edgellm_protocol::ErrorCode;

use crate::health::{HealthDoc, Metrics, State};

/// Bucket upper bounds in seconds, from a fast cached answer to a long generation on a slow
/// board.
const BOUNDS_S: [f64; 12] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A cumulative latency histogram: per-bucket counts (not yet summed), the count and the sum.
#[derive(Debug)]
pub struct Cumulative {
    buckets: [AtomicU64; BOUNDS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Cumulative {
    fn default() -> Self {
        Cumulative {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Cumulative {
    pub fn record(&self, ms: f64) {
        let s = ms.max(0.0) / 1e3;
        if let Some(i) = BOUNDS_S.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((ms.max(0.0) * 1e3) as u64, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut seen = 0;
        for (bound, bucket) in BOUNDS_S.iter().zip(&self.buckets) {
            seen += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {seen}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Time to first token and total time of answered requests, since start.
#[derive(Debug, Default)]
pub struct LatencyHistograms {
    pub time_to_first_token: Cumulative,
    pub total: Cumulative,
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The whole exposition, from a fresh health document and the live counters.
pub fn render(doc: &HealthDoc, metrics: &Metrics) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let model = doc.model.as_ref().map(|m| m.id.as_str()).unwrap_or("");
    header(&mut out, "edgellm_info", "The daemon's version, device and model (always 1).", "gauge");
    let _ = writeln!(
        out,
        "edgellm_info{{version=\"{}\",device_id=\"{}\",model=\"{}\"}} 1",
        label(doc.version),
        label(&doc.device_id),
        label(model)
    );
    header(&mut out, "edgellm_state", "1 for the daemon's current state, 0 for the others.", "gauge");
    for (state, name) in [
        (State::Starting, "starting"),
        (State::Ready, "ready"),
        (State::Degraded, "degraded"),
        (State::Draining, "draining"),
    ] {
        let _ = writeln!(out, "edgellm_state{{state=\"{name}\"}} {}", u8::from(doc.state == state));
    }
    single(&mut out, "edgellm_uptime_seconds", "Seconds since the daemon started.", "gauge", doc.uptime_s);

    let c = &doc.counters;
    single(&mut out, "edgellm_requests_total", "Generation requests received.", "counter", c.requests);
    single(&mut out, "edgellm_requests_completed_total", "Requests answered in full.", "counter", c.completed);
    header(&mut out, "edgellm_errors_total", "Refusals and failures, by error code.", "counter");
    for code in ErrorCode::ALL {
        let n = c.errors.get(&code).copied().unwrap_or(0);
        let _ = writeln!(out, "edgellm_errors_total{{code=\"{}\"}} {n}", code.as_str());
    }
    single(&mut out, "edgellm_tokens_generated_total", "Answer tokens generated.", "counter", c.tokens_generated);
    single(&mut out, "edgellm_inference_runs_total", "Prompts that reached the model.", "counter", c.inference_runs);
    single(&mut out, "edgellm_cache_hits_total", "Answers served from the answer cache.", "counter", c.cache_hits);
    single(
        &mut out,
        "edgellm_cache_misses_total",
        "Answers not found in the answer cache.",
        "counter",
        metrics.cache_misses.load(Relaxed),
    );
    header(&mut out, "edgellm_safety_actions_total", "Safety rule actions taken, by action and kind.", "counter");
    for (action, counts) in [("block", &c.safety.blocked), ("redact", &c.safety.redacted), ("flag", &c.safety.flagged)]
    {
        for (kind, n) in counts {
            let _ = writeln!(out, "edgellm_safety_actions_total{{action=\"{action}\",kind=\"{}\"}} {n}", kind.name());
        }
    }

    metrics.latency.time_to_first_token.write(
        &mut out,
        "edgellm_time_to_first_token_seconds",
        "From admission to the first answer token (queue time included).",
    );
    metrics.latency.total.write(&mut out, "edgellm_request_duration_seconds", "From admission to the final answer.");
    if let Some(tps) = doc.tokens_per_second {
        single(&mut out, "edgellm_decode_tokens_per_second", "Decode speed over the recent window.", "gauge", tps);
    }

    let q = &doc.queue;
    single(&mut out, "edgellm_queue_depth", "Requests waiting for the inference worker.", "gauge", q.depth);
    single(&mut out, "edgellm_queue_capacity", "Requests the queue holds before answering busy.", "gauge", q.capacity);
    single(
        &mut out,
        "edgellm_worker_busy",
        "1 while the inference worker runs a request.",
        "gauge",
        u8::from(q.worker_busy),
    );

    let mib = 1024.0 * 1024.0;
    single(
        &mut out,
        "process_resident_memory_bytes",
        "Resident memory of the daemon.",
        "gauge",
        (doc.memory.rss_mib * mib).round(),
    );
    single(
        &mut out,
        "edgellm_memory_budget_bytes",
        "Memory the configuration allows for (edgellm check-config).",
        "gauge",
        (doc.memory.budget_mib * mib).round(),
    );
    single(
        &mut out,
        "edgellm_cpu_percent",
        "CPU use of the daemon (100 = one core).",
        "gauge",
        doc.cpu.process_percent,
    );
    if let Some(t) = doc.temperature_c {
        single(&mut out, "edgellm_temperature_celsius", "Hottest temperature sensor.", "gauge", t);
    }

    let m = &doc.mqtt;
    single(
        &mut out,
        "edgellm_mqtt_connected",
        "1 while connected to the broker and subscribed to the prompt topic.",
        "gauge",
        u8::from(m.connected),
    );
    single(&mut out, "edgellm_mqtt_reconnects_total", "Reconnections to the broker.", "counter", m.reconnects);
    single(
        &mut out,
        "edgellm_mqtt_replies_dropped_total",
        "Streamed MQTT pieces dropped while the broker was away.",
        "counter",
        m.replies_dropped,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let h = Cumulative::default();
        for ms in [10.0, 40.0, 40.0, 700.0, 500_000.0] {
            h.record(ms);
        }
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.025\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"120\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_seconds_count 5\n"), "{out}");
        assert!(out.contains("x_seconds_sum 500.79\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
