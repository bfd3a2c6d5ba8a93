//! Customers and their orders. The shop's order webhook is a front door of `ingest`
//! (`switchboard_ingest::orders`); the processors' `orders` stage stores the orders read here.
//!
//! - `GET /v1/customers/{id}` and `GET /v1/customers?email=`: the profile (identities across
//!   channels, tier), the customer's tickets on every channel and their orders.
//! - `POST /track {order_number, email}`: self-service order tracking for customers (no token;
//!   rate limited by the caller's setup): the order's status and shipments when the email is the
//!   order's; any mismatch is the same 404 as an unknown order. The order is found by its name
//!   (`#1001`) or its number (`1001`), whichever the shop stored.
//!
//! Any role reads profiles (agents see the customer beside the ticket); erasure is for admins
//! ([`crate::privacy`]).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_contracts::{normalise_email, order_key};
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use uuid::Uuid;

use crate::auth::Principal;
use crate::{parse_id, Api};

/// Routes that need a token.
pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/customers", get(find))
        .route("/v1/customers/{id}", get(profile))
}

/// Routes authenticated otherwise: the customer's own email.
pub(crate) fn public_routes() -> Router<Api> {
    Router::new().route(
        "/track",
        get(|| async { crate::pages::serve("track.html") }).post(track),
    )
}

/// An order as agents and customers see it.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderView {
    pub number: Option<String>,
    pub total_cents: i64,
    pub currency: String,
    pub financial_status: Option<String>,
    pub fulfillment_status: Option<String>,
    pub fulfillments: serde_json::Value,
    pub line_items: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ORDER_COLUMNS: &str = "number, total_cents, currency, financial_status, fulfillment_status, fulfillments, line_items, created_at, updated_at";

/// `GET /v1/customers?email=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FindQuery {
    pub email: String,
}

#[utoipa::path(get, path = "/v1/customers", tag = "customers", params(FindQuery), responses((status = 200, description = "the profile: identities, tickets, orders"), (status = 404, description = "no such customer")), security(("bearer" = [])))]
async fn find(
    State(api): State<Api>,
    _any_role: Principal,
    ApiQuery(q): ApiQuery<FindQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let email = normalise_email(&q.email)
        .ok_or_else(|| ApiError::field("email", "not an email address"))?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "SELECT customer_id FROM customer_identities WHERE kind = 'email' AND value = $1",
    )
    .bind(email)
    .fetch_optional(&api.pool)
    .await?;
    let id = id.ok_or_else(|| ApiError::not_found("no customer with this email"))?;
    profile_of(&api, id).await
}

#[utoipa::path(get, path = "/v1/customers/{id}", tag = "customers", params(("id" = Uuid, Path)), responses((status = 200, description = "the profile: identities, tickets, orders"), (status = 404, description = "no such customer")), security(("bearer" = [])))]
async fn profile(
    State(api): State<Api>,
    _any_role: Principal,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    // A merged customer shows the one it became.
    let id: Uuid =
        sqlx::query_scalar("SELECT COALESCE(merged_into, id) FROM customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&api.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("no such customer"))?;
    profile_of(&api, id).await
}

async fn profile_of(api: &Api, id: Uuid) -> Result<Json<serde_json::Value>, ApiError> {
    let c = sqlx::query(
        "SELECT id, name, tier, created_at, verified, claimed_email FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&api.pool)
    .await?;
    let identities: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, value FROM customer_identities WHERE customer_id = $1 ORDER BY kind, value",
    )
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    let tickets: Vec<TicketLine> = sqlx::query_as(
        "SELECT id, number, channel, status, subject, sentiment, created_at FROM tickets
         WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 100",
    )
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    let orders: Vec<OrderView> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 100"
    ))
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(serde_json::json!({
        "id": id,
        "name": c.try_get::<Option<String>, _>("name")?,
        "tier": c.try_get::<String, _>("tier")?,
        // False: known only from an unsigned chat; `claimed_email` is what its visitor typed.
        "verified": c.try_get::<bool, _>("verified")?,
        "claimed_email": c.try_get::<Option<String>, _>("claimed_email")?,
        "created_at": c.try_get::<DateTime<Utc>, _>("created_at")?,
        "identities": identities.into_iter().map(|(kind, value)| serde_json::json!({"kind": kind, "value": value})).collect::<Vec<_>>(),
        "tickets": tickets,
        "orders": orders,
    })))
}

/// One of a customer's tickets in their profile.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct TicketLine {
    id: Uuid,
    number: String,
    channel: String,
    status: String,
    subject: Option<String>,
    sentiment: Option<f32>,
    created_at: DateTime<Utc>,
}

/// `POST /track` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackRequest {
    /// As the customer sees it: the order's name (`#1001`) or its number (`1001`).
    pub order_number: String,
    pub email: String,
}

#[utoipa::path(post, path = "/track", tag = "self-service", request_body = TrackRequest, responses((status = 200, body = OrderView), (status = 400, description = "a field is invalid, named"), (status = 404, description = "no such order for this email")))]
async fn track(
    State(api): State<Api>,
    ApiJson(req): ApiJson<TrackRequest>,
) -> Result<Json<OrderView>, ApiError> {
    let email = normalise_email(&req.email)
        .ok_or_else(|| ApiError::field("email", "not an email address"))?;
    let number = order_key(&req.order_number).ok_or_else(|| {
        ApiError::field(
            "order_number",
            "the order's name or number (#1001 or 1001): 1 to 64 characters, no control characters",
        )
    })?;
    // The shop's name (`#1001`) and its number (`1001`) are the same order, whichever the
    // customer types and whichever the shop stored.
    let order: Option<OrderView> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders o
         WHERE lower(ltrim(btrim(o.number), '#')) = $1
           AND o.customer_id = (SELECT customer_id FROM customer_identities WHERE kind = 'email' AND value = $2)
         ORDER BY o.created_at DESC LIMIT 1"
    ))
    .bind(&number)
    .bind(&email)
    .fetch_optional(&api.pool)
    .await?;
    // The same answer for an unknown order and someone else's.
    order
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no order with this number for this email"))
}
