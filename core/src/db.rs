//! The Postgres ticket store: pool, migrations, and the transactional outbox.
//!
//! State changes and the events that describe them are written in one transaction (the event goes
//! to the `outbox` table); [`Outbox::publish`] then sends them to Kafka and deletes them. A crash
//! between the two leaves the rows in place, and the next [`Outbox::publish_pending`] sends them
//! again with the same event ids, which downstream writers deduplicate.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use switchboard_contracts::{encode, Envelope, Event, Topic};
use tracing::{info, warn};

use crate::kafka::Publisher;
use crate::Error;

/// Connects a pool (waiting up to `wait` for the server to accept connections).
pub async fn connect(url: &str, max_connections: u32, wait: Duration) -> Result<PgPool, Error> {
    let opts: PgConnectOptions = url.parse()?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "postgres not ready, retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Applies the schema migrations (idempotent; concurrent callers serialise on an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    sqlx::migrate!("./migrations").run(pool).await?;
    info!("postgres schema up to date");
    Ok(())
}

/// The transactional outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    publisher: Publisher,
}

impl Outbox {
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        Outbox { pool, publisher }
    }

    /// Adds an event inside `tx`; returns its sequence number. Re-adding the same event id is a
    /// no-op (returns `None`).
    pub async fn add<T: Event>(
        tx: &mut Transaction<'_, Postgres>,
        env: &Envelope<T>,
    ) -> Result<Option<i64>, Error> {
        let seq: Option<i64> = sqlx::query_scalar(
            "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)
             ON CONFLICT (event_id) DO NOTHING RETURNING seq",
        )
        .bind(env.event_id)
        .bind(T::TOPIC.base_name())
        .bind(env.payload.key())
        .bind(encode(env))
        .fetch_optional(&mut **tx)
        .await?;
        Ok(seq)
    }

    /// Publishes the given rows (in sequence order) and deletes them once acknowledged.
    pub async fn publish(&self, seqs: &[i64]) -> Result<(), Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, topic, key, payload FROM outbox WHERE seq = ANY($1) ORDER BY seq",
        )
        .bind(seqs)
        .fetch_all(&self.pool)
        .await?;
        self.send(rows).await
    }

    /// Publishes every row still in the outbox (after a crash, or rows another instance left).
    pub async fn publish_pending(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, topic, key, payload FROM outbox ORDER BY seq LIMIT 1000",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            total += rows.len();
            self.send(rows).await?;
        }
    }

    async fn send(&self, rows: Vec<(i64, String, String, Vec<u8>)>) -> Result<(), Error> {
        // Enqueue everything first (the idempotent producer keeps per-partition order), then await.
        let mut sends = Vec::with_capacity(rows.len());
        let mut done = Vec::with_capacity(rows.len());
        for (seq, topic, key, payload) in &rows {
            let Some(t) = Topic::from_base_name(topic) else {
                warn!(seq, topic, "outbox row for an unknown topic dropped");
                done.push(*seq);
                continue;
            };
            sends.push(self.publisher.publish_bytes(t, key, payload));
            done.push(*seq);
        }
        for r in futures::future::join_all(sends).await {
            r?;
        }
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
            .bind(&done)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
