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
//! [`social_out::SocialSender`], [`chat::ChatSender`].

pub mod api;
pub mod chat;
pub mod email;
pub mod email_out;
pub mod imap;
pub mod ledger;
pub mod limit;
pub mod meta;
pub mod openapi;
pub mod sms;
pub mod sms_out;
pub mod smtp;
pub mod social_out;
pub mod voice;

use axum::response::{IntoResponse, Response};
use switchboard_contracts::{Envelope, InboundMessage};
use switchboard_core::http::ApiError;
use switchboard_core::kafka::Publisher;

/// Publishes one accepted message (acks=all), counting it for `source`; when the broker does not
/// acknowledge it the caller answers 503 and nothing counts as accepted.
pub(crate) async fn publish(
    publisher: &Publisher,
    source: &'static str,
    env: &Envelope<InboundMessage>,
) -> Result<(i32, i64), ApiError> {
    match publisher.publish(env).await {
        Ok(at) => {
            metrics::counter!("switchboard_ingest_accepted_total", "source" => source).increment(1);
            metrics::gauge!("switchboard_connector_up", "connector" => source).set(1.0);
            Ok(at)
        }
        Err(e) => {
            metrics::counter!("switchboard_ingest_refused_total", "source" => source).increment(1);
            metrics::gauge!("switchboard_connector_up", "connector" => source).set(0.0);
            Err(ApiError::unavailable(format!(
                "message not accepted, the broker did not acknowledge it: {e}"
            )))
        }
    }
}

/// The answer to a webhook call that failed its signature or validation, counted for `source`.
pub(crate) fn rejected(source: &'static str, e: ApiError) -> Response {
    metrics::counter!("switchboard_ingest_rejected_total", "source" => source).increment(1);
    tracing::warn!(source, error = %e.message, "webhook call rejected");
    e.into_response()
}
