//! Channel connectors: every way a customer message enters Switchboard.
//!
//! Each connector is a component (config struct plus runtime struct, in its own module) that
//! validates what arrives, normalises it into an [`switchboard_contracts::InboundMessage`], and
//! answers the sender only after the broker acknowledged the event: the HTTP API
//! ([`api::ApiSource`]), email over SMTP ([`smtp::SmtpSource`]) and IMAP ([`imap::ImapPoller`])
//! through one MIME intake ([`email::EmailIntake`]), web chat ([`chat::ChatSource`]), SMS
//! ([`sms::SmsSource`], Twilio-compatible), call transcripts ([`voice::VoiceSource`]) and Meta
//! webhooks ([`meta::MetaSource`]: WhatsApp, Messenger, Instagram). Replies leave through one
//! sender per channel: [`sms_out::SmsSender`], [`email_out::EmailSender`],
//! [`social_out::SocialSender`], [`chat::ChatSender`]. The desk's events leave to the
//! endpoints subscribed to them as signed webhooks ([`webhook_out`]); what concerns agents and
//! supervisors reaches them by email and SMS ([`notify_out`]).

pub mod api;
pub mod chat;
pub mod email;
pub mod email_out;
pub mod imap;
pub mod ledger;
pub mod limit;
pub mod meta;
pub mod notify_out;
pub mod openapi;
pub mod orders;
pub mod sms;
pub mod sms_out;
pub mod smtp;
pub mod social_out;
pub mod start;
pub mod telemetry;
pub mod voice;
pub mod webhook_out;

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use switchboard_contracts::{Envelope, InboundMessage};
use switchboard_core::http::ApiError;
use switchboard_core::kafka::Publisher;

/// The channels: `channels:` of pipelines.yaml, one section per channel, each read by that
/// channel's front door and its reply sender.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    pub orders: orders::OrdersConfig,
    pub email: email::EmailConfig,
    pub chat: chat::ChatConfig,
    pub sms: sms::SmsConfig,
    pub voice: voice::VoiceConfig,
    pub meta: meta::MetaConfig,
}

/// What every front door shares: the `ingest` section of pipelines.yaml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Longer texts are cut at this many bytes (on a character boundary) and flagged `truncated`.
    pub max_text_bytes: usize,
    /// Requests per second each source (by name) accepts before answering 429 with
    /// `Retry-After`; a source not listed is not limited.
    pub rate_limits: BTreeMap<String, u32>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_text_bytes: 64 * 1024,
            rate_limits: BTreeMap::new(),
        }
    }
}

impl IngestConfig {
    /// Requests per second the source named `source` accepts; `None`: not limited.
    pub fn rate_limit(&self, source: &str) -> Option<u32> {
        self.rate_limits.get(source).copied()
    }
}

/// Makes a message every store can hold (the one normalisation of outside text, see
/// [`switchboard_contracts::text`]): every front door calls it on the event it built, before it
/// validates what is left and acknowledges. Returns the fields that changed; counted per
/// `source` in `switchboard_ingest_sanitised_total`.
pub fn sanitise(source: &'static str, msg: &mut InboundMessage) -> Vec<&'static str> {
    let changed = msg.sanitise(switchboard_core::clock::now());
    if !changed.is_empty() {
        metrics::counter!(crate::telemetry::INGEST_SANITISED_TOTAL, "source" => source)
            .increment(1);
        tracing::debug!(source, fields = ?changed, "control characters removed from a message");
    }
    changed
}

/// Publishes one accepted message (acks=all), counting it for `source`; when the broker does not
/// acknowledge it the caller answers 503 and nothing counts as accepted. The message is
/// sanitised again on the way ([`sanitise`] is idempotent), so no front door can acknowledge
/// text a store would refuse.
pub(crate) async fn publish(
    publisher: &Publisher,
    source: &'static str,
    env: &Envelope<InboundMessage>,
) -> Result<(i32, i64), ApiError> {
    let mut clean = env.clone();
    let before = clean.payload.received_at;
    // A door that sanitised already changes nothing here (chat relies on this call).
    sanitise(source, &mut clean.payload);
    if clean.occurred_at == before {
        clean.occurred_at = clean.payload.received_at;
    } else if !switchboard_contracts::text::storable_time(
        clean.occurred_at,
        switchboard_core::clock::now(),
    ) {
        clean.occurred_at = switchboard_core::clock::now();
    }
    match publisher.publish(&clean).await {
        Ok(at) => {
            metrics::counter!(switchboard_core::telemetry::INGEST_ACCEPTED_TOTAL, "source" => source).increment(1);
            metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => source).set(1.0);
            Ok(at)
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::INGEST_REFUSED_TOTAL, "source" => source)
                .increment(1);
            metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => source).set(0.0);
            Err(ApiError::unavailable(format!(
                "message not accepted, the broker did not acknowledge it: {e}"
            )))
        }
    }
}

/// The answer to a webhook call that failed its signature or validation, counted for `source`.
pub(crate) fn rejected(source: &'static str, e: ApiError) -> Response {
    metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => source)
        .increment(1);
    tracing::warn!(source, error = %e.message, "webhook call rejected");
    e.into_response()
}
