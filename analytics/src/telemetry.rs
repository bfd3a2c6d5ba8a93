//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Counter SINK_ROWS_TOTAL = "switchboard_sink_rows_total", "Rows written to ClickHouse by the sink.";
}
