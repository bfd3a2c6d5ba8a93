//! What every reply sender shares: the delivery ledger (`deliveries` in Postgres, one row per
//! reply: a redelivered reply is a no-op once its provider accepted it), the reading of a
//! provider's HTTP answer, and the consumer side ([`Replies`]: decode an `outbound_reply`, hand
//! it to the channel's sender).

use std::future::Future;

use sqlx::PgPool;
use switchboard_contracts::{decode, OutboundReply};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use uuid::Uuid;

/// A channel's reply sender: acts on the replies of its channel, ignores the others.
pub trait ReplySender: Clone + Send + Sync + 'static {
    fn send_reply(
        &self,
        r: &OutboundReply,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The `outbound.replies` consumer of one sender (concurrent lanes share the sender).
#[derive(Debug, Clone)]
pub struct Replies<S>(pub S);

impl<S: ReplySender> Handler for Replies<S> {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = decode::<OutboundReply>(record.payload.as_deref())?;
        self.0.send_reply(&env.payload).await
    }
}

/// Records an attempt; `true` when the reply was already sent (skip it).
pub(crate) async fn begin(
    pool: &PgPool,
    reply_id: Uuid,
    channel: &str,
    recipient: &str,
) -> Result<bool, HandlerError> {
    let state: Option<String> = sqlx::query_scalar(
        "INSERT INTO deliveries (reply_id, channel, recipient) VALUES ($1, $2, $3)
         ON CONFLICT (reply_id) DO UPDATE SET attempts = deliveries.attempts + 1 RETURNING state",
    )
    .bind(reply_id)
    .bind(channel)
    .bind(recipient)
    .fetch_optional(pool)
    .await
    .map_err(|e| HandlerError::Transient(format!("delivery ledger: {e}")))?;
    Ok(state.as_deref() == Some("sent"))
}

/// Records that the provider accepted the reply (with its id for the message).
pub(crate) async fn sent(
    pool: &PgPool,
    reply_id: Uuid,
    channel: &'static str,
    provider_id: &str,
) -> Result<(), HandlerError> {
    sqlx::query(
        "UPDATE deliveries SET state = 'sent', provider_id = $2, sent_at = $3 WHERE reply_id = $1",
    )
    .bind(reply_id)
    .bind(provider_id)
    .bind(switchboard_core::clock::now())
    .execute(pool)
    .await
    .map_err(|e| HandlerError::Transient(format!("delivery ledger: {e}")))?;
    metrics::counter!(crate::telemetry::OUTBOUND_SENT_TOTAL, "channel" => channel).increment(1);
    Ok(())
}

/// A provider's refusal that retrying cannot fix: counted, and the reply is dead-lettered.
pub(crate) fn refused(channel: &'static str, why: String) -> HandlerError {
    metrics::counter!(crate::telemetry::OUTBOUND_FAILED_TOTAL, "channel" => channel).increment(1);
    HandlerError::Permanent(why)
}

/// What a provider's HTTP answer means: success (with the body), retry (429, 5xx) or give up
/// (any other 4xx: the reply is dead-lettered with the provider's answer).
pub(crate) async fn provider_answer(
    channel: &'static str,
    resp: reqwest::Response,
) -> Result<String, HandlerError> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(HandlerError::Transient(format!(
            "{channel} provider answered {status}: {body}"
        )));
    }
    if !status.is_success() {
        return Err(refused(
            channel,
            format!("{channel} provider refused the reply ({status}): {body}"),
        ));
    }
    Ok(body)
}

/// The client the reply senders call a provider's API with: one that hangs costs an attempt at
/// most 15 s.
pub(crate) fn provider_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
}
