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
        .route("/v1/customers/{id}/notes", axum::routing::post(add_note))
        .route(
            "/v1/customers/{id}/notes/{note}",
            axum::routing::delete(remove_note),
        )
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
    /// Switchboard's id of the order (`/v1/orders/{id}`: its actions and returns); not shown to
    /// customers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
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

const ORDER_COLUMNS: &str = "id, number, total_cents, currency, financial_status, fulfillment_status, fulfillments, line_items, created_at, updated_at";

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
        "notes": notes_of(&api.pool, id).await?,
    })))
}

/// A note on a customer's profile.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CustomerNote {
    pub id: Uuid,
    /// Who wrote it: an agent's id, or the token that did.
    pub author: String,
    pub author_name: Option<String>,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// The customer's notes, newest first (the 50 newest).
pub(crate) async fn notes_of(
    pool: &sqlx::PgPool,
    customer: Uuid,
) -> Result<Vec<CustomerNote>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.id, n.author, a.name AS author_name, n.text, n.created_at
         FROM customer_notes n LEFT JOIN agents a ON a.id::text = n.author
         WHERE n.customer_id = (SELECT COALESCE(merged_into, id) FROM customers WHERE id = $1)
         ORDER BY n.created_at DESC, n.id DESC LIMIT 50",
    )
    .bind(customer)
    .fetch_all(pool)
    .await
}

/// A new note on a customer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerNoteInput {
    /// 1 to 4,000 characters.
    pub text: String,
}

#[utoipa::path(post, path = "/v1/customers/{id}/notes", operation_id = "add_customer_note", tag = "customers", params(("id" = Uuid, Path)), request_body = CustomerNoteInput, responses((status = 201, body = CustomerNote), (status = 400, description = "`text` is empty, too long or has control characters"), (status = 404, description = "no such customer")), security(("bearer" = [])))]
async fn add_note(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CustomerNoteInput>,
) -> Result<(axum::http::StatusCode, Json<CustomerNote>), ApiError> {
    let id = parse_id(&id, "id")?;
    let text = input.text.trim();
    if text.is_empty()
        || text.chars().count() > 4_000
        || text.contains(|c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::field(
            "text",
            "1 to 4,000 characters, no control characters",
        ));
    }
    let author = match who.agent_id {
        Some(a) => a.to_string(),
        None => crate::assign::actor(&who),
    };
    // A merged customer's notes go on the one it became.
    let note: Option<CustomerNote> = sqlx::query_as(
        "WITH c AS (SELECT COALESCE(merged_into, id) AS id FROM customers WHERE id = $2),
              n AS (INSERT INTO customer_notes (id, customer_id, author, text, created_at)
                    SELECT $1, c.id, $3, $4, $5 FROM c RETURNING *)
         SELECT n.id, n.author, a.name AS author_name, n.text, n.created_at
         FROM n LEFT JOIN agents a ON a.id::text = n.author",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(&author)
    .bind(text)
    .bind(switchboard_core::clock::now())
    .fetch_optional(&api.pool)
    .await?;
    let note = note.ok_or_else(|| ApiError::not_found("no such customer"))?;
    Ok((axum::http::StatusCode::CREATED, Json(note)))
}

#[utoipa::path(delete, path = "/v1/customers/{id}/notes/{note}", operation_id = "remove_customer_note", tag = "customers", params(("id" = Uuid, Path), ("note" = Uuid, Path)), responses((status = 204, description = "deleted"), (status = 403, description = "someone else's note (supervisors delete any)"), (status = 404, description = "no such note on this customer")), security(("bearer" = [])))]
async fn remove_note(
    State(api): State<Api>,
    who: Principal,
    Path((id, note)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let id = parse_id(&id, "id")?;
    let note = parse_id(&note, "note")?;
    let author: Option<String> = sqlx::query_scalar(
        "SELECT n.author FROM customer_notes n
         WHERE n.id = $1 AND n.customer_id = (SELECT COALESCE(merged_into, id) FROM customers WHERE id = $2)",
    )
    .bind(note)
    .bind(id)
    .fetch_optional(&api.pool)
    .await?;
    let author = author.ok_or_else(|| ApiError::not_found("no such note on this customer"))?;
    let mine = who.agent_id.is_some_and(|a| a.to_string() == author);
    if !mine && who.role < crate::auth::Role::Supervisor {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only its author or a supervisor deletes a note",
        ));
    }
    sqlx::query("DELETE FROM customer_notes WHERE id = $1")
        .bind(note)
        .execute(&api.pool)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
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
        .map(|o| OrderView { id: None, ..o })
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no order with this number for this email"))
}
