//! Webhooks out: the desk's events, signed per the Standard Webhooks specification and
//! delivered at least once to the endpoints subscribed to them (`/v1/webhooks`).
//!
//! Two parts, one stage (`webhook_sender`):
//! - [`WebhookFanout`] reads `ticket.events` and `sla.events` and puts one delivery per matching
//!   enabled webhook in the ledger (`webhook_deliveries`, unique per webhook and event: an event
//!   read again adds nothing). Its offsets commit after the insert, so an event is in the
//!   ledger before it is done with.
//! - [`WebhookDispatcher`] sends what is due: per endpoint, at most `in_flight_per_endpoint`
//!   deliveries at once (claimed with `FOR UPDATE SKIP LOCKED` and a lease, so several instances
//!   share the work and a crashed one's claims come due again), so a slow or failing endpoint
//!   holds only its own slots and never delays another's. A 2xx answer delivers; anything else
//!   (an error status, a redirect, a timeout, a refused connection) is retried after an
//!   exponential backoff, and after `max_attempts` the delivery is `failed`: the dead letter,
//!   listed by `GET /v1/webhooks/{id}/deliveries` and redeliverable.
//!
//! Each attempt carries `webhook-id` (the delivery's id, the same on every attempt: receivers
//! deduplicate on it), `webhook-timestamp` (the attempt's Unix time) and `webhook-signature`:
//! `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the webhook's secret, and a second
//! signature with the previous secret while a rotation's overlap lasts. Names are resolved by
//! a resolver that refuses private, loopback and link-local addresses unless
//! `webhooks.allow_private_networks` (so a webhook cannot be pointed inside the network), and
//! redirects are not followed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use sqlx::{PgPool, Row};
use switchboard_contracts::RawEnvelope;
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::runtime::{Background, Ctx, StartError, Started};
use switchboard_tickets::webhooks::{self, WebhooksConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// The most of an endpoint's answer kept in the ledger.
const KEEP_ANSWER: usize = 1024;

/// How long the subscriptions read from Postgres are used before being read again.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(2);

/// Signs `body` as delivery `msg_id` at `timestamp` with a `whsec_` secret: `v1,<base64>`.
/// `None`: the secret is not base64.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Option<String> {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Starts the stage: the fan-out as the consumer `stage`, the dispatcher beside it.
pub fn start(
    config: &WebhooksConfig,
    stage: &str,
    settings: switchboard_core::kafka::ConsumerSettings,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<(), StartError> {
    let pool = ctx.pool("the webhook sender")?;
    let wake = Arc::new(Notify::new());
    let fanout = WebhookFanout {
        pool: pool.clone(),
        max_pending: config.max_pending_per_endpoint,
        subscriptions: Arc::new(Mutex::new(None)),
        wake: wake.clone(),
    };
    started.spawn_consumer(ctx, stage, settings, fanout);
    let dispatcher = WebhookDispatcher::new(config.clone(), pool, wake)
        .map_err(|e| StartError::failed("cannot build the webhook client", e))?;
    started.spawn_loop(ctx, dispatcher);
    Ok(())
}

/// An enabled webhook's subscription.
#[derive(Debug, Clone)]
struct Subscription {
    id: Uuid,
    events: Vec<String>,
    /// Its backlog was full when the subscriptions were read.
    full: bool,
}

type Cached = Option<(Instant, Arc<Vec<Subscription>>)>;

/// Events to ledger rows (see the module doc).
#[derive(Clone)]
pub struct WebhookFanout {
    pool: PgPool,
    /// `webhooks.max_pending_per_endpoint`.
    max_pending: u32,
    subscriptions: Arc<Mutex<Cached>>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for WebhookFanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookFanout").finish_non_exhaustive()
    }
}

impl WebhookFanout {
    async fn subscriptions(&self) -> Result<Arc<Vec<Subscription>>, HandlerError> {
        if let Some((at, subs)) = self.subscriptions.lock().as_ref() {
            if at.elapsed() < SUBSCRIPTIONS_TTL {
                return Ok(subs.clone());
            }
        }
        // Each backlog counted up to the cap only (the pending index, at most that many rows).
        let rows = sqlx::query(
            "SELECT w.id, w.events,
                    (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries d
                       WHERE d.webhook_id = w.id AND d.state = 'pending' LIMIT $1) x) >= $1 AS full
             FROM webhooks w WHERE w.enabled",
        )
        .bind(i64::from(self.max_pending.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| HandlerError::Transient(format!("webhooks: {e}")))?;
        let subs: Vec<Subscription> = rows
            .iter()
            .filter_map(|r| {
                Some(Subscription {
                    id: r.try_get("id").ok()?,
                    events: r.try_get("events").ok()?,
                    full: r.try_get("full").ok()?,
                })
            })
            .collect();
        let subs = Arc::new(subs);
        *self.subscriptions.lock() = Some((Instant::now(), subs.clone()));
        Ok(subs)
    }
}

/// The event type of an envelope's schema and payload kind: `ticket.<kind>`, `sla.<kind>`;
/// `None` for anything else.
fn event_type(schema: &str, kind: &str) -> Option<String> {
    match schema {
        "ticket_event" => Some(format!("ticket.{kind}")),
        "sla_event" => Some(format!("sla.{kind}")),
        _ => None,
    }
}

impl Handler for WebhookFanout {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        // Most desks subscribe to few event types: what nobody wants is not even parsed.
        let subs = self.subscriptions().await?;
        if subs.is_empty() {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct Kind {
            kind: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Peek {
            schema: String,
            payload: Kind,
        }
        // The producers are ours: a record that is not an envelope is another stage's concern
        // (the sink dead-letters it); nothing to deliver.
        let Ok(peek) = serde_json::from_slice::<Peek>(payload) else {
            return Ok(());
        };
        let Some(kind) = peek.payload.kind.and_then(|k| event_type(&peek.schema, &k)) else {
            return Ok(());
        };
        let wanted: Vec<(Uuid, bool)> = subs
            .iter()
            .filter(|s| webhooks::wants(&s.events, &kind))
            .map(|s| (s.id, s.full))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let Ok(env) = serde_json::from_slice::<RawEnvelope>(payload) else {
            return Ok(());
        };
        let body = webhooks::body(&kind, env.occurred_at, &env.payload);
        let now = switchboard_core::clock::now();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| HandlerError::Transient(format!("webhooks: {e}")))?;
        let mut added = 0;
        let full = format!(
            "backlog full: {} deliveries were already waiting for this endpoint",
            self.max_pending
        );
        for (id, is_full) in wanted {
            let refused = is_full.then_some(full.as_str());
            if is_full {
                metrics::counter!(crate::telemetry::WEBHOOK_BACKLOG_FULL_TOTAL).increment(1);
            }
            match webhooks::enqueue(&mut conn, id, env.event_id, &kind, &body, now, refused).await {
                Ok(true) => added += u32::from(!is_full),
                Ok(false) => {}
                // The webhook was deleted since the subscriptions were read.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {}
                Err(e) => return Err(HandlerError::Transient(format!("webhook ledger: {e}"))),
            }
        }
        if added > 0 {
            debug!(event_type = %kind, event_id = %env.event_id, deliveries = added, "webhook deliveries queued");
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// A webhook with deliveries due.
#[derive(Debug, Clone)]
struct Endpoint {
    id: Uuid,
    url: String,
    secret: String,
    previous_secret: Option<String>,
}

/// A claimed delivery.
#[derive(Debug)]
struct Claimed {
    id: Uuid,
    event_type: String,
    payload: String,
    attempts: i32,
    /// Attempts before the last redelivery.
    base: i32,
}

/// What one attempt came to.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    took: Duration,
}

/// Sends what is due (see the module doc).
pub struct WebhookDispatcher {
    config: WebhooksConfig,
    pool: PgPool,
    client: reqwest::Client,
    wake: Arc<Notify>,
    /// Deliveries in flight per webhook, on this instance.
    in_flight: Arc<Mutex<HashMap<Uuid, usize>>>,
    total: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDispatcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Resolves names for the webhook client, keeping only public addresses unless private ones
/// are allowed.
#[derive(Debug, Clone, Copy)]
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || webhooks::public_ip(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (webhooks.allow_private_networks is off)"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

impl WebhookDispatcher {
    pub fn new(
        config: WebhooksConfig,
        pool: PgPool,
        wake: Arc<Notify>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout().min(Duration::from_secs(30)))
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy (HTTPS_PROXY in the environment) the proxy would resolve the
            // endpoint, past the resolver's address check: webhooks connect directly.
            .no_proxy()
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: config.allow_private_networks,
            }))
            .user_agent(concat!("Switchboard-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let total = Arc::new(tokio::sync::Semaphore::new(
            config.in_flight_total.clamp(1, 10_000),
        ));
        Ok(WebhookDispatcher {
            config,
            pool,
            client,
            wake,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            total,
        })
    }

    /// One look for due deliveries: claims what each endpoint's free slots allow and sends it
    /// in the background; how many it claimed.
    pub async fn pass(&self, tasks: &mut tokio::task::JoinSet<()>) -> Result<usize, sqlx::Error> {
        let now = switchboard_core::clock::now();
        let rows = sqlx::query(
            "SELECT w.id, w.url, w.secret,
                    CASE WHEN w.previous_expires_at > $1 THEN w.previous_secret END AS previous_secret
             FROM webhooks w
             WHERE w.enabled AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.webhook_id = w.id
                                          AND d.state = 'pending' AND d.next_attempt_at <= $1)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let per = self.config.in_flight_per_endpoint.clamp(1, 100);
        // A claim lasts past an attempt's limit: a crashed instance's claims come due again.
        let lease = chrono::Duration::milliseconds(self.config.timeout().as_millis() as i64)
            + chrono::Duration::seconds(30);
        let mut claimed = 0;
        for r in rows {
            let ep = Endpoint {
                id: r.try_get("id")?,
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
                previous_secret: r.try_get("previous_secret")?,
            };
            let busy = self.in_flight.lock().get(&ep.id).copied().unwrap_or(0);
            let free = per.saturating_sub(busy).min(self.total.available_permits());
            if free == 0 {
                continue;
            }
            let batch = sqlx::query(
                "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $3
                 WHERE d.id IN (SELECT id FROM webhook_deliveries
                                WHERE webhook_id = $1 AND state = 'pending' AND next_attempt_at <= $2
                                ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
                 RETURNING d.id, d.event_type, d.payload, d.attempts, d.attempt_base",
            )
            .bind(ep.id)
            .bind(now)
            .bind(now + lease)
            .bind(free as i64)
            .fetch_all(&self.pool)
            .await?;
            let ep = Arc::new(ep);
            for d in batch {
                let c = Claimed {
                    id: d.try_get("id")?,
                    event_type: d.try_get("event_type")?,
                    payload: d.try_get("payload")?,
                    attempts: d.try_get("attempts")?,
                    base: d.try_get("attempt_base")?,
                };
                let Ok(permit) = self.total.clone().try_acquire_owned() else {
                    break;
                };
                *self.in_flight.lock().entry(ep.id).or_insert(0) += 1;
                claimed += 1;
                let (ep, client, pool, config, in_flight) = (
                    ep.clone(),
                    self.client.clone(),
                    self.pool.clone(),
                    self.config.clone(),
                    self.in_flight.clone(),
                );
                let wake = self.wake.clone();
                tasks.spawn(async move {
                    let outcome = attempt(&client, &config, &ep, &c).await;
                    if let Err(e) = record(&pool, &config, &ep, &c, &outcome).await {
                        // The claim's lease runs out and the delivery comes due again.
                        warn!(delivery_id = %c.id, error = %e, "webhook attempt not recorded");
                    }
                    let mut m = in_flight.lock();
                    if let Some(n) = m.get_mut(&ep.id) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            m.remove(&ep.id);
                        }
                    }
                    drop(permit);
                    // A freed slot may let the endpoint's next delivery go now.
                    wake.notify_one();
                });
            }
        }
        Ok(claimed)
    }
}

/// One attempt: the signed POST and what came of it.
async fn attempt(
    client: &reqwest::Client,
    config: &WebhooksConfig,
    ep: &Endpoint,
    c: &Claimed,
) -> Outcome {
    let started = Instant::now();
    let fail = |why: String| Outcome {
        status: None,
        error: Some(why),
        took: started.elapsed(),
    };
    // Checked again at every attempt: the setting may have changed since the save.
    if let Err(why) = webhooks::check_url(&ep.url, config.allow_private_networks) {
        return fail(format!("url refused: {why}"));
    }
    let msg_id = c.id.to_string();
    let ts = switchboard_core::clock::now().timestamp();
    let mut sigs = Vec::with_capacity(2);
    for s in std::iter::once(&ep.secret).chain(ep.previous_secret.as_ref()) {
        match sign(s, &msg_id, ts, &c.payload) {
            Some(sig) => sigs.push(sig),
            None => return fail("the webhook's secret is not base64".into()),
        }
    }
    let resp = client
        .post(&ep.url)
        .header("content-type", "application/json")
        .header("webhook-id", &msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sigs.join(" "))
        .body(c.payload.clone())
        .send()
        .await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "timed out".to_string()
            } else {
                // The source says what failed (refused, reset, a private address).
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s = format!("{s}: {inner}");
                    src = inner.source();
                }
                s
            };
            return fail(why);
        }
    };
    let status = resp.status().as_u16();
    let mut kept: Vec<u8> = Vec::new();
    // Keep the start of the answer; the rest is read no further.
    while kept.len() < KEEP_ANSWER {
        match resp.chunk().await {
            Ok(Some(b)) => kept.extend_from_slice(&b[..b.len().min(KEEP_ANSWER - kept.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    let answer = switchboard_contracts::text::clean_text(&text).into_owned();
    Outcome {
        status: Some(status),
        error: (!(200..300).contains(&status)).then(|| {
            if answer.is_empty() {
                format!("answered {status}")
            } else {
                format!("answered {status}: {answer}")
            }
        }),
        took: started.elapsed(),
    }
}

/// Writes the attempt and the delivery's next state: delivered, due again after the backoff,
/// or failed after the last attempt.
async fn record(
    pool: &PgPool,
    config: &WebhooksConfig,
    ep: &Endpoint,
    c: &Claimed,
    o: &Outcome,
) -> Result<(), sqlx::Error> {
    let now = switchboard_core::clock::now();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, status, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(c.id)
    .bind(c.attempts)
    .bind(now)
    .bind(o.status.map(i32::from))
    .bind(&o.error)
    .bind(i32::try_from(o.took.as_millis()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    let delivered = o.error.is_none();
    let tries = c.attempts - c.base;
    let last = !delivered && tries >= config.max_attempts.max(1) as i32;
    let (state, next): (&str, DateTime<Utc>) = if delivered {
        ("delivered", now)
    } else if last {
        ("failed", now)
    } else {
        let wait = config.backoff(tries.max(1) as u32, rand::random::<f64>());
        (
            "pending",
            now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(6)),
        )
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET state = $2, next_attempt_at = $3, last_status = $4,
                last_error = $5, delivered_at = CASE WHEN $2 = 'delivered' THEN $6 END
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(c.id)
    .bind(state)
    .bind(next)
    .bind(o.status.map(i32::from))
    .bind(&o.error)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let outcome = if delivered {
        "delivered"
    } else if last {
        "failed"
    } else {
        "retry"
    };
    metrics::counter!(crate::telemetry::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => outcome).increment(1);
    metrics::histogram!(crate::telemetry::WEBHOOK_ATTEMPT_SECONDS).record(o.took.as_secs_f64());
    if last {
        warn!(webhook_id = %ep.id, delivery_id = %c.id, event_type = %c.event_type, attempts = c.attempts, error = ?o.error, "webhook delivery failed for good: dead-lettered");
    } else if !delivered {
        debug!(webhook_id = %ep.id, delivery_id = %c.id, attempts = c.attempts, error = ?o.error, "webhook attempt failed: retried later");
    }
    Ok(())
}

impl Background for WebhookDispatcher {
    fn name(&self) -> &'static str {
        "webhook-dispatcher"
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let every = Duration::from_millis(self.config.poll_ms.clamp(10, 60_000));
        loop {
            if let Err(e) = self.pass(&mut tasks).await {
                warn!(error = %e, "webhook pass failed");
            }
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
        // Let the attempts in flight finish (each is bounded by the timeout); the rest are
        // claimed again once their lease ends.
        let drain = self.config.timeout();
        if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            info!(
                left = tasks.len(),
                "webhook attempts cut at shutdown: retried after their lease"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example.
    #[test]
    fn signs_like_the_specification() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("whsec_!!!", "m", 1, "{}"), None);
    }

    #[test]
    fn event_types_come_from_the_envelope() {
        assert_eq!(
            event_type("ticket_event", "created").as_deref(),
            Some("ticket.created")
        );
        assert_eq!(
            event_type("sla_event", "breached").as_deref(),
            Some("sla.breached")
        );
        assert_eq!(event_type("enrichment", "x"), None);
    }
}
