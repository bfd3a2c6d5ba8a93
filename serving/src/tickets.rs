//! `/v1/tickets`: list a customer's tickets, read one with its messages.
//!
//! Any role reads any ticket (an agent sees a customer's history across tickets; acting on one
//! is limited to the tickets it holds, [`crate::work`]). Survey links in messages are shown
//! redacted: a rating is the customer's alone ([`crate::csat::redact_survey_links`]).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{normalise_email, TicketStatus};
use switchboard_core::http::{ApiError, ApiQuery};
use uuid::Uuid;

use crate::auth::Principal;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tickets", get(list))
        .route("/v1/tickets/{id}", get(get_ticket))
        .route("/v1/attachments/{key}", get(attachment))
}

/// A ticket without its messages.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TicketSummary {
    pub id: Uuid,
    pub number: String,
    pub status: String,
    pub channel: String,
    pub subject: Option<String>,
    pub category: Option<String>,
    pub intent: Option<String>,
    pub priority: String,
    pub sentiment: Option<f32>,
    pub required_skill: Option<String>,
    pub assigned_agent_id: Option<Uuid>,
    pub customer_id: Uuid,
    pub customer_email: Option<String>,
    /// False when the customer is only an unverified chat (the console says "unverified").
    pub customer_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub language: Option<String>,
    pub queue: String,
    pub contact_count: i32,
    pub escalation_reason: Option<String>,
    pub first_response_at: Option<DateTime<Utc>>,
    pub next_due_at: Option<DateTime<Utc>>,
    pub bot_state: Option<String>,
    /// Knowledge-base articles for the agent: `[{article_id, title, similarity, score}]`.
    pub kb_suggestions: serde_json::Value,
    /// Bumped by every agent change; send it back for optimistic concurrency.
    pub version: i32,
    /// Sorted, normalised.
    pub tags: Vec<String>,
    /// The team it is with, if any.
    pub team_id: Option<Uuid>,
    /// Custom field values by key (`GET /v1/fields` says what each is).
    pub fields: serde_json::Value,
    /// The ticket this one was split off (`POST /v1/tickets/{id}/split`).
    pub split_from: Option<Uuid>,
}

/// One SLA clock of a ticket.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SlaClockView {
    pub metric: String,
    pub cycle: i32,
    pub policy: String,
    pub calendar: String,
    pub target_secs: i64,
    pub started_at: DateTime<Utc>,
    pub running: bool,
    pub warn_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub warned_at: Option<DateTime<Utc>>,
    pub breached_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// A routing decision: who got the ticket, and the ranked candidates with their scores (or why
/// each was excluded).
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DecisionView {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub reason: String,
    pub candidates: serde_json::Value,
    pub assigned_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    pub release_reason: Option<String>,
}

/// One message of a ticket.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub channel: String,
    pub direction: String,
    pub external_id: Option<String>,
    pub author: Option<String>,
    /// The agent's name when an agent wrote it (`author` is then its id).
    pub author_name: Option<String>,
    pub text: String,
    pub truncated: bool,
    pub received_at: DateTime<Utc>,
    pub category: Option<String>,
    pub category_confidence: Option<f32>,
    pub intent: Option<String>,
    pub intent_confidence: Option<f32>,
    pub sentiment: Option<f32>,
    pub sentiment_label: Option<String>,
    pub language: Option<String>,
    pub model_versions: Option<serde_json::Value>,
    /// What the channel said about the message (e.g. email Message-ID, recording URL).
    pub metadata: serde_json::Value,
    /// Attachments' metadata; fetch one at `/v1/attachments/{storage_key}`.
    pub attachments: serde_json::Value,
}

/// A ticket with its messages.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketView {
    #[serde(flatten)]
    pub ticket: TicketSummary,
    /// Who holds it, by name (every role sees who to talk to before taking a ticket over).
    pub assigned_agent_name: Option<String>,
    pub messages: Vec<MessageView>,
    pub sla: Vec<SlaClockView>,
    pub assignments: Vec<DecisionView>,
    /// The notes on the customer's profile, newest first.
    pub customer_notes: Vec<crate::customers::CustomerNote>,
    /// Reply drafts for the customer's latest message, from similar solved tickets, filled for
    /// the reader; send the one used as the reply's `draft_id`.
    pub drafts: Vec<crate::drafts::DraftView>,
    /// The customer's churn risk now, with the factors behind it.
    pub churn_risk: switchboard_tickets::churn::Risk,
}

macro_rules! summary_columns {
    () => {
        "t.id, t.number, t.status, t.channel, t.subject, t.category, t.intent, t.priority, t.sentiment,
        t.required_skill, t.assigned_agent_id, t.customer_id, c.email AS customer_email, c.verified AS customer_verified, t.created_at, t.updated_at,
        t.language, t.queue, t.contact_count, t.escalation_reason, t.first_response_at, t.next_due_at, t.bot_state,
        t.kb_suggestions, t.version, t.tags, t.team_id, t.fields, t.split_from"
    };
}

/// The columns of a [`TicketSummary`] (`t`: the ticket, `c`: its customer).
pub(crate) const SUMMARY_COLUMNS: &str = summary_columns!();
pub(crate) const SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM tickets t JOIN customers c ON c.id = t.customer_id"
);

/// `GET /v1/tickets` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub customer_email: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub category: Option<String>,
    pub queue: Option<String>,
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page position: the last ticket's creation time and id (newest first).
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", at.timestamp_micros()))
}

fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let (at, id) = std::str::from_utf8(&raw).ok()?.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(at.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

#[utoipa::path(get, path = "/v1/tickets", operation_id = "list_tickets", tag = "tickets", params(ListQuery), responses((status = 200, description = "{tickets: [TicketSummary], next_cursor}"), (status = 400, description = "a filter is invalid")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    _any_role: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = match q.customer_email {
        Some(e) => Some(normalise_email(&e).ok_or_else(|| {
            ApiError::field("customer_email", format!("{e:?} is not an email address"))
        })?),
        None => None,
    };
    if let Some(s) = &q.status {
        if TicketStatus::parse(s).is_none() {
            return Err(ApiError::field(
                "status",
                format!("{s:?} is not one of open, pending, resolved, closed"),
            ));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "limit must be between 1 and 500"));
    }
    for (field, v) in [
        ("channel", &q.channel),
        ("category", &q.category),
        ("queue", &q.queue),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
            return Err(ApiError::field(field, "1 to 64 characters"));
        }
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::field("cursor", "not a cursor from a previous page"))?,
        ),
    };
    let rows: Vec<TicketSummary> = sqlx::query_as(&format!(
        "{SUMMARY} WHERE ($1::text IS NULL OR c.id = (SELECT customer_id FROM customer_identities WHERE kind = 'email' AND value = $1))
           AND ($2::text IS NULL OR t.status = $2) AND ($4::text IS NULL OR t.channel = $4)
           AND ($5::text IS NULL OR t.category = $5) AND ($6::text IS NULL OR t.queue = $6)
           AND ($7::timestamptz IS NULL OR (t.created_at, t.id) < ($7, $8))
         ORDER BY t.created_at DESC, t.id DESC LIMIT $3"
    ))
    .bind(email)
    .bind(q.status)
    .bind(limit)
    .bind(q.channel)
    .bind(q.category)
    .bind(q.queue)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .fetch_all(&api.pool)
    .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|t| encode_cursor(t.created_at, t.id)))
        .flatten();
    Ok(Json(
        serde_json::json!({ "tickets": rows, "next_cursor": next_cursor }),
    ))
}

#[utoipa::path(get, path = "/v1/tickets/{id}", tag = "tickets", params(("id" = String, Path, description = "ticket id or number T-YYYY-NNNNNN")), responses((status = 200, body = TicketView), (status = 404, description = "no such ticket")), security(("bearer" = [])))]
async fn get_ticket(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<TicketView>, ApiError> {
    // Accept the id or the human number (T-YYYY-NNNNNN).
    let ticket: Option<TicketSummary> = if id.starts_with("T-") {
        sqlx::query_as(&format!("{SUMMARY} WHERE t.number = $1"))
            .bind(&id)
            .fetch_optional(&api.pool)
            .await?
    } else {
        let id = parse_id(&id, "id")?;
        sqlx::query_as(&format!("{SUMMARY} WHERE t.id = $1"))
            .bind(id)
            .fetch_optional(&api.pool)
            .await?
    };
    let ticket = ticket.ok_or_else(|| ApiError::not_found("no such ticket"))?;
    let mut messages: Vec<MessageView> = sqlx::query_as(
        "SELECT m.id, m.channel, m.direction, m.external_id, m.author, a.name AS author_name, m.text, m.truncated,
                m.received_at, m.category, m.category_confidence, m.intent, m.intent_confidence, m.sentiment,
                m.sentiment_label, m.language, m.model_versions, m.metadata, m.attachments
         FROM messages m LEFT JOIN agents a ON m.direction <> 'inbound' AND a.id::text = m.author
         WHERE m.ticket_id = $1 ORDER BY m.received_at, m.id",
    )
    .bind(ticket.id)
    .fetch_all(&api.pool)
    .await?;
    // The survey sent after resolution, and any reply quoting it, never shows its token.
    for m in &mut messages {
        if let std::borrow::Cow::Owned(t) = crate::csat::redact_survey_links(&m.text) {
            m.text = t;
        }
    }
    let sla: Vec<SlaClockView> = sqlx::query_as(
        "SELECT metric, cycle, policy, calendar, target_secs, started_at, running_since IS NOT NULL AS running,
                warn_at, due_at, warned_at, breached_at, stopped_at
         FROM sla_clocks WHERE ticket_id = $1 ORDER BY started_at, metric, cycle",
    )
    .bind(ticket.id)
    .fetch_all(&api.pool)
    .await?;
    let assignments: Vec<DecisionView> = sqlx::query_as(
        "SELECT id, agent_id, reason, candidates, assigned_at, accepted_at, released_at, release_reason
         FROM assignments WHERE ticket_id = $1 ORDER BY assigned_at",
    )
    .bind(ticket.id)
    .fetch_all(&api.pool)
    .await?;
    let customer_notes = crate::customers::notes_of(&api.pool, ticket.customer_id).await?;
    let assigned_agent_name: Option<String> = match ticket.assigned_agent_id {
        Some(a) => {
            sqlx::query_scalar("SELECT name FROM agents WHERE id = $1")
                .bind(a)
                .fetch_optional(&api.pool)
                .await?
        }
        None => None,
    };
    let drafts = crate::drafts::drafts_of(&api.pool, ticket.id, who.agent_id).await?;
    let churn_risk = {
        let mut conn = api.pool.acquire().await?;
        switchboard_tickets::churn::risk_of(
            &mut conn,
            ticket.customer_id,
            switchboard_core::clock::now(),
        )
        .await?
    };
    Ok(Json(TicketView {
        ticket,
        assigned_agent_name,
        messages,
        sla,
        assignments,
        customer_notes,
        drafts,
        churn_risk,
    }))
}

/// `GET /v1/attachments/{key}`: an attachment of a stored message, as a download (never
/// rendered inline, so an HTML attachment cannot run in the agent's page).
#[utoipa::path(get, path = "/v1/attachments/{key}", tag = "tickets", params(("key" = String, Path, description = "the storage key (64 hex digits)")), responses((status = 200, description = "the file, as a download"), (status = 400, description = "not a key"), (status = 404, description = "unknown"), (status = 503, description = "the attachment store cannot be reached")), security(("bearer" = [])))]
async fn attachment(
    State(api): State<Api>,
    _any_role: Principal,
    Path(key): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header;
    use axum::response::IntoResponse as _;
    if !switchboard_core::storage::is_key(&key) {
        return Err(ApiError::field("key", "an attachment key is 64 hex digits"));
    }
    let meta: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT a FROM messages m, jsonb_array_elements(m.attachments) a
         WHERE m.attachments @> jsonb_build_array(jsonb_build_object('storage_key', $1::text))
           AND a->>'storage_key' = $1 LIMIT 1",
    )
    .bind(&key)
    .fetch_optional(&api.pool)
    .await?;
    let meta = meta.ok_or_else(|| ApiError::not_found("no message has this attachment"))?;
    let content = api
        .blobs
        .attachment(&key)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "attachment store unavailable");
            ApiError::unavailable("the attachment store cannot be reached; try again")
        })?
        .ok_or_else(|| ApiError::not_found("the attachment's content is not in the store"))?;
    let content_type = meta
        .get("content_type")
        .and_then(|v| v.as_str())
        .filter(|c| c.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
        .unwrap_or("application/octet-stream")
        .to_string();
    let filename: String = meta
        .get("filename")
        .and_then(|v| v.as_str())
        .unwrap_or("attachment")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' '))
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_LENGTH, content.size.to_string()),
        ],
        axum::body::Body::from_stream(content.chunks),
    )
        .into_response())
}
