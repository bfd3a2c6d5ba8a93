//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

use switchboard_core::telemetry::{Kind, Metric};

/// Chat sockets closed by the server, by reason (idle, flood, ...).
pub const CHAT_CLOSED_TOTAL: &str = "switchboard_chat_closed_total";
/// Open customer chat sockets on this instance.
pub const CHAT_CONNECTIONS: &str = "switchboard_chat_connections";
/// Agent replies written to a chat conversation's log for its sockets.
pub const CHAT_DELIVERED_TOTAL: &str = "switchboard_chat_delivered_total";
/// 1 while a connector works, 0 after its last attempt failed, by connector.
pub const CONNECTOR_UP: &str = "switchboard_connector_up";
/// Mails refused for now (SMTP 452, IMAP left unseen) because the attachment quota was full.
pub const EMAIL_ATTACHMENT_QUOTA_REFUSALS_TOTAL: &str =
    "switchboard_email_attachment_quota_refusals_total";
/// Attachments over channels.email.max_attachment_bytes listed on the message but not stored.
pub const EMAIL_ATTACHMENTS_SKIPPED_TOTAL: &str = "switchboard_email_attachments_skipped_total";
/// IMAP polls, by result.
pub const IMAP_POLLS_TOTAL: &str = "switchboard_imap_polls_total";
/// Inbound messages kept in the dead-letter topic instead of becoming events, by source and reason.
pub const INGEST_DEADLETTERED_TOTAL: &str = "switchboard_ingest_deadlettered_total";
/// Requests refused for a temporary reason (broker or store down: 503 or SMTP 4xx), by source.
pub const INGEST_REFUSED_TOTAL: &str = "switchboard_ingest_refused_total";
/// Inbound messages whose text had to be made storable (control characters, bad dates), by source.
pub const INGEST_SANITISED_TOTAL: &str = "switchboard_ingest_sanitised_total";
/// Replies the provider refused for good (dead-lettered), by channel.
pub const OUTBOUND_FAILED_TOTAL: &str = "switchboard_outbound_failed_total";
/// Replies the provider accepted, by channel.
pub const OUTBOUND_SENT_TOTAL: &str = "switchboard_outbound_sent_total";
/// Open SMTP connections.
pub const SMTP_CONNECTIONS: &str = "switchboard_smtp_connections";
/// SMTP connections refused over the caps (421), by reason.
pub const SMTP_CONNECTIONS_REFUSED_TOTAL: &str = "switchboard_smtp_connections_refused_total";
/// SMTP recipients refused: not ours, or over max_recipients.
pub const SMTP_RECIPIENTS_REFUSED_TOTAL: &str = "switchboard_smtp_recipients_refused_total";

/// Every metric above, for describing and listing.
pub const METRICS: &[Metric] = &[
    Metric {
        name: CHAT_CLOSED_TOTAL,
        kind: Kind::Counter,
        help: "Chat sockets closed by the server, by reason (idle, flood, ...).",
    },
    Metric {
        name: CHAT_CONNECTIONS,
        kind: Kind::Gauge,
        help: "Open customer chat sockets on this instance.",
    },
    Metric {
        name: CHAT_DELIVERED_TOTAL,
        kind: Kind::Counter,
        help: "Agent replies written to a chat conversation's log for its sockets.",
    },
    Metric {
        name: CONNECTOR_UP,
        kind: Kind::Gauge,
        help: "1 while a connector works, 0 after its last attempt failed, by connector.",
    },
    Metric {
        name: EMAIL_ATTACHMENT_QUOTA_REFUSALS_TOTAL,
        kind: Kind::Counter,
        help: "Mails refused for now (SMTP 452, IMAP left unseen) because the attachment quota was full.",
    },
    Metric {
        name: EMAIL_ATTACHMENTS_SKIPPED_TOTAL,
        kind: Kind::Counter,
        help: "Attachments over channels.email.max_attachment_bytes listed on the message but not stored.",
    },
    Metric {
        name: IMAP_POLLS_TOTAL,
        kind: Kind::Counter,
        help: "IMAP polls, by result.",
    },
    Metric {
        name: INGEST_DEADLETTERED_TOTAL,
        kind: Kind::Counter,
        help: "Inbound messages kept in the dead-letter topic instead of becoming events, by source and reason.",
    },
    Metric {
        name: INGEST_REFUSED_TOTAL,
        kind: Kind::Counter,
        help: "Requests refused for a temporary reason (broker or store down: 503 or SMTP 4xx), by source.",
    },
    Metric {
        name: INGEST_SANITISED_TOTAL,
        kind: Kind::Counter,
        help: "Inbound messages whose text had to be made storable (control characters, bad dates), by source.",
    },
    Metric {
        name: OUTBOUND_FAILED_TOTAL,
        kind: Kind::Counter,
        help: "Replies the provider refused for good (dead-lettered), by channel.",
    },
    Metric {
        name: OUTBOUND_SENT_TOTAL,
        kind: Kind::Counter,
        help: "Replies the provider accepted, by channel.",
    },
    Metric {
        name: SMTP_CONNECTIONS,
        kind: Kind::Gauge,
        help: "Open SMTP connections.",
    },
    Metric {
        name: SMTP_CONNECTIONS_REFUSED_TOTAL,
        kind: Kind::Counter,
        help: "SMTP connections refused over the caps (421), by reason.",
    },
    Metric {
        name: SMTP_RECIPIENTS_REFUSED_TOTAL,
        kind: Kind::Counter,
        help: "SMTP recipients refused: not ours, or over max_recipients.",
    },
];
