//! What every reply sender shares: the delivery ledger (`deliveries` in Postgres, one row per
//! reply: a redelivered reply is a no-op once its provider accepted it), the reading of a
//! provider's HTTP answer, and the consumer side ([`Replies`]: decode an `outbound_reply`, hand
//! it to the channel's sender).

use std::future::Future;

use sqlx::PgPool;
use switchboard_contracts::{decode, OutboundReply};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use tracing::warn;
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

/// How long one attempt holds a reply. Every provider call is cut off well before it
/// ([`PROVIDER_CALL_LIMIT`]), so a live sender always finishes or releases first; a dead one's
/// claim lapses.
const CLAIM_SECONDS: f64 = 60.0;

/// The longest one provider call may take inside a claim (an SMTP relay that stalls mid-DATA,
/// an HTTP API that hangs): then the attempt fails as transient and releases its claim.
const PROVIDER_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(40);

/// Hands one reply to its provider at most once per live claim: records the attempt in the
/// ledger, skips a reply already sent (`Ok(None)`), asks for a retry while another consumer is
/// sending it (a rebalance can hand the same record to two consumers at once: the second waits
/// for the first's outcome instead of sending a copy), and otherwise runs `send` (cut off after
/// [`PROVIDER_CALL_LIMIT`]), which answers the provider's id for the message. A failed `send`
/// releases the claim so the retry may go at once. Each claim carries its own token: only its
/// holder releases it or marks the reply sent. Left open: a sender killed (or losing Postgres
/// for a minute) after the provider took the reply and before the ledger says so sends it again
/// once its claim lapses (at-least-once; email carries a stable Message-ID so mail programs fold
/// the copy).
pub async fn deliver_once<F, Fut>(
    pool: &PgPool,
    reply_id: Uuid,
    channel: &'static str,
    recipient: &str,
    send: F,
) -> Result<Option<String>, HandlerError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<String, HandlerError>>,
{
    let token = match claim(pool, reply_id, channel, recipient).await? {
        Claim::Sent => return Ok(None),
        Claim::Busy => {
            return Err(HandlerError::Transient(format!(
                "reply {reply_id} is being sent by another consumer"
            )))
        }
        Claim::Mine(token) => token,
    };
    let outcome = match tokio::time::timeout(PROVIDER_CALL_LIMIT, send()).await {
        Ok(r) => r,
        Err(_) => Err(HandlerError::Transient(format!(
            "the {channel} provider did not answer within {} s",
            PROVIDER_CALL_LIMIT.as_secs()
        ))),
    };
    match outcome {
        Ok(provider_id) => {
            // The provider has it: the ledger must say so before the claim lapses, so a
            // passing Postgres error is retried here rather than by sending again.
            let mut attempt = 0;
            loop {
                match sent(pool, reply_id, token, channel, &provider_id).await {
                    Ok(()) => return Ok(Some(provider_id)),
                    Err(e) if attempt < 8 => {
                        warn!(reply_id = %reply_id, error = %e, attempt, "ledger write failed, retrying");
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(250 << attempt.min(5)))
                            .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => {
            if let Err(release_error) = release(pool, reply_id, token).await {
                warn!(reply_id = %reply_id, error = %release_error, "claim not released; it lapses");
            }
            Err(e)
        }
    }
}

/// Where a reply stands for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The provider already took it: skip.
    Sent,
    /// Another attempt holds a live claim: retry later.
    Busy,
    /// This attempt may send it, under this token.
    Mine(Uuid),
}

/// Records an attempt and takes the reply's claim when nobody holds a live one.
pub(crate) async fn claim(
    pool: &PgPool,
    reply_id: Uuid,
    channel: &str,
    recipient: &str,
) -> Result<Claim, HandlerError> {
    let ledger = |e: sqlx::Error| HandlerError::Transient(format!("delivery ledger: {e}"));
    let token = Uuid::now_v7();
    let taken: Option<String> = sqlx::query_scalar(
        "INSERT INTO deliveries (reply_id, channel, recipient, claimed_until, claimed_by)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
         ON CONFLICT (reply_id) DO UPDATE
            SET attempts = deliveries.attempts + 1, claimed_until = EXCLUDED.claimed_until,
                claimed_by = EXCLUDED.claimed_by
          WHERE deliveries.state = 'sending' AND deliveries.claimed_until <= now()
         RETURNING state",
    )
    .bind(reply_id)
    .bind(channel)
    .bind(recipient)
    .bind(CLAIM_SECONDS)
    .bind(token)
    .fetch_optional(pool)
    .await
    .map_err(ledger)?;
    if taken.is_some() {
        return Ok(Claim::Mine(token));
    }
    // The row exists and was not ours to take: sent, or held by a live claim.
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM deliveries WHERE reply_id = $1")
            .bind(reply_id)
            .fetch_optional(pool)
            .await
            .map_err(ledger)?;
    Ok(match state.as_deref() {
        Some("sent") => Claim::Sent,
        _ => Claim::Busy,
    })
}

/// Gives up this attempt's claim (the provider call failed) so a retry need not wait it out;
/// nothing when the claim lapsed and another attempt holds it now.
async fn release(pool: &PgPool, reply_id: Uuid, token: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET claimed_until = now()
         WHERE reply_id = $1 AND state = 'sending' AND claimed_by = $2",
    )
    .bind(reply_id)
    .bind(token)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the provider accepted the reply (with its id for the message). The reply is
/// sent whoever holds the claim now; the token only says whose send it was, for the log.
async fn sent(
    pool: &PgPool,
    reply_id: Uuid,
    token: Uuid,
    channel: &'static str,
    provider_id: &str,
) -> Result<(), HandlerError> {
    let r = sqlx::query(
        "UPDATE deliveries SET state = 'sent', provider_id = $2, sent_at = $3 WHERE reply_id = $1",
    )
    .bind(reply_id)
    .bind(provider_id)
    .bind(switchboard_core::clock::now())
    .execute(pool)
    .await
    .map_err(|e| HandlerError::Transient(format!("delivery ledger: {e}")))?;
    if r.rows_affected() == 0 {
        warn!(reply_id = %reply_id, token = %token, "sent a reply the ledger has no row for");
    }
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
