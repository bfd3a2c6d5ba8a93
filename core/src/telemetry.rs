//! The metrics Switchboard reports are named in one place per crate (its `telemetry` module):
//! a constant per metric for the call sites, and a `METRICS` table with each one's kind and
//! meaning, which [`describe`] registers so `/metrics` carries it as `# HELP`, and which
//! `switchboard metrics` prints. This module also names core's own metrics (the consumer loop,
//! the producer, the HTTP server, and the front-door counters every door shares).

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As Prometheus names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric: its name, kind and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Registers the descriptions of `metrics` with the installed recorder (none installed: a no-op).
pub fn describe(metrics: &[Metric]) {
    for m in metrics {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Names a crate's metrics: `Kind CONST = "name", "meaning";` per metric gives a constant (its
/// doc is the meaning) for the call sites and the crate's `METRICS` table.
#[macro_export]
macro_rules! metrics {
    ($($kind:ident $konst:ident = $name:literal, $help:literal;)*) => {
        $(
            #[doc = $help]
            pub const $konst: &str = $name;
        )*
        /// Every metric of this crate, for describing and listing.
        pub const METRICS: &[$crate::telemetry::Metric] = &[$($crate::telemetry::Metric {
            name: $name,
            kind: $crate::telemetry::Kind::$kind,
            help: $help,
        },)*];
    };
}

crate::metrics! {
    Counter CONSUMED_TOTAL = "switchboard_consumed_total", "Records a stage consumed, by group and topic.";
    Gauge CONSUMER_LAG = "switchboard_consumer_lag", "Records behind the end of the log, by group, topic and partition this member owns.";
    Counter CONSUMER_REJOINS_TOTAL = "switchboard_consumer_rejoins_total", "Times a consumer left and rejoined its group (watchdog or rebalance), by group.";
    Counter KAFKA_MESSAGE_BYTES_TOTAL = "switchboard_kafka_message_bytes_total", "Record bytes this process's Kafka clients produced (direction out) and fetched (direction in), from librdkafka's statistics.";
    Gauge CONSUMER_ASSIGNED_PARTITIONS = "switchboard_consumer_assigned_partitions", "Partitions this member of a group owns after the last rebalance, by group.";
    Counter CONSUMER_REBALANCES_TOTAL = "switchboard_consumer_rebalances_total", "Rebalances this member of a group took part in, by group and kind (assign, revoke, error).";
    Gauge CONSUMER_STALLED_PARTITIONS = "switchboard_consumer_stalled_partitions", "Partitions of a group with lag that made no progress for stall_secs, by group.";
    Gauge CONSUMER_UNOWNED_LAG = "switchboard_consumer_unowned_lag", "Records waiting on the partitions the stall watchdog judges (those this member does not own; its own too once it has waited for records for kafka.stall_secs), by group.";
    Histogram HANDLE_SECONDS = "switchboard_handle_seconds", "Time a stage spent handling one record, by group.";
    Counter HANDLER_PANICS_TOTAL = "switchboard_handler_panics_total", "Handler panics caught and dead-lettered instead of stopping the stage, by group.";
    Counter HTTP_BODY_TIMEOUTS_TOTAL = "switchboard_http_body_timeouts_total", "Requests whose body did not arrive within http.body_read_timeout_ms (answered 408).";
    Gauge HTTP_CONNECTIONS = "switchboard_http_connections", "Open HTTP connections.";
    Counter HTTP_CONNECTIONS_REFUSED_TOTAL = "switchboard_http_connections_refused_total", "HTTP connections refused over http.max_connections or the per-address cap, by reason.";
    Counter INGEST_ACCEPTED_TOTAL = "switchboard_ingest_accepted_total", "Inbound messages acknowledged after the broker had them, by source.";
    Counter INGEST_RATE_LIMITED_TOTAL = "switchboard_ingest_rate_limited_total", "Requests refused over a per-client rate limit (429), by source.";
    Counter INGEST_REJECTED_TOTAL = "switchboard_ingest_rejected_total", "Requests refused as invalid or unauthenticated (4xx), by source and reason.";
    Counter PRODUCE_ERRORS_TOTAL = "switchboard_produce_errors_total", "Records the broker did not acknowledge, by topic.";
    Counter PRODUCE_RESENDS_TOTAL = "switchboard_produce_resends_total", "Records the broker refused and that were sent again within the produce deadline, by topic.";
    Histogram PRODUCE_SECONDS = "switchboard_produce_seconds", "Time from produce to the broker's acknowledgment, by topic.";
    Counter PRODUCED_TOTAL = "switchboard_produced_total", "Records the broker acknowledged, by topic.";
    Counter RETRIED_TOTAL = "switchboard_retried_total", "Parked records handed back to their topic by the retry relay, by topic.";
}
