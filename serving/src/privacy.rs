//! Privacy: erasing a customer, and retention.
//!
//! `DELETE /v1/customers/{id}` (admin) erases the customer and everything about them: in
//! Postgres their tickets with messages, assignments, SLA clocks, surveys, their orders, chat
//! conversations, delivery records, identities and the customer rows (merged ones included); the
//! attachment files only they referenced; in ClickHouse every event of their tickets or naming
//! one of their identities (an `ALTER TABLE ... DELETE` mutation on `events` and the per-event
//! tables; the hourly aggregates hold counts, no personal data). The vector store holds
//! knowledge-base articles only, never customer data. An `erasures` row records that it
//! happened (ids and counts, no personal data).
//!
//! Retention (`retention:` in pipelines.yaml): a job every `interval_secs` erases tickets closed
//! or resolved more than `closed_tickets_days` ago the same way, and ClickHouse events older than
//! `events_days`. One serving instance runs it at a time (an advisory lock).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::delete;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::{Postgres, Transaction};
use switchboard_core::http::ApiError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/customers/{id}", delete(erase))
}

/// What an erasure removed.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub customers: u64,
    pub tickets: u64,
    pub messages: u64,
    pub orders: u64,
    pub attachments: u64,
    /// Whether the ClickHouse deletions were submitted.
    pub analytics: bool,
}

/// Deletes `tickets` and everything hanging off them; returns (tickets, messages) deleted and
/// the attachment keys they referenced.
async fn erase_tickets(
    tx: &mut Transaction<'_, Postgres>,
    tickets: &[Uuid],
) -> Result<(u64, u64, Vec<String>), sqlx::Error> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a->>'storage_key' FROM messages m, jsonb_array_elements(m.attachments) a
         WHERE m.ticket_id = ANY($1) AND a->>'storage_key' <> ''",
    )
    .bind(tickets)
    .fetch_all(&mut **tx)
    .await?;
    for sql in [
        "DELETE FROM csat WHERE ticket_id = ANY($1)",
        "DELETE FROM sla_clocks WHERE ticket_id = ANY($1)",
        "DELETE FROM assignments WHERE ticket_id = ANY($1)",
        "DELETE FROM deliveries WHERE reply_id IN (SELECT id FROM messages WHERE ticket_id = ANY($1))",
    ] {
        sqlx::query(sql).bind(tickets).execute(&mut **tx).await?;
    }
    let messages = sqlx::query("DELETE FROM messages WHERE ticket_id = ANY($1)")
        .bind(tickets)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    sqlx::query("UPDATE tickets SET merged_into = NULL WHERE merged_into = ANY($1)")
        .bind(tickets)
        .execute(&mut **tx)
        .await?;
    let t = sqlx::query("DELETE FROM tickets WHERE id = ANY($1)")
        .bind(tickets)
        .execute(&mut **tx)
        .await?;
    Ok((t.rows_affected(), messages, keys))
}

/// Removes attachment files no remaining message references.
async fn remove_orphans(api: &Api, keys: &[String]) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    for key in keys {
        let still: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM messages WHERE attachments @> jsonb_build_array(jsonb_build_object('storage_key', $1::text)) LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&api.pool)
        .await?;
        if still.is_none() {
            if let Some(path) = switchboard_core::storage::attachment_path(&api.data_dir, key) {
                if tokio::fs::remove_file(&path).await.is_ok() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Submits the ClickHouse deletions for these tickets and identity values.
async fn erase_analytics(
    ch: &clickhouse::Client,
    tickets: &[Uuid],
    needles: &[String],
) -> Result<(), clickhouse::error::Error> {
    let ids = tickets
        .iter()
        .map(|t| quoted(&t.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut cond = if ids.is_empty() {
        "0".to_string()
    } else {
        format!("ticket_id IN ({ids})")
    };
    for n in needles.iter().filter(|n| n.len() >= 3) {
        cond.push_str(&format!(" OR position(payload, {}) > 0", quoted(n)));
    }
    ch.query(&format!("ALTER TABLE events DELETE WHERE {cond}"))
        .execute()
        .await?;
    if !ids.is_empty() {
        for table in ["ticket_facts", "predictions"] {
            ch.query(&format!(
                "ALTER TABLE {table} DELETE WHERE ticket_id IN ({ids})"
            ))
            .execute()
            .await?;
        }
    }
    Ok(())
}

#[utoipa::path(delete, path = "/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)), responses((status = 200, body = Erased), (status = 403, description = "admins only"), (status = 404, description = "no such customer")), security(("bearer" = [])))]
async fn erase(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<Erased>, ApiError> {
    who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    // The customer and every customer merged into it.
    let customers: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM customers WHERE id = $1 OR merged_into = $1 FOR UPDATE")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    if !customers.contains(&id) {
        return Err(ApiError::not_found("no such customer"));
    }
    let needles: Vec<String> =
        sqlx::query_scalar("SELECT value FROM customer_identities WHERE customer_id = ANY($1)")
            .bind(&customers)
            .fetch_all(&mut *tx)
            .await?;
    let tickets: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets WHERE customer_id = ANY($1)")
            .bind(&customers)
            .fetch_all(&mut *tx)
            .await?;
    let (n_tickets, messages, keys) = erase_tickets(&mut tx, &tickets).await?;
    let emails: Vec<String> = needles
        .iter()
        .filter(|n| n.contains('@'))
        .cloned()
        .collect();
    sqlx::query(
        "DELETE FROM chat_log WHERE conversation_id IN (SELECT id FROM chat_conversations WHERE customer_email = ANY($1))",
    )
    .bind(&emails)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM chat_conversations WHERE customer_email = ANY($1)")
        .bind(&emails)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM deliveries WHERE recipient = ANY($1)")
        .bind(&needles)
        .execute(&mut *tx)
        .await?;
    let orders = sqlx::query("DELETE FROM orders WHERE customer_id = ANY($1)")
        .bind(&customers)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM customer_identities WHERE customer_id = ANY($1)")
        .bind(&customers)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE customers SET merged_into = NULL WHERE id = ANY($1)")
        .bind(&customers)
        .execute(&mut *tx)
        .await?;
    let n_customers = sqlx::query("DELETE FROM customers WHERE id = ANY($1)")
        .bind(&customers)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO erasures (id, customer_id, tickets, messages, reason) VALUES ($1, $2, $3, $4, 'request')",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(n_tickets as i64)
    .bind(messages as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let attachments = remove_orphans(&api, &keys).await?;
    let analytics = match &api.clickhouse {
        Some(ch) => match erase_analytics(ch, &tickets, &needles).await {
            Ok(()) => true,
            Err(e) => {
                return Err(ApiError::unavailable(format!(
                    "erased from the ticket store; the analytics deletion failed, retry the request: {e}"
                )))
            }
        },
        None => false,
    };
    metrics::counter!("switchboard_erasures_total", "reason" => "request").increment(1);
    info!(customer_id = %id, tickets = n_tickets, messages, "customer erased");
    Ok(Json(Erased {
        customers: n_customers,
        tickets: n_tickets,
        messages,
        orders,
        attachments,
        analytics,
    }))
}

/// How long data is kept (`retention:` in pipelines.yaml).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub closed_tickets_days: u32,
    pub events_days: u32,
    pub interval: Duration,
}

/// One retention pass; returns the tickets erased.
pub async fn retention_pass(api: &Api, r: Retention) -> Result<u64, ApiError> {
    let mut tx = api.pool.begin().await?;
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('switchboard:retention', 0))",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !locked {
        return Ok(0);
    }
    let tickets: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tickets WHERE status IN ('resolved', 'closed')
           AND COALESCE(resolved_at, updated_at) < now() - make_interval(days => $1) LIMIT 1000",
    )
    .bind(r.closed_tickets_days as i32)
    .fetch_all(&mut *tx)
    .await?;
    let (n, messages, keys) = erase_tickets(&mut tx, &tickets).await?;
    if n > 0 {
        sqlx::query(
            "INSERT INTO erasures (id, customer_id, tickets, messages, reason) VALUES ($1, NULL, $2, $3, 'retention')",
        )
        .bind(Uuid::now_v7())
        .bind(n as i64)
        .bind(messages as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    remove_orphans(api, &keys).await?;
    if let Some(ch) = &api.clickhouse {
        if !tickets.is_empty() {
            erase_analytics(ch, &tickets, &[])
                .await
                .map_err(|e| ApiError::unavailable(format!("clickhouse: {e}")))?;
        }
        // A mutation rewrites data parts: only when something is old enough.
        let cutoff = format!(
            "occurred_at < now() - {}",
            u64::from(r.events_days) * 86_400
        );
        let old: u64 = ch
            .query(&format!("SELECT count() FROM events WHERE {cutoff}"))
            .fetch_one()
            .await
            .map_err(|e| ApiError::unavailable(format!("clickhouse: {e}")))?;
        if old > 0 {
            ch.query(&format!("ALTER TABLE events DELETE WHERE {cutoff}"))
                .execute()
                .await
                .map_err(|e| ApiError::unavailable(format!("clickhouse: {e}")))?;
            info!(events = old, "retention deleted old analytics events");
        }
    }
    if n > 0 {
        metrics::counter!("switchboard_erasures_total", "reason" => "retention").increment(n);
        info!(tickets = n, messages, "retention erased old tickets");
    }
    Ok(n)
}

/// Runs [`retention_pass`] every `interval` (the first after one interval) until `shutdown`.
pub async fn retention_loop(api: Api, r: Retention, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(r.interval) => {}
        }
        if let Err(e) = retention_pass(&api, r).await {
            warn!(error = %e.message, "retention pass failed, retrying at the next interval");
        }
    }
}
