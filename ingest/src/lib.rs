//! Channel connectors: every way a customer message enters Switchboard.
//!
//! Each connector is a component (config struct plus runtime struct, in its own module) that
//! validates what arrives, normalises it into an [`switchboard_contracts::InboundMessage`], and
//! answers the sender only after the broker acknowledged the event. Today: the HTTP API
//! ([`api::ApiSource`]), the SMS webhook ([`sms::SmsSource`], Twilio-compatible, signed) and
//! the SMS sender for replies ([`sms_out::SmsSender`]) and the call-transcript webhook
//! ([`voice::VoiceSource`]), the Meta webhook ([`meta::MetaSource`], WhatsApp Cloud API);
//! the email, chat, Messenger and Instagram connectors join the same registry.

pub mod api;
pub mod chat;
pub mod email;
pub mod email_out;
pub mod imap;
pub(crate) mod ledger;
pub mod limit;
pub mod meta;
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
            Ok(at)
        }
        Err(e) => {
            metrics::counter!("switchboard_ingest_refused_total", "source" => source).increment(1);
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
