//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Counter ASSIGNMENTS_RELEASED_TOTAL = "switchboard_assignments_released_total", "Assignments released (resolved, transferred, expired, agent away), by reason.";
    Counter CUSTOMERS_MERGED_TOTAL = "switchboard_customers_merged_total", "Customers merged into one across channels.";
    Counter RETURNS_TOTAL = "switchboard_returns_total", "Returns requested, by reason and whether the policy approved them.";
    Counter ESCALATIONS_TOTAL = "switchboard_escalations_total", "Tickets escalated (SLA, sentiment, repeat contact, by hand).";
}
