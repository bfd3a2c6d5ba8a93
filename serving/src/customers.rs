//! Customers and their orders.
//!
//! - `POST /webhooks/orders`: Shopify-style order webhooks (`orders/create`, `orders/updated`),
//!   signed `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(body))` with `channels.orders.secret`.
//!   Bad or missing signature: 401, nothing stored. The order is stored for its customer (found
//!   or created by email, the same customer as their tickets); a redelivered or older update
//!   changes nothing (`updated_at` decides). 200 after the commit.
//! - `GET /v1/customers/{id}` and `GET /v1/customers?email=`: the profile (identities across
//!   channels, tier), the customer's tickets on every channel and their orders.
//! - `POST /track {order_number, email}`: self-service order tracking for customers (no token;
//!   rate limited by the caller's setup): the order's status and shipments when the email is the
//!   order's; any mismatch is the same 404 as an unknown order. The order is found by its name
//!   (`#1001`) or its number (`1001`), whichever the shop stored.
//!
//! Any role reads profiles (agents see the customer beside the ticket); erasure is for admins
//! ([`crate::privacy`]).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::Row;
use switchboard_contracts::{normalise_email, CustomerRef};
use switchboard_core::http::{parse_json, ApiError, ApiJson, ApiQuery};
use tracing::info;
use uuid::Uuid;

use crate::auth::Principal;
use crate::{parse_id, Api};

/// Routes that need a token.
pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/customers", get(find))
        .route("/v1/customers/{id}", get(profile))
}

/// The shop's order webhook: its signature authenticates it.
pub(crate) fn webhook_routes() -> Router<Api> {
    Router::new().route("/webhooks/orders", post(order_webhook))
}

/// Routes authenticated otherwise: the customer's own email.
pub(crate) fn public_routes() -> Router<Api> {
    Router::new().route(
        "/track",
        get(|| async { crate::pages::serve("track.html") }).post(track),
    )
}

/// The signature of an order webhook body.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    !secret.is_empty() && mac.verify_slice(&expected).is_ok()
}

/// The order as the shop posts it (the fields Switchboard uses; others are ignored).
#[derive(Debug, Deserialize)]
pub struct OrderPayload {
    pub id: serde_json::Value,
    /// The customer-facing number, e.g. `#1001`.
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub customer: Option<OrderCustomer>,
    pub total_price: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub financial_status: Option<String>,
    #[serde(default)]
    pub fulfillment_status: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub fulfillments: Vec<Fulfillment>,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
}

#[derive(Debug, Deserialize)]
pub struct OrderCustomer {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// The shop's comma-separated customer tags; `VIP` makes the customer's tier `vip`
    /// (routing to senior agents, tighter SLA).
    #[serde(default)]
    pub tags: Option<String>,
}

impl OrderCustomer {
    fn is_vip(&self) -> bool {
        self.tags
            .as_deref()
            .is_some_and(|t| t.split(',').any(|t| t.trim().eq_ignore_ascii_case("vip")))
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Fulfillment {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub shipment_status: Option<String>,
    #[serde(default)]
    pub tracking_company: Option<String>,
    #[serde(default)]
    pub tracking_number: Option<String>,
    #[serde(default)]
    pub tracking_url: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct LineItem {
    pub title: String,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub price: Option<String>,
}

/// `"129.90"` -> 12990.
pub fn cents(price: &str) -> Option<i64> {
    let p = price.trim();
    let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(frac)
}

/// An order webhook's body, made storable: control characters Postgres cannot hold (NUL in
/// `text` and `jsonb`) are removed from every string before anything is stored, since a shop
/// retries a 5xx for ever; a time the stores cannot hold, or that would freeze the order (far in
/// the future), is a 400 naming the field.
pub fn parse_order(body: &[u8]) -> Result<OrderPayload, ApiError> {
    let mut raw: serde_json::Value = parse_json(body)?;
    clean_json(&mut raw);
    let cleaned = serde_json::to_vec(&raw)
        .map_err(|e| ApiError::field("body", format!("not storable: {e}")))?;
    let o: OrderPayload = parse_json(&cleaned)?;
    if let Some(t) = o.updated_at.or(o.created_at) {
        if !switchboard_contracts::text::storable_time(t, Utc::now()) {
            return Err(ApiError::field(
                "updated_at",
                "a time between 2000 and tomorrow (a far-future time would freeze the order)",
            ));
        }
    }
    Ok(o)
}

/// Removes control characters from every string of a JSON document (keys included), in place.
/// The document came from `serde_json`, whose recursion limit bounds the depth.
fn clean_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let std::borrow::Cow::Owned(c) = switchboard_contracts::text::clean_line(s) {
                *s = c;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean_json),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| {
                matches!(
                    switchboard_contracts::text::clean_line(k),
                    std::borrow::Cow::Owned(_)
                )
            }) {
                let old = std::mem::take(map);
                for (k, mut value) in old {
                    clean_json(&mut value);
                    map.insert(
                        switchboard_contracts::text::clean_line(&k).into_owned(),
                        value,
                    );
                }
            } else {
                map.values_mut().for_each(clean_json);
            }
        }
        _ => {}
    }
}

#[utoipa::path(post, path = "/webhooks/orders", tag = "customers", request_body(content = Object, description = "a Shopify-style order, signed X-Shopify-Hmac-Sha256"), responses((status = 200, description = "{customer_id, applied}"), (status = 400, description = "a field that is missing, malformed or not storable (named)"), (status = 401, description = "bad signature")))]
async fn order_webhook(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sig = headers
        .get("x-shopify-hmac-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !verify(api.orders_secret.expose(), &body, sig) {
        metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => "orders")
            .increment(1);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "X-Shopify-Hmac-Sha256 is missing or does not match this body",
        ));
    }
    // The shop's budget: taken by correctly signed calls only.
    api.orders_limit
        .check(switchboard_core::http::ClientKey::Provider("orders"))?;
    let o = parse_order(&body)?;
    let external_id = match &o.id {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => s.clone(),
        _ => return Err(ApiError::field("id", "an order id (number or string)")),
    };
    let email = o
        .email
        .as_deref()
        .or_else(|| o.customer.as_ref().and_then(|c| c.email.as_deref()))
        .and_then(normalise_email)
        .ok_or_else(|| ApiError::field("email", "the order has no customer email"))?;
    let total = cents(&o.total_price)
        .ok_or_else(|| ApiError::field("total_price", "a decimal amount like \"129.90\""))?;
    let name = o.customer.as_ref().and_then(|c| {
        let n = [c.first_name.as_deref(), c.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        (!n.trim().is_empty()).then_some(n)
    });
    let updated_at = o.updated_at.or(o.created_at).unwrap_or_else(Utc::now);
    let mut tx = api.pool.begin().await?;
    let (customer_id, _) = switchboard_tickets::customers::resolve(
        &mut tx,
        &CustomerRef {
            email: Some(email),
            name,
            ..Default::default()
        },
        None,
    )
    .await
    .map_err(|e| ApiError::unavailable(format!("customer: {e}")))?;
    if o.customer.as_ref().is_some_and(OrderCustomer::is_vip) {
        sqlx::query("UPDATE customers SET tier = 'vip' WHERE id = $1 AND tier <> 'vip'")
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
    }
    let stored = sqlx::query(
        "INSERT INTO orders (id, customer_id, external_id, number, total_cents, currency, status, financial_status,
                             fulfillment_status, fulfillments, line_items, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (external_id) DO UPDATE SET
             customer_id = EXCLUDED.customer_id, number = EXCLUDED.number, total_cents = EXCLUDED.total_cents,
             currency = EXCLUDED.currency, status = EXCLUDED.status, financial_status = EXCLUDED.financial_status,
             fulfillment_status = EXCLUDED.fulfillment_status, fulfillments = EXCLUDED.fulfillments,
             line_items = EXCLUDED.line_items, updated_at = EXCLUDED.updated_at
           WHERE orders.updated_at < EXCLUDED.updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(&external_id)
    .bind(o.name.trim())
    .bind(total)
    .bind(o.currency.as_deref().unwrap_or("USD"))
    .bind(o.fulfillment_status.as_deref().or(o.financial_status.as_deref()))
    .bind(&o.financial_status)
    .bind(&o.fulfillment_status)
    .bind(sqlx::types::Json(&o.fulfillments))
    .bind(sqlx::types::Json(&o.line_items))
    .bind(o.created_at.unwrap_or(updated_at))
    .bind(updated_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let applied = stored.rows_affected() == 1;
    metrics::counter!(switchboard_core::telemetry::INGEST_ACCEPTED_TOTAL, "source" => "orders")
        .increment(1);
    info!(order = external_id.as_str(), %customer_id, applied, "order webhook");
    Ok(Json(
        serde_json::json!({ "customer_id": customer_id, "applied": applied }),
    ))
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

/// The comparable form of an order number as a customer types it: trimmed, without the shop's
/// leading `#` (and spaces after it), lowercase; none when empty, too long or with control
/// characters.
pub fn order_key(typed: &str) -> Option<String> {
    let t = typed.trim();
    if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
        return None;
    }
    let key = t.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
    (!key.is_empty()).then(|| key.to_lowercase())
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

#[cfg(test)]
mod clean_tests {
    use super::*;

    #[test]
    fn every_string_of_an_order_is_made_storable() {
        let mut v = serde_json::json!({
            "name": "#10\u{0}01",
            "line_items": [{"title": "Tee\u{1b}[31m", "nested": {"k\u{0}": ["a\u{7}b"]}}],
            "total_price": "1.00"
        });
        clean_json(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("\\u0000") && !text.contains("\\u001b") && !text.contains("\\u0007"),
            "{text}"
        );
        assert_eq!(v["line_items"][0]["nested"]["k"][0], "a b");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_in_cents() {
        assert_eq!(cents("129.90"), Some(12990));
        assert_eq!(cents("5"), Some(500));
        assert_eq!(cents("0.5"), Some(50));
        assert_eq!(cents("-1.00"), None);
        assert_eq!(cents("1.005"), None);
        assert_eq!(cents("abc"), None);
    }

    #[test]
    fn order_numbers_as_customers_type_them() {
        for typed in ["#1001", "1001", " # 1001 ", "#1001\u{a0}", "##1001"] {
            assert_eq!(order_key(typed).as_deref(), Some("1001"), "{typed:?}");
        }
        assert_eq!(order_key("#SB-77a").as_deref(), Some("sb-77a"));
        assert_eq!(order_key("№ 5").as_deref(), Some("№ 5"));
        for bad in [
            "",
            "   ",
            "#",
            "# ",
            "10\u{0}01",
            "1001\u{7}",
            &"9".repeat(65),
        ] {
            assert_eq!(order_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn signatures() {
        let s = sign("shh", b"{}");
        assert!(verify("shh", b"{}", &s));
        assert!(!verify("shh", b"{ }", &s));
        assert!(!verify("other", b"{}", &s));
        assert!(!verify("", b"{}", &sign("", b"{}")));
    }
}
