//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Times the embedded broker stopped answering and was started again.
pub const EMBEDDED_BROKER_RESTARTS_TOTAL: &str = "switchboard_embedded_broker_restarts_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[Metric {
    name: EMBEDDED_BROKER_RESTARTS_TOTAL,
    kind: Kind::Counter,
    help: "Times the embedded broker stopped answering and was started again.",
}];
