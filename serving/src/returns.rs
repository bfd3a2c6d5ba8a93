//! Returns (RMA) over the API and the help centre: agents start a return from a ticket, see
//! it, approve (or convert to an exchange), reject with a reason the customer is told, and move
//! it along (label sent, in transit, received, exchanged, cancelled; refunded when a refund
//! action naming it is done); customers start one at `/returns` with their order number and
//! email. The policy ([`switchboard_tickets::returns`]) checks every line and approves simple
//! cases itself. Supervisors read the figures at `/v1/returns/stats`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{normalise_email, order_key};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::returns::{
    self, LineVerdict, MoveError, NewReturn, OrderRow, Reason, Requested, Resolution, Return,
    Status, ORDER_ROW, RETURN_COLUMNS,
};
use uuid::Uuid;

use crate::audit::Actor;
use crate::auth::{Principal, Role};
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/returns", get(list).post(create))
        .route("/v1/returns/stats", get(stats))
        .route("/v1/returns/{id}", get(one))
        .route("/v1/returns/{id}/approve", post(approve))
        .route("/v1/returns/{id}/reject", post(reject))
        .route("/v1/returns/{id}/status", post(set_status))
}

pub(crate) fn public_routes() -> Router<Api> {
    Router::new()
        .route(
            "/returns",
            get(|| async { crate::pages::serve("returns.html") }).post(customer_create),
        )
        .route("/returns/lookup", post(lookup))
}

/// `POST /v1/returns`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReturn {
    pub order_id: Uuid,
    /// The ticket it comes from (an agent must hold it); its images become the photos.
    #[serde(default)]
    pub ticket_id: Option<Uuid>,
    pub reason: Reason,
    /// Default: refund.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    pub items: Vec<Requested>,
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /returns/lookup` (the help centre).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub order_number: String,
    pub email: String,
}

/// What a customer may return from an order, line by line.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Returnable {
    pub order_number: String,
    pub currency: String,
    pub lines: Vec<LineVerdict>,
    pub window_days: u32,
    pub resolutions: Vec<Resolution>,
    /// Reasons for which the customer pays the return shipping.
    pub customer_pays_shipping: Vec<Reason>,
}

/// `POST /returns` (the help centre).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerReturn {
    pub order_number: String,
    pub email: String,
    pub reason: Reason,
    #[serde(default)]
    pub resolution: Option<Resolution>,
    pub items: Vec<Requested>,
    #[serde(default)]
    pub note: Option<String>,
}

/// `POST /v1/returns/{id}/approve`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveInput {
    /// Convert (to an exchange, say) while approving.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// The version read: refused with 409 if the return moved on meanwhile.
    #[serde(default)]
    pub version: Option<i32>,
}

/// `POST /v1/returns/{id}/reject`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectReturn {
    /// Sent to the customer on the return's ticket.
    pub reason: String,
    #[serde(default)]
    pub version: Option<i32>,
}

/// `POST /v1/returns/{id}/status`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusInput {
    /// label_sent, in_transit, received, exchanged or cancelled (refunded comes with the refund).
    pub status: Status,
    #[serde(default)]
    pub version: Option<i32>,
}

/// `GET /v1/returns` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReturnsQuery {
    pub status: Option<String>,
    /// The order's id.
    pub order: Option<Uuid>,
    pub ticket: Option<Uuid>,
}

/// `GET /v1/returns/stats` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Weeks back from now (1-52, default 8).
    pub weeks: Option<u32>,
}

/// One count.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Count {
    pub key: String,
    pub returns: i64,
}

/// Returns per week: how many, of how many orders that week.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Week {
    pub week: chrono::NaiveDate,
    pub orders: i64,
    pub returns: i64,
    /// returns / orders.
    pub rate: f64,
}

/// The supervisor's return figures.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnStats {
    pub weeks: Vec<Week>,
    pub by_reason: Vec<Count>,
    /// The products most returned (line titles), top 20.
    pub by_product: Vec<Count>,
    pub by_status: Vec<Count>,
    /// Of all returns in the period, the share the policy approved by itself.
    pub auto_approved_share: f64,
    /// Median and 90th percentile hours from request to refund or exchange.
    pub hours_to_refund_p50: Option<f64>,
    pub hours_to_refund_p90: Option<f64>,
}

fn note_field(note: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(n) = note else { return Ok(None) };
    let n = switchboard_contracts::text::clean_line(n.trim()).into_owned();
    if n.chars().count() > 2000 {
        return Err(ApiError::field("note", "at most 2000 characters"));
    }
    Ok((!n.is_empty()).then_some(n))
}

async fn order_by_id(api: &Api, id: Uuid) -> Result<OrderRow, ApiError> {
    sqlx::query_as(&format!("SELECT {ORDER_ROW} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("no such order"))
}

/// The customer's order by its number and their email: the same 404 for an unknown order and
/// someone else's (as `/track`).
async fn order_for_customer(api: &Api, number: &str, email: &str) -> Result<OrderRow, ApiError> {
    let email =
        normalise_email(email).ok_or_else(|| ApiError::field("email", "not an email address"))?;
    let number = order_key(number).ok_or_else(|| {
        ApiError::field(
            "order_number",
            "the order's name or number (#1001 or 1001): 1 to 64 characters, no control characters",
        )
    })?;
    sqlx::query_as(&format!(
        "SELECT {ORDER_ROW} FROM orders o
          WHERE lower(ltrim(btrim(o.number), '#')) = $1
            AND o.customer_id = (SELECT customer_id FROM customer_identities WHERE kind = 'email' AND value = $2)
          ORDER BY o.created_at DESC LIMIT 1"
    ))
    .bind(&number)
    .bind(&email)
    .fetch_optional(&api.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("no order with this number for this email"))
}

async fn by_id(api: &Api, id: Uuid) -> Result<Return, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {RETURN_COLUMNS} FROM returns r JOIN orders o ON o.id = r.order_id WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_optional(&api.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("no such return"))
}

/// Checks and stores a return: the stored return, and whether this call made it (`false`: a
/// help-centre form sent again, answered with the return it made before).
#[allow(clippy::too_many_arguments)]
async fn start_return(
    api: &Api,
    order: &OrderRow,
    ticket_id: Option<Uuid>,
    reason: Reason,
    resolution: Option<Resolution>,
    items: &[Requested],
    note: Option<&str>,
    source: &'static str,
    actor_name: String,
    change_actor: switchboard_core::db::ChangeActor,
    audit: Option<&Actor>,
    customer_email: Option<&str>,
) -> Result<(Return, bool), ApiError> {
    let policy = &api.shop.returns;
    let resolution = resolution.unwrap_or(Resolution::Refund);
    let note = note_field(note)?;
    // The ticket's images are the photos (damage, the wrong item).
    let photos: Vec<String> = match ticket_id {
        Some(t) => sqlx::query_scalar(
            "SELECT a->>'storage_key' FROM messages m, jsonb_array_elements(coalesce(m.attachments, '[]'::jsonb)) a
              WHERE m.ticket_id = $1 AND m.direction = 'inbound' AND a->>'content_type' LIKE 'image/%'
                AND a ? 'storage_key' LIMIT 20",
        )
        .bind(t)
        .fetch_all(&api.pool)
        .await
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut tx = EventTx::begin(&api.pool).await?.by(change_actor);
    // One return at a time per order: the quantities left are read under the order's lock.
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    // The same form sent twice (a double click, a proxy replaying a request whose answer was
    // lost when an instance died): the return it already made, not a refusal of its lines.
    if source == "helpcentre" {
        if let Some(id) = repeated_submission(
            &mut tx,
            order.id,
            reason,
            resolution,
            note.as_deref(),
            items,
        )
        .await?
        {
            drop(tx);
            return Ok((by_id(api, id).await?, false));
        }
    }
    let lines = order
        .verdicts(&mut tx, policy, switchboard_core::clock::now())
        .await?;
    let (value, priced) = policy
        .check(&lines, items, reason, resolution, photos.len())
        .map_err(|(field, why)| ApiError::field(field, why))?;
    // What the policy already approved on this order counts too: splitting a return into
    // small ones does not make each simple.
    let approved_before: Option<i64> = sqlx::query_scalar(
        "SELECT sum(value_cents)::bigint FROM returns
          WHERE order_id = $1 AND automatic AND status NOT IN ('rejected', 'cancelled')",
    )
    .bind(order.id)
    .fetch_one(&mut *tx)
    .await?;
    let automatic = policy.approves(
        reason,
        value.saturating_add(approved_before.unwrap_or(0)),
        priced,
    );
    let (id, number) = returns::create(
        &mut tx,
        NewReturn {
            order,
            ticket_id,
            reason,
            resolution,
            lines: &lines,
            items,
            photos,
            note: note.clone(),
            value_cents: value,
            customer_pays_shipping: policy.customer_pays_shipping.contains(&reason),
            automatic,
            source,
            actor: actor_name,
        },
    )
    .await?;
    if let Some(actor) = audit {
        crate::audit::record(
            &mut tx,
            actor,
            crate::audit::Entry {
                action: "return.created",
                subject: format!("return:{id}"),
                ticket_id,
                before: None,
                after: Some(serde_json::json!({"number": number, "order": order.number, "reason": reason, "value_cents": value, "automatic": automatic})),
            },
        )
        .await?;
    }
    // A return from the help centre that waits for a person opens a ticket, so it reaches an
    // agent's queue and the customer hears the decision (the ticketing stage links the ticket to
    // the return). Email is the way back: the customer gave that address with the order.
    if let (None, false, Some(email)) = (ticket_id, automatic, customer_email) {
        let what: Vec<String> = items
            .iter()
            .map(|r| {
                let title = lines
                    .iter()
                    .find(|l| l.line_item_id == r.line_item_id)
                    .map_or("item", |l| l.title.as_str());
                format!("{} × {title}", r.quantity)
            })
            .collect();
        let text = format!(
            "Return {number} for order {} waits for a decision: {}. Reason: {}; the customer asks for {}.{}",
            order.number,
            what.join(", "),
            reason.as_str().replace('_', " "),
            resolution_words(resolution),
            note.as_deref()
                .map(|n| format!("\n\nThe customer's note: {n}"))
                .unwrap_or_default()
        );
        let now = switchboard_core::clock::now();
        let m = switchboard_contracts::InboundMessage {
            message_id: switchboard_contracts::derived_id(id, "helpcentre-return"),
            channel: switchboard_contracts::Channel::Email,
            external_id: None,
            conversation_key: format!("return:{id}"),
            ticket_id: None,
            customer: switchboard_contracts::CustomerRef {
                email: Some(email.to_string()),
                phone: None,
                name: None,
                handle: None,
            },
            subject: Some(format!("Return {number} for order {}", order.number)),
            text,
            truncated: false,
            attachments: Vec::new(),
            metadata: [
                (switchboard_contracts::RETURN_ID.to_string(), id.to_string()),
                ("source".to_string(), "helpcentre".to_string()),
            ]
            .into_iter()
            .collect(),
            received_at: now,
            // The help centre checked the order number against this address.
            verified: true,
        };
        tx.add(&switchboard_contracts::Envelope::new(m.message_id, now, m))
            .await?;
    }
    if let Some(t) = ticket_id {
        let text = if automatic {
            format!("Your return {number} for order {} is approved. We will email you the return label and instructions; your {} follows once the items are back with us.", order.number, resolution_words(resolution))
        } else {
            format!("We have your return request {number} for order {}. A member of our team will review it and get back to you.", order.number)
        };
        returns_reply(&mut tx, t, id, "created", text).await?;
    }
    committed(
        tx.commit(&api.outbox).await,
        "the return is stored; its event is delayed",
    )?;
    Ok((by_id(api, id).await?, true))
}

fn resolution_words(r: Resolution) -> &'static str {
    match r {
        Resolution::Refund => "refund",
        Resolution::Exchange => "exchange",
        Resolution::StoreCredit => "store credit",
    }
}

/// Tells the customer on the return's ticket (their channel), once per step.
async fn returns_reply(
    tx: &mut EventTx<'_>,
    ticket: Uuid,
    return_id: Uuid,
    step: &str,
    text: String,
) -> Result<(), ApiError> {
    let reply_id = switchboard_contracts::derived_id(return_id, &format!("reply:{step}"));
    switchboard_tickets::store::automatic_reply(
        tx,
        ticket,
        reply_id,
        "returns",
        "returns",
        text,
        switchboard_core::clock::now(),
    )
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/returns", operation_id = "create_return", tag = "returns", request_body = CreateReturn, responses((status = 201, body = Return, description = "stored: `requested`, or `approved` when the policy approves it itself"), (status = 400, description = "a field is invalid, named (`items[0].quantity`), or a line cannot be returned, with why"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such order"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    ApiJson(input): ApiJson<CreateReturn>,
) -> Result<(StatusCode, Json<Return>), ApiError> {
    let order = order_by_id(&api, input.order_id).await?;
    match input.ticket_id {
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
        }
        None => who.require(Role::Supervisor)?,
    }
    let (r, _) = start_return(
        &api,
        &order,
        input.ticket_id,
        input.reason,
        input.resolution,
        &input.items,
        input.note.as_deref(),
        if who.role == Role::Admin && who.token_id.is_none() {
            "api"
        } else {
            "agent"
        },
        who.name(),
        who.change_actor(),
        Some(&actor),
        None,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

#[utoipa::path(post, path = "/returns/lookup", operation_id = "lookup_returnable", tag = "self-service", request_body = LookupRequest, responses((status = 200, body = Returnable), (status = 400, description = "a field is invalid, named"), (status = 404, description = "no such order for this email")))]
async fn lookup(
    State(api): State<Api>,
    ApiJson(req): ApiJson<LookupRequest>,
) -> Result<Json<Returnable>, ApiError> {
    let order = order_for_customer(&api, &req.order_number, &req.email).await?;
    let mut conn = api.pool.acquire().await?;
    let policy = &api.shop.returns;
    let lines = order
        .verdicts(&mut conn, policy, switchboard_core::clock::now())
        .await?;
    Ok(Json(Returnable {
        order_number: order.number,
        currency: order.currency,
        lines,
        window_days: policy.window_days,
        resolutions: policy.resolutions.clone(),
        customer_pays_shipping: policy.customer_pays_shipping.clone(),
    }))
}

/// A help-centre return of `order` made in the last 10 minutes that this one repeats: the
/// same reason, resolution, note, lines and quantities, and not rejected or cancelled since (a
/// customer asking again after that means it). Read under the order's lock, so two copies sent
/// at once make one return.
async fn repeated_submission(
    conn: &mut sqlx::PgConnection,
    order: Uuid,
    reason: Reason,
    resolution: Resolution,
    note: Option<&str>,
    items: &[Requested],
) -> Result<Option<Uuid>, ApiError> {
    let mut asked: Vec<(&str, i64)> = items
        .iter()
        .map(|i| (i.line_item_id.as_str(), i.quantity))
        .collect();
    asked.sort();
    let recent: Vec<(Uuid, sqlx::types::Json<Vec<serde_json::Value>>)> = sqlx::query_as(
        "SELECT id, items FROM returns WHERE order_id = $1 AND source = 'helpcentre' AND reason = $2
           AND resolution = $3 AND note IS NOT DISTINCT FROM $4
           AND status NOT IN ('rejected', 'cancelled')
           AND created_at > $5 - interval '10 minutes' ORDER BY created_at DESC",
    )
    .bind(order)
    .bind(reason.as_str())
    .bind(resolution.as_str())
    .bind(note)
    .bind(switchboard_core::clock::now())
    .fetch_all(conn)
    .await?;
    Ok(recent.into_iter().find_map(|(id, items)| {
        let mut had: Vec<(&str, i64)> = items
            .0
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("line_item_id")?.as_str()?,
                    i.get("quantity")?.as_i64()?,
                ))
            })
            .collect();
        had.sort();
        (had == asked).then_some(id)
    }))
}

#[utoipa::path(post, path = "/returns", operation_id = "start_return", tag = "self-service", request_body = CustomerReturn, responses((status = 201, body = Return, description = "stored: `requested`, or `approved` when the policy approves it itself"), (status = 200, body = Return, description = "the same return sent again within 10 minutes: the one it made"), (status = 400, description = "a field is invalid, named, or a line cannot be returned, with why"), (status = 404, description = "no such order for this email"), (status = 503, description = "stored; its event is delayed")))]
async fn customer_create(
    State(api): State<Api>,
    ApiJson(req): ApiJson<CustomerReturn>,
) -> Result<(StatusCode, Json<Return>), ApiError> {
    let order = order_for_customer(&api, &req.order_number, &req.email).await?;
    let (r, made) = start_return(
        &api,
        &order,
        None,
        req.reason,
        req.resolution,
        &req.items,
        req.note.as_deref(),
        "helpcentre",
        "customer".into(),
        switchboard_core::db::ChangeActor {
            name: "customer".into(),
            role: "customer".into(),
            person: true,
        },
        None,
        normalise_email(&req.email).as_deref(),
    )
    .await?;
    let status = if made {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(r)))
}

#[utoipa::path(get, path = "/v1/returns", operation_id = "list_returns", tag = "returns", params(ReturnsQuery), responses((status = 200, body = Vec<Return>), (status = 400, description = "a query field is invalid, named")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    _who: Principal,
    Query(q): Query<ReturnsQuery>,
) -> Result<Json<Vec<Return>>, ApiError> {
    if let Some(s) = &q.status {
        if Status::parse(s).is_none() {
            return Err(ApiError::field(
                "status",
                "requested, approved, label_sent, in_transit, received, refunded, exchanged, rejected or cancelled",
            ));
        }
    }
    let rows = sqlx::query_as(&format!(
        "SELECT {RETURN_COLUMNS} FROM returns r JOIN orders o ON o.id = r.order_id
          WHERE ($1::text IS NULL OR r.status = $1) AND ($2::uuid IS NULL OR r.order_id = $2)
            AND ($3::uuid IS NULL OR r.ticket_id = $3)
          ORDER BY r.created_at DESC LIMIT 200"
    ))
    .bind(&q.status)
    .bind(q.order)
    .bind(q.ticket)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}

#[utoipa::path(get, path = "/v1/returns/{id}", operation_id = "read_return", tag = "returns", params(("id" = Uuid, Path)), responses((status = 200, body = Return), (status = 400, description = "a malformed id"), (status = 404, description = "no such return")), security(("bearer" = [])))]
async fn one(
    State(api): State<Api>,
    _who: Principal,
    Path(id): Path<String>,
) -> Result<Json<Return>, ApiError> {
    Ok(Json(by_id(&api, parse_id(&id, "id")?).await?))
}

/// An agent decides a return through the ticket it holds; a supervisor any.
async fn may_decide(api: &Api, who: &Principal, r: &Return) -> Result<(), ApiError> {
    match r.ticket_id {
        Some(t) if who.role < Role::Supervisor => who.may_act_on_ticket(&api.pool, t).await,
        _ => who.require(Role::Supervisor),
    }
}

fn moved(r: Result<Return, MoveError>) -> Result<Return, ApiError> {
    r.map_err(|e| match e {
        MoveError::NotFound => ApiError::not_found("no such return"),
        MoveError::NotAllowed { .. } | MoveError::Stale(_) => {
            crate::work::conflict("status", e.to_string())
        }
    })
}

async fn audit_move(
    tx: &mut EventTx<'_>,
    actor: &Actor,
    r: &Return,
    action: &'static str,
    why: Option<&str>,
) -> Result<(), ApiError> {
    crate::audit::record(
        tx,
        actor,
        crate::audit::Entry {
            action,
            subject: format!("return:{}", r.id),
            ticket_id: r.ticket_id,
            before: None,
            after: Some(
                serde_json::json!({"status": r.status, "resolution": r.resolution, "reason": why}),
            ),
        },
    )
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/returns/{id}/approve", operation_id = "approve_return", tag = "returns", params(("id" = Uuid, Path)), request_body = ApproveInput, responses((status = 200, body = Return), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such return"), (status = 409, description = "the return is not `requested`, or moved on since `version`"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn approve(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ApproveInput>,
) -> Result<Json<Return>, ApiError> {
    let r = by_id(&api, parse_id(&id, "id")?).await?;
    may_decide(&api, &who, &r).await?;
    if let Some(res) = input.resolution {
        if !api.shop.returns.resolutions.contains(&res) {
            return Err(ApiError::field("resolution", "the shop does not offer it"));
        }
    }
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let after = moved(
        returns::transition(
            &mut tx,
            r.id,
            Status::Approved,
            &who.name(),
            None,
            input.resolution,
            input.version,
        )
        .await?,
    )?;
    audit_move(&mut tx, &actor, &after, "return.approved", None).await?;
    if let Some(t) = after.ticket_id {
        let res = Resolution::parse(&after.resolution);
        returns_reply(&mut tx, t, after.id, "approved", format!("Your return {} for order {} is approved. We will email you the return label and instructions; your {} follows once the items are back with us.", after.number, after.order_number, resolution_words(res))).await?;
    }
    committed(
        tx.commit(&api.outbox).await,
        "approved; its event is delayed",
    )?;
    Ok(Json(by_id(&api, r.id).await?))
}

#[utoipa::path(post, path = "/v1/returns/{id}/reject", operation_id = "reject_return", tag = "returns", params(("id" = Uuid, Path)), request_body = RejectReturn, responses((status = 200, body = Return), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such return"), (status = 409, description = "the return is not `requested`, or moved on since `version`"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn reject(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RejectReturn>,
) -> Result<Json<Return>, ApiError> {
    let reason = note_field(Some(&input.reason))?
        .ok_or_else(|| ApiError::field("reason", "say why: the customer reads it"))?;
    let r = by_id(&api, parse_id(&id, "id")?).await?;
    may_decide(&api, &who, &r).await?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let after = moved(
        returns::transition(
            &mut tx,
            r.id,
            Status::Rejected,
            &who.name(),
            Some(&reason),
            None,
            input.version,
        )
        .await?,
    )?;
    audit_move(&mut tx, &actor, &after, "return.rejected", Some(&reason)).await?;
    if let Some(t) = after.ticket_id {
        returns_reply(
            &mut tx,
            t,
            after.id,
            "rejected",
            format!(
                "We cannot accept return {} for order {}: {reason}",
                after.number, after.order_number
            ),
        )
        .await?;
    }
    committed(
        tx.commit(&api.outbox).await,
        "rejected; its event is delayed",
    )?;
    Ok(Json(by_id(&api, r.id).await?))
}

#[utoipa::path(post, path = "/v1/returns/{id}/status", operation_id = "move_return", tag = "returns", params(("id" = Uuid, Path)), request_body = StatusInput, responses((status = 200, body = Return), (status = 400, description = "a field is invalid, named (approve, reject and refund have their own routes)"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such return"), (status = 409, description = "the lifecycle does not allow the move, or the return moved on since `version`"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn set_status(
    State(api): State<Api>,
    who: Principal,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<StatusInput>,
) -> Result<Json<Return>, ApiError> {
    if matches!(
        input.status,
        Status::Requested | Status::Approved | Status::Rejected | Status::Refunded
    ) {
        return Err(ApiError::field(
            "status",
            "label_sent, in_transit, received, exchanged or cancelled (approve, reject and refund have their own routes)",
        ));
    }
    let r = by_id(&api, parse_id(&id, "id")?).await?;
    may_decide(&api, &who, &r).await?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let after = moved(
        returns::transition(
            &mut tx,
            r.id,
            input.status,
            &who.name(),
            None,
            None,
            input.version,
        )
        .await?,
    )?;
    audit_move(&mut tx, &actor, &after, "return.status", None).await?;
    committed(tx.commit(&api.outbox).await, "moved; its event is delayed")?;
    Ok(Json(by_id(&api, r.id).await?))
}

#[utoipa::path(get, path = "/v1/returns/stats", operation_id = "return_stats", tag = "returns", params(StatsQuery), responses((status = 200, body = ReturnStats), (status = 400, description = "weeks out of range"), (status = 403, description = "not a supervisor")), security(("bearer" = [])))]
async fn stats(
    State(api): State<Api>,
    who: Principal,
    Query(q): Query<StatsQuery>,
) -> Result<Json<ReturnStats>, ApiError> {
    who.require(Role::Supervisor)?;
    let weeks = q.weeks.unwrap_or(8);
    if !(1..=52).contains(&weeks) {
        return Err(ApiError::field("weeks", "between 1 and 52"));
    }
    let since = switchboard_core::clock::now() - chrono::Duration::weeks(i64::from(weeks));
    let weekly: Vec<Week> = sqlx::query_as(
        "WITH o AS (SELECT date_trunc('week', created_at)::date AS week, count(*) AS orders FROM orders WHERE created_at >= $1 GROUP BY 1),
              r AS (SELECT date_trunc('week', o.created_at)::date AS week, count(*) AS returns
                      FROM returns r JOIN orders o ON o.id = r.order_id WHERE o.created_at >= $1 GROUP BY 1)
         SELECT o.week, o.orders, coalesce(r.returns, 0) AS returns,
                coalesce(r.returns, 0)::float8 / greatest(o.orders, 1) AS rate
           FROM o LEFT JOIN r USING (week) ORDER BY o.week",
    )
    .bind(since)
    .fetch_all(&api.pool)
    .await?;
    let by = |sql: &'static str| {
        let pool = api.pool.clone();
        async move {
            sqlx::query_as::<_, Count>(sql)
                .bind(since)
                .fetch_all(&pool)
                .await
        }
    };
    let by_reason = by("SELECT reason AS key, count(*) AS returns FROM returns WHERE created_at >= $1 GROUP BY 1 ORDER BY 2 DESC").await?;
    let by_status = by("SELECT status AS key, count(*) AS returns FROM returns WHERE created_at >= $1 GROUP BY 1 ORDER BY 2 DESC").await?;
    let by_product = by(
        "SELECT it->>'title' AS key, sum((it->>'quantity')::bigint)::bigint AS returns
                           FROM returns r, jsonb_array_elements(r.items) it WHERE r.created_at >= $1
                          GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
    )
    .await?;
    let (share, p50, p90): (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT avg(CASE WHEN automatic THEN 1.0 ELSE 0.0 END)::float8,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM refunded_at - created_at) / 3600)
                    FILTER (WHERE refunded_at IS NOT NULL),
                percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM refunded_at - created_at) / 3600)
                    FILTER (WHERE refunded_at IS NOT NULL)
           FROM returns WHERE created_at >= $1",
    )
    .bind(since)
    .fetch_one(&api.pool)
    .await?;
    Ok(Json(ReturnStats {
        weeks: weekly,
        by_reason,
        by_product,
        by_status,
        auto_approved_share: share.unwrap_or(0.0),
        hours_to_refund_p50: p50,
        hours_to_refund_p90: p90,
    }))
}
