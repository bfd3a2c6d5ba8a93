//! Privacy: erasing a customer, and retention.
//!
//! `DELETE /v1/customers/{id}` (admin) erases a person and everything about them. The person is
//! the whole chain of merges the id belongs to (merging A into B and B into C leaves rows A and
//! B pointing along `merged_into`; erasing C, B or A by its old id erases all three), walked
//! both ways with recursive queries, in one Postgres transaction: their tickets with messages,
//! assignments, SLA clocks, surveys, delivery records and chat logs, their orders, chat
//! sessions, identities and the customer rows. Matching is exact: an identity is compared with
//! `=` in Postgres, and in text (ClickHouse payloads, raw mail) only as a whole address, so
//! erasing `bo@x.com` never touches `jumbo@x.com` or `bo@x.com.au`. Then, before the
//! transaction commits (so a failure leaves everything in place and the request can simply be
//! repeated): raw mail that could not become a ticket (`deadletter/email` in the attachment
//! store) naming one of their addresses in its headers, and in ClickHouse every event of their
//! tickets, naming one of their customer ids or identities, or of a dead letter they sent (an
//! `ALTER TABLE ... DELETE` mutation on `events` and the per-event tables; the hourly aggregates
//! hold counts, no personal data). After the commit, the files go: that raw mail and every
//! attachment no remaining message references (theirs, and those of their dead-lettered
//! messages). The vector store holds knowledge-base articles only, never customer data. An
//! `erasures` row records that it happened (ids and counts, no personal data).
//!
//! Events still on their way through the broker when an erasure runs (written by the sink after
//! the ClickHouse mutation) are not caught: they carry the ticket and customer ids, so repeating
//! the erasure is harmless, but the customer is gone then (404); the Kafka topics' retention
//! bounds how long the log itself holds them.
//!
//! Retention (`retention:` in pipelines.yaml) runs every `interval_secs` on one serving
//! instance at a time (a session advisory lock), in batches of `batch_size` rows, each its own
//! short transaction, looping until nothing is left, so it keeps up with a million tickets a day
//! without long locks:
//! - tickets resolved or closed more than `closed_tickets_days` ago, erased as above;
//! - orders not updated for `orders_days`;
//! - **orphaned customers**: a customer (with its merge chain and identities) whose tickets
//!   retention erased or whose orders expired, once it has no ticket and no order left. Orders
//!   keep a customer: they are the shop's record and give priority context when the customer
//!   writes again; they expire on their own;
//! - chat sessions idle for `chat_session_days` (no log entry, no ticket of the conversation
//!   open, pending or updated since) with their logs;
//! - raw dead-lettered mail older than `deadletter_days`;
//! - ClickHouse events (and the per-event tables) older than `events_days`, one mutation per
//!   table per pass. Events of a ticket erased by retention are older than its resolution, so
//!   they go with this time cut when `events_days <= closed_tickets_days`; only when events are
//!   kept longer than tickets does each batch also delete its tickets' events by id.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::delete;
use axum::{Json, Router};
use serde::Deserialize;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use switchboard_core::http::ApiError;
use switchboard_core::storage::{BlobStore, StorageError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::auth::Role;
use crate::{parse_id, Api};

/// How long data is kept (the serving role's retention job).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Resolved or closed tickets (with messages, attachments, surveys, chat logs) older than
    /// this are erased; a customer left with no ticket and no order goes with its identities.
    pub closed_tickets_days: u32,
    /// ClickHouse events older than this are deleted.
    pub events_days: u32,
    /// Orders not updated for this long are deleted.
    pub orders_days: u32,
    /// A chat session idle this long (no message either way, no open or pending ticket) expires:
    /// its conversation and log are deleted.
    pub chat_session_days: u32,
    /// Raw mail that could not be a ticket (`deadletter/email` in the attachment store) is deleted this long
    /// after it arrived.
    pub deadletter_days: u32,
    /// Entries of the Postgres audit log older than this are deleted; where ClickHouse keeps
    /// the audit log too (`audit_export`), only entries already copied there.
    pub audit_days: u32,
    /// What the team's rules did (`rule_fires`: the once-per-event record and the fire
    /// budget's count) is kept this long.
    pub rule_fires_days: u32,
    /// Webhook deliveries that were delivered or failed, and notifications sent or failed, are
    /// kept this long (pending ones always).
    pub ledgers_days: u32,
    /// Rows per deletion statement (tickets per batch); each batch is its own transaction.
    pub batch_size: u32,
    /// How often the job runs.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            closed_tickets_days: 730,
            events_days: 730,
            orders_days: 730,
            chat_session_days: 30,
            deadletter_days: 90,
            audit_days: 730,
            rule_fires_days: 90,
            ledgers_days: 30,
            batch_size: 5000,
            interval_secs: 3600,
        }
    }
}

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/customers/{id}", delete(erase))
}

/// Why an erasure or a retention pass did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("ticket store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("analytics store: {0}")]
    Analytics(#[from] clickhouse::error::Error),
    #[error("attachment store: {0}")]
    Storage(#[from] StorageError),
}

impl From<PrivacyError> for ApiError {
    fn from(e: PrivacyError) -> Self {
        match e {
            PrivacyError::Db(e) => e.into(),
            e => ApiError::unavailable(format!("{e}; nothing was erased, retry the request")),
        }
    }
}

/// What an erasure removed.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Erased {
    /// Customer rows: the one named and every one merged into the same person.
    pub customers: u64,
    pub tickets: u64,
    pub messages: u64,
    pub orders: u64,
    pub attachments: u64,
    /// Chat sessions (conversations with their logs).
    pub chat_sessions: u64,
    /// Raw mail that could not become a ticket, sent by or to them.
    pub raw_mails: u64,
    /// Whether the ClickHouse deletions were submitted.
    pub analytics: bool,
}

/// What [`erase_tickets`] removed.
#[derive(Debug, Default)]
struct TicketsErased {
    tickets: u64,
    messages: u64,
    chat_sessions: u64,
    /// Attachment keys the deleted messages referenced.
    keys: Vec<String>,
    /// The customers the tickets belonged to.
    customers: Vec<Uuid>,
}

/// Deletes `tickets` and everything hanging off them, and the chat sessions (with their logs)
/// no remaining ticket belongs to.
async fn erase_tickets(
    tx: &mut Transaction<'_, Postgres>,
    tickets: &[Uuid],
) -> Result<TicketsErased, sqlx::Error> {
    if tickets.is_empty() {
        return Ok(TicketsErased::default());
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT a->>'storage_key' FROM messages m, jsonb_array_elements(m.attachments) a
         WHERE m.ticket_id = ANY($1) AND a->>'storage_key' <> ''",
    )
    .bind(tickets)
    .fetch_all(&mut **tx)
    .await?;
    let customers: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT customer_id FROM tickets WHERE id = ANY($1)")
            .bind(tickets)
            .fetch_all(&mut **tx)
            .await?;
    let conversation_keys: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT conversation_key FROM tickets
         WHERE id = ANY($1) AND left(conversation_key, 5) = 'chat:'",
    )
    .bind(tickets)
    .fetch_all(&mut **tx)
    .await?;
    for sql in [
        "DELETE FROM csat WHERE ticket_id = ANY($1)",
        "DELETE FROM sla_clocks WHERE ticket_id = ANY($1)",
        "DELETE FROM assignments WHERE ticket_id = ANY($1)",
        "DELETE FROM deliveries WHERE reply_id IN (SELECT id FROM messages WHERE ticket_id = ANY($1))",
        "DELETE FROM draft_outcomes WHERE ticket_id = ANY($1)",
        "DELETE FROM triage_corrections WHERE ticket_id = ANY($1)",
    ] {
        sqlx::query(sql).bind(tickets).execute(&mut **tx).await?;
    }
    // Their reply examples leave every drafts index (tombstones the processors sync past).
    switchboard_tickets::drafts::withdraw(tx, tickets).await?;
    let messages = sqlx::query("DELETE FROM messages WHERE ticket_id = ANY($1)")
        .bind(tickets)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    switchboard_tickets::row::unmerge_from(tx, tickets).await?;
    let n = sqlx::query("DELETE FROM tickets WHERE id = ANY($1)")
        .bind(tickets)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    let conversations: Vec<Uuid> = conversation_keys
        .iter()
        .filter_map(|k| k.strip_prefix("chat:"))
        .filter_map(|c| Uuid::parse_str(c).ok())
        .collect();
    let chat_sessions = if conversations.is_empty() {
        0
    } else {
        let orphaned: Vec<Uuid> = sqlx::query_scalar(
            "SELECT c FROM unnest($1::uuid[]) c
             WHERE NOT EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_key = 'chat:' || c::text)",
        )
        .bind(&conversations)
        .fetch_all(&mut **tx)
        .await?;
        delete_chat_sessions(tx, &orphaned).await?
    };
    Ok(TicketsErased {
        tickets: n,
        messages,
        chat_sessions,
        keys,
        customers,
    })
}

/// Deletes chat conversations with their logs; returns the conversations deleted.
async fn delete_chat_sessions(
    tx: &mut Transaction<'_, Postgres>,
    conversations: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if conversations.is_empty() {
        return Ok(0);
    }
    sqlx::query("DELETE FROM chat_log WHERE conversation_id = ANY($1)")
        .bind(conversations)
        .execute(&mut **tx)
        .await?;
    Ok(
        sqlx::query("DELETE FROM chat_conversations WHERE id = ANY($1)")
            .bind(conversations)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// Deletes customer rows (whole merge chains, listed in `family`) with their identities.
async fn delete_customers(
    tx: &mut Transaction<'_, Postgres>,
    family: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if family.is_empty() {
        return Ok(0);
    }
    sqlx::query("DELETE FROM customer_identities WHERE customer_id = ANY($1)")
        .bind(family)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE customers SET merged_into = NULL WHERE id = ANY($1)")
        .bind(family)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query("DELETE FROM customers WHERE id = ANY($1)")
        .bind(family)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// Every customer row of the people `ids` belong to: each id's chain of `merged_into` up to
/// the survivor, and everything merged into any of those, at any depth. (`UNION` ends the walk
/// on a cycle.)
const FAMILY: &str = "WITH RECURSIVE up(id, merged_into) AS (
        SELECT id, merged_into FROM customers WHERE id = ANY($1)
        UNION SELECT c.id, c.merged_into FROM customers c JOIN up ON c.id = up.merged_into
    ), family(id) AS (
        SELECT id FROM up
        UNION SELECT c.id FROM customers c JOIN family f ON c.merged_into = f.id
    )
    SELECT id FROM family ORDER BY id";

async fn family(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(FAMILY)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
}

/// Removes the attachment files no remaining message references; returns how many.
async fn remove_unreferenced(
    pool: &PgPool,
    blobs: &BlobStore,
    keys: &[String],
) -> Result<u64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let gone: Vec<String> = sqlx::query_scalar(
        "SELECT k FROM unnest($1::text[]) k
         WHERE NOT EXISTS (SELECT 1 FROM messages
                           WHERE attachments @> jsonb_build_array(jsonb_build_object('storage_key', k)))",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let mut removed = 0;
    for key in &gone {
        match blobs.delete_attachment(key).await {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                // Already unreferenced: nothing can reach it any more, but it is still stored.
                metrics::counter!(crate::telemetry::ATTACHMENT_DELETE_FAILURES_TOTAL).increment(1);
                warn!(key = key.as_str(), error = %e, "an unreferenced attachment could not be deleted");
            }
        }
    }
    Ok(removed)
}

/// A ClickHouse string literal for `clickhouse::Client::query`, which reads `?` as a bind
/// placeholder and `??` as a `?`.
fn quoted(s: &str) -> String {
    format!(
        "'{}'",
        s.replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('?', "??")
    )
}

/// Bytes that may stand right before an identity in text for it to be a whole address: ASCII
/// controls, space and the separators around addresses (`"(),:;<>@[\]`). Anything else (a
/// letter, a digit, a character an address's local part may hold, non-ASCII) means the match
/// is part of a longer address (`jumbo@x.com` for `bo@x.com`).
fn before_ok(b: u8) -> bool {
    b <= b' ' || b"\"(),:;<>@[\\]".contains(&b)
}

/// Bytes that may stand right after an identity: ASCII that is neither alphanumeric nor `-`,
/// `_` or `.` (a `.` is allowed when the byte after it is allowed or the end: the end of a
/// sentence, not `bo@x.com.au`).
fn after_ok(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_alphanumeric() && !b"-_.".contains(&b)
}

/// Whether `text` names `needle` as a whole address (ASCII case-insensitive).
pub fn names_address(text: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    if n.is_empty() || text.len() < n.len() {
        return false;
    }
    (0..=text.len() - n.len()).any(|i| {
        text[i..i + n.len()].eq_ignore_ascii_case(n)
            && (i == 0 || before_ok(text[i - 1]))
            && match text.get(i + n.len()) {
                None => true,
                Some(b'.') => text.get(i + n.len() + 1).is_none_or(|b| after_ok(*b)),
                Some(b) => after_ok(*b),
            }
    })
}

/// The ClickHouse needles of an identity or id in event payloads (JSON): the value as a whole
/// JSON string (`"bo@x.com"`, never inside `"jumbo@x.com"`), and the same inside a JSON string
/// (a dead letter carries the failed record as text: `\"bo@x.com\"`). Lowercase, for `lower(payload)`.
fn json_needles(value: &str) -> [String; 2] {
    let value = value.to_lowercase();
    let json = serde_json::Value::String(value).to_string();
    let nested = serde_json::Value::String(json.clone()).to_string();
    let nested = nested[1..nested.len() - 1].to_string();
    [json, nested]
}

/// The re2 pattern (for ClickHouse `match`) of a raw dead-lettered mail (JSON-escaped text in
/// a dead letter's `payload_text`) naming `address` in an address header line, with the
/// boundaries of [`names_address`]; a body that mentions it is not matched.
fn raw_mail_pattern(address: &str) -> String {
    let mut lit = String::new();
    for c in address.chars() {
        if c.is_ascii_punctuation() {
            lit.push('\\');
        }
        lit.push(c);
    }
    // A header line: from the start of the text or a JSON-escaped line break, up to the next
    // one (any character but `\`, or an escape other than `\r`/`\n`).
    const LINE: &str = r"(^|\\n|payload_text\x22:\x22)(from|sender|reply-to|return-path|to|cc|delivered-to)[ \t]*:(\\[^rn]|[^\\])*?";
    const BEFORE: &str = r"([\x00-\x20\x22(),:;<>@\[\]]|\\[\x22t])";
    const AFTER: &str = r"[\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]";
    format!(r"(?i){LINE}{BEFORE}{lit}($|{AFTER}|\.($|{AFTER}))")
}

/// The header block of a raw message (up to the first empty line; all of it when there is
/// none: such a message is likely why it could not be parsed).
fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .into_iter()
        .chain(raw.windows(4).position(|w| w == b"\r\n\r\n"))
        .min()
        .unwrap_or(raw.len());
    &raw[..end]
}

/// The raw dead-lettered mails whose headers name one of `addresses` (the sender, a recipient,
/// `Reply-To`, `Return-Path`): their storage keys (dead-letter keys are `email:<key>`).
async fn raw_mail_naming(
    blobs: &BlobStore,
    addresses: &[String],
) -> Result<Vec<String>, StorageError> {
    if addresses.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for mail in blobs.raw_mails().await? {
        let Some(raw) = blobs.raw_mail(&mail.key).await? else {
            continue;
        };
        let headers = header_block(&raw);
        if addresses.iter().any(|a| names_address(headers, a)) {
            out.push(mail.key);
        }
    }
    Ok(out)
}

/// Attachment storage keys named in dead-letter payloads (a dead-lettered message whose
/// attachments were stored before it failed).
fn storage_keys_in(payload: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut texts = vec![payload.to_string()];
    // The dead letter carries the failed record as text (JSON itself) or base64.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) {
        if let Some(t) = v.get("payload_text").and_then(|t| t.as_str()) {
            texts.push(t.to_string());
        }
        if let Some(b) = v.get("payload_base64").and_then(|t| t.as_str()) {
            if let Ok(raw) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b) {
                texts.push(String::from_utf8_lossy(&raw).into_owned());
            }
        }
    }
    for text in &texts {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("storage_key") {
            rest = &rest[i + "storage_key".len()..];
            let hex: String = rest
                .chars()
                .skip_while(|c| !c.is_ascii_hexdigit())
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            let gap = rest
                .find(|c: char| c.is_ascii_hexdigit())
                .unwrap_or(usize::MAX);
            if hex.len() == 64 && gap <= 8 && !keys.contains(&hex) {
                keys.push(hex);
            }
        }
    }
    keys
}

/// Ticket ids per ClickHouse mutation (a query stays well under `max_query_size`).
const IDS_PER_MUTATION: usize = 2000;

/// What an erasure deletes in ClickHouse.
#[derive(Debug, Default)]
struct AnalyticsTarget<'a> {
    tickets: &'a [Uuid],
    customers: &'a [Uuid],
    identities: &'a [String],
    dead_letter_keys: &'a [String],
}

impl AnalyticsTarget<'_> {
    /// The `events` conditions (each well under `max_query_size`).
    fn conditions(&self) -> Vec<String> {
        let mut person = Vec::new();
        let ids = self.customers.iter().map(|c| c.to_string());
        for v in ids.chain(self.identities.iter().filter(|i| !i.is_empty()).cloned()) {
            for n in json_needles(&v) {
                person.push(format!("position(lower(payload), {}) > 0", quoted(&n)));
            }
        }
        for a in self.identities.iter().filter(|i| i.contains('@')) {
            person.push(format!(
                "(topic = 'deadletter' AND match(payload, {}))",
                quoted(&raw_mail_pattern(a))
            ));
        }
        if !self.dead_letter_keys.is_empty() {
            let keys: Vec<String> = self.dead_letter_keys.iter().map(|k| quoted(k)).collect();
            person.push(format!(
                "(topic = 'deadletter' AND key IN ({}))",
                keys.join(", ")
            ));
        }
        let mut out = Vec::new();
        if !person.is_empty() {
            out.push(person.join(" OR "));
        }
        out.extend(ticket_conditions(self.tickets));
        out
    }
}

fn ticket_conditions(tickets: &[Uuid]) -> Vec<String> {
    tickets
        .chunks(IDS_PER_MUTATION)
        .map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|t| quoted(&t.to_string())).collect();
            format!("ticket_id IN ({})", ids.join(", "))
        })
        .collect()
}

/// The attachment keys of the dead letters an erasure deletes (read before the deletion).
async fn dead_letter_attachments(
    ch: &clickhouse::Client,
    t: &AnalyticsTarget<'_>,
) -> Result<Vec<String>, clickhouse::error::Error> {
    let mut keys = Vec::new();
    for cond in t.conditions() {
        let payloads: Vec<String> = ch
            .query(&format!(
                "SELECT payload FROM events WHERE topic = 'deadletter' AND ({cond}) LIMIT 10000"
            ))
            .fetch_all()
            .await?;
        for p in &payloads {
            for k in storage_keys_in(p) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    Ok(keys)
}

/// Submits the ClickHouse deletions of an erasure.
async fn erase_analytics(
    ch: &clickhouse::Client,
    t: &AnalyticsTarget<'_>,
) -> Result<(), clickhouse::error::Error> {
    for cond in t.conditions() {
        ch.query(&format!("ALTER TABLE events DELETE WHERE {cond}"))
            .execute()
            .await?;
    }
    for cond in ticket_conditions(t.tickets) {
        for table in ["ticket_facts", "predictions"] {
            ch.query(&format!("ALTER TABLE {table} DELETE WHERE {cond}"))
                .execute()
                .await?;
        }
    }
    Ok(())
}

#[utoipa::path(delete, path = "/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)), responses((status = 200, body = Erased), (status = 403, description = "admins only"), (status = 404, description = "no such customer"), (status = 503, description = "the analytics or file store failed: nothing was erased, retry")), security(("bearer" = [])))]
async fn erase(
    State(api): State<Api>,
    actor: crate::audit::Actor,
    Path(id): Path<String>,
) -> Result<Json<Erased>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let erased = erase_customer(&api.pool, &api.blobs, api.clickhouse.as_ref(), id, &actor)
        .await?
        .ok_or_else(|| ApiError::not_found("no such customer"))?;
    // This instance's at-risk list may still name them: scored again on the next call (other
    // instances' lists, a minute old at most, age out).
    api.at_risk.clear().await;
    Ok(Json(erased))
}

/// Erases the person customer `id` belongs to (see the module docs), recorded in the audit log
/// as done by `actor` (the ids and counts only: nothing of the person); `None` when there is no
/// such customer.
pub async fn erase_customer(
    pool: &PgPool,
    blobs: &BlobStore,
    ch: Option<&clickhouse::Client>,
    id: Uuid,
    actor: &crate::audit::Actor,
) -> Result<Option<Erased>, PrivacyError> {
    let mut tx = pool.begin().await?;
    let mut customers = family(&mut tx, &[id]).await?;
    if customers.is_empty() {
        return Ok(None);
    }
    // Merges and new customers take advisory locks on the identities a message names (sorted):
    // holding all of this person's, no message can move anything into or out of the chain
    // while it is erased. The chain is read again under them.
    let identities: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, value FROM customer_identities WHERE customer_id = ANY($1) ORDER BY kind, value",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await?;
    for (kind, value) in &identities {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("customer:{kind}:{value}"))
            .execute(&mut *tx)
            .await?;
    }
    customers = family(&mut tx, &[id]).await?;
    sqlx::query("SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&customers)
        .execute(&mut *tx)
        .await?;
    let needles: Vec<String> = sqlx::query_scalar(
        "SELECT value FROM customer_identities WHERE customer_id = ANY($1)
         UNION SELECT email FROM customers WHERE id = ANY($1) AND email IS NOT NULL
         UNION SELECT phone FROM customers WHERE id = ANY($1) AND phone IS NOT NULL",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await?;
    // The ticket rows first, in id order, as every writer takes a ticket before what hangs off
    // it (clocks, assignments, messages): deleting the children first could deadlock with a
    // stage working on one of the tickets.
    let tickets: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tickets WHERE customer_id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await?;
    let t = erase_tickets(&mut tx, &tickets).await?;
    let emails: Vec<String> = needles
        .iter()
        .filter(|n| n.contains('@'))
        .cloned()
        .collect();
    let conversations: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM chat_conversations WHERE customer_email = ANY($1)")
            .bind(&emails)
            .fetch_all(&mut *tx)
            .await?;
    let chat_sessions = t.chat_sessions + delete_chat_sessions(&mut tx, &conversations).await?;
    sqlx::query("DELETE FROM deliveries WHERE recipient = ANY($1)")
        .bind(&needles)
        .execute(&mut *tx)
        .await?;
    let orders = sqlx::query("DELETE FROM orders WHERE customer_id = ANY($1)")
        .bind(&customers)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let n_customers = delete_customers(&mut tx, &customers).await?;
    sqlx::query(
        "INSERT INTO erasures (id, customer_id, tickets, messages, reason) VALUES ($1, $2, $3, $4, 'request')",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(t.tickets as i64)
    .bind(t.messages as i64)
    .execute(&mut *tx)
    .await?;
    // Everything that can fail goes before the commit: a failure rolls back, and the request
    // can be repeated.
    let raw_mail = raw_mail_naming(blobs, &emails).await?;
    let dead_letter_keys: Vec<String> = raw_mail.iter().map(|k| format!("email:{k}")).collect();
    let target = AnalyticsTarget {
        tickets: &tickets,
        customers: &customers,
        identities: &needles,
        dead_letter_keys: &dead_letter_keys,
    };
    let mut keys = t.keys;
    if let Some(ch) = ch {
        keys.extend(dead_letter_attachments(ch, &target).await?);
        erase_analytics(ch, &target).await?;
    }
    crate::audit::record(
        &mut tx,
        actor,
        crate::audit::Entry {
            action: "customer.erased",
            subject: format!("customer:{id}"),
            ticket_id: None,
            before: None,
            after: Some(serde_json::json!({
                "customers": customers, "tickets": t.tickets, "messages": t.messages,
            })),
        },
    )
    .await?;
    tx.commit().await?;
    let mut raw_mails = 0;
    for key in &raw_mail {
        match blobs.delete_raw_mail(key).await {
            Ok(true) => raw_mails += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(key = key.as_str(), error = %e, "an erased customer's raw mail could not be deleted")
            }
        }
    }
    keys.sort();
    keys.dedup();
    let attachments = remove_unreferenced(pool, blobs, &keys).await?;
    metrics::counter!(crate::telemetry::ERASURES_TOTAL, "reason" => "request").increment(1);
    info!(
        customer_id = %id,
        customers = n_customers,
        tickets = t.tickets,
        messages = t.messages,
        raw_mails,
        "customer erased"
    );
    Ok(Some(Erased {
        customers: n_customers,
        tickets: t.tickets,
        messages: t.messages,
        orders,
        attachments,
        chat_sessions,
        raw_mails,
        analytics: ch.is_some(),
    }))
}

impl RetentionConfig {
    /// How often the job runs (at least a second).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.max(1))
    }
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RetentionReport {
    pub tickets: u64,
    pub messages: u64,
    pub orders: u64,
    /// Orphaned customer rows (merge chains included).
    pub customers: u64,
    pub chat_sessions: u64,
    pub attachments: u64,
    pub raw_mails: u64,
    /// Audit log entries.
    pub audit_entries: u64,
    /// Records of what the team's rules did.
    pub rule_fires: u64,
    /// Finished webhook deliveries and notifications.
    pub ledger_rows: u64,
    /// Transactions committed.
    pub batches: u64,
}

/// Deletes the customers among `candidates` (whole merge chains) left with no ticket and no
/// order; returns the customer rows deleted.
async fn delete_orphans(
    tx: &mut Transaction<'_, Postgres>,
    candidates: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if candidates.is_empty() {
        return Ok(0);
    }
    // Merges move tickets and orders to the survivor, so the candidates that matter are
    // survivors; each with everything merged into it, kept whole while any of it has a ticket
    // or an order.
    let orphans: Vec<Uuid> = sqlx::query_scalar(
        "WITH RECURSIVE family(root, id) AS (
             SELECT id, id FROM customers WHERE id = ANY($1) AND merged_into IS NULL
             UNION SELECT f.root, c.id FROM customers c JOIN family f ON c.merged_into = f.id
         ), busy AS (
             SELECT DISTINCT f.root FROM family f
             WHERE EXISTS (SELECT 1 FROM tickets t WHERE t.customer_id = f.id)
                OR EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = f.id)
         )
         SELECT id FROM family WHERE root NOT IN (SELECT root FROM busy) ORDER BY id",
    )
    .bind(candidates)
    .fetch_all(&mut **tx)
    .await?;
    if orphans.is_empty() {
        return Ok(0);
    }
    // Rows a request is using right now are left for the next pass.
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(&orphans)
    .fetch_all(&mut **tx)
    .await?;
    if locked.len() != orphans.len() {
        return Ok(0);
    }
    delete_customers(tx, &orphans).await
}

/// One retention pass; returns the tickets erased (0 when another instance holds the job).
pub async fn retention_pass(api: &Api, r: RetentionConfig) -> Result<u64, ApiError> {
    let report = run_retention(&api.pool, &api.blobs, api.clickhouse.as_ref(), &r).await?;
    Ok(report.map_or(0, |r| r.tickets))
}

/// One retention pass (see the module docs); `None` when another instance holds the job.
pub async fn run_retention(
    pool: &PgPool,
    blobs: &BlobStore,
    ch: Option<&clickhouse::Client>,
    r: &RetentionConfig,
) -> Result<Option<RetentionReport>, PrivacyError> {
    // One instance at a time, for the whole pass.
    let Some(lock) =
        switchboard_core::db::JobLock::try_acquire(pool, "switchboard:retention").await?
    else {
        return Ok(None);
    };
    let result = retention_batches(pool, blobs, ch, r).await;
    lock.release().await;
    let report = result?;
    if report.tickets
        + report.orders
        + report.customers
        + report.chat_sessions
        + report.raw_mails
        + report.audit_entries
        + report.rule_fires
        + report.ledger_rows
        > 0
    {
        metrics::counter!(crate::telemetry::ERASURES_TOTAL, "reason" => "retention")
            .increment(report.tickets);
        info!(
            tickets = report.tickets,
            messages = report.messages,
            orders = report.orders,
            customers = report.customers,
            chat_sessions = report.chat_sessions,
            raw_mails = report.raw_mails,
            audit_entries = report.audit_entries,
            rule_fires = report.rule_fires,
            ledger_rows = report.ledger_rows,
            batches = report.batches,
            "retention pass done"
        );
    }
    Ok(Some(report))
}

async fn retention_batches(
    pool: &PgPool,
    blobs: &BlobStore,
    ch: Option<&clickhouse::Client>,
    r: &RetentionConfig,
) -> Result<RetentionReport, PrivacyError> {
    let batch = i64::from(r.batch_size.max(1));
    let mut report = RetentionReport::default();
    // Tickets, oldest first.
    loop {
        let mut tx = pool.begin().await?;
        let tickets: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tickets WHERE status IN ('resolved', 'closed')
               AND COALESCE(resolved_at, updated_at) < now() - make_interval(days => $1)
             ORDER BY COALESCE(resolved_at, updated_at) LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(r.closed_tickets_days as i32)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if tickets.is_empty() {
            break;
        }
        let t = erase_tickets(&mut tx, &tickets).await?;
        report.customers += delete_orphans(&mut tx, &t.customers).await?;
        sqlx::query(
            "INSERT INTO erasures (id, customer_id, tickets, messages, reason) VALUES ($1, NULL, $2, $3, 'retention')",
        )
        .bind(Uuid::now_v7())
        .bind(t.tickets as i64)
        .bind(t.messages as i64)
        .execute(&mut *tx)
        .await?;
        // Only when events outlive tickets do a ticket's events need deleting by id.
        if let Some(ch) = ch.filter(|_| r.events_days > r.closed_tickets_days) {
            erase_analytics(
                ch,
                &AnalyticsTarget {
                    tickets: &tickets,
                    ..Default::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        report.tickets += t.tickets;
        report.messages += t.messages;
        report.chat_sessions += t.chat_sessions;
        report.batches += 1;
        report.attachments += remove_unreferenced(pool, blobs, &t.keys).await?;
        if (tickets.len() as i64) < batch {
            break;
        }
    }
    // Orders, and the customers they alone kept.
    loop {
        let mut tx = pool.begin().await?;
        let customers: Vec<Uuid> = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM orders WHERE id IN (
                     SELECT id FROM orders WHERE updated_at < now() - make_interval(days => $1)
                     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING customer_id)
             SELECT customer_id FROM gone",
        )
        .bind(r.orders_days as i32)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let n = customers.len() as i64;
        if n == 0 {
            break;
        }
        let mut candidates = customers;
        candidates.sort();
        candidates.dedup();
        report.customers += delete_orphans(&mut tx, &candidates).await?;
        tx.commit().await?;
        report.orders += n as u64;
        report.batches += 1;
        if n < batch {
            break;
        }
    }
    // Idle chat sessions.
    loop {
        let mut tx = pool.begin().await?;
        let idle: Vec<Uuid> = sqlx::query_scalar(
            "SELECT c.id FROM chat_conversations c
             WHERE c.created_at < now() - make_interval(days => $1)
               AND NOT EXISTS (SELECT 1 FROM chat_log l WHERE l.conversation_id = c.id
                                 AND l.created_at >= now() - make_interval(days => $1))
               AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_key = 'chat:' || c.id::text
                                 AND (t.status IN ('open', 'pending')
                                      OR t.updated_at >= now() - make_interval(days => $1)))
             ORDER BY c.created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(r.chat_session_days as i32)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if idle.is_empty() {
            break;
        }
        let n = delete_chat_sessions(&mut tx, &idle).await?;
        tx.commit().await?;
        report.chat_sessions += n;
        report.batches += 1;
        if (idle.len() as i64) < batch {
            break;
        }
    }
    // The audit log. Its ClickHouse copy not being there (yet) only keeps entries longer.
    match expire_audit(pool, ch, r, batch).await {
        Ok((entries, batches)) => {
            report.audit_entries = entries;
            report.batches += batches;
        }
        Err(e) => warn!(error = %e, "audit log retention skipped"),
    }
    // What the rules did: past the fire budget's window and any redelivery, only history.
    loop {
        let n = sqlx::query(
            "DELETE FROM rule_fires WHERE (rule_id, cause) IN (
                 SELECT rule_id, cause FROM rule_fires WHERE fired_at < now() - make_interval(days => $1) LIMIT $2)",
        )
        .bind(r.rule_fires_days.max(1) as i32)
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        report.rule_fires += n;
        if n == 0 {
            break;
        }
        report.batches += 1;
        if (n as i64) < batch {
            break;
        }
    }
    // Finished webhook deliveries (their attempts go with them) and notifications.
    for sql in [
        "DELETE FROM webhook_deliveries WHERE id IN (
             SELECT id FROM webhook_deliveries WHERE state <> 'pending'
               AND created_at < now() - make_interval(days => $1) LIMIT $2)",
        "DELETE FROM notifications WHERE id IN (
             SELECT id FROM notifications WHERE state <> 'pending'
               AND created_at < now() - make_interval(days => $1) LIMIT $2)",
    ] {
        loop {
            let n = sqlx::query(sql)
                .bind(r.ledgers_days.max(1) as i32)
                .bind(batch)
                .execute(pool)
                .await?
                .rows_affected();
            report.ledger_rows += n;
            if n == 0 {
                break;
            }
            report.batches += 1;
            if (n as i64) < batch {
                break;
            }
        }
    }
    report.raw_mails = expire_raw_mail(blobs, r.deadletter_days).await?;
    if let Some(ch) = ch {
        expire_analytics(ch, r.events_days).await?;
    }
    Ok(report)
}

/// Deletes audit log entries older than `r.audit_days`, `batch` per statement. With ClickHouse,
/// only entries its copy has (older than the newest one exported, less the minute each export
/// pass reads again): the Postgres log is never pruned of what exists nowhere else. Returns the
/// entries and batches.
async fn expire_audit(
    pool: &PgPool,
    ch: Option<&clickhouse::Client>,
    r: &RetentionConfig,
    batch: i64,
) -> Result<(u64, u64), PrivacyError> {
    let mut bound = chrono::Utc::now() - chrono::Duration::days(i64::from(r.audit_days));
    if let Some(ch) = ch {
        let newest_ms: u64 = ch
            .query("SELECT max(at_ms) FROM audit_log")
            .fetch_one()
            .await?;
        let exported =
            chrono::DateTime::from_timestamp_millis(i64::try_from(newest_ms).unwrap_or(i64::MAX))
                .unwrap_or_default()
                - chrono::Duration::seconds(crate::audit_export::OVERLAP_SECS);
        bound = bound.min(exported);
    }
    let (mut entries, mut batches) = (0, 0);
    loop {
        let n = sqlx::query(
            "DELETE FROM audit_log WHERE id IN (
                 SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(bound)
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        if n == 0 {
            break;
        }
        entries += n;
        batches += 1;
        if (n as i64) < batch {
            break;
        }
    }
    Ok((entries, batches))
}

/// Deletes raw dead-lettered mail older than `days`; returns how many.
async fn expire_raw_mail(blobs: &BlobStore, days: u32) -> Result<u64, StorageError> {
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
    let mut removed = 0;
    for mail in blobs.raw_mails().await? {
        if mail.stored_at >= cutoff {
            continue;
        }
        // One that cannot be deleted now is tried again at the next pass; the rest go on.
        match blobs.delete_raw_mail(&mail.key).await {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => warn!(key = mail.key.as_str(), error = %e, "expired raw mail not deleted"),
        }
    }
    Ok(removed)
}

/// Deletes ClickHouse rows older than `days`: one mutation per table, only when something is
/// old enough (a mutation rewrites data parts).
async fn expire_analytics(
    ch: &clickhouse::Client,
    days: u32,
) -> Result<(), clickhouse::error::Error> {
    let cutoff = format!("occurred_at < now() - {}", u64::from(days) * 86_400);
    for table in ["events", "ticket_facts", "predictions"] {
        let old: u64 = ch
            .query(&format!("SELECT count() FROM {table} WHERE {cutoff}"))
            .fetch_one()
            .await?;
        if old > 0 {
            ch.query(&format!("ALTER TABLE {table} DELETE WHERE {cutoff}"))
                .execute()
                .await?;
            info!(table, rows = old, "retention deleted old analytics rows");
        }
    }
    Ok(())
}

/// The retention job: [`run_retention`] every `interval` (the first after one interval) until
/// shutdown, on one instance at a time (an advisory lock).
#[derive(Debug, Clone)]
pub struct RetentionJob {
    pub api: Api,
    pub config: RetentionConfig,
}

impl switchboard_core::runtime::Background for RetentionJob {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        retention_loop(self.api, self.config, shutdown)
    }
}

async fn retention_loop(api: Api, r: RetentionConfig, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(r.interval()) => {}
        }
        if let Err(e) = run_retention(&api.pool, &api.blobs, api.clickhouse.as_ref(), &r).await {
            // Committed batches stay done; the rest is retried.
            warn!(error = %e, "retention pass failed, retrying at the next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_matches_only_whole() {
        let needle = "bo@x.com";
        for yes in [
            "bo@x.com",
            "From: Bo <bo@x.com>",
            "From: BO@X.COM\r\n",
            "to: a@y.org, bo@x.com",
            "write to bo@x.com.",
            "\"bo@x.com\"",
            "(bo@x.com)",
        ] {
            assert!(names_address(yes.as_bytes(), needle), "{yes}");
        }
        for no in [
            "jumbo@x.com",
            "From: jumbo@x.com",
            "bo@x.com.au",
            "bo@x.community",
            "a.bo@x.com",
            "a+bo@x.com",
            "bo@x.co",
            "bo@x-com",
            "",
            "b",
            "\u{e9}bo@x.com",
        ] {
            assert!(!names_address(no.as_bytes(), needle), "{no}");
        }
    }

    #[test]
    fn literals_escape_quotes_backslashes_and_placeholders() {
        assert_eq!(quoted(r"a'b\c?(?i)"), r"'a\'b\\c??(??i)'");
    }

    #[test]
    fn json_needles_are_whole_values() {
        let [plain, nested] = json_needles("Bo@X.com");
        assert_eq!(plain, r#""bo@x.com""#);
        assert_eq!(nested, r#"\"bo@x.com\""#);
        let jumbo = serde_json::json!({"email": "jumbo@x.com"}).to_string();
        assert!(!jumbo.contains(&plain));
        let dl = serde_json::json!({"payload_text": serde_json::json!({"email": "bo@x.com"}).to_string()})
            .to_string();
        assert!(dl.contains(&nested), "{dl}");
    }

    #[test]
    fn the_raw_mail_pattern_escapes_the_address() {
        let p = raw_mail_pattern("a.b+c@x.com");
        assert!(p.contains(r"a\.b\+c\@x\.com"), "{p}");
        assert!(p.starts_with("(?i)"));
        // Non-ASCII passes through unescaped (re2 takes it literally).
        assert!(raw_mail_pattern("j\u{f6}@x.de").contains("j\u{f6}\\@x\\.de"));
    }

    #[test]
    fn headers_end_at_the_first_empty_line() {
        assert_eq!(header_block(b"From: a\r\n\r\nbody bo@x.com"), b"From: a");
        assert_eq!(header_block(b"From: a\n\nbody"), b"From: a");
        assert_eq!(header_block(b"garbage"), b"garbage");
        assert!(!names_address(
            header_block(b"From: a@y.org\r\n\r\nhi bo@x.com"),
            "bo@x.com"
        ));
    }

    #[test]
    fn dead_letter_payloads_name_their_attachments() {
        let key = "ab".repeat(32);
        let inner = format!(r#"{{"payload":{{"attachments":[{{"storage_key":"{key}"}}]}}}}"#);
        let outer = serde_json::json!({"payload_text": inner, "reason": "x"}).to_string();
        assert_eq!(storage_keys_in(&outer), vec![key.clone()]);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &inner);
        let outer = serde_json::json!({"payload_base64": b64}).to_string();
        assert_eq!(storage_keys_in(&outer), vec![key]);
        assert!(storage_keys_in(r#"{"storage_key":"short"}"#).is_empty());
    }

    #[test]
    fn conditions_match_ids_exactly_and_stay_small() {
        let tickets: Vec<Uuid> = (0..4500).map(|_| Uuid::now_v7()).collect();
        let customers = [Uuid::nil()];
        let ids = ["bo@x.com".to_string()];
        let t = AnalyticsTarget {
            tickets: &tickets,
            customers: &customers,
            identities: &ids,
            dead_letter_keys: &[],
        };
        let c = t.conditions();
        assert_eq!(c.len(), 4);
        assert!(c[0].contains(&format!("'\"{}\"'", Uuid::nil())), "{}", c[0]);
        assert!(!c[0].contains("position(payload, 'bo@x.com')"));
        assert!(c.iter().all(|c| c.len() < 200 * 1024));
    }
}
