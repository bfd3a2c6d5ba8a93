//! The audit export: copies the audit log from Postgres to ClickHouse (`audit_log`, beside the
//! events), so a year of who-did-what is queried where the reports are.
//!
//! One instance exports at a time (an advisory lock). Each pass reads the entries from a minute
//! before the newest one already in ClickHouse, in (at, id) order, a batch at a time, and inserts
//! them; ClickHouse's ReplacingMergeTree on (at, id) collapses the minute read twice. The minute
//! covers a transaction that wrote an entry but committed after a later one was exported.
//! At-least-once, duplicates collapsed; the Postgres log stays the source of truth.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::Serialize;
use sqlx::PgPool;
use switchboard_core::db::JobLock;
use switchboard_core::runtime::every;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// Entries read again each pass, before the newest one exported.
pub const OVERLAP_SECS: i64 = 60;
/// Entries per batch.
const BATCH: i64 = 2000;

/// A row of ClickHouse's `audit_log`.
#[derive(Debug, Clone, Row, Serialize)]
pub struct AuditRow {
    pub id: String,
    /// Seconds since the epoch (ClickHouse `DateTime`).
    pub at: u32,
    pub at_ms: u64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub subject: String,
    pub ticket_id: String,
    pub before: String,
    pub after: String,
    pub ip: String,
    pub user_agent: String,
}

type PgRow = (
    Uuid,
    DateTime<Utc>,
    String,
    Option<String>,
    String,
    String,
    Option<Uuid>,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
    Option<String>,
    Option<String>,
);

fn row((id, at, actor, role, action, subject, ticket, before, after, ip, ua): PgRow) -> AuditRow {
    let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
    AuditRow {
        id: id.to_string(),
        at: u32::try_from(at.timestamp().max(0)).unwrap_or(u32::MAX),
        at_ms: u64::try_from(at.timestamp_millis().max(0)).unwrap_or(0),
        actor,
        role: role.unwrap_or_default(),
        action,
        subject,
        ticket_id: ticket.map(|t| t.to_string()).unwrap_or_default(),
        before: json(before),
        after: json(after),
        ip: ip.unwrap_or_default(),
        user_agent: ua.unwrap_or_default(),
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl ExportError {
    /// Every failure here is retried at the next pass.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// One pass: everything from a minute before the newest exported entry. How many rows were
/// sent; `None` when another instance holds the export.
pub async fn export_once(
    pool: &PgPool,
    ch: &clickhouse::Client,
) -> Result<Option<u64>, ExportError> {
    let Some(lock) = JobLock::try_acquire(pool, "switchboard:audit-export").await? else {
        return Ok(None);
    };
    let result = pass(pool, ch).await;
    lock.release().await;
    result.map(Some)
}

async fn pass(pool: &PgPool, ch: &clickhouse::Client) -> Result<u64, ExportError> {
    let newest: u32 = ch
        .query("SELECT toUInt32(max(at)) FROM audit_log")
        .fetch_one()
        .await?;
    let mut cursor: (DateTime<Utc>, Uuid) = (
        DateTime::<Utc>::from_timestamp(i64::from(newest) - OVERLAP_SECS, 0)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        Uuid::nil(),
    );
    let mut sent = 0u64;
    loop {
        let rows: Vec<PgRow> = sqlx::query_as(
            "SELECT id, at, actor, role, action, subject, ticket_id, before, after, ip, user_agent
             FROM audit_log WHERE (at, id) > ($1, $2) ORDER BY at, id LIMIT $3",
        )
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        cursor = (last.1, last.0);
        let n = rows.len();
        let mut insert = ch.insert::<AuditRow>("audit_log").await?;
        for r in rows {
            insert.write(&row(r)).await?;
        }
        insert.end().await?;
        sent += n as u64;
        if (n as i64) < BATCH {
            break;
        }
    }
    Ok(sent)
}

/// The export loop (serving role, when ClickHouse is configured).
#[derive(Debug)]
pub struct AuditExport {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub every: Duration,
}

impl switchboard_core::runtime::Background for AuditExport {
    fn name(&self) -> &'static str {
        "audit-export"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        export_loop(self, shutdown)
    }
}

async fn export_loop(job: AuditExport, shutdown: CancellationToken) {
    // A pass in flight never holds up a shutdown: what it sent stays sent, the rest goes with
    // the next start's pass.
    let job = &job;
    every(&shutdown, job.every, job.every, || async move {
        match export_once(&job.pool, &job.clickhouse).await {
            Ok(Some(n)) if n > 0 => info!(rows = n, "audit log exported to clickhouse"),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, retry = e.is_retryable(), "audit export failed, retrying at the next pass")
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_every_field_and_empties_what_is_missing() {
        let id = Uuid::now_v7();
        let at = DateTime::<Utc>::from_timestamp(1_780_000_000, 123_000_000).unwrap();
        let r = row((
            id,
            at,
            "agent:x".into(),
            None,
            "ticket.status_changed".into(),
            "ticket:y".into(),
            None,
            Some(serde_json::json!({"status": "open"})),
            None,
            Some("127.0.0.1".into()),
            None,
        ));
        assert_eq!(r.id, id.to_string());
        assert_eq!((r.at, r.at_ms), (1_780_000_000, 1_780_000_000_123));
        assert_eq!((r.role.as_str(), r.ticket_id.as_str()), ("", ""));
        assert_eq!(r.before, r#"{"status":"open"}"#);
        assert_eq!((r.after.as_str(), r.ip.as_str()), ("", "127.0.0.1"));
    }
}
