//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Rows written to ClickHouse by the sink.
pub const SINK_ROWS_TOTAL: &str = "switchboard_sink_rows_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[Metric {
    name: SINK_ROWS_TOTAL,
    kind: Kind::Counter,
    help: "Rows written to ClickHouse by the sink.",
}];
