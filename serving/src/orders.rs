//! Order actions from the ticket: cancel, refund (full or part) and change the shipping address,
//! through the shop's Admin API (Shopify's REST shapes: `orders/{id}/cancel.json`,
//! `refunds/calculate.json` then `refunds.json`, `PUT orders/{id}.json`).
//!
//! Every action is a row of `order_actions`, the ledger that makes it idempotent: its id is the
//! `Idempotency-Key` the shop sees, and the caller's `request_key` names it, so a request
//! repeated after a timeout or a 429 continues the same action and never refunds twice. An
//! agent acts on orders of the customer whose ticket it holds, and refunds up to its limit
//! (`shop.refund_limits`, per role and team); above it the action waits for a supervisor
//! (`/v1/order-actions/{id}/approve`). Each step is a `commerce_event`, an audit entry and an
//! internal note on the ticket.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard_contracts::{CommerceEvent, CommerceKind, Envelope};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::returns::{OrderRow, ORDER_ROW};
use tracing::{info, warn};
use uuid::Uuid;

use crate::audit::Actor;
use crate::auth::{forbidden, Principal, Role};
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/orders/{id}", get(detail))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/orders/{id}/refund", post(refund))
        .route("/v1/orders/{id}/address", post(address))
        .route("/v1/orders/{id}/resend", post(resend))
        .route("/v1/order-actions", get(list))
        .route("/v1/order-actions/{id}", get(one))
        .route("/v1/order-actions/{id}/approve", post(approve))
        .route("/v1/order-actions/{id}/reject", post(reject))
}

/// An order action as stored.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderAction {
    pub id: Uuid,
    pub order_id: Uuid,
    pub order_number: String,
    pub ticket_id: Option<Uuid>,
    pub return_id: Option<Uuid>,
    /// `cancel`, `refund`, `address`.
    pub kind: String,
    /// What was asked (reason, restock, the address, the note).
    #[schema(value_type = Object)]
    pub params: sqlx::types::Json<Value>,
    /// The money it moves back to the customer.
    pub amount_cents: Option<i64>,
    pub currency: String,
    /// `awaiting_approval`, `pending` (the shop did not answer yet: repeat the request),
    /// `done`, `failed` (the shop refused: `error`), `rejected` (by a supervisor).
    pub state: String,
    pub requested_by: String,
    pub decided_by: Option<String>,
    pub request_key: String,
    pub attempts: i32,
    pub error: Option<String>,
    /// The shop's answer.
    #[schema(value_type = Object)]
    pub result: Option<sqlx::types::Json<Value>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ACTION_COLUMNS: &str = "a.id, a.order_id, coalesce(o.number, o.external_id) AS order_number, a.ticket_id, a.return_id,
    a.kind, a.params, a.amount_cents, o.currency, a.state, a.requested_by, a.decided_by, a.request_key, a.attempts,
    a.error, a.result, a.created_at, a.updated_at";

/// Who asked, about which ticket, and the key that makes a repeated request the same action.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    /// The ticket the action is for (an agent must hold it; its customer must own the order).
    pub ticket_id: Option<Uuid>,
    /// `customer`, `inventory`, `fraud`, `declined`, `other` (Shopify's reasons).
    #[serde(default)]
    pub reason: Option<String>,
    /// Refund what was paid (default true).
    #[serde(default)]
    pub refund: Option<bool>,
    /// Put the items back in stock (default true).
    #[serde(default)]
    pub restock: Option<bool>,
    /// The same key repeats the same action (1-128 characters; default: a new action).
    #[serde(default)]
    pub request_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    pub ticket_id: Option<Uuid>,
    /// In the order's currency's cents; none: everything still refundable.
    #[serde(default)]
    pub amount_cents: Option<i64>,
    /// Shown to the customer by the shop (up to 500 characters).
    #[serde(default)]
    pub note: Option<String>,
    /// The return this refund settles (it becomes `refunded` when the refund is done).
    #[serde(default)]
    pub return_id: Option<Uuid>,
    #[serde(default)]
    pub request_key: Option<String>,
}

/// A shipping address (Shopify's fields).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default)]
    pub name: Option<String>,
    pub address1: String,
    #[serde(default)]
    pub address2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub province: Option<String>,
    pub zip: String,
    /// The country's name or ISO code.
    pub country: String,
    #[serde(default)]
    pub phone: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub ticket_id: Option<Uuid>,
    pub shipping_address: Address,
    #[serde(default)]
    pub request_key: Option<String>,
}

/// A replacement shipment: a new order at the shop for what was lost, damaged or missing, at no
/// charge, to the order's shipping address.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendInput {
    pub ticket_id: Option<Uuid>,
    /// The lines to send again and how many of each; none: every line, as ordered.
    #[serde(default)]
    pub items: Option<Vec<switchboard_tickets::returns::Requested>>,
    /// Why (on the new order's note; up to 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub request_key: Option<String>,
}

/// A supervisor's rejection.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectInput {
    pub reason: String,
}

/// `GET /v1/order-actions` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActionsQuery {
    /// One state, e.g. `awaiting_approval`.
    pub state: Option<String>,
    pub order: Option<Uuid>,
    pub ticket: Option<Uuid>,
}

/// An order with what was done about it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderDetail {
    pub id: Uuid,
    pub external_id: String,
    pub number: String,
    pub customer_id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub financial_status: Option<String>,
    pub fulfillment_status: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub shipping_address: Option<Value>,
    #[schema(value_type = Object)]
    pub fulfillments: Value,
    #[schema(value_type = Object)]
    pub line_items: Value,
    pub created_at: DateTime<Utc>,
    pub actions: Vec<OrderAction>,
    pub returns: Vec<switchboard_tickets::returns::Return>,
}

fn text_field(v: Option<&str>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let v = v.trim();
    if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::field(
            field,
            format!("at most {max} characters, no control characters"),
        ));
    }
    Ok((!v.is_empty()).then(|| v.to_string()))
}

fn request_key(k: Option<&str>) -> Result<String, ApiError> {
    match k {
        None => Ok(Uuid::now_v7().to_string()),
        Some(k) if (1..=128).contains(&k.len()) && k.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(k.to_string())
        }
        Some(_) => Err(ApiError::field(
            "request_key",
            "1 to 128 printable ASCII characters",
        )),
    }
}

async fn order_row(api: &Api, id: Uuid) -> Result<OrderRow, ApiError> {
    sqlx::query_as(&format!("SELECT {ORDER_ROW} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("no such order"))
}

/// An agent acts only through a ticket it holds whose customer owns the order; a supervisor on
/// any order (the ticket, when named, must be that customer's).
async fn may_act(
    api: &Api,
    who: &Principal,
    order: &OrderRow,
    ticket: Option<Uuid>,
) -> Result<(), ApiError> {
    match ticket {
        Some(t) => {
            who.may_act_on_ticket(&api.pool, t).await?;
            let owner: Option<Uuid> =
                sqlx::query_scalar("SELECT customer_id FROM tickets WHERE id = $1")
                    .bind(t)
                    .fetch_optional(&api.pool)
                    .await?;
            if owner != Some(order.customer_id) {
                return Err(ApiError::field(
                    "ticket_id",
                    "the ticket's customer did not place this order",
                ));
            }
            Ok(())
        }
        None if who.role >= Role::Supervisor => Ok(()),
        None => Err(ApiError::field(
            "ticket_id",
            "an agent acts on an order through a ticket it holds",
        )),
    }
}

/// The order a person acts on (`id` from the path), once they may; and them as the requester.
async fn acting_on(
    api: &Api,
    who: &Principal,
    id: &str,
    ticket: Option<Uuid>,
) -> Result<(OrderRow, Requester), ApiError> {
    let order = order_row(api, parse_id(id, "id")?).await?;
    may_act(api, who, &order, ticket).await?;
    Ok((order, Requester::person(api, who).await?))
}

/// Who asks for an order action: a person, or one of the team's rules; and the most it may
/// refund (or give away in a replacement) without a supervisor's approval (none: no limit).
#[derive(Debug, Clone)]
pub(crate) struct Requester {
    name: String,
    limit: Option<i64>,
    change: switchboard_core::db::ChangeActor,
}

impl Requester {
    async fn person(api: &Api, who: &Principal) -> Result<Requester, ApiError> {
        Ok(Requester {
            name: who.name(),
            limit: refund_limit(api, who).await?,
            change: who.change_actor(),
        })
    }

    /// A rule (`rule:<id>`), with `shop.refund_limits.rules_cents`.
    fn rule(api: &Api, rule_id: Uuid) -> Requester {
        let name = format!("rule:{rule_id}");
        Requester {
            limit: Some(api.shop.refund_limits.rules_cents),
            change: switchboard_core::db::ChangeActor {
                name: name.clone(),
                role: "system".into(),
                person: false,
            },
            name,
        }
    }
}

/// The most `who` may refund without approval (none: no limit).
async fn refund_limit(api: &Api, who: &Principal) -> Result<Option<i64>, ApiError> {
    let limits = &api.shop.refund_limits;
    Ok(match who.role {
        Role::Admin => None,
        Role::Supervisor => limits.supervisor_cents,
        Role::Agent => {
            let teams: Vec<String> = match who.agent_id {
                Some(a) => {
                    sqlx::query_scalar(
                        "SELECT t.name FROM teams t JOIN team_members m ON m.team_id = t.id WHERE m.agent_id = $1",
                    )
                    .bind(a)
                    .fetch_all(&api.pool)
                    .await?
                }
                None => Vec::new(),
            };
            Some(limits.for_agent(teams.iter().map(String::as_str)))
        }
    })
}

/// What actions on the order have refunded, or may yet (done, pending, awaiting approval),
/// leaving out `except`; only `by` (a caller's name) when given.
async fn committed_cents(
    conn: &mut sqlx::PgConnection,
    order: Uuid,
    by: Option<&str>,
    except: Option<Uuid>,
) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(amount_cents)::bigint FROM order_actions
          WHERE order_id = $1 AND state IN ('done', 'pending', 'awaiting_approval') AND amount_cents IS NOT NULL
            AND ($2::text IS NULL OR requested_by = $2) AND ($3::uuid IS NULL OR id <> $3)",
    )
    .bind(order)
    .bind(by)
    .bind(except)
    .fetch_one(conn)
    .await?
    .unwrap_or(0))
}

/// A request whose `request_key` names an action already asked for: that action as it stands
/// (a pending one runs again), before anything about the request is checked again.
async fn by_key(
    api: &Api,
    actor: &Actor,
    key: Option<&str>,
    order: Uuid,
    kind: &str,
) -> Result<Option<(StatusCode, Json<OrderAction>)>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let existing: Option<(Uuid, String, Uuid, String)> = sqlx::query_as(
        "SELECT id, state, order_id, kind FROM order_actions WHERE request_key = $1",
    )
    .bind(key)
    .fetch_optional(&api.pool)
    .await?;
    let Some((id, state, of, k)) = existing else {
        return Ok(None);
    };
    if of != order || k != kind {
        return Err(ApiError::field("request_key", "names another action"));
    }
    Ok(Some(match state.as_str() {
        "pending" => execute(api, actor, id).await?,
        "awaiting_approval" => (StatusCode::ACCEPTED, Json(action(api, id).await?)),
        "done" => (StatusCode::OK, Json(action(api, id).await?)),
        "failed" => {
            let a = action(api, id).await?;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "shop_refused",
                format!(
                    "the shop refused: {} (action {id})",
                    a.error.unwrap_or_default()
                ),
            ));
        }
        _ => {
            return Err(crate::work::conflict(
                "request_key",
                "a supervisor rejected this action",
            ))
        }
    }))
}

/// The money an action moves back.
#[derive(Debug, Clone, Copy)]
enum Amount {
    None,
    /// Everything still left to refund.
    Rest,
    Exact(i64),
}

struct NewAction {
    kind: &'static str,
    ticket_id: Option<Uuid>,
    return_id: Option<Uuid>,
    params: Value,
    amount: Amount,
    request_key: String,
}

#[utoipa::path(get, path = "/v1/orders/{id}", operation_id = "read_order", tag = "orders", params(("id" = Uuid, Path)), responses((status = 200, body = OrderDetail), (status = 400, description = "a malformed id"), (status = 404, description = "no such order")), security(("bearer" = [])))]
async fn detail(
    State(api): State<Api>,
    _who: Principal,
    Path(id): Path<String>,
) -> Result<Json<OrderDetail>, ApiError> {
    let id = parse_id(&id, "id")?;
    let o = order_row(&api, id).await?;
    let extra: (Option<Value>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT shipping_address, financial_status, fulfillment_status FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&api.pool)
    .await?;
    let actions: Vec<OrderAction> = sqlx::query_as(&format!(
        "SELECT {ACTION_COLUMNS} FROM order_actions a JOIN orders o ON o.id = a.order_id WHERE a.order_id = $1 ORDER BY a.created_at"
    ))
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    let returns = sqlx::query_as(&format!(
        "SELECT {} FROM returns r JOIN orders o ON o.id = r.order_id WHERE r.order_id = $1 ORDER BY r.created_at",
        switchboard_tickets::returns::RETURN_COLUMNS
    ))
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(OrderDetail {
        id: o.id,
        external_id: o.external_id,
        number: o.number,
        customer_id: o.customer_id,
        total_cents: o.total_cents,
        currency: o.currency,
        financial_status: extra.1,
        fulfillment_status: extra.2,
        cancelled_at: o.cancelled_at,
        tags: o.tags,
        shipping_address: extra.0,
        fulfillments: serde_json::to_value(&o.fulfillments.0).unwrap_or(Value::Null),
        line_items: serde_json::to_value(&o.line_items.0).unwrap_or(Value::Null),
        created_at: o.created_at,
        actions,
        returns,
    }))
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", operation_id = "cancel_order", tag = "orders", params(("id" = Uuid, Path)), request_body = CancelInput, responses((status = 200, body = OrderAction, description = "done at the shop"), (status = 202, body = OrderAction, description = "waits for a supervisor (the refund is above the caller's limit)"), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such order"), (status = 409, description = "no Admin API configured, the order is already cancelled, or the action is running"), (status = 422, description = "the shop refused (its reason)"), (status = 503, description = "the shop did not answer: repeat with the same request_key")), security(("bearer" = [])))]
async fn cancel(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CancelInput>,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    let (order, by) = acting_on(&api, &who, &id, input.ticket_id).await?;
    request_cancel(&api, &by, &actor, &order, input).await
}

/// Asks for a cancel of `order` on behalf of `by` (a person or a rule).
async fn request_cancel(
    api: &Api,
    by: &Requester,
    actor: &Actor,
    order: &OrderRow,
    input: CancelInput,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    if let Some(done) = by_key(api, actor, input.request_key.as_deref(), order.id, "cancel").await?
    {
        return Ok(done);
    }
    let reason = input.reason.as_deref().unwrap_or("customer");
    if !["customer", "inventory", "fraud", "declined", "other"].contains(&reason) {
        return Err(ApiError::field(
            "reason",
            "customer, inventory, fraud, declined or other",
        ));
    }
    if order.cancelled_at.is_some() {
        return Err(crate::work::conflict(
            "id",
            "the order is already cancelled",
        ));
    }
    let refund = input.refund.unwrap_or(true);
    let action = NewAction {
        kind: "cancel",
        ticket_id: input.ticket_id,
        return_id: None,
        params: json!({"reason": reason, "refund": refund, "restock": input.restock.unwrap_or(true)}),
        // What is left to refund, counted under the order's lock.
        amount: if refund { Amount::Rest } else { Amount::None },
        request_key: request_key(input.request_key.as_deref())?,
    };
    run(api, by, actor, order, action).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/refund", operation_id = "refund_order", tag = "orders", params(("id" = Uuid, Path)), request_body = RefundInput, responses((status = 200, body = OrderAction, description = "done at the shop"), (status = 202, body = OrderAction, description = "waits for a supervisor (above the caller's limit)"), (status = 400, description = "a field is invalid, named (amount_cents above what is left to refund)"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such order"), (status = 409, description = "no Admin API configured, or the action is running"), (status = 422, description = "the shop refused (its reason)"), (status = 503, description = "the shop did not answer: repeat with the same request_key")), security(("bearer" = [])))]
async fn refund(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RefundInput>,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    let (order, by) = acting_on(&api, &who, &id, input.ticket_id).await?;
    request_refund(&api, &by, &actor, &order, input).await
}

/// Asks for a refund of `order` on behalf of `by` (a person or a rule).
async fn request_refund(
    api: &Api,
    by: &Requester,
    actor: &Actor,
    order: &OrderRow,
    input: RefundInput,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    if let Some(done) = by_key(api, actor, input.request_key.as_deref(), order.id, "refund").await?
    {
        return Ok(done);
    }
    let note = text_field(input.note.as_deref(), "note", 500)?;
    if input.amount_cents.is_some_and(|a| a < 1) {
        return Err(ApiError::field("amount_cents", "at least 1"));
    }
    let action = NewAction {
        kind: "refund",
        ticket_id: input.ticket_id,
        return_id: input.return_id,
        params: json!({"note": note}),
        amount: input.amount_cents.map_or(Amount::Rest, Amount::Exact),
        request_key: request_key(input.request_key.as_deref())?,
    };
    run(api, by, actor, order, action).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/address", operation_id = "change_order_address", tag = "orders", params(("id" = Uuid, Path)), request_body = AddressInput, responses((status = 200, body = OrderAction, description = "done at the shop"), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such order"), (status = 409, description = "no Admin API configured, the order has shipped, or the action is running"), (status = 422, description = "the shop refused (its reason)"), (status = 503, description = "the shop did not answer: repeat with the same request_key")), security(("bearer" = [])))]
async fn address(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<AddressInput>,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    let (order, by) = acting_on(&api, &who, &id, input.ticket_id).await?;
    request_address(&api, &by, &actor, &order, input).await
}

/// Asks for a address of `order` on behalf of `by` (a person or a rule).
async fn request_address(
    api: &Api,
    by: &Requester,
    actor: &Actor,
    order: &OrderRow,
    input: AddressInput,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    if let Some(done) = by_key(
        api,
        actor,
        input.request_key.as_deref(),
        order.id,
        "address",
    )
    .await?
    {
        return Ok(done);
    }
    let a = &input.shipping_address;
    for (field, value, max) in [
        ("shipping_address.address1", Some(a.address1.as_str()), 255),
        ("shipping_address.city", Some(a.city.as_str()), 255),
        ("shipping_address.zip", Some(a.zip.as_str()), 32),
        ("shipping_address.country", Some(a.country.as_str()), 64),
        ("shipping_address.address2", a.address2.as_deref(), 255),
        ("shipping_address.name", a.name.as_deref(), 255),
        ("shipping_address.province", a.province.as_deref(), 255),
        ("shipping_address.phone", a.phone.as_deref(), 32),
    ] {
        let v = text_field(value, field, max)?;
        if v.is_none()
            && value.is_some()
            && !field.ends_with("address2")
            && !field.ends_with("name")
            && !field.ends_with("province")
            && !field.ends_with("phone")
        {
            return Err(ApiError::field(field, "required"));
        }
    }
    if order
        .fulfillment_status
        .as_deref()
        .is_some_and(|s| s == "fulfilled" || s == "partial")
        || !order.fulfillments.is_empty()
    {
        return Err(crate::work::conflict(
            "id",
            "the order has shipped: its address can no longer change",
        ));
    }
    let action = NewAction {
        kind: "address",
        ticket_id: input.ticket_id,
        return_id: None,
        params: json!({"shipping_address": a}),
        amount: Amount::None,
        request_key: request_key(input.request_key.as_deref())?,
    };
    run(api, by, actor, order, action).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/resend", operation_id = "resend_order", tag = "orders", params(("id" = Uuid, Path)), request_body = ResendInput, responses((status = 200, body = OrderAction, description = "done at the shop: the replacement order is in `result.order`"), (status = 400, description = "a field is invalid, named (a line the order does not have, a quantity above what was ordered)"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such order"), (status = 409, description = "no Admin API configured, the order was cancelled, or the action is running"), (status = 422, description = "the shop refused (its reason)"), (status = 503, description = "the shop did not answer: repeat with the same request_key")), security(("bearer" = [])))]
async fn resend(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ResendInput>,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    let (order, by) = acting_on(&api, &who, &id, input.ticket_id).await?;
    request_resend(&api, &by, &actor, &order, input).await
}

/// Asks for a resend of `order` on behalf of `by` (a person or a rule).
async fn request_resend(
    api: &Api,
    by: &Requester,
    actor: &Actor,
    order: &OrderRow,
    input: ResendInput,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    if let Some(done) = by_key(api, actor, input.request_key.as_deref(), order.id, "resend").await?
    {
        return Ok(done);
    }
    let reason = text_field(input.reason.as_deref(), "reason", 500)?;
    if order.cancelled_at.is_some() {
        return Err(crate::work::conflict(
            "id",
            "the order was cancelled: there is nothing to send again",
        ));
    }
    if order.fulfillments.is_empty()
        && !order
            .fulfillment_status
            .as_deref()
            .is_some_and(|s| s == "fulfilled" || s == "partial")
    {
        return Err(crate::work::conflict(
            "id",
            "the order has not shipped: there is nothing to send again",
        ));
    }
    // What earlier replacements of this order already sent (or are sending) counts against
    // what was ordered: asking again sends no more than the order held.
    let sent: Vec<(String, i64)> = sqlx::query_as(
        "SELECT it->>'line_item_id', sum((it->>'quantity')::bigint)::bigint
           FROM order_actions a, jsonb_array_elements(a.params->'items') it
          WHERE a.order_id = $1 AND a.kind = 'resend' AND a.state IN ('pending', 'done', 'awaiting_approval')
          GROUP BY 1",
    )
    .bind(order.id)
    .fetch_all(&api.pool)
    .await?;
    let items = resend_items(order, input.items.as_deref(), &sent)?;
    // What the replacement gives away, at the order's prices: it counts against the caller's
    // limit as a refund does (a line without a readable price counts as above any limit).
    let value_cents = replacement_value(order, &items);
    let (email, address): (Option<String>, Option<Value>) = sqlx::query_as(
        "SELECT (SELECT value FROM customer_identities WHERE customer_id = o.customer_id AND kind = 'email' ORDER BY value LIMIT 1),
                o.shipping_address
           FROM orders o WHERE o.id = $1",
    )
    .bind(order.id)
    .fetch_one(&api.pool)
    .await?;
    let Some(email) = email else {
        return Err(crate::work::conflict(
            "id",
            "the order's customer has no email for the replacement order",
        ));
    };
    let Some(address) = address.filter(|a| a.is_object()) else {
        return Err(crate::work::conflict(
            "id",
            "the order has no shipping address to send a replacement to",
        ));
    };
    let action = NewAction {
        kind: "resend",
        ticket_id: input.ticket_id,
        return_id: None,
        params: json!({"items": items, "reason": reason, "email": email, "shipping_address": address,
                       "value_cents": value_cents}),
        amount: Amount::None,
        request_key: request_key(input.request_key.as_deref())?,
    };
    run(api, by, actor, order, action).await
}

/// What the lines of a replacement are worth at the order's prices; none when a line has no
/// readable price (its value is unknown, so only someone without a limit sends it unasked).
fn replacement_value(order: &OrderRow, items: &[Value]) -> Option<i64> {
    items.iter().try_fold(0i64, |sum, it| {
        let line = order
            .line_items
            .iter()
            .find(|l| l.id.as_deref() == it["line_item_id"].as_str())?;
        let price = switchboard_tickets::returns::price_cents(line.price.as_deref())?;
        price
            .checked_mul(it["quantity"].as_i64()?)
            .and_then(|v| sum.checked_add(v))
    })
}

/// What `who`'s replacements of the order are worth (done, pending or awaiting approval),
/// leaving out `except`; none when one has no known value.
async fn replaced_cents(
    conn: &mut sqlx::PgConnection,
    order: Uuid,
    by: &str,
    except: Option<Uuid>,
) -> Result<Option<i64>, ApiError> {
    let values: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT (params->>'value_cents')::bigint FROM order_actions
          WHERE order_id = $1 AND kind = 'resend' AND state IN ('done', 'pending', 'awaiting_approval')
            AND requested_by = $2 AND ($3::uuid IS NULL OR id <> $3)",
    )
    .bind(order)
    .bind(by)
    .bind(except)
    .fetch_all(conn)
    .await?;
    Ok(values
        .into_iter()
        .try_fold(0i64, |sum, v| v.and_then(|v| sum.checked_add(v))))
}

/// The lines a replacement carries: those asked for (each a line of the order, once, at most
/// as many as were ordered less what earlier replacements sent), else every line still left.
fn resend_items(
    order: &OrderRow,
    asked: Option<&[switchboard_tickets::returns::Requested]>,
    sent: &[(String, i64)],
) -> Result<Vec<Value>, ApiError> {
    let line = |l: &switchboard_contracts::LineItem, q: i64| json!({"line_item_id": l.id, "title": l.title, "sku": l.sku, "quantity": q});
    let left = |l: &switchboard_contracts::LineItem| {
        let before: i64 = sent
            .iter()
            .filter(|(id, _)| Some(id.as_str()) == l.id.as_deref())
            .map(|(_, q)| *q)
            .sum();
        l.quantity.unwrap_or(1).max(1) - before
    };
    let Some(asked) = asked else {
        let all: Vec<Value> = order
            .line_items
            .iter()
            .filter(|l| l.id.is_some() && left(l) > 0)
            .map(|l| line(l, left(l)))
            .collect();
        if all.is_empty() {
            return Err(ApiError::field(
                "items",
                "nothing left to send again: every line was sent again already",
            ));
        }
        return Ok(all);
    };
    if asked.is_empty() || asked.len() > 100 {
        return Err(ApiError::field("items", "1 to 100 lines"));
    }
    let mut seen = std::collections::HashSet::new();
    asked
        .iter()
        .map(|r| {
            let l = order
                .line_items
                .iter()
                .find(|l| l.id.as_deref() == Some(r.line_item_id.as_str()))
                .ok_or_else(|| {
                    ApiError::field(
                        "items",
                        format!(
                            "the order has no line {:?}",
                            r.line_item_id.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
            if !seen.insert(r.line_item_id.as_str()) {
                return Err(ApiError::field("items", "a line is named twice"));
            }
            let most = left(l);
            if most < 1 {
                return Err(ApiError::field(
                    "items",
                    format!("{}: every one ordered was sent again already", l.title),
                ));
            }
            if r.quantity < 1 || r.quantity > most {
                return Err(ApiError::field(
                    "items",
                    format!("{}: between 1 and {most}", l.title),
                ));
            }
            Ok(line(l, r.quantity))
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/order-actions", operation_id = "list_order_actions", tag = "orders", params(ActionsQuery), responses((status = 200, body = Vec<OrderAction>), (status = 400, description = "a query field is invalid, named"), (status = 403, description = "an agent without a ticket filter")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    who: Principal,
    Query(q): Query<ActionsQuery>,
) -> Result<Json<Vec<OrderAction>>, ApiError> {
    if let Some(s) = &q.state {
        if !["awaiting_approval", "pending", "done", "failed", "rejected"].contains(&s.as_str()) {
            return Err(ApiError::field(
                "state",
                "awaiting_approval, pending, done, failed or rejected",
            ));
        }
    }
    match q.ticket {
        Some(t) => who.may_act_on_ticket(&api.pool, t).await?,
        None => who.require(Role::Supervisor)?,
    }
    let rows = sqlx::query_as(&format!(
        "SELECT {ACTION_COLUMNS} FROM order_actions a JOIN orders o ON o.id = a.order_id
          WHERE ($1::text IS NULL OR a.state = $1) AND ($2::uuid IS NULL OR a.order_id = $2)
            AND ($3::uuid IS NULL OR a.ticket_id = $3)
          ORDER BY a.created_at DESC LIMIT 200"
    ))
    .bind(&q.state)
    .bind(q.order)
    .bind(q.ticket)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}

async fn action(api: &Api, id: Uuid) -> Result<OrderAction, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {ACTION_COLUMNS} FROM order_actions a JOIN orders o ON o.id = a.order_id WHERE a.id = $1"
    ))
    .bind(id)
    .fetch_optional(&api.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("no such order action"))
}

#[utoipa::path(get, path = "/v1/order-actions/{id}", operation_id = "read_order_action", tag = "orders", params(("id" = Uuid, Path)), responses((status = 200, body = OrderAction), (status = 400, description = "a malformed id"), (status = 403, description = "an agent on another's action"), (status = 404, description = "no such order action")), security(("bearer" = [])))]
async fn one(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<OrderAction>, ApiError> {
    let a = action(&api, parse_id(&id, "id")?).await?;
    if who.role < Role::Supervisor && a.requested_by != who.name() {
        return Err(forbidden("an agent sees the actions it asked for"));
    }
    Ok(Json(a))
}

#[utoipa::path(post, path = "/v1/order-actions/{id}/approve", operation_id = "approve_order_action", tag = "orders", params(("id" = Uuid, Path)), responses((status = 200, body = OrderAction, description = "approved and done at the shop"), (status = 400, description = "a malformed id"), (status = 403, description = "not a supervisor, or above the supervisor's own limit"), (status = 404, description = "no such order action"), (status = 409, description = "the action is not awaiting approval"), (status = 422, description = "the shop refused (its reason)"), (status = 503, description = "the shop did not answer: approve again")), security(("bearer" = [])))]
async fn approve(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let a = action(&api, id).await?;
    let limit = refund_limit(&api, &who).await?;
    if let (Some(limit), Some(amount)) = (limit, a.amount_cents) {
        if amount > limit {
            return Err(forbidden(format!(
                "{amount} is above your refund limit of {limit}"
            )));
        }
    }
    if let (Some(limit), "resend") = (limit, a.kind.as_str()) {
        match a.params["value_cents"].as_i64() {
            Some(v) if v <= limit => {}
            Some(v) => {
                return Err(forbidden(format!(
                    "the replacement's value {v} is above your limit of {limit}"
                )))
            }
            None => return Err(forbidden(
                "the replacement's value is unknown (a line without a price): an admin approves it",
            )),
        }
    }
    // A pending action runs again on approval only if a supervisor approved it before (the
    // shop did not answer then).
    if a.state == "pending" && a.decided_by.is_none() {
        return Err(crate::work::conflict(
            "id",
            "the action is pending, not awaiting approval: repeat its request",
        ));
    }
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    // What is left to refund now, under the order's lock (others may have refunded meanwhile).
    let total: i64 = sqlx::query_scalar("SELECT total_cents FROM orders WHERE id = $1 FOR UPDATE")
        .bind(a.order_id)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(amount) = a.amount_cents {
        let left = total - committed_cents(&mut tx, a.order_id, None, Some(a.id)).await?;
        if amount > left {
            return Err(crate::work::conflict(
                "id",
                format!("{amount} is more than is left to refund now ({left}): reject it"),
            ));
        }
    }
    let moved = sqlx::query(
        "UPDATE order_actions SET state = 'pending', decided_by = $2, updated_at = $3 WHERE id = $1 AND state = 'awaiting_approval'",
    )
    .bind(id)
    .bind(who.name())
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 && a.state != "pending" {
        return Err(crate::work::conflict(
            "id",
            format!("the action is {}", a.state),
        ));
    }
    if moved.rows_affected() == 1 {
        crate::audit::record(
            &mut tx,
            &actor,
            audit_entry("order_action.approved", &a, None),
        )
        .await?;
    }
    committed(
        tx.commit(&api.outbox).await,
        "approved; its event is delayed",
    )?;
    execute(&api, &actor, id).await
}

#[utoipa::path(post, path = "/v1/order-actions/{id}/reject", operation_id = "reject_order_action", tag = "orders", params(("id" = Uuid, Path)), request_body = RejectInput, responses((status = 200, body = OrderAction), (status = 400, description = "a field is invalid, named"), (status = 403, description = "not a supervisor"), (status = 404, description = "no such order action"), (status = 409, description = "the action is not awaiting approval")), security(("bearer" = [])))]
async fn reject(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RejectInput>,
) -> Result<Json<OrderAction>, ApiError> {
    who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let reason = text_field(Some(&input.reason), "reason", 500)?
        .ok_or_else(|| ApiError::field("reason", "say why"))?;
    let a = action(&api, id).await?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let moved = sqlx::query(
        "UPDATE order_actions SET state = 'rejected', decided_by = $2, error = $3, updated_at = $4 WHERE id = $1 AND state = 'awaiting_approval'",
    )
    .bind(id)
    .bind(who.name())
    .bind(&reason)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        return Err(crate::work::conflict(
            "id",
            format!("the action is {}", a.state),
        ));
    }
    let order = order_row(&api, a.order_id).await?;
    emit(
        &mut tx,
        &a,
        &order,
        "rejected",
        Some(&a.state),
        &who.name(),
        Some(&reason),
    )
    .await?;
    record_on_ticket(
        &mut tx,
        &a,
        "rejected",
        &format!(
            "{} on order {} rejected by a supervisor: {reason}",
            a.kind, order.number
        ),
    )
    .await?;
    crate::audit::record(
        &mut tx,
        &actor,
        audit_entry("order_action.rejected", &a, Some(&reason)),
    )
    .await?;
    committed(
        tx.commit(&api.outbox).await,
        "rejected; its event is delayed",
    )?;
    Ok(Json(action(&api, id).await?))
}

fn audit_entry(what: &'static str, a: &OrderAction, why: Option<&str>) -> crate::audit::Entry {
    crate::audit::Entry {
        action: what,
        subject: format!("order:{}", a.order_id),
        ticket_id: a.ticket_id,
        before: None,
        after: Some(
            json!({"action": a.id, "kind": a.kind, "amount_cents": a.amount_cents, "reason": why}),
        ),
    }
}

async fn emit(
    tx: &mut EventTx<'_>,
    a: &OrderAction,
    order: &OrderRow,
    state: &str,
    previous: Option<&str>,
    actor: &str,
    why: Option<&str>,
) -> Result<(), ApiError> {
    let event = CommerceEvent {
        kind: CommerceKind::OrderAction,
        id: a.id,
        order_id: order.id,
        order_external_id: order.external_id.clone(),
        order_number: order.number.clone(),
        customer_id: order.customer_id,
        ticket_id: a.ticket_id,
        status: state.into(),
        previous: previous.map(str::to_string),
        detail: a.kind.clone(),
        amount_cents: a.amount_cents,
        automatic: false,
        actor: actor.into(),
        reason: why.map(str::to_string),
    };
    let id = switchboard_contracts::derived_id(a.id, state);
    tx.add(&Envelope::new(id, switchboard_core::clock::now(), event))
        .await?;
    Ok(())
}

/// An internal note on the action's ticket, so the ticket's timeline shows what was done.
async fn record_on_ticket(
    tx: &mut EventTx<'_>,
    a: &OrderAction,
    state: &str,
    text: &str,
) -> Result<(), ApiError> {
    let Some(ticket) = a.ticket_id else {
        return Ok(());
    };
    let note_id = switchboard_contracts::derived_id(a.id, &format!("note:{state}"));
    let _ = switchboard_tickets::notes::add(
        tx,
        ticket,
        note_id,
        (None, "system"),
        text,
        &[],
        switchboard_core::clock::now(),
    )
    .await?;
    Ok(())
}

fn money(cents: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", cents / 100, cents % 100)
}

/// Stores a new action (or finds the one its request key names) and runs it.
async fn run(
    api: &Api,
    who: &Requester,
    actor: &Actor,
    order: &OrderRow,
    new: NewAction,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    if api.shop.admin_api.is_none() {
        return Err(crate::work::conflict(
            "id",
            "no shop Admin API is configured (shop.admin_api)",
        ));
    }
    if let Some(done) = by_key(api, actor, Some(&new.request_key), order.id, new.kind).await? {
        return Ok(done);
    }
    let limit = who.limit;
    let id = Uuid::now_v7();
    let now = switchboard_core::clock::now();
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change.clone());
    // One action at a time per order decides what is left to refund (and what this caller has
    // refunded on it: a limit is not dodged by splitting a refund).
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    let left = order.total_cents - committed_cents(&mut tx, order.id, None, None).await?;
    let amount_cents = match new.amount {
        Amount::None => None,
        Amount::Rest if new.kind == "cancel" => (left > 0).then_some(left),
        Amount::Rest | Amount::Exact(_) => {
            let amount = match new.amount {
                Amount::Exact(a) => a,
                _ => left,
            };
            if amount < 1 || amount > left {
                return Err(ApiError::field(
                    "amount_cents",
                    format!(
                        "between 1 and {left} (what is left to refund, counting refunds under way)"
                    ),
                ));
            }
            Some(amount)
        }
    };
    if let (Some(r), Some(amount)) = (new.return_id, amount_cents) {
        check_return_refund(&mut tx, r, order.id, amount).await?;
    }
    let mine = committed_cents(&mut tx, order.id, Some(&who.name), None).await?;
    let mut waits =
        matches!((limit, amount_cents), (Some(l), Some(a)) if a.saturating_add(mine) > l);
    if let (Some(l), "resend") = (limit, new.kind) {
        // A replacement's goods against the same limit, with the caller's earlier ones.
        let value = new.params["value_cents"].as_i64();
        let before = replaced_cents(&mut tx, order.id, &who.name, None).await?;
        waits |= match (value, before) {
            (Some(v), Some(b)) => v.saturating_add(b) > l,
            _ => true,
        };
    }
    let inserted = sqlx::query(
        "INSERT INTO order_actions (id, order_id, ticket_id, return_id, kind, params, amount_cents, state, requested_by,
                                    request_key, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) ON CONFLICT (request_key) DO NOTHING",
    )
    .bind(id)
    .bind(order.id)
    .bind(new.ticket_id)
    .bind(new.return_id)
    .bind(new.kind)
    .bind(sqlx::types::Json(&new.params))
    .bind(amount_cents)
    .bind(if waits { "awaiting_approval" } else { "pending" })
    .bind(&who.name)
    .bind(&new.request_key)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // The same request, at the same moment: it runs there.
        return Err(crate::work::conflict(
            "request_key",
            "this action is running",
        ));
    }
    let a = action_in(&mut tx, id).await?;
    let what = match new.kind {
        "cancel" => format!("cancel order {}", order.number),
        "refund" => format!(
            "refund {} on order {}",
            money(amount_cents.unwrap_or(0), &order.currency),
            order.number
        ),
        "resend" => format!("send a replacement for order {}", order.number),
        _ => format!("change the shipping address of order {}", order.number),
    };
    crate::audit::record(
        &mut tx,
        actor,
        audit_entry(
            match new.kind {
                "cancel" => "order.cancel",
                "refund" => "order.refund",
                "resend" => "order.resend",
                _ => "order.address",
            },
            &a,
            None,
        ),
    )
    .await?;
    if waits {
        emit(
            &mut tx,
            &a,
            order,
            "awaiting_approval",
            None,
            &who.name,
            None,
        )
        .await?;
        record_on_ticket(
            &mut tx,
            &a,
            "awaiting_approval",
            &format!(
                "Asked a supervisor to approve: {what} ({}).",
                if new.kind == "resend" {
                    "its value is above the limit"
                } else {
                    "above the refund limit"
                }
            ),
        )
        .await?;
        committed(tx.commit(&api.outbox).await, "stored; its event is delayed")?;
        metrics::counter!(crate::telemetry::ORDER_ACTIONS_TOTAL, "kind" => new.kind, "outcome" => "awaiting_approval").increment(1);
        return Ok((StatusCode::ACCEPTED, Json(action(api, id).await?)));
    }
    emit(&mut tx, &a, order, "requested", None, &who.name, None).await?;
    committed(tx.commit(&api.outbox).await, "stored; its event is delayed")?;
    execute(api, actor, id).await
}

/// A refund that settles return `r`: the return is of this order, approved and not yet
/// settled, to be refunded (not exchanged or credited), and the refunds for it stay within its
/// value.
async fn check_return_refund(
    conn: &mut sqlx::PgConnection,
    r: Uuid,
    order: Uuid,
    amount: i64,
) -> Result<(), ApiError> {
    let row: Option<(Uuid, String, String, i64)> = sqlx::query_as(
        "SELECT order_id, status, resolution, value_cents FROM returns WHERE id = $1 FOR UPDATE",
    )
    .bind(r)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((of, status, resolution, value)) = row else {
        return Err(ApiError::field("return_id", "no such return"));
    };
    if of != order {
        return Err(ApiError::field("return_id", "not a return of this order"));
    }
    if !["approved", "label_sent", "in_transit", "received"].contains(&status.as_str()) {
        return Err(ApiError::field(
            "return_id",
            format!("the return is {status}: only an approved return is refunded"),
        ));
    }
    if resolution != "refund" {
        return Err(ApiError::field(
            "return_id",
            format!("the return is settled by {resolution}, not a refund"),
        ));
    }
    let for_it: Option<i64> = sqlx::query_scalar(
        "SELECT sum(amount_cents)::bigint FROM order_actions
          WHERE return_id = $1 AND state IN ('done', 'pending', 'awaiting_approval')",
    )
    .bind(r)
    .fetch_one(&mut *conn)
    .await?;
    let left = value - for_it.unwrap_or(0);
    if amount > left {
        return Err(ApiError::field(
            "amount_cents",
            format!("the return is worth {left} more at most"),
        ));
    }
    Ok(())
}

async fn action_in(tx: &mut EventTx<'_>, id: Uuid) -> Result<OrderAction, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ACTION_COLUMNS} FROM order_actions a JOIN orders o ON o.id = a.order_id WHERE a.id = $1"
    ))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?)
}

/// How one call to the shop ended.
enum Outcome {
    Done(Value),
    /// The shop refused for good (4xx): its reason.
    Refused(String),
    /// Try again (429, 5xx, a timeout): after this many seconds.
    Later(String, u64),
}

/// Runs pending action `id` at the shop, holding its row so one caller at a time does.
async fn execute(
    api: &Api,
    actor: &Actor,
    id: Uuid,
) -> Result<(StatusCode, Json<OrderAction>), ApiError> {
    let started = std::time::Instant::now();
    let mut tx = EventTx::begin(&api.pool)
        .await?
        .by(actor.who.change_actor());
    let locked: Option<String> =
        match sqlx::query_scalar("SELECT state FROM order_actions WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
        {
            Ok(s) => s,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Err(crate::work::conflict(
                    "request_key",
                    "this action is running",
                ));
            }
            Err(e) => return Err(e.into()),
        };
    match locked.as_deref() {
        None => return Err(ApiError::not_found("no such order action")),
        Some("pending") => {}
        Some(_) => {
            tx.rollback().await?;
            let a = action(api, id).await?;
            return Ok((StatusCode::OK, Json(a)));
        }
    }
    let a = action_in(&mut tx, id).await?;
    let order: OrderRow = sqlx::query_as(&format!("SELECT {ORDER_ROW} FROM orders WHERE id = $1"))
        .bind(a.order_id)
        .fetch_one(&mut *tx)
        .await?;
    let outcome = call_shop(api, &a, &order).await;
    let now = switchboard_core::clock::now();
    let who = actor.name();
    let (state, error, result) = match &outcome {
        Outcome::Done(v) => ("done", None, Some(v.clone())),
        Outcome::Refused(e) => ("failed", Some(e.clone()), None),
        Outcome::Later(e, _) => ("pending", Some(e.clone()), None),
    };
    sqlx::query(
        "UPDATE order_actions SET state = $2, error = $3, result = $4, attempts = attempts + 1, updated_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(&error)
    .bind(result.as_ref().map(sqlx::types::Json))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let kind: &'static str = match a.kind.as_str() {
        "cancel" => "cancel",
        "refund" => "refund",
        "resend" => "resend",
        _ => "address",
    };
    metrics::histogram!(crate::telemetry::ORDER_ACTION_SECONDS, "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::telemetry::ORDER_ACTIONS_TOTAL, "kind" => kind, "outcome" => state)
        .increment(1);
    match outcome {
        Outcome::Later(e, secs) => {
            tx.commit(&api.outbox)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            warn!(action = %id, error = %e, "shop did not answer the order action");
            Err(ApiError {
                retry_after_secs: Some(secs),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shop_unavailable",
                    format!("the shop did not answer ({e}); action {id} is pending: repeat the request with the same request_key"),
                )
            })
        }
        Outcome::Refused(e) => {
            let a = OrderAction {
                state: "failed".into(),
                ..a
            };
            emit(
                &mut tx,
                &a,
                &order,
                "failed",
                Some("pending"),
                &who,
                Some(&e),
            )
            .await?;
            record_on_ticket(
                &mut tx,
                &a,
                "failed",
                &format!(
                    "The shop refused to {} order {}: {e}",
                    verb(kind),
                    order.number
                ),
            )
            .await?;
            committed(tx.commit(&api.outbox).await, "stored; its event is delayed")?;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "shop_refused",
                format!("the shop refused: {e} (action {id})"),
            ))
        }
        Outcome::Done(v) => {
            // A replacement's new order, as the shop named it.
            let outcome_order = v["order"]["name"].as_str().map(str::to_string);
            let a = OrderAction {
                state: "done".into(),
                ..a
            };
            emit(&mut tx, &a, &order, "done", Some("pending"), &who, None).await?;
            let text = match kind {
                "refund" => format!(
                    "Refunded {} on order {}.",
                    money(a.amount_cents.unwrap_or(0), &order.currency),
                    order.number
                ),
                "cancel" => format!(
                    "Cancelled order {}{}.",
                    order.number,
                    a.amount_cents
                        .map(|c| format!(", refunding {}", money(c, &order.currency)))
                        .unwrap_or_default()
                ),
                "resend" => {
                    let lines: Vec<String> = a.params.0["items"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|i| {
                                    format!(
                                        "{} × {}",
                                        i["quantity"].as_i64().unwrap_or(1),
                                        i["title"].as_str().unwrap_or("item")
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let new = match &outcome_order {
                        Some(n) => format!(": order {n}"),
                        None => String::new(),
                    };
                    format!(
                        "Sent a replacement for order {}{new} ({}).",
                        order.number,
                        lines.join(", ")
                    )
                }
                _ => format!("Changed the shipping address of order {}.", order.number),
            };
            record_on_ticket(&mut tx, &a, "done", &text).await?;
            if let (Some(r), "refund") = (a.return_id, kind) {
                let moved = switchboard_tickets::returns::transition(
                    &mut tx,
                    r,
                    switchboard_tickets::returns::Status::Refunded,
                    &who,
                    None,
                    None,
                    None,
                )
                .await?;
                if let Err(e) = moved {
                    info!(return_id = %r, reason = %e, "refund done; the return stays where it is");
                }
            }
            committed(
                tx.commit(&api.outbox).await,
                "done at the shop; its event is delayed",
            )?;
            info!(action = %id, kind, order = %order.number, "order action done");
            Ok((StatusCode::OK, Json(action(api, id).await?)))
        }
    }
}

fn verb(kind: &str) -> &'static str {
    match kind {
        "cancel" => "cancel",
        "refund" => "refund",
        "resend" => "send a replacement for",
        _ => "change the address of",
    }
}

/// One action at the shop: Shopify's REST Admin API shapes, with the action's id as the
/// `Idempotency-Key` of every call that changes something.
async fn call_shop(api: &Api, a: &OrderAction, order: &OrderRow) -> Outcome {
    let Some(cfg) = api.shop.admin_api.as_ref() else {
        return Outcome::Refused("no shop Admin API is configured".into());
    };
    let base = cfg.url.trim_end_matches('/');
    let ext = &order.external_id;
    let key = a.id.to_string();
    let send = |method: reqwest::Method, path: String, body: Value, idempotent: bool| {
        let mut req = api
            .shop_http
            .request(method, format!("{base}{path}"))
            .header("X-Shopify-Access-Token", cfg.access_token.expose());
        if !body.is_null() {
            req = req.json(&body);
        }
        if idempotent {
            req = req.header("Idempotency-Key", &key);
        }
        async move { answer(req.send().await).await }
    };
    let cents = |c: i64| format!("{}.{:02}", c / 100, c % 100);
    // The shop may have acted on an earlier attempt whose answer never came, or whose record
    // was lost with a process that died mid-call (its transaction rolled back, no attempt
    // counted): look before every attempt, and act only when the shop answered the look
    // cleanly (a REST Admin API does not promise to honour the Idempotency-Key).
    let marker = format!("switchboard {}", a.id);
    let unsure = |why: String, secs: u64| {
        Outcome::Later(
            format!("could not check the shop for an earlier attempt: {why}"),
            secs,
        )
    };
    match a.kind.as_str() {
        "refund" => match send(
            reqwest::Method::GET,
            format!("/orders/{ext}/refunds.json"),
            Value::Null,
            false,
        )
        .await
        {
            Outcome::Done(v) => {
                let Some(rs) = v["refunds"].as_array() else {
                    return unsure("its answer lists no refunds".into(), 5);
                };
                if let Some(r) = rs
                    .iter()
                    .find(|r| r["note"].as_str().is_some_and(|n| n.contains(&marker)))
                {
                    return Outcome::Done(json!({"refund": r, "reconciled": true}));
                }
            }
            Outcome::Later(e, secs) => return unsure(e, secs),
            Outcome::Refused(e) => return Outcome::Refused(e),
        },
        "resend" => {
            // The replacement carries the action's id in its note: look among the orders
            // created since the action was (a minute's margin for the two clocks), with only
            // the fields needed, so the answer stays small.
            let since = (a.created_at - chrono::Duration::minutes(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match send(
                reqwest::Method::GET,
                format!("/orders.json?status=any&limit=250&fields=id,name,note,line_items,created_at&created_at_min={since}"),
                Value::Null,
                false,
            )
            .await
            {
                Outcome::Done(v) => {
                    let Some(os) = v["orders"].as_array() else {
                        return unsure("its answer lists no orders".into(), 5);
                    };
                    if let Some(o) = os
                        .iter()
                        .find(|o| o["note"].as_str().is_some_and(|n| n.contains(&marker)))
                    {
                        return Outcome::Done(json!({"order": o, "reconciled": true}));
                    }
                    if os.len() >= 250 {
                        return unsure("more than 250 orders since the action".into(), 5);
                    }
                }
                Outcome::Later(e, secs) => return unsure(e, secs),
                Outcome::Refused(e) => return Outcome::Refused(e),
            }
        }
        "cancel" => match send(
            reqwest::Method::GET,
            format!("/orders/{ext}.json"),
            Value::Null,
            false,
        )
        .await
        {
            Outcome::Done(v) => {
                if v["order"].is_null() {
                    return unsure("its answer has no order".into(), 5);
                }
                if v["order"]["cancelled_at"].is_string() {
                    return Outcome::Done(json!({"order": v["order"], "reconciled": true}));
                }
            }
            Outcome::Later(e, secs) => return unsure(e, secs),
            Outcome::Refused(e) => return Outcome::Refused(e),
        },
        _ => {}
    }
    match a.kind.as_str() {
        "cancel" => {
            let p = &a.params.0;
            let mut body = json!({"reason": p["reason"], "restock": p["restock"], "email": true});
            if let Some(c) = a.amount_cents {
                body["amount"] = json!(cents(c));
                body["currency"] = json!(order.currency);
            }
            send(
                reqwest::Method::POST,
                format!("/orders/{ext}/cancel.json"),
                body,
                true,
            )
            .await
        }
        "refund" => {
            let amount = a.amount_cents.unwrap_or(0);
            // Ask the shop how a refund of this order is paid back (the transaction to refund
            // against and its gateway), then refund that amount on it.
            let calc = send(
                reqwest::Method::POST,
                format!("/orders/{ext}/refunds/calculate.json"),
                json!({"refund": {"shipping": {"full_refund": false}, "refund_line_items": []}}),
                false,
            )
            .await;
            let calc = match calc {
                Outcome::Done(v) => v,
                other => return other,
            };
            let Some(parent) = calc["refund"]["transactions"]
                .as_array()
                .and_then(|t| t.first())
                .cloned()
            else {
                return Outcome::Refused("the shop has no payment to refund against".into());
            };
            let body = json!({"refund": {
                "currency": order.currency,
                "notify": true,
                // The action's id, so a retry can tell this refund was made.
                "note": match a.params.0.get("note").and_then(Value::as_str) {
                    Some(n) => format!("{n} ({marker})"),
                    None => format!("({marker})"),
                },
                "transactions": [{
                    "parent_id": parent["parent_id"], "amount": cents(amount),
                    "kind": "refund", "gateway": parent["gateway"],
                }],
            }});
            send(
                reqwest::Method::POST,
                format!("/orders/{ext}/refunds.json"),
                body,
                true,
            )
            .await
        }
        "resend" => {
            let p = &a.params.0;
            let lines: Vec<Value> = p["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| {
                            json!({"title": i["title"], "sku": i["sku"], "quantity": i["quantity"],
                                   "price": "0.00", "requires_shipping": true})
                        })
                        .collect()
                })
                .unwrap_or_default();
            let note = match p["reason"].as_str() {
                Some(r) => format!("Replacement for {}: {r} ({marker})", order.number),
                None => format!("Replacement for {} ({marker})", order.number),
            };
            let body = json!({"order": {
                "email": p["email"], "line_items": lines, "currency": order.currency,
                "shipping_address": p["shipping_address"], "financial_status": "paid",
                "tags": "replacement", "note": note, "source_name": "switchboard",
                "send_receipt": false, "send_fulfillment_receipt": true,
            }});
            send(reqwest::Method::POST, "/orders.json".into(), body, true).await
        }
        _ => {
            let body =
                json!({"order": {"id": ext, "shipping_address": a.params.0["shipping_address"]}});
            send(
                reqwest::Method::PUT,
                format!("/orders/{ext}.json"),
                body,
                true,
            )
            .await
        }
    }
}

/// Reads the shop's answer: 2xx done; 429 and 5xx later (Retry-After, else 5 s); other 4xx
/// refused with the shop's `errors`.
async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> Outcome {
    let r = match r {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Later("timed out".into(), 5),
        Err(e) => return Outcome::Later(format!("unreachable: {e}"), 5),
    };
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| s.ceil().clamp(1.0, 3600.0) as u64);
    // A shop's answer is small: read at most 1 MiB of it, chunk by chunk; past that it is not
    // kept (and not read further).
    let mut r = r;
    let mut raw: Vec<u8> = Vec::new();
    let mut whole = true;
    loop {
        match r.chunk().await {
            Ok(Some(c)) if raw.len() + c.len() <= 1 << 20 => raw.extend_from_slice(&c),
            Ok(Some(_)) => {
                whole = false;
                break;
            }
            Ok(None) => break,
            Err(e) if status.is_success() => {
                return Outcome::Later(format!("the answer broke off: {e}"), 5)
            }
            Err(_) => {
                whole = false;
                break;
            }
        }
    }
    let body = if whole {
        serde_json::from_slice::<Value>(&raw).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if status.is_success() {
        return Outcome::Done(body);
    }
    let errors = match &body["errors"] {
        Value::String(s) => s.clone(),
        Value::Null => status.to_string(),
        other => other.to_string(),
    };
    let errors: String = errors.chars().take(500).collect();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Later(format!("rate limited: {errors}"), retry_after.unwrap_or(2));
    }
    if status.is_server_error() {
        return Outcome::Later(format!("{status}: {errors}"), retry_after.unwrap_or(5));
    }
    Outcome::Refused(errors)
}

/// Runs the order actions the team's rules queued (`rule_order_requests`, written in the rule
/// fire's transaction by the automation stage) as the rule: each through the same request code
/// as an agent's, with `rule:<request id>` as its request key, so a request run twice (a crash
/// between the shop's answer and the request's mark) is still one action at the shop. Every
/// serving instance runs one; a lease (`next_attempt_at`, claimed with `SKIP LOCKED`) keeps two
/// from running the same request at once. The shop not answering retries with backoff; a
/// refusal is recorded on the ticket.
pub(crate) struct RuleOrders {
    pub api: Api,
    pub every: std::time::Duration,
}

/// A request that has not reached the shop after this many tries is given up (and noted).
const RULE_ORDER_ATTEMPTS: i32 = 8;

impl switchboard_core::runtime::Background for RuleOrders {
    fn name(&self) -> &'static str {
        "rule-orders"
    }

    async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            match rule_orders_pass(&self.api).await {
                // A full batch: there may be more at once.
                Ok(n) if n >= 10 => continue,
                Ok(_) => {}
                Err(e) => warn!(error = %e.message, "rule order actions pass failed"),
            }
            if !switchboard_core::runtime::pause(self.every, &shutdown).await {
                return;
            }
        }
    }
}

/// A queued request a pass claimed.
#[derive(sqlx::FromRow)]
struct RuleRequest {
    id: Uuid,
    rule_id: Uuid,
    rule_name: String,
    ticket_id: Uuid,
    order_id: Uuid,
    kind: String,
    amount_cents: Option<i64>,
    attempts: i32,
}

/// One pass: claims up to 10 due requests and runs them; how many it claimed.
async fn rule_orders_pass(api: &Api) -> Result<usize, ApiError> {
    let now = switchboard_core::clock::now();
    // The lease: a claimed request is not due again for two minutes (longer than a shop call).
    let due: Vec<RuleRequest> = sqlx::query_as(
        "UPDATE rule_order_requests r SET next_attempt_at = $1 + interval '2 minutes', attempts = attempts + 1, updated_at = $1
          WHERE r.id IN (SELECT id FROM rule_order_requests WHERE state = 'queued' AND next_attempt_at <= $1
                          ORDER BY next_attempt_at LIMIT 10 FOR UPDATE SKIP LOCKED)
          RETURNING r.id, r.rule_id, r.rule_name, r.ticket_id, r.order_id, r.kind, r.amount_cents, r.attempts",
    )
    .bind(now)
    .fetch_all(&api.pool)
    .await?;
    for RuleRequest {
        id,
        rule_id,
        rule_name,
        ticket_id: ticket,
        order_id,
        kind,
        amount_cents: amount,
        attempts,
    } in &due
    {
        let by = Requester::rule(api, *rule_id);
        let actor = Actor::local(&by.name);
        let key = Some(format!("rule:{id}"));
        let ticket_id = Some(*ticket);
        let outcome = match order_row(api, *order_id).await {
            Err(e) => Err(e),
            Ok(order) => match kind.as_str() {
                "cancel" => {
                    let input = CancelInput {
                        ticket_id,
                        reason: None,
                        refund: None,
                        restock: None,
                        request_key: key,
                    };
                    request_cancel(api, &by, &actor, &order, input).await
                }
                "refund" => {
                    let input = RefundInput {
                        ticket_id,
                        amount_cents: *amount,
                        note: None,
                        return_id: None,
                        request_key: key,
                    };
                    request_refund(api, &by, &actor, &order, input).await
                }
                _ => {
                    let input = ResendInput {
                        ticket_id,
                        items: None,
                        reason: Some(format!("rule {rule_name}")),
                        request_key: key,
                    };
                    request_resend(api, &by, &actor, &order, input).await
                }
            },
        };
        let later = |e: &ApiError| {
            e.status == StatusCode::SERVICE_UNAVAILABLE
                || e.status == StatusCode::CONFLICT && e.message == "this action is running"
        };
        match outcome {
            Ok((_, Json(a))) => {
                sqlx::query(
                    "UPDATE rule_order_requests SET state = 'done', action_id = $2, error = NULL, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(a.id)
                .bind(switchboard_core::clock::now())
                .execute(&api.pool)
                .await?;
                info!(request = %id, rule_id = %rule_id, action = %a.id, state = %a.state, "rule order action run");
            }
            Err(e) if later(&e) && *attempts < RULE_ORDER_ATTEMPTS => {
                // Backoff: 2, 4, 8 ... seconds, at most five minutes.
                let wait = 2i64
                    .saturating_pow(u32::try_from(*attempts).unwrap_or(8))
                    .min(300);
                sqlx::query(
                    "UPDATE rule_order_requests SET next_attempt_at = $2, error = $3, updated_at = $4 WHERE id = $1 AND state = 'queued'",
                )
                .bind(id)
                .bind(switchboard_core::clock::now() + chrono::Duration::seconds(wait))
                .bind(&e.message)
                .bind(switchboard_core::clock::now())
                .execute(&api.pool)
                .await?;
                warn!(request = %id, rule_id = %rule_id, error = %e.message, wait_secs = wait, "rule order action waits for the shop");
            }
            Err(e) => {
                // Refused (or given up): recorded on the ticket for its people to see.
                let mut tx = EventTx::begin(&api.pool).await?.by(by.change.clone());
                sqlx::query(
                    "UPDATE rule_order_requests SET state = 'failed', error = $2, updated_at = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(&e.message)
                .bind(switchboard_core::clock::now())
                .execute(&mut *tx)
                .await?;
                let verb = match kind.as_str() {
                    "cancel" => "cancel the order",
                    "refund" => "refund the order",
                    _ => "send a replacement",
                };
                let text = format!("Rule «{rule_name}» could not {verb}: {}", e.message);
                let _ = switchboard_tickets::notes::add(
                    &mut tx,
                    *ticket,
                    switchboard_contracts::derived_id(*id, "note:failed"),
                    (None, "system"),
                    &text,
                    &[],
                    switchboard_core::clock::now(),
                )
                .await?;
                committed(tx.commit(&api.outbox).await, "stored; its event is delayed")?;
                warn!(request = %id, rule_id = %rule_id, error = %e.message, "rule order action refused");
            }
        }
    }
    Ok(due.len())
}
