//! Each person's notification preferences: `GET/PUT /v1/agents/{id}/notifications` (topics by
//! email and by SMS, the phone number, quiet hours), and `GET
//! /v1/agents/{id}/notifications/history` (what was sent or is waiting, newest first). An agent
//! reads and sets its own; supervisors and admins anyone's. The ingest role's `notifier` reads
//! them (`switchboard_ingest::notify_out`).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::notify::Preferences;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::Principal;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/agents/{id}/notifications", get(read).put(update))
        .route("/v1/agents/{id}/notifications/history", get(history))
}

async fn agent_exists(api: &Api, id: Uuid) -> Result<(), ApiError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(&api.pool)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("no such agent"))
}

#[utoipa::path(get, path = "/v1/agents/{id}/notifications", operation_id = "get_notification_preferences", tag = "agents", params(("id" = Uuid, Path)), responses((status = 200, body = Preferences, description = "the preferences (the defaults until set: email for every topic, no SMS, no quiet hours)"), (status = 403, description = "an agent reads only its own"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn read(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<Preferences>, ApiError> {
    let id = parse_id(&id, "id")?;
    who.require_self_or(id)?;
    agent_exists(&api, id).await?;
    let p: Option<Jsonb<Preferences>> =
        sqlx::query_scalar("SELECT preferences FROM notification_preferences WHERE agent_id = $1")
            .bind(id)
            .fetch_optional(&api.pool)
            .await?;
    Ok(Json(p.map(|p| p.0).unwrap_or_default()))
}

#[utoipa::path(put, path = "/v1/agents/{id}/notifications", operation_id = "set_notification_preferences", tag = "agents", params(("id" = Uuid, Path)), request_body = Preferences, responses((status = 200, body = Preferences), (status = 400, description = "a field is invalid, named (`phone`, `topics[1]`, `quiet_hours.timezone`)"), (status = 403, description = "an agent sets only its own"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(mut prefs): ApiJson<Preferences>,
) -> Result<Json<Preferences>, ApiError> {
    let id = parse_id(&id, "id")?;
    actor.who.require_self_or(id)?;
    prefs.check().map_err(|(f, why)| ApiError::field(f, why))?;
    prefs.topics.sort();
    prefs.topics.dedup();
    agent_exists(&api, id).await?;
    let mut tx = api.pool.begin().await?;
    let before: Option<Jsonb<Preferences>> = sqlx::query_scalar(
        "SELECT preferences FROM notification_preferences WHERE agent_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO notification_preferences (agent_id, preferences, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (agent_id) DO UPDATE SET preferences = $2, updated_at = $3",
    )
    .bind(id)
    .bind(Jsonb(&prefs))
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    let entry = Entry::config(
        "agent.notifications_updated",
        format!("agent:{id}"),
        before.map(|b| b.0),
        Some(&prefs),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(prefs))
}

/// A notification sent, waiting or given up.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct NotificationOut {
    pub id: Uuid,
    /// `email` or `sms`.
    pub channel: String,
    /// `mention`, `rule` or `sla`.
    pub topic: String,
    pub ticket_id: Uuid,
    pub ticket_number: String,
    pub text: String,
    /// `pending` (waiting for its digest window or the end of quiet hours), `sent`, `failed`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    /// Not before this.
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The message it went out in: notifications sharing one went as a digest.
    pub message_id: Option<Uuid>,
    pub last_error: Option<String>,
}

/// How much history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/agents/{id}/notifications/history", operation_id = "notification_history", tag = "agents", params(("id" = Uuid, Path), HistoryQuery), responses((status = 200, body = [NotificationOut], description = "newest first"), (status = 400, description = "`limit` is invalid"), (status = 403, description = "an agent reads only its own"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn history(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<NotificationOut>>, ApiError> {
    let id = parse_id(&id, "id")?;
    who.require_self_or(id)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 200"));
    }
    agent_exists(&api, id).await?;
    let rows: Vec<NotificationOut> = sqlx::query_as(
        "SELECT id, channel, topic, ticket_id, ticket_number, text, state, created_at, due_at, sent_at,
                message_id, last_error
         FROM notifications WHERE agent_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}
