//! Orders in: the shop's order webhook, `POST /webhooks/orders` (Shopify-style `orders/create`
//! and `orders/updated`), signed `X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(body))` with
//! `channels.orders.secret`.
//!
//! A bad or missing signature is 401 and nothing is published; a body that is not an order is a
//! 400 naming the field. The order is made storable here (control characters removed from every
//! string, since a shop retries a 5xx for ever; times bounded), becomes an `order_update` on
//! `inbound.orders` keyed by the shop's order id, and is acknowledged (202) once the broker
//! acked it. The processors' `orders` stage stores it for its customer; updates of one order
//! are applied in order and the newest (`updated_at`) wins, so a redelivered or late update
//! changes nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use switchboard_contracts::{
    message_id_for, normalise_email, CustomerRef, Envelope, Fulfillment, LineItem, OrderUpdate,
};
use switchboard_core::config::Secret;
use switchboard_core::http::{parse_json, ApiError, ClientKey, ClientLimit};
use switchboard_core::kafka::Publisher;
use tracing::info;

use crate::IngestConfig;

/// Where the shop posts.
pub const PATH: &str = "/webhooks/orders";

/// The shop's order webhooks: `channels.orders` of pipelines.yaml.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// The webhook signing secret (environment only: `SWITCHBOARD__CHANNELS__ORDERS__SECRET`).
    /// Empty: every order webhook is refused.
    pub secret: Secret,
}

/// The running webhook.
#[derive(Debug, Clone)]
pub struct OrdersSource {
    config: OrdersConfig,
    publisher: Publisher,
    /// The shop's budget, taken by correctly signed calls only.
    limit: ClientLimit,
}

impl OrdersSource {
    /// The webhook with the `orders` rate limit of the `ingest` section.
    pub fn new(config: OrdersConfig, ingest: &IngestConfig, publisher: Publisher) -> Self {
        OrdersSource {
            config,
            publisher,
            limit: ClientLimit::new("orders", ingest.rate_limit("orders")),
        }
    }

    /// The webhook route (no bearer token: the signature authenticates the shop).
    pub fn router(self) -> Router {
        Router::new().route(PATH, post(inbound)).with_state(self)
    }

    /// Checks the signature and turns the body into the event (no I/O).
    pub fn normalise(&self, headers: &HeaderMap, body: &[u8]) -> Result<OrderUpdate, ApiError> {
        let signature = headers
            .get("x-shopify-hmac-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !verify(self.config.secret.expose(), body, signature) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Shopify-Hmac-Sha256 is missing or does not match this body",
            ));
        }
        order_update(parse_order(body)?, switchboard_core::clock::now())
    }
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
    #[serde(default)]
    pub shipping_address: Option<serde_json::Value>,
    /// The shop's comma-separated order tags.
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub cancelled_at: Option<DateTime<Utc>>,
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
    pub fn is_vip(&self) -> bool {
        self.tags
            .as_deref()
            .is_some_and(|t| t.split(',').any(|t| t.trim().eq_ignore_ascii_case("vip")))
    }
}

impl OrderPayload {
    /// The shop's order id as text (a number or a string of 1 to 128 characters).
    pub fn external_id(&self) -> Option<String> {
        match &self.id {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
            _ => None,
        }
    }
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

/// The checked order as the event the stage applies: a 400 naming the field when the order has
/// no usable id, customer email or total.
pub fn order_update(o: OrderPayload, received_at: DateTime<Utc>) -> Result<OrderUpdate, ApiError> {
    let external_id = o
        .external_id()
        .ok_or_else(|| ApiError::field("id", "an order id (number or string)"))?;
    let email = o
        .email
        .as_deref()
        .or_else(|| o.customer.as_ref().and_then(|c| c.email.as_deref()))
        .and_then(normalise_email)
        .ok_or_else(|| ApiError::field("email", "the order has no customer email"))?;
    let total_cents = cents(&o.total_price)
        .ok_or_else(|| ApiError::field("total_price", "a decimal amount like \"129.90\""))?;
    let name = o.customer.as_ref().and_then(|c| {
        let n = [c.first_name.as_deref(), c.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        (!n.trim().is_empty()).then_some(n)
    });
    let updated_at = o.updated_at.or(o.created_at).unwrap_or(received_at);
    Ok(OrderUpdate {
        external_id,
        number: o.name.trim().to_string(),
        customer: CustomerRef {
            email: Some(email),
            name,
            ..Default::default()
        },
        vip: o.customer.as_ref().is_some_and(OrderCustomer::is_vip),
        total_cents,
        currency: o.currency.unwrap_or_else(|| "USD".to_string()),
        financial_status: o.financial_status,
        fulfillment_status: o.fulfillment_status,
        fulfillments: o.fulfillments,
        line_items: o.line_items,
        shipping_address: o.shipping_address.filter(|a| a.is_object()),
        tags: o
            .tags
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_lowercase())
            .filter(|t| !t.is_empty() && t.chars().count() <= 64)
            .take(50)
            .collect(),
        cancelled_at: o.cancelled_at,
        created_at: o.created_at.unwrap_or(updated_at),
        updated_at,
        received_at,
    })
}

#[utoipa::path(post, path = "/webhooks/orders", tag = "channels", request_body(content = Object, description = "a Shopify-style order, signed X-Shopify-Hmac-Sha256"), responses((status = 202, description = "{accepted, order, event_id}: on inbound.orders, stored by the orders stage"), (status = 400, description = "a field that is missing, malformed or not storable (named)"), (status = 401, description = "bad signature"), (status = 429, description = "the shop's budget is spent"), (status = 503, description = "the broker did not acknowledge it: send again")))]
pub(crate) async fn inbound(
    State(source): State<OrdersSource>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let order = match source.normalise(&headers, &body) {
        Ok(o) => o,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => return crate::rejected("orders", e),
        Err(e) => {
            // Correctly signed but not an order: the shop's budget is still taken.
            if let Err(limited) = source.limit.check(ClientKey::Provider("orders")) {
                return limited.into_response();
            }
            return crate::rejected("orders", e);
        }
    };
    if let Err(e) = source.limit.check(ClientKey::Provider("orders")) {
        return e.into_response();
    }
    // One event per version of the order: a redelivered webhook is the same event.
    let id = message_id_for(
        "order",
        Some(&format!(
            "{}\u{1f}{}",
            order.external_id,
            order.updated_at.timestamp_micros()
        )),
    );
    let env = Envelope::new(id, switchboard_core::clock::now(), order);
    match source.publisher.publish(&env).await {
        Ok((partition, offset)) => {
            metrics::counter!(switchboard_core::telemetry::INGEST_ACCEPTED_TOTAL, "source" => "orders")
                .increment(1);
            info!(
                order = env.payload.external_id.as_str(),
                partition, offset, "order webhook accepted"
            );
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "accepted": true, "order": env.payload.external_id, "event_id": env.event_id })),
            )
                .into_response()
        }
        Err(e) => {
            metrics::counter!(crate::telemetry::INGEST_REFUSED_TOTAL, "source" => "orders")
                .increment(1);
            ApiError::unavailable(format!(
                "order not accepted, the broker did not acknowledge it: {e}"
            ))
            .into_response()
        }
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
    fn signatures() {
        let s = sign("shh", b"{}");
        assert!(verify("shh", b"{}", &s));
        assert!(!verify("shh", b"{ }", &s));
        assert!(!verify("other", b"{}", &s));
        assert!(!verify("", b"{}", &sign("", b"{}")));
    }

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

    #[test]
    fn an_order_becomes_its_update_or_a_named_field() {
        let now = Utc::now();
        let body = serde_json::json!({"id": 42, "name": " #1001 ", "email": "Eve@Example.com",
            "customer": {"first_name": "Eve", "last_name": "Ng", "tags": "wholesale, VIP"},
            "total_price": "129.90", "created_at": "2026-11-20T10:00:00Z",
            "fulfillments": [{"tracking_number": "JD1"}], "line_items": [{"title": "Shoes", "quantity": 1}]});
        let o = order_update(parse_order(body.to_string().as_bytes()).unwrap(), now).unwrap();
        assert_eq!(o.external_id, "42");
        assert_eq!(o.number, "#1001");
        assert_eq!(o.customer.email.as_deref(), Some("eve@example.com"));
        assert_eq!(o.customer.name.as_deref(), Some("Eve Ng"));
        assert!(o.vip);
        assert_eq!(o.total_cents, 12990);
        assert_eq!(o.currency, "USD");
        // No updated_at: the creation time is the version.
        assert_eq!(o.updated_at, o.created_at);
        assert_eq!(o.fulfillments[0].tracking_number.as_deref(), Some("JD1"));
        for (field, patch) in [
            ("email", serde_json::json!({"email": null})),
            ("id", serde_json::json!({"id": ""})),
            ("id", serde_json::json!({"id": [1]})),
            ("total_price", serde_json::json!({"total_price": "12,50"})),
        ] {
            let mut bad = body.clone();
            for (k, v) in patch.as_object().unwrap() {
                bad[k] = v.clone();
            }
            let e = parse_order(bad.to_string().as_bytes()).and_then(|o| order_update(o, now));
            assert_eq!(e.unwrap_err().field.as_deref(), Some(field), "{patch}");
        }
    }
}
