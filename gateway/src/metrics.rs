//! The node's Prometheus metrics.
//!
//! Each node owns its own recorder (not the process-global one), so several
//! nodes in one test process keep separate figures. Handles are registered
//! once at start; hot paths only touch an atomic. Every metric is documented
//! in docs/operations.md.

use std::sync::Arc;

use broker_adapter::BrokerMetrics;
use metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets of `gateway_broker_latency_seconds`: 100 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Registered metric handles of one node.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Tasks alive in the node's runtime (set at each upkeep), for leak
    /// hunting: a soak's task count must not grow with churn.
    pub runtime_tasks: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    /// (connection, channel) subscriptions.
    pub subscriptions: Gauge,
    /// Channels with at least one local subscriber.
    pub channels: Gauge,
    /// Publications accepted from the HTTP API.
    pub published_api: Counter,
    /// Idempotent publications answered from an earlier one (nothing sent).
    pub publish_duplicates: Counter,
    /// Publications accepted from WebSocket clients.
    pub published_client: Counter,
    /// Publications written to client sockets.
    pub delivered: Counter,
    /// `POST /stream/commands` commands forwarded to the node holding
    /// their session.
    pub stream_commands_forwarded: Counter,
    /// Clients disconnected because their outbound queue overflowed.
    pub slow_consumer_disconnects: Counter,
    /// 1 while the broker is reachable.
    pub broker_up: Gauge,
    /// 1 while `/readyz` answers 200 (set when scraped).
    pub ready: Gauge,
    /// 1 once the node is draining (set when scraped).
    pub draining: Gauge,
    /// The node's `--max-connections`.
    pub connections_limit: Gauge,
    /// Holes in a channel's stream that history could not fill (a gap
    /// notice went to the channel's subscribers).
    pub gap_notices: Counter,
    /// History reads made to fill holes or catch up after an outage.
    pub repairs: Counter,
    /// Payload bytes of WebSocket messages sent compressed, before and
    /// after compression.
    pub compression_bytes_in: Counter,
    pub compression_bytes_out: Counter,
    /// Messages the node compressed: once per publication and encoding for
    /// all the subscribers that share its compressed bytes.
    pub compressions: Counter,
    /// Open WebSocket connections that negotiated permessage-deflate.
    pub compressed_connections: Gauge,
    /// Handles the broker records into.
    pub broker: BrokerMetrics,
    /// `gateway_rejections_total`, one handle per reason.
    rejections: Vec<(&'static str, Counter)>,
}

/// Every `reason` of `gateway_rejections_total` (docs/security.md).
pub const REJECTION_REASONS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "connect_rate",
    "draining",
    "origin",
    "unauthorized",
    "forbidden",
    "max_subscriptions",
    "publish_rate",
    "subscribe_rate",
    "command_rate",
    "message_too_big",
    "body_too_large",
    "api_concurrency",
    "max_pending_connections",
    "max_pending_per_ip",
];

const METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// Registers every metric of a node.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("gateway_broker_latency_seconds".into()),
                LATENCY_BUCKETS,
            )
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(KeyName::from(name), Some(Unit::Count), SharedString::from(help));
            recorder.register_gauge(&Key::from_name(name), &METADATA)
        };
        let broker = BrokerMetrics {
            latency: {
                let name = "gateway_broker_latency_seconds";
                recorder.describe_histogram(
                    KeyName::from(name),
                    Some(Unit::Seconds),
                    SharedString::from(
                        "Time from publish on any node to arrival at this node through the broker.",
                    ),
                );
                recorder.register_histogram(&Key::from_name(name), &METADATA)
            },
            reconnects: counter(
                "gateway_broker_reconnects_total",
                "Successful reconnections to the broker after the connection was lost.",
                vec![],
            ),
            probe_failures: counter(
                "gateway_broker_probe_failures_total",
                "Times this node's subscription probe did not come back in time (the connection is then re-established).",
                vec![],
            ),
            dropped: counter(
                "gateway_broker_dropped_total",
                "Broker messages dropped as unreadable (bad envelope, unknown version, wrong channel).",
                vec![],
            ),
            shard_up: {
                let recorder = recorder.clone();
                Arc::new(move |shard: &str| {
                    let labels = vec![Label::new("shard", shard.to_owned())];
                    recorder.register_gauge(&Key::from_parts("gateway_broker_up", labels), &METADATA)
                })
            },
        };
        let published =
            "Publications accepted by the broker, by source (api = HTTP API, client = WebSocket).";
        recorder.describe_gauge(
            KeyName::from("gateway_build_info"),
            None,
            SharedString::from("Always 1; the version label names the running gateway's version."),
        );
        recorder
            .register_gauge(
                &Key::from_parts(
                    "gateway_build_info",
                    vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
                ),
                &METADATA,
            )
            .set(1.0);
        Metrics {
            connections: gauge("gateway_connections", "Open WebSocket connections."),
            runtime_tasks: gauge(
                "gateway_runtime_tasks",
                "Tasks alive in the node's async runtime (sampled every 5 s).",
            ),
            connections_total: counter(
                "gateway_connections_total",
                "WebSocket connections accepted since start.",
                vec![],
            ),
            subscriptions: gauge(
                "gateway_subscriptions",
                "Subscriptions of local clients to channels.",
            ),
            channels: gauge("gateway_channels", "Channels with at least one local subscriber."),
            published_api: counter(
                "gateway_messages_published_total",
                published,
                vec![Label::new("source", "api")],
            ),
            publish_duplicates: counter(
                "gateway_publish_duplicates_total",
                "Publications with an idempotency_key already used on the channel within the window: answered with the first one's position, not published again.",
                vec![],
            ),
            published_client: counter(
                "gateway_messages_published_total",
                published,
                vec![Label::new("source", "client")],
            ),
            delivered: counter(
                "gateway_messages_delivered_total",
                "Publications written to client sockets.",
                vec![],
            ),
            stream_commands_forwarded: counter(
                "gateway_stream_commands_forwarded_total",
                "Commands POSTed for a session stream held by another node, forwarded to it.",
                vec![],
            ),
            slow_consumer_disconnects: counter(
                "gateway_slow_consumer_disconnects_total",
                "Clients disconnected (close 4008) because their outbound queue overflowed.",
                vec![],
            ),
            broker_up: gauge(
                "gateway_broker_up",
                "1 while the broker is reachable, 0 otherwise.",
            ),
            ready: gauge(
                "gateway_ready",
                "1 while the node is ready for connections (/readyz answers 200), 0 otherwise.",
            ),
            draining: gauge("gateway_draining", "1 once the node is draining (shutting down)."),
            connections_limit: gauge(
                "gateway_connections_limit",
                "The most WebSocket connections this node accepts (--max-connections).",
            ),
            gap_notices: counter(
                "gateway_gap_notices_total",
                "Holes in a channel's stream that history could not fill; each sent a gap notice to the channel's local subscribers.",
                vec![],
            ),
            repairs: counter(
                "gateway_stream_repairs_total",
                "History reads made to fill a hole in a channel's stream or to catch up after a broker outage.",
                vec![],
            ),
            compression_bytes_in: counter(
                "gateway_compression_bytes_in_total",
                "Payload bytes of WebSocket messages sent compressed (permessage-deflate), before compression.",
                vec![],
            ),
            compression_bytes_out: counter(
                "gateway_compression_bytes_out_total",
                "Payload bytes of WebSocket messages sent compressed (permessage-deflate), after compression.",
                vec![],
            ),
            compressions: counter(
                "gateway_compressions_total",
                "Messages the node compressed (permessage-deflate) and sent compressed: a publication once per encoding for every subscriber that shares its compressed bytes, a reply or a subscriber with a smaller window once each.",
                vec![],
            ),
            compressed_connections: gauge(
                "gateway_compression_connections",
                "Open WebSocket connections that negotiated permessage-deflate.",
            ),
            broker,
            rejections: REJECTION_REASONS
                .iter()
                .map(|&reason| {
                    let help = "Requests and actions refused by a limit or a security control, by reason.";
                    (
                        reason,
                        counter(
                            "gateway_rejections_total",
                            help,
                            vec![Label::new("reason", reason)],
                        ),
                    )
                })
                .collect(),
            recorder,
            handle,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Counts one rejection. `reason` must be one of [`REJECTION_REASONS`].
    pub fn reject(&self, reason: &'static str) {
        match self.rejections.iter().find(|(r, _)| *r == reason) {
            Some((_, counter)) => counter.increment(1),
            None => debug_assert!(false, "unregistered rejection reason {reason}"),
        }
    }

    /// Folds recorded histogram samples into their buckets (call regularly).
    pub fn run_upkeep(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(runtime.metrics().num_alive_tasks() as f64);
        }
        self.handle.run_upkeep();
    }

    /// The recorder, for modules that register metrics of their own.
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_documented_metric() {
        let m = Metrics::new();
        m.connections.increment(2.0);
        m.published_api.increment(3);
        m.published_client.increment(1);
        let text = m.render();
        for line in [
            "gateway_connections 2",
            "gateway_messages_published_total{source=\"api\"} 3",
            "gateway_messages_published_total{source=\"client\"} 1",
            "gateway_broker_up 0",
            "gateway_broker_reconnects_total 0",
            "gateway_broker_probe_failures_total 0",
            "gateway_connections_total 0",
            "gateway_subscriptions 0",
            "gateway_channels 0",
            "gateway_messages_delivered_total 0",
            "gateway_slow_consumer_disconnects_total 0",
            "gateway_ready 0",
            "gateway_draining 0",
            "gateway_connections_limit 0",
            concat!(
                "gateway_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# HELP gateway_connections Open WebSocket connections."));
    }

    #[test]
    fn nodes_do_not_share_figures() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.connections_total.increment(5);
        assert!(b.render().lines().any(|l| l == "gateway_connections_total 0"));
    }
}
