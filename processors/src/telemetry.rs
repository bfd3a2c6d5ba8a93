//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Assignments released because the agent did not accept within routing.accept_timeout_secs.
pub const ASSIGNMENTS_EXPIRED_TOTAL: &str = "switchboard_assignments_expired_total";
/// Tickets assigned to an agent by the router.
pub const ASSIGNMENTS_TOTAL: &str = "switchboard_assignments_total";
/// Customer messages the knowledge-base bot answered.
pub const KB_BOT_ANSWERS_TOTAL: &str = "switchboard_kb_bot_answers_total";
/// Bot answers with no customer reply for kb.bot_resolve_after_secs: resolved by the bot.
pub const KB_DEFLECTED_TOTAL: &str = "switchboard_kb_deflected_total";
/// Conversations the bot handed to a person.
pub const KB_HANDOVERS_TOTAL: &str = "switchboard_kb_handovers_total";
/// Tickets the bot had answered that the customer reopened.
pub const KB_REOPENED_AFTER_BOT_TOTAL: &str = "switchboard_kb_reopened_after_bot_total";
/// SLA warnings and breaches fired, by metric and kind.
pub const SLA_EVENTS_TOTAL: &str = "switchboard_sla_events_total";
/// How late an SLA event fired after its due time.
pub const SLA_FIRE_LATENESS_SECONDS: &str = "switchboard_sla_fire_lateness_seconds";
/// Time the ticketing stage spent per record in each part (models, knowledge base, postgres).
pub const TICKETING_PART_SECONDS: &str = "switchboard_ticketing_part_seconds";
/// Open tickets with no agent, as the router's sweep last saw them.
pub const TICKETS_WAITING: &str = "switchboard_tickets_waiting";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: ASSIGNMENTS_EXPIRED_TOTAL,
        kind: Kind::Counter,
        help: "Assignments released because the agent did not accept within routing.accept_timeout_secs.",
    },
    Metric {
        name: ASSIGNMENTS_TOTAL,
        kind: Kind::Counter,
        help: "Tickets assigned to an agent by the router.",
    },
    Metric {
        name: KB_BOT_ANSWERS_TOTAL,
        kind: Kind::Counter,
        help: "Customer messages the knowledge-base bot answered.",
    },
    Metric {
        name: KB_DEFLECTED_TOTAL,
        kind: Kind::Counter,
        help: "Bot answers with no customer reply for kb.bot_resolve_after_secs: resolved by the bot.",
    },
    Metric {
        name: KB_HANDOVERS_TOTAL,
        kind: Kind::Counter,
        help: "Conversations the bot handed to a person.",
    },
    Metric {
        name: KB_REOPENED_AFTER_BOT_TOTAL,
        kind: Kind::Counter,
        help: "Tickets the bot had answered that the customer reopened.",
    },
    Metric {
        name: SLA_EVENTS_TOTAL,
        kind: Kind::Counter,
        help: "SLA warnings and breaches fired, by metric and kind.",
    },
    Metric {
        name: SLA_FIRE_LATENESS_SECONDS,
        kind: Kind::Histogram,
        help: "How late an SLA event fired after its due time.",
    },
    Metric {
        name: TICKETING_PART_SECONDS,
        kind: Kind::Histogram,
        help: "Time the ticketing stage spent per record in each part (models, knowledge base, postgres).",
    },
    Metric {
        name: TICKETS_WAITING,
        kind: Kind::Gauge,
        help: "Open tickets with no agent, as the router's sweep last saw them.",
    },
];
