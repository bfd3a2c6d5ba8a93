//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Counter ASSIGNMENTS_EXPIRED_TOTAL = "switchboard_assignments_expired_total", "Assignments released because the agent did not accept within routing.accept_timeout_secs.";
    Counter ASSIGNMENTS_TOTAL = "switchboard_assignments_total", "Tickets assigned to an agent by the router.";
    Counter BOT_ORDER_ANSWERS_TOTAL = "switchboard_bot_order_answers_total", "Where-is-my-order questions the bot answered from the shop's data, by intent and outcome (answered, handed_over: late or stuck).";
    Counter KB_BOT_ANSWERS_TOTAL = "switchboard_kb_bot_answers_total", "Customer messages the knowledge-base bot answered.";
    Counter KB_DEFLECTED_TOTAL = "switchboard_kb_deflected_total", "Bot answers with no customer reply for kb.bot_resolve_after_secs: resolved by the bot, by the intent that opened the ticket.";
    Counter KB_HANDOVERS_TOTAL = "switchboard_kb_handovers_total", "Conversations the bot handed to a person, by intent.";
    Counter KB_REOPENED_AFTER_BOT_TOTAL = "switchboard_kb_reopened_after_bot_total", "Tickets the bot had answered that the customer reopened, by intent.";
    Counter ORDERS_TOTAL = "switchboard_orders_total", "Order updates the orders stage stored, by outcome (applied, or unchanged: a redelivered or older version).";
    Counter RULES_FIRED_TOTAL = "switchboard_rules_fired_total", "Times a team rule (trigger or automation) fired and made its changes.";
    Counter RULES_HALTED_TOTAL = "switchboard_rules_halted_total", "Fires refused because the ticket spent its fire budget (rules.fire_budget per window): a loop cut.";
    Counter SLA_EVENTS_TOTAL = "switchboard_sla_events_total", "SLA warnings and breaches fired, by metric and kind.";
    Histogram SLA_FIRE_LATENESS_SECONDS = "switchboard_sla_fire_lateness_seconds", "How late an SLA event fired after its due time.";
    Histogram TICKETING_PART_SECONDS = "switchboard_ticketing_part_seconds", "Time the ticketing stage spent per record in each part (models, knowledge base, postgres).";
    Gauge TICKETS_WAITING = "switchboard_tickets_waiting", "Open tickets with no agent, as the router's sweep last saw them.";
}
