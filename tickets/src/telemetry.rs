//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Assignments released (resolved, transferred, expired, agent away), by reason.
pub const ASSIGNMENTS_RELEASED_TOTAL: &str = "switchboard_assignments_released_total";
/// Customers merged into one across channels.
pub const CUSTOMERS_MERGED_TOTAL: &str = "switchboard_customers_merged_total";
/// Tickets escalated (SLA, sentiment, repeat contact, by hand).
pub const ESCALATIONS_TOTAL: &str = "switchboard_escalations_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: ASSIGNMENTS_RELEASED_TOTAL,
        kind: Kind::Counter,
        help: "Assignments released (resolved, transferred, expired, agent away), by reason.",
    },
    Metric {
        name: CUSTOMERS_MERGED_TOTAL,
        kind: Kind::Counter,
        help: "Customers merged into one across channels.",
    },
    Metric {
        name: ESCALATIONS_TOTAL,
        kind: Kind::Counter,
        help: "Tickets escalated (SLA, sentiment, repeat contact, by hand).",
    },
];
