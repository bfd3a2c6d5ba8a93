//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Counter EMBEDDED_BROKER_RESTARTS_TOTAL = "switchboard_embedded_broker_restarts_total", "Times the embedded broker stopped answering and was started again.";
}
