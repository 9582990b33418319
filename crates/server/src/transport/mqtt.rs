//! MQTT (v5, rumqttc): prompts on `<prefix>/prompt`, replies to the request's Response Topic
//! with its Correlation Data (so `mosquitto_rr` is a client) or to `<prefix>/reply/<id>`,
//! retained `<prefix>/status` (`online`, `draining`, `offline` as the last will) and retained
//! `<prefix>/health`.
//!
//! Reconnects with exponential backoff; a persistent session keeps QoS 1 prompts queued at the
//! broker while the daemon is away; a window of recent request ids drops duplicate deliveries;
//! replies wait in a bounded buffer while the broker is unreachable.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edgellm_protocol::{self as protocol, ErrorCode, Event, Rejection, Request};

use crate::config::Config;
use crate::service::{Origin, Service};

const TRANSPORT: &str = "mqtt";

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// A message waiting to be published.
#[derive(Debug)]
struct Outgoing {
    topic: String,
    payload: String,
    retain: bool,
    correlation: Option<Bytes>,
}

/// Where the answers to one request go.
#[derive(Debug, Clone)]
struct ReplyTo {
    topic: String,
    correlation: Option<Bytes>,
}

#[derive(Debug)]
pub struct Mqtt {
    options: MqttOptions,
    prefix: String,
    prompt_filter: String,
    prompt_topic: String,
    qos: QoS,
    max_payload: usize,
    reply_buffer: usize,
    dedup_window: usize,
    backoff: (Duration, Duration),
    /// Home Assistant discovery: (topic, retained config) pairs, published on every connect.
    discovery: Vec<(String, String)>,
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|source| MqttError::File { path: path.display().to_string(), source })
}

impl Mqtt {
    pub fn new(config: &Config) -> Result<Mqtt, MqttError> {
        let m = &config.mqtt;
        let prefix = m.topic_prefix.clone();
        let mut options = MqttOptions::new(m.client_id.clone(), m.host.clone(), m.port);
        options.set_keep_alive(Duration::from_secs(m.keep_alive_secs));
        options.set_clean_start(!m.persistent_session);
        if m.persistent_session {
            options.set_session_expiry_interval(Some(m.session_expiry_secs));
        }
        options.set_max_packet_size(Some((m.max_payload_bytes + 1024) as u32));
        let password = config.mqtt_password().map_err(|e| MqttError::Config(e.to_string()))?;
        if !m.username.is_empty() || password.is_some() {
            options.set_credentials(m.username.clone(), password.unwrap_or_default());
        }
        options.set_last_will(LastWill::new(format!("{prefix}/status"), "offline", QoS::AtLeastOnce, true, None));
        if let Some(tls) = &m.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let ca = read(&tls.ca_file)?;
            let client_auth = match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            };
            options.set_transport(rumqttc::Transport::tls(ca, client_auth, None));
        }
        let prompt_topic = format!("{prefix}/prompt");
        let prompt_filter = if m.shared_group.is_empty() {
            prompt_topic.clone()
        } else {
            format!("$share/{}/{prompt_topic}", m.shared_group)
        };
        Ok(Mqtt {
            options,
            prefix,
            prompt_filter,
            prompt_topic,
            qos: qos(m.qos),
            max_payload: m.max_payload_bytes,
            reply_buffer: m.reply_buffer,
            dedup_window: m.dedup_window,
            backoff: (Duration::from_millis(m.reconnect_min_ms), Duration::from_millis(m.reconnect_max_ms)),
            discovery: if config.health.home_assistant { home_assistant_discovery(config) } else { Vec::new() },
        })
    }

    pub async fn serve(self, service: Service) {
        let (client, eventloop) = AsyncClient::new(self.options.clone(), 16);
        let (out_tx, out_rx) = mpsc::channel::<Outgoing>(self.reply_buffer);
        let this = Arc::new(self);
        let flush = CancellationToken::new();
        let publisher = tokio::spawn(publish_loop(client.clone(), out_rx, this.qos, flush.clone()));
        let health = tokio::spawn(health_loop(this.clone(), service.clone(), out_tx.clone()));
        let replies = TaskTracker::new();
        let connection_done = CancellationToken::new();
        let events = tokio::spawn(event_loop(
            this.clone(),
            eventloop,
            client.clone(),
            service.clone(),
            out_tx.clone(),
            replies.clone(),
            connection_done.clone(),
        ));

        service.stop_accepting.cancelled().await;
        this.publish_status(&out_tx, "draining").await;
        service.worker_done.cancelled().await;
        replies.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), replies.wait()).await;
        health.abort();
        let _ = health.await;
        this.publish_status(&out_tx, "offline").await;
        flush.cancel();
        // Let the publisher hand everything to the client, then disconnect cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(3), publisher).await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(3), connection_done.cancelled()).await;
        events.abort();
    }

    async fn publish_status(&self, out: &mpsc::Sender<Outgoing>, status: &str) {
        let message = Outgoing {
            topic: format!("{}/status", self.prefix),
            payload: status.into(),
            retain: true,
            correlation: None,
        };
        let _ = out.send(message).await;
    }
}

/// Hands queued messages to rumqttc; once `flush` fires, sends what is queued and stops.
async fn publish_loop(client: AsyncClient, mut out: mpsc::Receiver<Outgoing>, qos: QoS, flush: CancellationToken) {
    loop {
        let message = tokio::select! {
            biased;
            message = out.recv() => message,
            _ = flush.cancelled() => out.try_recv().ok(),
        };
        let Some(message) = message else { return };
        let properties = PublishProperties {
            correlation_data: message.correlation,
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let level = if message.retain { QoS::AtLeastOnce } else { qos };
        if let Err(e) =
            client.publish_with_properties(message.topic, level, message.retain, message.payload, properties).await
        {
            tracing::warn!(error = %e, "MQTT publish failed");
        }
    }
}

async fn health_loop(mqtt: Arc<Mqtt>, service: Service, out: mpsc::Sender<Outgoing>) {
    let interval = Duration::from_secs(service.config.health.interval_secs);
    let topic = format!("{}/health", mqtt.prefix);
    loop {
        // A document queued while disconnected would reach the broker stale (saying
        // "disconnected"); the ConnAck handler wakes this loop for a fresh one instead.
        let connected = service.metrics.mqtt_connected.load(Relaxed);
        if connected && let Ok(payload) = serde_json::to_string(&service.health()) {
            // Health is periodic: when the buffer is full, this one is skipped, not queued.
            let _ = out.try_send(Outgoing { topic: topic.clone(), payload, retain: true, correlation: None });
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = service.state_changed.notified() => {}
        }
    }
}

/// Remembers recent request ids, in fixed memory, to drop duplicate deliveries.
#[derive(Debug)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        RecentIds { order: VecDeque::with_capacity(capacity), set: HashSet::with_capacity(capacity), capacity }
    }

    /// True when `id` was not seen in the window (and records it).
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        true
    }
}

#[allow(clippy::too_many_arguments)]
async fn event_loop(
    mqtt: Arc<Mqtt>,
    mut eventloop: EventLoop,
    client: AsyncClient,
    service: Service,
    out: mpsc::Sender<Outgoing>,
    replies: TaskTracker,
    done: CancellationToken,
) {
    let mut backoff = mqtt.backoff.0;
    let mut connected_once = false;
    let mut down_logged = false;
    let mut recent = RecentIds::new(mqtt.dedup_window);
    // Requests in flight wait for room in the reply buffer: no more of them than it holds.
    let origin = service.origin(mqtt.reply_buffer);
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff = mqtt.backoff.0;
                down_logged = false;
                if connected_once {
                    service.metrics.mqtt_reconnects.fetch_add(1, Relaxed);
                }
                connected_once = true;
                service.metrics.mqtt_connected.store(true, Relaxed);
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                let status = if service.stop_accepting.is_cancelled() { "draining" } else { "online" };
                mqtt.publish_status(&out, status).await;
                for (topic, payload) in &mqtt.discovery {
                    let message =
                        Outgoing { topic: topic.clone(), payload: payload.clone(), retain: true, correlation: None };
                    let _ = out.send(message).await;
                }
                if let Err(e) = client.subscribe(mqtt.prompt_filter.clone(), mqtt.qos).await {
                    tracing::warn!(error = %e, "MQTT subscribe failed");
                }
                service.state_changed.notify_one();
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                if publish.topic.as_ref() == mqtt.prompt_topic.as_bytes() {
                    handle_prompt(&mqtt, &service, &out, &replies, &mut recent, &origin, publish);
                }
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(_))) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
            }
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
                done.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
                if done.is_cancelled() {
                    return;
                }
                if !down_logged {
                    tracing::warn!(error = %e, "MQTT connection lost; reconnecting with backoff");
                    down_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(mqtt.backoff.1);
            }
        }
    }
}

/// Home Assistant MQTT discovery configs for the main health figures: each sensor reads
/// the retained health document and is available while the status topic says `online`.
fn home_assistant_discovery(config: &Config) -> Vec<(String, String)> {
    let device = &config.device_id;
    let prefix = &config.mqtt.topic_prefix;
    let sensors: [(&str, &str, &str, Option<&str>); 8] = [
        ("state", "State", "{{ value_json.state }}", None),
        ("rss", "Memory (RSS)", "{{ value_json.memory.rss_mib }}", Some("MiB")),
        ("tokens_per_second", "Decode speed", "{{ value_json.tokens_per_second | default(0) }}", Some("tokens/s")),
        ("queue_depth", "Queue depth", "{{ value_json.queue.depth }}", None),
        ("requests", "Requests", "{{ value_json.counters.requests }}", None),
        (
            "ttft_p50",
            "Time to first token p50",
            "{{ value_json.latency_ms.time_to_first_token.p50 | default(0) }}",
            Some("ms"),
        ),
        ("cpu", "CPU", "{{ value_json.cpu.process_percent }}", Some("%")),
        ("uptime", "Uptime", "{{ value_json.uptime_s }}", Some("s")),
    ];
    sensors
        .iter()
        .map(|(key, name, template, unit)| {
            let mut payload = serde_json::json!({
                "name": name,
                "unique_id": format!("edgellm_{device}_{key}"),
                "object_id": format!("edgellm_{device}_{key}"),
                "state_topic": format!("{prefix}/health"),
                "value_template": template,
                "availability_topic": format!("{prefix}/status"),
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {
                    "identifiers": [format!("edgellm_{device}")],
                    "name": format!("edgellm {device}"),
                    "model": "edgellm",
                    "sw_version": env!("CARGO_PKG_VERSION"),
                },
            });
            if let Some(unit) = unit {
                payload["unit_of_measurement"] = (*unit).into();
            }
            let topic = format!("{}/sensor/edgellm_{device}/{key}/config", config.health.home_assistant_prefix);
            (topic, payload.to_string())
        })
        .collect()
}

/// A client-given response topic, if it is one we may publish to.
fn valid_reply_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 256 && !topic.contains(['#', '+', '\0']) && !topic.starts_with('$')
}

fn handle_prompt(
    mqtt: &Mqtt,
    service: &Service,
    out: &mpsc::Sender<Outgoing>,
    replies: &TaskTracker,
    recent: &mut RecentIds,
    origin: &Origin,
    publish: rumqttc::v5::mqttbytes::v5::Publish,
) {
    let properties = publish.properties.unwrap_or_default();
    let v5_reply = properties.response_topic.filter(|t| valid_reply_topic(t));
    let correlation = properties.correlation_data;
    let reply_for = |id: Option<&str>| -> Option<ReplyTo> {
        match (&v5_reply, id) {
            (Some(topic), _) => Some(ReplyTo { topic: topic.clone(), correlation: correlation.clone() }),
            (None, Some(id)) => Some(ReplyTo { topic: format!("{}/reply/{id}", mqtt.prefix), correlation: None }),
            (None, None) => None,
        }
    };
    let send_error = |to: Option<ReplyTo>, id: Option<&str>, r: &Rejection| {
        if let Some(to) = to {
            let _ = out.try_send(Outgoing {
                topic: to.topic,
                payload: protocol::error_json(id, r),
                retain: false,
                correlation: to.correlation,
            });
        }
    };
    if publish.payload.len() > mqtt.max_payload {
        let r = Rejection::new(ErrorCode::TooLong, format!("payload larger than {} bytes", mqtt.max_payload));
        service.refused(&r, TRANSPORT);
        return send_error(reply_for(None), None, &r);
    }
    let request = match service.parse(&publish.payload, TRANSPORT) {
        Ok(r) => r,
        Err(refused) => {
            let id = refused.id.as_deref();
            return send_error(reply_for(id), id, &refused.rejection);
        }
    };
    match request {
        Request::Health { id } => {
            if let Some(to) = reply_for(id.as_deref()) {
                let doc = crate::health::health_event(id.as_deref(), &service.health());
                let _ = out.try_send(Outgoing {
                    topic: to.topic,
                    payload: doc.to_string(),
                    retain: false,
                    correlation: to.correlation,
                });
            }
        }
        Request::Cancel { id } => {
            origin.cancel(&id);
        }
        Request::Generate(request) => {
            let id = request.id.clone();
            let Some(to) = reply_for(Some(&id)) else { return };
            // The dedup key includes the correlation data: mosquitto_rr sends no id.
            let key = match &to.correlation {
                Some(c) => format!("{id}/{}", hex::encode(c)),
                None => id.clone(),
            };
            if !recent.insert(&key) {
                tracing::info!(id = %id, duplicate = publish.dup, "duplicate MQTT request ignored");
                return;
            }
            let stream = request.stream;
            let mut ticket = match origin.submit(request) {
                Ok(t) => t,
                Err(r) => {
                    // `submit` has counted it already.
                    tracing::info!(code = r.code.as_str(), "MQTT request not admitted");
                    let _ = out.try_send(Outgoing {
                        topic: to.topic,
                        payload: Event::Error(r).to_json(&id),
                        retain: false,
                        correlation: to.correlation,
                    });
                    return;
                }
            };
            let out = out.clone();
            let metrics = service.metrics.clone();
            replies.spawn(async move {
                while let Some(event) = ticket.events.recv().await {
                    let last = event.is_final();
                    let message = Outgoing {
                        topic: to.topic.clone(),
                        payload: event.to_json(&id),
                        retain: false,
                        correlation: to.correlation.clone(),
                    };
                    if last {
                        // The final answer waits for room in the buffer; it is never dropped.
                        let _ = out.send(message).await;
                        break;
                    } else if stream && out.try_send(message).is_err() {
                        // A streamed piece is dropped while the broker is away; the final
                        // answer carries the whole text.
                        metrics.mqtt_replies_dropped.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(r.insert("a"), "a fell out of the window");
        assert_eq!(r.order.len(), 2);
    }

    #[test]
    fn reply_topics_from_clients_are_checked() {
        assert!(valid_reply_topic("clients/42/answers"));
        assert!(!valid_reply_topic("clients/#"));
        assert!(!valid_reply_topic("$SYS/x"));
        assert!(!valid_reply_topic(""));
    }
}
