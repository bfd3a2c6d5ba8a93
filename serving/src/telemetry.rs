//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Open agent live streams (SSE) on this instance.
pub const AGENT_STREAMS: &str = "switchboard_agent_streams";
/// Attachments an erasure or retention could not delete from the store (nothing references them).
pub const ATTACHMENT_DELETE_FAILURES_TOTAL: &str = "switchboard_attachment_delete_failures_total";
/// Satisfaction surveys answered, by rating.
pub const CSAT_ANSWERS_TOTAL: &str = "switchboard_csat_answers_total";
/// Customers erased on request or by retention, by kind.
pub const ERASURES_TOTAL: &str = "switchboard_erasures_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: AGENT_STREAMS,
        kind: Kind::Gauge,
        help: "Open agent live streams (SSE) on this instance.",
    },
    Metric {
        name: ATTACHMENT_DELETE_FAILURES_TOTAL,
        kind: Kind::Counter,
        help: "Attachments an erasure or retention could not delete from the store (nothing references them).",
    },
    Metric {
        name: CSAT_ANSWERS_TOTAL,
        kind: Kind::Counter,
        help: "Satisfaction surveys answered, by rating.",
    },
    Metric {
        name: ERASURES_TOTAL,
        kind: Kind::Counter,
        help: "Customers erased on request or by retention, by kind.",
    },
];
