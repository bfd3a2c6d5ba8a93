//! Outbound webhooks, managed by admins: `GET/POST /v1/webhooks`, `GET/PUT/DELETE
//! /v1/webhooks/{id}`, `POST /v1/webhooks/{id}/rotate` (a new secret; the old one keeps signing
//! beside it for the overlap), `GET /v1/webhooks/{id}/deliveries` (the ledger: pending,
//! delivered, failed = dead-lettered), `GET /v1/webhooks/{id}/deliveries/{delivery_id}` (with
//! every attempt), `POST .../redeliver`, and `GET /v1/webhooks/event-types`.
//!
//! A subscription names event types (`ticket.<kind>`, `sla.<kind>`, `*`); the ingest role's
//! `webhook_sender` stage signs and delivers them (`switchboard_ingest::webhook_out`). The
//! secret is shown when it is made (create, rotate) and never again. Every change is in the
//! audit log, without the secret.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::webhooks;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::work::conflict;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/webhooks", get(list).post(create))
        .route("/v1/webhooks/event-types", get(event_types))
        .route("/v1/webhooks/{id}", get(read).put(update).delete(remove))
        .route("/v1/webhooks/{id}/rotate", post(rotate))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}", get(delivery))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

/// The most webhooks an installation keeps.
pub const MAX_WEBHOOKS: i64 = 200;

/// A webhook (its secret is shown only when made).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct WebhookOut {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    /// Event types it receives (`*`: all).
    pub events: Vec<String>,
    pub enabled: bool,
    /// Until when the previous secret still signs (a second signature), after a rotation.
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, url, description, events, enabled, previous_expires_at, created_by, created_at, updated_at";

/// A new webhook, with its secret: keep it, it is not shown again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookOut,
    /// `whsec_<base64>`: verify the `webhook-signature` header with it (any Standard Webhooks
    /// library).
    pub secret: String,
}

/// A new or changed webhook.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// `https://...` (`http://` and private addresses only where
    /// `webhooks.allow_private_networks`).
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// `ticket.<kind>`, `sla.warning`, `sla.breached`, `sla.met`, or `*`.
    pub events: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl WebhookInput {
    /// The checked URL and event types.
    fn check(&self, allow_private: bool) -> Result<(String, Vec<String>), ApiError> {
        let url = webhooks::check_url(self.url.trim(), allow_private)
            .map_err(|why| ApiError::field("url", why))?;
        let events = webhooks::check_events(&self.events)
            .map_err(|(i, why)| ApiError::field(format!("events[{i}]"), why))?;
        if self.description.chars().count() > 500 || self.description.chars().any(char::is_control)
        {
            return Err(ApiError::field(
                "description",
                "at most 500 characters, no control characters",
            ));
        }
        Ok((url.to_string(), events))
    }
}

async fn one(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<Option<WebhookOut>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks", responses((status = 200, body = [WebhookOut]), (status = 403, description = "admins only")), security(("bearer" = [])))]
async fn list(State(api): State<Api>, who: Principal) -> Result<Json<Vec<WebhookOut>>, ApiError> {
    who.require(Role::Admin)?;
    let rows: Vec<WebhookOut> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id"
    ))
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}

#[utoipa::path(get, path = "/v1/webhooks/event-types", operation_id = "webhook_event_types", tag = "webhooks", responses((status = 200, body = [String], description = "what a subscription may name (and `*`); `rule.fired` comes from a rule's webhook action")), security(("bearer" = [])))]
async fn event_types(_any: Principal) -> Json<Vec<String>> {
    Json(webhooks::event_types())
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks", params(("id" = Uuid, Path)), responses((status = 200, body = WebhookOut), (status = 403, description = "admins only"), (status = 404, description = "no such webhook")), security(("bearer" = [])))]
async fn read(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<WebhookOut>, ApiError> {
    who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let mut conn = api.pool.acquire().await?;
    Ok(Json(
        one(&mut conn, id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such webhook"))?,
    ))
}

#[utoipa::path(post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks", request_body = WebhookInput, responses((status = 201, body = WebhookCreated, description = "the webhook and its secret (shown this once)"), (status = 400, description = "`url`, `events[i]` or `description` is invalid (a private address while they are not allowed, an unknown event type)"), (status = 403, description = "admins only"), (status = 409, description = "too many webhooks")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<(StatusCode, Json<WebhookCreated>), ApiError> {
    actor.who.require(Role::Admin)?;
    let (url, events) = input.check(api.webhooks.allow_private_networks)?;
    let mut tx = api.pool.begin().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks")
        .fetch_one(&mut *tx)
        .await?;
    if n >= MAX_WEBHOOKS {
        return Err(conflict("url", format!("at most {MAX_WEBHOOKS} webhooks")));
    }
    let id = Uuid::now_v7();
    let secret = webhooks::new_secret();
    let now = switchboard_core::clock::now();
    sqlx::query(
        "INSERT INTO webhooks (id, url, description, events, enabled, secret, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(id)
    .bind(&url)
    .bind(input.description.trim())
    .bind(&events)
    .bind(input.enabled)
    .bind(&secret)
    .bind(crate::assign::actor(&actor.who))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let after = one(&mut tx, id).await?;
    let entry = Entry::config(
        "webhook.created",
        format!("webhook:{id}"),
        None::<()>,
        after.as_ref(),
    );
    audit::commit_with(tx, &actor, entry).await?;
    let webhook = after.ok_or_else(|| ApiError::not_found("no such webhook"))?;
    tracing::info!(webhook_id = %id, events = ?webhook.events, "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated { webhook, secret }),
    ))
}

#[utoipa::path(put, path = "/v1/webhooks/{id}", operation_id = "update_webhook", tag = "webhooks", params(("id" = Uuid, Path)), request_body = WebhookInput, responses((status = 200, body = WebhookOut), (status = 400, description = "`url`, `events[i]` or `description` is invalid"), (status = 403, description = "admins only"), (status = 404, description = "no such webhook")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<Json<WebhookOut>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let (url, events) = input.check(api.webhooks.allow_private_networks)?;
    let mut tx = api.pool.begin().await?;
    let before = one(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such webhook"))?;
    sqlx::query(
        "UPDATE webhooks SET url = $2, description = $3, events = $4, enabled = $5, updated_at = $6
         WHERE id = $1",
    )
    .bind(id)
    .bind(&url)
    .bind(input.description.trim())
    .bind(&events)
    .bind(input.enabled)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    let after = one(&mut tx, id).await?;
    let entry = Entry::config(
        "webhook.updated",
        format!("webhook:{id}"),
        Some(&before),
        after.as_ref(),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(
        after.ok_or_else(|| ApiError::not_found("no such webhook"))?,
    ))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted, with its deliveries"), (status = 403, description = "admins only"), (status = 404, description = "no such webhook")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let before = one(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such webhook"))?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = Entry::config(
        "webhook.deleted",
        format!("webhook:{id}"),
        Some(&before),
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    tracing::info!(webhook_id = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A rotation (`{}` for the defaults): how long the old secret keeps signing beside the new one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// Hours (0 to 168) both secrets sign; default `webhooks.rotation_overlap_hours`. 0: the old
    /// one stops now (a leaked secret).
    #[serde(default)]
    pub overlap_hours: Option<u32>,
}

/// The new secret (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    pub secret: String,
    /// Until when the previous secret still signs.
    pub previous_expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", operation_id = "rotate_webhook_secret", tag = "webhooks", params(("id" = Uuid, Path)), request_body = RotateInput, responses((status = 200, body = Rotated, description = "the new secret; deliveries carry a signature with each secret until the overlap ends"), (status = 400, description = "`overlap_hours` over 168"), (status = 403, description = "admins only"), (status = 404, description = "no such webhook")), security(("bearer" = [])))]
async fn rotate(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RotateInput>,
) -> Result<Json<Rotated>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let hours = input
        .overlap_hours
        .unwrap_or(api.webhooks.rotation_overlap_hours);
    if hours > 168 {
        return Err(ApiError::field("overlap_hours", "at most 168 (a week)"));
    }
    let now = switchboard_core::clock::now();
    let until = now + chrono::Duration::hours(i64::from(hours));
    let secret = webhooks::new_secret();
    let mut tx = api.pool.begin().await?;
    let done = sqlx::query(
        "UPDATE webhooks SET previous_secret = secret, previous_expires_at = $3, secret = $2, updated_at = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(&secret)
    .bind(until)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such webhook"));
    }
    let entry = Entry::config(
        "webhook.secret_rotated",
        format!("webhook:{id}"),
        None::<()>,
        Some(serde_json::json!({ "previous_expires_at": until })),
    );
    audit::commit_with(tx, &actor, entry).await?;
    tracing::info!(webhook_id = %id, overlap_hours = hours, "webhook secret rotated");
    Ok(Json(Rotated {
        secret,
        previous_expires_at: until,
    }))
}

/// One delivery in the ledger.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct DeliveryOut {
    /// The `webhook-id` header the endpoint saw.
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered`, or `failed` (every attempt used: dead-lettered; redeliver it).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    /// The endpoint's last HTTP status (none: no answer).
    pub last_status: Option<i32>,
    /// Why the last attempt failed (the start of the answer, a timeout, a refused connection).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str = "id, event_id, event_type, state, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at";

/// Which deliveries to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed`.
    pub state: Option<String>,
    /// The last id of the previous page (newest first).
    pub before: Option<Uuid>,
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", operation_id = "list_webhook_deliveries", tag = "webhooks", params(("id" = Uuid, Path), DeliveriesQuery), responses((status = 200, body = [DeliveryOut], description = "newest first"), (status = 400, description = "`state` or `limit` is invalid"), (status = 403, description = "admins only"), (status = 404, description = "no such webhook")), security(("bearer" = [])))]
async fn deliveries(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<DeliveryOut>>, ApiError> {
    who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    if let Some(s) = &q.state {
        if !matches!(s.as_str(), "pending" | "delivered" | "failed") {
            return Err(ApiError::field("state", "pending, delivered or failed"));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 200"));
    }
    let mut conn = api.pool.acquire().await?;
    if one(&mut conn, id).await?.is_none() {
        return Err(ApiError::not_found("no such webhook"));
    }
    let rows: Vec<DeliveryOut> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE webhook_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(id)
    .bind(&q.state)
    .bind(q.before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(rows))
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct AttemptOut {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// A delivery with its body and every attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryOut,
    /// The body exactly as signed and sent.
    pub payload: String,
    pub attempt_log: Vec<AttemptOut>,
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries/{delivery_id}", operation_id = "get_webhook_delivery", tag = "webhooks", params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)), responses((status = 200, body = DeliveryDetail), (status = 403, description = "admins only"), (status = 404, description = "no such delivery")), security(("bearer" = [])))]
async fn delivery(
    State(api): State<Api>,
    who: Principal,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let delivery_id = parse_id(&delivery_id, "delivery_id")?;
    #[derive(sqlx::FromRow)]
    struct WithPayload {
        #[sqlx(flatten)]
        delivery: DeliveryOut,
        payload: String,
    }
    let mut conn = api.pool.acquire().await?;
    let d: Option<WithPayload> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS}, payload FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2"
    ))
    .bind(delivery_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let WithPayload {
        delivery: d,
        payload,
    } = d.ok_or_else(|| ApiError::not_found("no such delivery"))?;
    let attempt_log: Vec<AttemptOut> = sqlx::query_as(
        "SELECT attempt, at, status, error, duration_ms FROM webhook_attempts
         WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(DeliveryDetail {
        delivery: d,
        payload,
        attempt_log,
    }))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", operation_id = "redeliver_webhook", tag = "webhooks", params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)), responses((status = 202, body = DeliveryOut, description = "due now, with a fresh set of attempts (the same `webhook-id`: the endpoint can tell it had it)"), (status = 403, description = "admins only"), (status = 404, description = "no such delivery"), (status = 409, description = "`state`: it is still pending")), security(("bearer" = [])))]
async fn redeliver(
    State(api): State<Api>,
    actor: Actor,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryOut>), ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let delivery_id = parse_id(&delivery_id, "delivery_id")?;
    let mut tx = api.pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2 FOR UPDATE",
    )
    .bind(delivery_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    match state.as_deref() {
        None => return Err(ApiError::not_found("no such delivery")),
        Some("pending") => {
            return Err(conflict(
                "state",
                "the delivery is still pending: it will be attempted again",
            ))
        }
        Some(_) => {}
    }
    // A fresh set of attempts; they are numbered on, and the log keeps the earlier ones.
    let d: DeliveryOut = sqlx::query_as(&format!(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $2, delivered_at = NULL,
                attempt_base = attempts
         WHERE id = $1 RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery_id)
    .bind(switchboard_core::clock::now())
    .fetch_one(&mut *tx)
    .await?;
    let entry = Entry::config(
        "webhook.redelivered",
        format!("webhook_delivery:{delivery_id}"),
        None::<()>,
        Some(serde_json::json!({ "webhook_id": id, "event_id": d.event_id })),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}
