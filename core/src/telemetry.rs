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

/// Records a stage consumed, by group and topic.
pub const CONSUMED_TOTAL: &str = "switchboard_consumed_total";
/// Records behind the end of the log, by group, topic and partition this member owns.
pub const CONSUMER_LAG: &str = "switchboard_consumer_lag";
/// Times a consumer left and rejoined its group (watchdog or rebalance), by group.
pub const CONSUMER_REJOINS_TOTAL: &str = "switchboard_consumer_rejoins_total";
/// Partitions of a group with lag that made no progress for stall_secs, by group.
pub const CONSUMER_STALLED_PARTITIONS: &str = "switchboard_consumer_stalled_partitions";
/// Lag on partitions no member of the group owns, by group.
pub const CONSUMER_UNOWNED_LAG: &str = "switchboard_consumer_unowned_lag";
/// Time a stage spent handling one record, by group.
pub const HANDLE_SECONDS: &str = "switchboard_handle_seconds";
/// Handler panics caught and dead-lettered instead of stopping the stage, by group.
pub const HANDLER_PANICS_TOTAL: &str = "switchboard_handler_panics_total";
/// Requests whose body did not arrive within http.body_read_timeout_ms (answered 408).
pub const HTTP_BODY_TIMEOUTS_TOTAL: &str = "switchboard_http_body_timeouts_total";
/// Open HTTP connections.
pub const HTTP_CONNECTIONS: &str = "switchboard_http_connections";
/// HTTP connections refused over http.max_connections or the per-address cap, by reason.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "switchboard_http_connections_refused_total";
/// Inbound messages acknowledged after the broker had them, by source.
pub const INGEST_ACCEPTED_TOTAL: &str = "switchboard_ingest_accepted_total";
/// Requests refused over a per-client rate limit (429), by source.
pub const INGEST_RATE_LIMITED_TOTAL: &str = "switchboard_ingest_rate_limited_total";
/// Requests refused as invalid or unauthenticated (4xx), by source and reason.
pub const INGEST_REJECTED_TOTAL: &str = "switchboard_ingest_rejected_total";
/// Records the broker did not acknowledge, by topic.
pub const PRODUCE_ERRORS_TOTAL: &str = "switchboard_produce_errors_total";
/// Time from produce to the broker's acknowledgment, by topic.
pub const PRODUCE_SECONDS: &str = "switchboard_produce_seconds";
/// Records the broker acknowledged, by topic.
pub const PRODUCED_TOTAL: &str = "switchboard_produced_total";
/// Parked records handed back to their topic by the retry relay, by topic.
pub const RETRIED_TOTAL: &str = "switchboard_retried_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: CONSUMED_TOTAL,
        kind: Kind::Counter,
        help: "Records a stage consumed, by group and topic.",
    },
    Metric {
        name: CONSUMER_LAG,
        kind: Kind::Gauge,
        help: "Records behind the end of the log, by group, topic and partition this member owns.",
    },
    Metric {
        name: CONSUMER_REJOINS_TOTAL,
        kind: Kind::Counter,
        help: "Times a consumer left and rejoined its group (watchdog or rebalance), by group.",
    },
    Metric {
        name: CONSUMER_STALLED_PARTITIONS,
        kind: Kind::Gauge,
        help: "Partitions of a group with lag that made no progress for stall_secs, by group.",
    },
    Metric {
        name: CONSUMER_UNOWNED_LAG,
        kind: Kind::Gauge,
        help: "Lag on partitions no member of the group owns, by group.",
    },
    Metric {
        name: HANDLE_SECONDS,
        kind: Kind::Histogram,
        help: "Time a stage spent handling one record, by group.",
    },
    Metric {
        name: HANDLER_PANICS_TOTAL,
        kind: Kind::Counter,
        help: "Handler panics caught and dead-lettered instead of stopping the stage, by group.",
    },
    Metric {
        name: HTTP_BODY_TIMEOUTS_TOTAL,
        kind: Kind::Counter,
        help: "Requests whose body did not arrive within http.body_read_timeout_ms (answered 408).",
    },
    Metric {
        name: HTTP_CONNECTIONS,
        kind: Kind::Gauge,
        help: "Open HTTP connections.",
    },
    Metric {
        name: HTTP_CONNECTIONS_REFUSED_TOTAL,
        kind: Kind::Counter,
        help:
            "HTTP connections refused over http.max_connections or the per-address cap, by reason.",
    },
    Metric {
        name: INGEST_ACCEPTED_TOTAL,
        kind: Kind::Counter,
        help: "Inbound messages acknowledged after the broker had them, by source.",
    },
    Metric {
        name: INGEST_RATE_LIMITED_TOTAL,
        kind: Kind::Counter,
        help: "Requests refused over a per-client rate limit (429), by source.",
    },
    Metric {
        name: INGEST_REJECTED_TOTAL,
        kind: Kind::Counter,
        help: "Requests refused as invalid or unauthenticated (4xx), by source and reason.",
    },
    Metric {
        name: PRODUCE_ERRORS_TOTAL,
        kind: Kind::Counter,
        help: "Records the broker did not acknowledge, by topic.",
    },
    Metric {
        name: PRODUCE_SECONDS,
        kind: Kind::Histogram,
        help: "Time from produce to the broker's acknowledgment, by topic.",
    },
    Metric {
        name: PRODUCED_TOTAL,
        kind: Kind::Counter,
        help: "Records the broker acknowledged, by topic.",
    },
    Metric {
        name: RETRIED_TOTAL,
        kind: Kind::Counter,
        help: "Parked records handed back to their topic by the retry relay, by topic.",
    },
];
