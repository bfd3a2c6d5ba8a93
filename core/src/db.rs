//! The Postgres ticket store: pool, migrations, and the transactional outbox.
//!
//! State changes and the events that describe them are written in one transaction (the event goes
//! to the `outbox` table): an [`EventTx`] is that transaction with its events, and its
//! [`EventTx::commit`] commits and then has [`Outbox::publish`] send them to Kafka and delete them. A crash
//! between the two leaves the rows in place, and the next [`Outbox::publish_pending`] sends them
//! again with the same event ids, which downstream writers deduplicate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use switchboard_contracts::{encode, Envelope, Event, Topic};
use tracing::{info, warn};

use crate::kafka::Publisher;
use crate::Error;

/// The lock of a job that runs on one instance at a time (the retention pass, the audit export,
/// the forecast fit, the search window build): a session advisory lock named by the job, on a
/// connection of its own that holds it for the pass and is closed after it, never handed back
/// to the pool holding the lock. A pass that is dropped drops the connection, and Postgres
/// releases the lock with it.
pub struct JobLock {
    job: &'static str,
    conn: PgConnection,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("job", &self.job).finish()
    }
}

impl JobLock {
    /// The lock of `job` (`switchboard:<name>`, one key across versions), or `None` when another
    /// instance holds it.
    pub async fn try_acquire(
        pool: &PgPool,
        job: &'static str,
    ) -> Result<Option<Self>, sqlx::Error> {
        use sqlx::Connection as _;
        let mut conn = pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(job)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            if let Err(e) = conn.close().await {
                warn!(job, error = %e, "closing a job's lock connection failed");
            }
            return Ok(None);
        }
        Ok(Some(JobLock { job, conn }))
    }

    /// The connection that holds the lock (for work that must run outside the pool, such as
    /// `CREATE INDEX CONCURRENTLY`).
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Closes the connection, and so releases the lock.
    pub async fn release(self) {
        use sqlx::Connection as _;
        if let Err(e) = self.conn.close().await {
            warn!(job = self.job, error = %e, "closing a job's lock connection failed");
        }
    }
}

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

/// A Postgres transaction and the outbox events added in it, as one value: the state it changes
/// and the events describing the change commit together, and [`EventTx::commit`] publishes the
/// events right after the commit (one call, so no writer can forget either half).
///
/// It dereferences to the connection, so queries run on it as on a transaction
/// (`.execute(&mut *tx)`, or `&mut **tx` through a `&mut EventTx`).
#[derive(Debug)]
pub struct EventTx<'c> {
    tx: Transaction<'c, Postgres>,
    seqs: Vec<i64>,
    actor: Option<ChangeActor>,
}

/// Who a transaction's changes are by: named on the events it adds (`actor`), and, for a
/// person, in the audit log beside each ticket change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeActor {
    /// `agent:<id>`, `token:<id>`, `admin` for people and machines holding a token; `router`,
    /// `sla`, `bot`, `system` for rules.
    pub name: String,
    /// The caller's role (`agent`, `supervisor`, `admin`); `system` for rules.
    pub role: String,
    /// Whether a person or a token holder made the change (recorded in the audit log) rather
    /// than a rule (recorded on the event only: the event stream is the rules' audit).
    pub person: bool,
}

impl ChangeActor {
    /// A rule of the processors (`router`, `sla`, `bot`, `system`).
    pub fn rule(name: &str) -> ChangeActor {
        ChangeActor {
            name: name.to_string(),
            role: "system".to_string(),
            person: false,
        }
    }
}

/// Why [`EventTx::commit`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Nothing was stored.
    #[error("{0}")]
    Commit(Error),
    /// Stored; the events stay in the outbox and go out with the next sweep
    /// ([`Outbox::publish_pending`]).
    #[error("stored, publishing delayed: {0}")]
    Publish(Error),
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Commit(e) | CommitError::Publish(e) => e,
        }
    }
}

impl EventTx<'static> {
    /// Begins a transaction on `pool`.
    pub async fn begin(pool: &PgPool) -> Result<Self, Error> {
        Ok(EventTx::new(pool.begin().await?))
    }
}

impl<'c> EventTx<'c> {
    /// Wraps a transaction already begun.
    pub fn new(tx: Transaction<'c, Postgres>) -> Self {
        EventTx {
            tx,
            seqs: Vec::new(),
            actor: None,
        }
    }

    /// The changes of this transaction are by `actor`.
    pub fn by(mut self, actor: ChangeActor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Who this transaction's changes are by, when said.
    pub fn actor(&self) -> Option<&ChangeActor> {
        self.actor.as_ref()
    }

    /// Adds an event to the outbox in this transaction (an event id already there is a no-op).
    pub async fn add<T: Event>(&mut self, env: &Envelope<T>) -> Result<(), Error> {
        if let Some(seq) = Outbox::add(&mut self.tx, env).await? {
            self.seqs.push(seq);
        }
        Ok(())
    }

    /// The transaction, for code that only reads or writes state.
    pub fn tx(&mut self) -> &mut Transaction<'c, Postgres> {
        &mut self.tx
    }

    /// How many events this transaction will publish.
    pub fn events(&self) -> usize {
        self.seqs.len()
    }

    /// Commits, then publishes the events added (in the order added).
    pub async fn commit(self, outbox: &Outbox) -> Result<(), CommitError> {
        self.tx
            .commit()
            .await
            .map_err(|e| CommitError::Commit(e.into()))?;
        outbox
            .publish(&self.seqs)
            .await
            .map_err(CommitError::Publish)
    }

    /// Rolls back: nothing is stored and nothing published.
    pub async fn rollback(self) -> Result<(), Error> {
        Ok(self.tx.rollback().await?)
    }
}

impl std::ops::Deref for EventTx<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for EventTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// The transactional outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    publisher: Publisher,
    /// Set: commits collect their rows here and [`Outbox::flush`] publishes them all at once.
    deferred: Option<Arc<Mutex<Vec<i64>>>>,
}

impl Outbox {
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        Outbox {
            pool,
            publisher,
            deferred: None,
        }
    }

    /// An outbox whose commits only collect their rows, for work of many transactions (a bulk
    /// action) that publishes their events in one batch at its end ([`Outbox::flush`]) instead
    /// of a broker round trip and an outbox delete per transaction. The guarantee is the
    /// outbox's: a row committed and not yet published is published by the next sweep
    /// ([`Outbox::publish_pending`]) if this process dies first.
    pub fn deferring(&self) -> Outbox {
        Outbox {
            deferred: Some(Arc::default()),
            ..self.clone()
        }
    }

    /// Publishes the rows a [deferring](Outbox::deferring) outbox collected (in sequence order,
    /// so each key's events keep their order); a no-op for any other outbox.
    pub async fn flush(&self) -> Result<(), Error> {
        let Some(deferred) = &self.deferred else {
            return Ok(());
        };
        let mut seqs = std::mem::take(&mut *deferred.lock().unwrap_or_else(|e| e.into_inner()));
        seqs.sort_unstable();
        self.publish_now(&seqs).await
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

    /// Publishes the given rows (in sequence order) and deletes them once acknowledged; a
    /// [deferring](Outbox::deferring) outbox keeps them for its [`flush`](Outbox::flush).
    pub async fn publish(&self, seqs: &[i64]) -> Result<(), Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        if let Some(deferred) = &self.deferred {
            deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(seqs);
            return Ok(());
        }
        self.publish_now(seqs).await
    }

    /// Publishes the given rows (in sequence order) and deletes them once acknowledged.
    async fn publish_now(&self, seqs: &[i64]) -> Result<(), Error> {
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
        // Enqueue everything first (the producer keeps per-partition order: idempotent, or one
        // request in flight), then await.
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
