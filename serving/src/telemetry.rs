//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Gauge AGENT_STREAMS = "switchboard_agent_streams", "Open agent live streams (SSE) on this instance.";
    Counter ATTACHMENT_DELETE_FAILURES_TOTAL = "switchboard_attachment_delete_failures_total", "Attachments an erasure or retention could not delete from the store (nothing references them).";
    Counter DRAFTS_TOTAL = "switchboard_drafts_total", "Replies that answered offered reply drafts, by outcome (sent, edited, discarded).";
    Counter CSAT_ANSWERS_TOTAL = "switchboard_csat_answers_total", "Satisfaction surveys answered, by rating.";
    Histogram SEARCH_SECONDS = "switchboard_search_seconds", "Time to answer a search, ranking and snippets.";
    Counter VIEW_COUNT_REFRESHES_TOTAL = "switchboard_view_count_refreshes_total", "View counts computed for live agent streams, by whether a shared one came from the cache.";
    Counter ORDER_ACTIONS_TOTAL = "switchboard_order_actions_total", "Order actions (cancel, refund, address), by kind and outcome (done, failed, pending, awaiting_approval).";
    Histogram ORDER_ACTION_SECONDS = "switchboard_order_action_seconds", "Time to run an order action at the shop, by kind.";
    Counter ERASURES_TOTAL = "switchboard_erasures_total", "Customers erased on request or by retention, by kind.";
}
