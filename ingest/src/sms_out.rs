//! SMS out: replies on SMS tickets, sent through the provider's HTTP API (Twilio-compatible:
//! `POST {api_base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form `To`, `From`,
//! `Body`, basic auth with the account sid and auth token).
//!
//! Reads `outbound.replies` and acts on the `sms` ones. A delivery ledger in Postgres
//! (`deliveries`, keyed by reply id) makes a redelivered reply a no-op once sent. Guarantee:
//! at-least-once; the one window for a duplicate text is a crash after the provider accepted and
//! before the ledger recorded it (the provider has no idempotency key). Provider 4xx (but 429) is
//! permanent: the reply is dead-lettered with the provider's answer; 429, 5xx and network errors
//! are retried with backoff. A body longer than the provider takes is cut ([`sms_body`]).

use sqlx::PgPool;
use switchboard_contracts::{Channel, OutboundReply};
use switchboard_core::kafka::HandlerError;
use tracing::info;

/// The longest body the provider takes (Twilio: 1,600 characters, counted in UTF-16 units);
/// a longer reply would be refused and dead-lettered, so it is cut, ending in `…`.
pub const MAX_BODY_UNITS: usize = 1600;

/// The body a reply is texted as: control characters (but line breaks) removed, cut to
/// [`MAX_BODY_UNITS`] without splitting a character.
pub fn sms_body(text: &str) -> String {
    let clean = switchboard_contracts::text::clean_text(text);
    switchboard_contracts::text::cut_utf16(&clean, MAX_BODY_UNITS).into_owned()
}

/// Texts `text` (made an SMS body by [`sms_body`]) to `to` through the provider: its id for
/// the message. Refusals that retrying cannot fix are `Permanent`.
pub async fn send_text(
    http: &reqwest::Client,
    config: &crate::sms::SmsConfig,
    to: &str,
    text: &str,
) -> Result<String, HandlerError> {
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        config.api_base_url.trim_end_matches('/'),
        config.account_sid
    );
    let body = sms_body(text);
    let resp = http
        .post(&url)
        .basic_auth(&config.account_sid, Some(config.auth_token.expose()))
        .form(&[
            ("To", to),
            ("From", config.from_number.as_str()),
            ("Body", body.as_str()),
        ])
        .send()
        .await
        .map_err(|e| HandlerError::Transient(format!("sms provider unreachable: {e}")))?;
    let body = crate::ledger::provider_answer("sms", resp).await?;
    Ok(serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_default())
}

/// The running sender.
#[derive(Debug, Clone)]
pub struct SmsSender {
    config: crate::sms::SmsConfig,
    http: reqwest::Client,
    pool: PgPool,
}

/// What one reply came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Not an SMS reply.
    NotMine,
    /// Sent before (a redelivery).
    Already,
    /// The provider accepted it, with its id.
    Accepted(String),
}

impl SmsSender {
    pub fn new(config: crate::sms::SmsConfig, pool: PgPool) -> Result<Self, reqwest::Error> {
        let http = crate::ledger::provider_client()?;
        Ok(SmsSender { config, http, pool })
    }

    /// Sends one reply.
    pub async fn send(&self, r: &OutboundReply) -> Result<Sent, HandlerError> {
        if r.channel != Channel::Sms {
            return Ok(Sent::NotMine);
        }
        let Some(to) = r.to.phone.as_deref() else {
            return Err(HandlerError::Permanent(
                "an sms reply without a phone number".into(),
            ));
        };
        let Some(provider_id) =
            crate::ledger::deliver_once(&self.pool, r.reply_id, "sms", to, || {
                send_text(&self.http, &self.config, to, &r.text)
            })
            .await?
        else {
            return Ok(Sent::Already);
        };
        info!(reply_id = %r.reply_id, provider_id = provider_id.as_str(), "sms sent");
        Ok(Sent::Accepted(provider_id))
    }
}

impl crate::ledger::ReplySender for SmsSender {
    async fn send_reply(&self, r: &OutboundReply) -> Result<(), HandlerError> {
        self.send(r).await?;
        Ok(())
    }
}
