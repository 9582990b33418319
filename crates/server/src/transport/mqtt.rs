//! MQTT (v5, rumqttc): prompts on `<prefix>/prompt`, replies to the request's Response Topic
//! with its Correlation Data (so `mosquitto_rr` is a client) or to `<prefix>/reply/<id>`,
//! retained `<prefix>/status` (`online`, `draining`, `offline` as the last will) and retained
//! `<prefix>/health`.
//!
//! Reconnects with exponential backoff; a persistent session keeps QoS 1 prompts queued at the
//! broker while the daemon is away; a window of recent request ids drops duplicate deliveries;
//! replies wait in a bounded buffer while the broker is unreachable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill, Packet, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, StateError};
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
    /// Home Assistant's discovery prefix: replies may not be published under it.
    discovery_prefix: String,
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
            discovery_prefix: config.health.home_assistant_prefix.clone(),
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
    let interval = Duration::from_secs(service.config().health.interval_secs);
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

/// Whether a request id was seen in the dedup window.
#[derive(Debug, PartialEq)]
enum Seen {
    New,
    /// The same payload again: a broker's redelivery, dropped.
    SameRequest,
    /// Another request with this id: its sender is told.
    OtherRequest,
}

/// Remembers recent request ids and a hash of their payloads, in fixed memory, to drop
/// duplicate deliveries and refuse a reused id.
#[derive(Debug)]
struct RecentIds {
    order: VecDeque<String>,
    seen: HashMap<String, u64>,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        RecentIds {
            order: VecDeque::with_capacity(capacity),
            seen: HashMap::with_capacity(capacity),
            capacity,
            hasher: Default::default(),
        }
    }

    /// Records `id` with its payload, saying whether and how it was seen before.
    fn insert(&mut self, id: &str, payload: &[u8]) -> Seen {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(payload);
        if let Some(&earlier) = self.seen.get(id) {
            return if earlier == hash { Seen::SameRequest } else { Seen::OtherRequest };
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string(), hash);
        Seen::New
    }
}

/// A request in flight is known by its reply topic and id: only the client that reads that
/// topic (and so sent the request) can cancel it.
fn in_flight_key(reply_topic: &str, id: &str) -> String {
    format!("{reply_topic}\n{id}")
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
    // When the current connection was made, and how many connections in a row the broker
    // closed soon after making them: a takeover fight when the broker does not say so.
    let mut connected_at: Option<std::time::Instant> = None;
    let mut short_sessions = 0u32;
    let mut recent = RecentIds::new(mqtt.dedup_window);
    // Requests in flight wait for room in the reply buffer: no more of them than it holds.
    let origin = service.origin(mqtt.reply_buffer);
    // Nothing in this loop awaits the client or the outgoing buffer: rumqttc's request
    // channel is drained only by `poll`, so a loop that waited for room in it (to subscribe,
    // or to queue the status while the buffer is full of an outage's replies) would never
    // poll again. What a connection needs sent is sent by a task of its own.
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff = mqtt.backoff.0;
                down_logged = false;
                if connected_once {
                    service.metrics.mqtt_reconnects.fetch_add(1, Relaxed);
                }
                connected_once = true;
                connected_at = Some(std::time::Instant::now());
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                tokio::spawn(on_connect(mqtt.clone(), client.clone(), service.clone(), out.clone()));
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                let granted = ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if granted {
                    service.metrics.mqtt_connected.store(true, Relaxed);
                    service.state_changed.notify_one();
                } else {
                    tracing::error!(codes = ?ack.return_codes, "MQTT broker refused the prompt subscription");
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                if publish.topic.as_ref() == mqtt.prompt_topic.as_bytes() {
                    handle_prompt(&mqtt, &service, &out, &replies, &mut recent, &origin, publish);
                }
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(_))) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
                service.state_changed.notify_one();
            }
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
                done.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                service.metrics.mqtt_connected.store(false, Relaxed);
                service.state_changed.notify_one();
                if done.is_cancelled() {
                    return;
                }
                let lasted = connected_at.take().map(|at| at.elapsed());
                if lasted.is_some_and(|d| d < SHORT_SESSION) {
                    short_sessions += 1;
                } else if lasted.is_some() {
                    short_sessions = 0;
                }
                let said_so = matches!(
                    &e,
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                        ..
                    })
                );
                if said_so || short_sessions >= SHORT_SESSIONS_FOR_TAKEOVER {
                    // Two daemons with one client id (a cloned SD card keeps the host name)
                    // would take the session from each other forever: say so, and back off.
                    // An MQTT 5 broker may say so (reason 0x8E); mosquitto 2.0 just closes the
                    // old connection, so sessions the broker ends right after making them,
                    // several in a row, are taken for the same fight.
                    service.metrics.mqtt_taken_over_at.store(unix_now(), Relaxed);
                    backoff = (backoff.max(TAKEOVER_BACKOFF) * 2).min(TAKEOVER_BACKOFF * 16);
                    down_logged = true;
                    short_sessions = 0;
                    let cause = if said_so {
                        "the broker said so"
                    } else {
                        "the broker closed several connections in a row right after making them"
                    };
                    tracing::error!(
                        client_id = %mqtt.options.client_id().escape_debug(),
                        retry_in_s = backoff.as_secs(),
                        cause,
                        "MQTT session taken over: another client connects with this client id; \
                         give each device its own device_id or mqtt.client_id"
                    );
                }
                if !down_logged {
                    tracing::warn!(error = %e, "MQTT connection lost; reconnecting with backoff");
                    down_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(mqtt.backoff.1.max(backoff));
            }
        }
    }
}

/// A connection the broker closes sooner than this after making it counts towards a takeover.
const SHORT_SESSION: Duration = Duration::from_secs(5);
/// Short sessions in a row taken for a takeover fight.
const SHORT_SESSIONS_FOR_TAKEOVER: u32 = 3;

/// How long to wait before reconnecting after another client took our session: far longer
/// than a normal reconnect, so two daemons with one client id do not fight twice a second.
const TAKEOVER_BACKOFF: Duration = Duration::from_secs(15);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a new connection needs: the status, the discovery configs, the subscription. A task
/// of its own, since each may wait for room in a buffer that only the event loop drains.
async fn on_connect(mqtt: Arc<Mqtt>, client: AsyncClient, service: Service, out: mpsc::Sender<Outgoing>) {
    let status = if service.stop_accepting.is_cancelled() { "draining" } else { "online" };
    mqtt.publish_status(&out, status).await;
    for (topic, payload) in &mqtt.discovery {
        let message = Outgoing { topic: topic.clone(), payload: payload.clone(), retain: true, correlation: None };
        let _ = out.send(message).await;
    }
    if let Err(e) = client.subscribe(mqtt.prompt_filter.clone(), mqtt.qos).await {
        tracing::warn!(error = %e, "MQTT subscribe failed");
    }
}

/// Home Assistant MQTT discovery configs for the main health figures, in the schema of
/// Home Assistant 2025.10 and later: `default_entity_id` (`object_id` is deprecated), each
/// sensor reading the retained health document and available while the retained status
/// topic says `online`. A figure that can be null (no samples yet) is not rendered as the
/// text "None": its sensor is unavailable meanwhile, through a second availability topic
/// (the health document itself) that says whether the figure is there.
fn home_assistant_discovery(config: &Config) -> Vec<(String, String)> {
    let device = &config.device_id;
    let prefix = &config.mqtt.topic_prefix;
    /// One figure of the health document as a sensor.
    struct Sensor {
        key: &'static str,
        name: &'static str,
        /// Where it is in the health document.
        path: &'static str,
        unit: Option<&'static str>,
        device_class: Option<&'static str>,
        /// Null until there are samples.
        nullable: bool,
    }
    let sensor =
        |key, name, path, unit, device_class, nullable| Sensor { key, name, path, unit, device_class, nullable };
    let sensors = [
        sensor("state", "State", "state", None, None, false),
        sensor("rss", "Memory (RSS)", "memory.rss_mib", Some("MiB"), Some("data_size"), false),
        sensor("tokens_per_second", "Decode speed", "tokens_per_second", Some("tokens/s"), None, true),
        sensor("queue_depth", "Queue depth", "queue.depth", None, None, false),
        sensor("requests", "Requests", "counters.requests", None, None, false),
        sensor(
            "ttft_p50",
            "Time to first token p50",
            "latency_ms.time_to_first_token.p50",
            Some("ms"),
            Some("duration"),
            true,
        ),
        sensor("cpu", "CPU", "cpu.process_percent", Some("%"), None, false),
        sensor("uptime", "Uptime", "uptime_s", Some("s"), Some("duration"), false),
    ];
    let status_topic = format!("{prefix}/status");
    let health_topic = format!("{prefix}/health");
    sensors
        .iter()
        .map(|&Sensor { key, name, path, unit, device_class, nullable }| {
            let id = format!("edgellm_{device}_{key}");
            let mut availability = vec![serde_json::json!({
                "topic": status_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
            })];
            let value_template = if nullable {
                // The figure's parent may be null too (`time_to_first_token` without samples).
                let parent = path.rsplit_once('.').map(|(p, _)| format!("value_json.{p} is not none and "));
                let present = format!("{}value_json.{path} is not none", parent.unwrap_or_default());
                availability.push(serde_json::json!({
                    "topic": health_topic,
                    "value_template": format!("{{{{ 'online' if {present} else 'offline' }}}}"),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }));
                format!("{{{{ value_json.{path} if {present} else 0 }}}}")
            } else {
                format!("{{{{ value_json.{path} }}}}")
            };
            let mut payload = serde_json::json!({
                "name": name,
                "unique_id": id,
                "default_entity_id": format!("sensor.{id}"),
                "state_topic": health_topic,
                "value_template": value_template,
                "availability": availability,
                "availability_mode": "all",
                "device": {
                    "identifiers": [format!("edgellm_{device}")],
                    "name": format!("edgellm {device}"),
                    "model": "edgellm",
                    "sw_version": env!("CARGO_PKG_VERSION"),
                },
                "origin": {"name": "edgellm", "sw_version": env!("CARGO_PKG_VERSION")},
            });
            if let Some(unit) = unit {
                payload["unit_of_measurement"] = unit.into();
            }
            if key != "state" {
                // Numbers, so that Home Assistant keeps statistics of them.
                payload["state_class"] = if key == "requests" { "total_increasing" } else { "measurement" }.into();
            }
            if let Some(class) = device_class {
                payload["device_class"] = class.into();
            }
            let topic = format!("{}/sensor/edgellm_{device}/{key}/config", config.health.home_assistant_prefix);
            (topic, payload.to_string())
        })
        .collect()
}

impl Mqtt {
    /// Whether a client-given response topic is one we may publish to: a plain topic name, not
    /// a broker topic, and nowhere under our own prefix (status, health, prompts) or the Home
    /// Assistant discovery prefix, where a reply would overwrite what others rely on.
    fn allowed_reply_topic(&self, topic: &str) -> bool {
        let under = |prefix: &str| !prefix.is_empty() && (topic == prefix || topic.starts_with(&format!("{prefix}/")));
        !topic.is_empty()
            && topic.len() <= 256
            && !topic.contains(['#', '+', '\0'])
            && !topic.starts_with('$')
            && !under(&self.prefix)
            && !under(&self.discovery_prefix)
    }
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
    let correlation = properties.correlation_data;
    let (v5_reply, forbidden_reply) = match properties.response_topic {
        Some(topic) if mqtt.allowed_reply_topic(&topic) => (Some(topic), false),
        Some(_) => (None, true),
        None => (None, false),
    };
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
    if forbidden_reply {
        // Told on the request's own reply topic when it has an id; never on the one it named.
        let r = Rejection::new(
            ErrorCode::BadRequest,
            "the response topic is not allowed (wildcards, $-topics, and the daemon's own and discovery prefixes are refused)",
        );
        service.refused(&r, TRANSPORT);
        let id = request.id();
        return send_error(reply_for(id), id, &r);
    }
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
            // Only the client that asked can cancel: the same reply topic and id.
            let Some(to) = reply_for(Some(&id)) else { return };
            origin.cancel(&in_flight_key(&to.topic, &id));
        }
        Request::Generate(request) => {
            let id = request.id.clone();
            let Some(to) = reply_for(Some(&id)) else { return };
            // The dedup key includes the correlation data: mosquitto_rr sends no id.
            let key = match &to.correlation {
                Some(c) => format!("{id}/{}", hex::encode(c)),
                None => id.clone(),
            };
            match recent.insert(&key, &publish.payload) {
                Seen::New => {}
                Seen::SameRequest => {
                    tracing::info!(id = %id, duplicate = publish.dup, "duplicate MQTT delivery ignored");
                    return;
                }
                Seen::OtherRequest => {
                    let r = Rejection::new(ErrorCode::BadRequest, "duplicate id: a different request used it recently");
                    service.refused(&r, TRANSPORT);
                    return send_error(Some(to), Some(&id), &r);
                }
            }
            let stream = request.stream;
            let mut ticket = match origin.submit_as(in_flight_key(&to.topic, &id), request) {
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
    fn recent_ids_forget_the_oldest_and_tell_a_reused_id_from_a_redelivery() {
        let mut r = RecentIds::new(2);
        assert_eq!(r.insert("a", b"one"), Seen::New);
        assert_eq!(r.insert("a", b"one"), Seen::SameRequest);
        assert_eq!(r.insert("a", b"two"), Seen::OtherRequest);
        assert_eq!(r.insert("b", b"x"), Seen::New);
        assert_eq!(r.insert("c", b"x"), Seen::New);
        assert_eq!(r.insert("a", b"two"), Seen::New, "a fell out of the window");
        assert_eq!(r.order.len(), 2);
    }

    #[test]
    fn reply_topics_under_our_prefixes_or_with_wildcards_are_refused() {
        let mut config = Config::default_config();
        config.mqtt.topic_prefix = "edgellm/dev1".into();
        let mqtt = Mqtt::new(&config).unwrap();
        assert!(mqtt.allowed_reply_topic("clients/42/answers"));
        assert!(mqtt.allowed_reply_topic("edgellm/dev10/answers"), "a prefix of a topic, not of a level");
        for topic in [
            "clients/#",
            "clients/+/x",
            "$SYS/x",
            "",
            "edgellm/dev1",
            "edgellm/dev1/status",
            "edgellm/dev1/health",
            "homeassistant/sensor/x/config",
        ] {
            assert!(!mqtt.allowed_reply_topic(topic), "{topic}");
        }
    }
}
