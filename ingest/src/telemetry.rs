//! The metrics this crate reports, each named once, with its kind and meaning: call sites use
//! the constants, and [`METRICS`] is what `/metrics` describes (`# HELP`) and `switchboard
//! metrics` lists.

switchboard_core::metrics! {
    Counter CHAT_CLOSED_TOTAL = "switchboard_chat_closed_total", "Chat sockets closed by the server, by reason (idle, flood, ...).";
    Gauge CHAT_CONNECTIONS = "switchboard_chat_connections", "Open customer chat sockets on this instance.";
    Counter CHAT_DELIVERED_TOTAL = "switchboard_chat_delivered_total", "Agent replies written to a chat conversation's log for its sockets.";
    Gauge CONNECTOR_UP = "switchboard_connector_up", "1 while a connector works, 0 after its last attempt failed, by connector.";
    Counter EMAIL_ATTACHMENT_QUOTA_REFUSALS_TOTAL = "switchboard_email_attachment_quota_refusals_total", "Mails refused for now (SMTP 452, IMAP left unseen) because the attachment quota was full.";
    Counter EMAIL_ATTACHMENTS_SKIPPED_TOTAL = "switchboard_email_attachments_skipped_total", "Attachments over channels.email.max_attachment_bytes listed on the message but not stored.";
    Counter IMAP_POLLS_TOTAL = "switchboard_imap_polls_total", "IMAP polls, by result.";
    Counter INGEST_DEADLETTERED_TOTAL = "switchboard_ingest_deadlettered_total", "Inbound messages kept in the dead-letter topic instead of becoming events, by source and reason.";
    Counter INGEST_REFUSED_TOTAL = "switchboard_ingest_refused_total", "Requests refused for a temporary reason (broker or store down: 503 or SMTP 4xx), by source.";
    Counter INGEST_SANITISED_TOTAL = "switchboard_ingest_sanitised_total", "Inbound messages whose text had to be made storable (control characters, bad dates), by source.";
    Counter NOTIFICATIONS_FAILED_TOTAL = "switchboard_notifications_failed_total", "Notifications to people given up (the relay or provider refused for good, or every attempt failed), by channel.";
    Counter NOTIFICATIONS_SENT_TOTAL = "switchboard_notifications_sent_total", "Notifications to people sent by email or SMS (a digest counts each it carries), by channel.";
    Counter OUTBOUND_FAILED_TOTAL = "switchboard_outbound_failed_total", "Replies the provider refused for good (dead-lettered), by channel.";
    Counter OUTBOUND_SENT_TOTAL = "switchboard_outbound_sent_total", "Replies the provider accepted, by channel.";
    Gauge SMTP_CONNECTIONS = "switchboard_smtp_connections", "Open SMTP connections.";
    Counter SMTP_CONNECTIONS_REFUSED_TOTAL = "switchboard_smtp_connections_refused_total", "SMTP connections refused over the caps (421), by reason.";
    Counter WEBHOOK_ATTEMPTS_TOTAL = "switchboard_webhook_attempts_total", "Webhook delivery attempts, by outcome (delivered, retry, failed: dead-lettered).";
    Counter WEBHOOK_BACKLOG_FULL_TOTAL = "switchboard_webhook_backlog_full_total", "Webhook deliveries ledgered as failed at once: their endpoint already had webhooks.max_pending_per_endpoint waiting.";
    Histogram WEBHOOK_ATTEMPT_SECONDS = "switchboard_webhook_attempt_seconds", "How long a webhook delivery attempt took, answer or error.";
    Counter SMTP_RECIPIENTS_REFUSED_TOTAL = "switchboard_smtp_recipients_refused_total", "SMTP recipients refused: not ours, or over max_recipients.";
}
