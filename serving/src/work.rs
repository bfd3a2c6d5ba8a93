//! Working a ticket: accept an assignment, reply (or add an internal note), change status.
//!
//! Each change and the events describing it commit in one transaction (the outbox), under the
//! ticket's row lock, and are published after commit; a published-late event is sent by the
//! processors' outbox sweep. A reply with a `request_id` is idempotent: a client retry stores
//! and sends nothing twice. Status changes take an optional `version` and fail with 409 when the
//! ticket changed since the caller read it.
//!
//! Who may: an agent acts (status, typing, accept) only on a ticket assigned to it, and as
//! itself; a supervisor or admin on any ticket and for any agent (checked under the ticket's row
//! lock where the change takes one); merging is for supervisors. 403 otherwise. Replies follow
//! the collision rule instead ([`collision`]): a reply on a ticket assigned to someone else (or,
//! from an agent, on a waiting one) is refused with 409 naming `take_over` unless the sender
//! takes the ticket over, which assigns it to the sender in the reply's transaction. Internal
//! notes never collide: any agent may add one to any ticket.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::Row;
use switchboard_contracts::{
    derived_id, Channel, CustomerRef, Direction, Envelope, OutboundReply, TicketChange,
    TicketStatus,
};
use switchboard_core::db::{CommitError, EventTx};
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::{row, store};
use tracing::info;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tickets/{id}/replies", post(reply))
        .route("/v1/tickets/{id}/status", put(set_status))
        .route("/v1/tickets/{id}/merge", post(merge))
        .route("/v1/assignments/{id}/accept", post(accept))
        .route("/v1/tickets/{id}/typing", post(typing))
}

/// `POST /v1/tickets/{id}/typing` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub on: bool,
}

/// The agent is typing on a chat ticket: the customer's chat shows it (through the chat
/// connector's `NOTIFY`). 204; 409 when the ticket is not a chat.
#[utoipa::path(post, path = "/v1/tickets/{id}/typing", tag = "tickets", params(("id" = Uuid, Path)), request_body = Typing, responses((status = 204, description = "told the customer's chat"), (status = 403, description = "an agent on a ticket not assigned to it"), (status = 404, description = "no such ticket"), (status = 409, description = "not a chat ticket")), security(("bearer" = [])))]
async fn typing(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Typing>,
) -> Result<StatusCode, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    who.may_act_on_ticket(&api.pool, ticket_id).await?;
    let key: Option<Option<String>> =
        sqlx::query_scalar("SELECT conversation_key FROM tickets WHERE id = $1")
            .bind(ticket_id)
            .fetch_optional(&api.pool)
            .await?;
    let key = key.ok_or_else(|| ApiError::not_found("no such ticket"))?;
    let conversation = key
        .as_deref()
        .and_then(|k| k.strip_prefix("chat:"))
        .ok_or_else(|| conflict("id", "the ticket is not a chat conversation"))?;
    sqlx::query("SELECT pg_notify('switchboard_chat_agent_typing', $1)")
        .bind(format!("{conversation}:{}", if req.on { 1 } else { 0 }))
        .execute(&api.pool)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn conflict(field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        field: Some(field.into()),
        ..ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
}

fn parse_channel(s: &str) -> Channel {
    Channel::parse(s).unwrap_or(Channel::Api)
}

/// `POST /v1/tickets/{id}/replies` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReply {
    pub agent_id: String,
    pub text: String,
    /// An internal note: stored, never sent to the customer.
    #[serde(default)]
    pub internal: bool,
    /// Idempotency key of the client.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Take the ticket over to reply: needed when it is assigned to another agent (and, for an
    /// agent, when it waits unassigned); the ticket is assigned to `agent_id` first, recorded
    /// like any manual assignment.
    #[serde(default)]
    pub take_over: bool,
    /// The draft this reply started from (a `drafts[].id` of the ticket): the reply is judged
    /// sent unchanged or edited against it. A reply without one, while drafts are offered,
    /// discards them.
    #[serde(default)]
    pub draft_id: Option<String>,
}

/// What an agent's first reply to a customer's message changes: the agent's response-time sums
/// (since the customer's last message before it), the ticket's first response, and the
/// assignment's acceptance (replying is accepting).
async fn record_response(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    agent_id: Uuid,
    reply_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    // Response time: since the customer's last message before this reply.
    let waited: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(received_at) FROM messages WHERE ticket_id = $1 AND direction = 'inbound'
           AND received_at > COALESCE((SELECT max(received_at) FROM messages
                                        WHERE ticket_id = $1 AND direction = 'outbound' AND id <> $2), '-infinity')",
    )
    .bind(ticket_id)
    .bind(reply_id)
    .fetch_one(&mut **tx)
    .await?;
    if let Some(since) = waited {
        let secs = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
        sqlx::query(
            "UPDATE agents SET response_secs_sum = response_secs_sum + $2, response_count = response_count + 1 WHERE id = $1",
        )
        .bind(agent_id)
        .bind(secs)
        .execute(&mut **tx)
        .await?;
    }
    row::responded(tx, ticket_id, now).await?;
    sqlx::query(
        "UPDATE assignments SET accepted_at = COALESCE(accepted_at, $3) WHERE ticket_id = $1 AND agent_id = $2 AND released_at IS NULL",
    )
    .bind(ticket_id)
    .bind(agent_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/tickets/{id}/replies", tag = "tickets", params(("id" = Uuid, Path)), request_body = NewReply, responses((status = 201, description = "stored and sent on the ticket's channel"), (status = 200, description = "a retry of the same request_id"), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent replying as another agent"), (status = 404, description = "no such ticket"), (status = 409, description = "`take_over`: the ticket is assigned to someone else (or waits in the queue, for an agent); send again with take_over: true to take it over. `agent_id`: taking it over would break the agent's constraints")), security(("bearer" = [])))]
async fn reply(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewReply>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    let agent_id = parse_id(&req.agent_id, "agent_id")?;
    who.require_self_or(agent_id)?;
    // Control characters Postgres or a customer's client would choke on (NUL, escapes) go, as
    // they do from every inbound door; line breaks and tabs stay.
    let text = switchboard_contracts::text::clean_text(req.text.trim())
        .trim()
        .to_string();
    if text.is_empty() || text.len() > 64 * 1024 {
        return Err(ApiError::field("text", "text must be 1 byte to 64 KiB"));
    }
    if req
        .request_id
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.len() > 200)
    {
        return Err(ApiError::field(
            "request_id",
            "request_id must be 1 to 200 characters",
        ));
    }
    let reply_id = match &req.request_id {
        Some(r) => derived_id(ticket_id, &format!("reply:{r}")),
        None => Uuid::now_v7(),
    };
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    let agent_exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1")
        .bind(agent_id)
        .fetch_optional(&mut *tx)
        .await?;
    if agent_exists.is_none() {
        return Err(ApiError::field("agent_id", "no such agent"));
    }
    // A retry of a stored reply answers as the first time did, wherever the ticket went since.
    let stored: Option<i32> = sqlx::query_scalar("SELECT 1 FROM messages WHERE id = $1")
        .bind(reply_id)
        .fetch_optional(&mut *tx)
        .await?;
    // Collision: under the row lock, so two agents answering at once cannot both pass.
    if !req.internal && stored.is_none() {
        resolve_collision(&mut tx, &who, ticket_id, assignee, agent_id, req.take_over).await?;
    }
    let drafts = if req.internal || stored.is_some() {
        None
    } else {
        Some(crate::drafts::check_draft(&mut tx, ticket_id, req.draft_id.as_deref()).await?)
    };
    let now = switchboard_core::clock::now();
    if stored.is_some()
        || !add_reply(
            &mut tx,
            ticket_id,
            agent_id,
            &text,
            req.internal,
            reply_id,
            now,
        )
        .await?
    {
        // A retry of a stored reply.
        return Ok((
            StatusCode::OK,
            Json(serde_json::json!({ "id": reply_id, "duplicate": true })),
        ));
    }
    let draft = match drafts {
        Some(drafts) => {
            crate::drafts::record_outcome(&mut tx, ticket_id, reply_id, agent_id, drafts, &text)
                .await?
        }
        None => None,
    };
    committed(
        tx.commit(&api.outbox).await,
        "reply stored, sending delayed",
    )?;
    info!(ticket_id = %ticket_id, agent_id = %agent_id, internal = req.internal, "agent replied");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": reply_id, "draft": draft.map(|o| o.as_str()) })),
    ))
}

/// Applies the collision rule to a reply by `author` on a ticket held by `assignee` (the
/// caller holds the row lock): passes, takes the ticket over when asked, or 409 naming
/// `take_over` and the agent who holds it.
pub(crate) async fn resolve_collision(
    tx: &mut EventTx<'_>,
    who: &Principal,
    ticket_id: Uuid,
    assignee: Option<Uuid>,
    author: Uuid,
    take_over_asked: bool,
) -> Result<(), ApiError> {
    match collision(assignee, author, who.role) {
        Collision::None => Ok(()),
        Collision::Refused(_) if take_over_asked => take_over(tx, who, ticket_id, author).await,
        Collision::Refused(message) => {
            let name: Option<String> = match assignee {
                Some(a) => {
                    sqlx::query_scalar("SELECT name FROM agents WHERE id = $1")
                        .bind(a)
                        .fetch_optional(&mut **tx)
                        .await?
                }
                None => None,
            };
            Err(conflict(
                "take_over",
                match name {
                    Some(n) => format!("the ticket is assigned to {n}: {message}"),
                    None => message.to_string(),
                },
            ))
        }
    }
}

/// Stores `author`'s reply (or internal note) `reply_id` on `ticket_id` in `tx`: the message,
/// for a reply the response clocks and the outbound record to the ticket's channel, and the
/// ticket's `message_added` event. `false`: `reply_id` was stored before (a retry), nothing
/// done. The caller holds the row lock and has checked who may.
pub(crate) async fn add_reply(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    author: Uuid,
    text: &str,
    internal: bool,
    reply_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, ApiError> {
    let Some(t) = sqlx::query(
        "SELECT t.number, t.customer_id, t.channel, c.email, c.phone, c.name
         FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Err(ApiError::not_found("no such ticket"));
    };
    let number: String = t.try_get("number")?;
    let customer_id: Uuid = t.try_get("customer_id")?;
    let channel = parse_channel(t.try_get::<String, _>("channel")?.as_str());
    let direction = if internal {
        Direction::Note
    } else {
        Direction::Outbound
    };
    let inserted = sqlx::query(
        "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(reply_id)
    .bind(ticket_id)
    .bind(channel.as_str())
    .bind(if internal { "note" } else { "outbound" })
    .bind(author.to_string())
    .bind(text)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    if !internal {
        record_response(tx, ticket_id, author, reply_id, now).await?;
        let out = OutboundReply {
            reply_id,
            ticket_id,
            channel,
            to: CustomerRef {
                email: t.try_get("email")?,
                phone: t.try_get("phone")?,
                name: t.try_get("name")?,
                handle: None,
            },
            text: text.to_string(),
            author_agent_id: Some(author),
            in_reply_to: None,
        };
        tx.add(&Envelope::new(reply_id, now, out)).await?;
    }
    store::add_ticket_event(
        tx,
        derived_id(reply_id, "message_added"),
        ticket_id,
        &number,
        customer_id,
        TicketChange::MessageAdded {
            message_id: reply_id,
            direction,
            channel,
            automatic: false,
        },
    )
    .await?;
    Ok(true)
}

/// Whether a reply by `author` on a ticket held by `assignee` collides with someone's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collision {
    None,
    /// Refused unless the sender takes the ticket over; why.
    Refused(&'static str),
}

/// The collision rule of replies (notes never collide): the ticket's own agent replies freely;
/// a reply on a ticket assigned to another agent needs an explicit take-over, from anyone; an
/// agent takes a waiting (unassigned) ticket before answering it, while a supervisor or admin
/// may answer one without taking it.
pub fn collision(assignee: Option<Uuid>, author: Uuid, role: Role) -> Collision {
    match assignee {
        Some(a) if a == author => Collision::None,
        Some(_) => Collision::Refused("send with take_over: true to take it over"),
        None if role >= Role::Supervisor => Collision::None,
        None => Collision::Refused(
            "the ticket is waiting in the queue: send with take_over: true to take it",
        ),
    }
}

/// Assigns the ticket to `author` before its reply, in the reply's transaction (so a refused
/// reply takes nothing over). An agent takes over within its constraints; a supervisor
/// overrides them.
async fn take_over(
    tx: &mut EventTx<'_>,
    who: &Principal,
    ticket_id: Uuid,
    author: Uuid,
) -> Result<(), ApiError> {
    let req = switchboard_tickets::assign::Request {
        target: switchboard_tickets::assign::Target::Agent(author),
        reason: "took it over to reply".into(),
        by: crate::assign::actor(who),
        by_agent: who.agent_id,
        override_constraints: who.role >= Role::Supervisor,
    };
    let now = switchboard_core::clock::now();
    match switchboard_tickets::assign::assign(tx, ticket_id, &req, now).await? {
        Ok(outcome) => {
            info!(ticket_id = %ticket_id, agent_id = %author, released = ?outcome.released, "ticket taken over to reply");
            Ok(())
        }
        Err(r) => Err(crate::assign::refused(r)),
    }
}

/// `PUT /v1/tickets/{id}/status` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: String,
    /// The ticket version the caller saw (optimistic concurrency); omitted: last write wins.
    #[serde(default)]
    pub version: Option<i32>,
}

#[utoipa::path(put, path = "/v1/tickets/{id}/status", operation_id = "set_ticket_status", tag = "tickets", params(("id" = Uuid, Path)), request_body = StatusChange, responses((status = 200, description = "{id, status, version}"), (status = 400, description = "not a status"), (status = 403, description = "an agent on a ticket not assigned to it"), (status = 404, description = "no such ticket"), (status = 409, description = "stale version")), security(("bearer" = [])))]
async fn set_status(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StatusChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    Ok(Json(change_status(&api, &who, ticket_id, &req).await?))
}

/// Moves `ticket_id` to `req.status` as `who`, in one transaction with its events (the route
/// and bulk actions both).
pub(crate) async fn change_status(
    api: &Api,
    who: &Principal,
    ticket_id: Uuid,
    req: &StatusChange,
) -> Result<serde_json::Value, ApiError> {
    who.may_act_on_ticket(&api.pool, ticket_id).await?;
    let to = TicketStatus::parse(&req.status).ok_or_else(|| {
        ApiError::field(
            "status",
            format!(
                "{:?} is not one of open, pending, resolved, closed",
                req.status
            ),
        )
    })?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    // Again under the row lock: the ticket may have moved since the check above.
    who.check_assignee(assignee)?;
    let (version, changed) =
        status_in(&mut tx, &api.public_url, ticket_id, to, req.version).await?;
    if !changed {
        return Ok(
            serde_json::json!({ "id": ticket_id, "status": to.as_str(), "version": version }),
        );
    }
    committed(
        tx.commit(&api.outbox).await,
        "status stored, announcement delayed",
    )?;
    info!(ticket_id = %ticket_id, to = to.as_str(), "ticket status changed");
    Ok(serde_json::json!({ "id": ticket_id, "status": to.as_str(), "version": version }))
}

/// Moves `ticket_id` to `to` in `tx` with its events (reopened, resolved, the CSAT invitation,
/// the agent's slot freed); 409 naming `version` when `expected` is stale, naming a required
/// field when resolving without it. Returns the version after and whether anything changed.
/// The caller holds the row lock and has checked who may.
pub(crate) async fn status_in(
    tx: &mut EventTx<'_>,
    public_url: &str,
    ticket_id: Uuid,
    to: TicketStatus,
    expected: Option<i32>,
) -> Result<(i32, bool), ApiError> {
    use switchboard_tickets::status::{self, Refused};
    match status::change(tx, public_url, ticket_id, to, expected).await? {
        Ok(done) => Ok(done),
        Err(Refused::NotFound) => Err(ApiError::not_found("no such ticket")),
        Err(Refused::Version(version)) => Err(conflict(
            "version",
            format!("the ticket changed (version {version}); reload and retry"),
        )),
        Err(Refused::Required(key)) => Err(ApiError {
            field: Some(format!("fields.{key}")),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the field {key} is required to resolve the ticket"),
            )
        }),
    }
}

/// `POST /v1/tickets/{id}/merge` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    pub into_ticket_id: String,
}

/// Merges a ticket into another of the same customer: its messages move over, it closes
/// (freeing its agent) and points at the target, so later messages naming it land there.
#[utoipa::path(post, path = "/v1/tickets/{id}/merge", tag = "tickets", params(("id" = Uuid, Path)), request_body = Merge, responses((status = 200, description = "merged"), (status = 400, description = "a field is invalid, named"), (status = 403, description = "supervisors only"), (status = 404, description = "no such ticket"), (status = 409, description = "already merged")), security(("bearer" = [])))]
async fn merge(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Merge>,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(Role::Supervisor)?;
    let source = parse_id(&id, "id")?;
    let target = parse_id(&req.into_ticket_id, "into_ticket_id")?;
    Ok(Json(merge_one(&api, &who, source, target).await?))
}

/// Merges `source` into `target` (the route and bulk actions; the caller checked the role).
pub(crate) async fn merge_one(
    api: &Api,
    who: &Principal,
    source: Uuid,
    target: Uuid,
) -> Result<serde_json::Value, ApiError> {
    if source == target {
        return Err(ApiError::field(
            "into_ticket_id",
            "a ticket cannot be merged into itself",
        ));
    }
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    // Both rows locked in id order, so two merges never deadlock.
    let rows = sqlx::query(
        "SELECT id, number, customer_id, status, merged_into FROM tickets WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(vec![source, target])
    .fetch_all(&mut *tx)
    .await?;
    let find = |id: Uuid| {
        rows.iter()
            .find(|r| r.try_get::<Uuid, _>("id").ok() == Some(id))
    };
    let (Some(src), Some(dst)) = (find(source), find(target)) else {
        return Err(match find(source) {
            None => ApiError::not_found("no such ticket"),
            Some(_) => ApiError::field("into_ticket_id", "no such ticket"),
        });
    };
    let customer: Uuid = src.try_get("customer_id")?;
    if dst.try_get::<Uuid, _>("customer_id")? != customer {
        return Err(ApiError::field(
            "into_ticket_id",
            "tickets of different customers cannot be merged",
        ));
    }
    if src.try_get::<Option<Uuid>, _>("merged_into")?.is_some() {
        return Err(conflict("id", "the ticket is already merged"));
    }
    if dst.try_get::<Option<Uuid>, _>("merged_into")?.is_some() {
        return Err(ApiError::field(
            "into_ticket_id",
            "that ticket was itself merged away",
        ));
    }
    let number: String = src.try_get("number")?;
    let from = TicketStatus::parse(src.try_get::<String, _>("status")?.as_str())
        .unwrap_or(TicketStatus::Open);
    let moved = sqlx::query("UPDATE messages SET ticket_id = $2 WHERE ticket_id = $1")
        .bind(source)
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    row::merge(&mut tx, source, target, switchboard_core::clock::now()).await?;
    let cause = derived_id(source, &format!("merge:{target}"));
    store::add_ticket_event(
        &mut tx,
        derived_id(cause, "merged"),
        source,
        &number,
        customer,
        TicketChange::Merged {
            into_ticket_id: target,
        },
    )
    .await?;
    if from != TicketStatus::Closed {
        store::add_ticket_event(
            &mut tx,
            derived_id(cause, "closed"),
            source,
            &number,
            customer,
            TicketChange::StatusChanged {
                from,
                to: TicketStatus::Closed,
            },
        )
        .await?;
    }
    store::release(&mut tx, source, "ticket merged").await?;
    committed(
        tx.commit(&api.outbox).await,
        "merge stored, announcement delayed",
    )?;
    info!(ticket_id = %source, into = %target, messages = moved, "ticket merged");
    Ok(serde_json::json!({ "id": source, "merged_into": target, "messages_moved": moved }))
}

/// `POST /v1/assignments/{id}/accept` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    pub agent_id: String,
}

#[utoipa::path(post, path = "/v1/assignments/{id}/accept", tag = "agents", params(("id" = Uuid, Path)), request_body = Accept, responses((status = 200, description = "accepted"), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent accepting for another agent or another agent's assignment"), (status = 404, description = "no such assignment"), (status = 409, description = "the assignment was released")), security(("bearer" = [])))]
async fn accept(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Accept>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let assignment_id = parse_id(&id, "id")?;
    let agent_id = parse_id(&req.agent_id, "agent_id")?;
    who.require_self_or(agent_id)?;
    let row = sqlx::query(
        "UPDATE assignments SET accepted_at = COALESCE(accepted_at, $3)
         WHERE id = $1 AND agent_id = $2 AND released_at IS NULL RETURNING accepted_at",
    )
    .bind(assignment_id)
    .bind(agent_id)
    .bind(switchboard_core::clock::now())
    .fetch_optional(&api.pool)
    .await?;
    match row {
        Some(r) => {
            let at: DateTime<Utc> = r.try_get("accepted_at")?;
            Ok(Json(
                serde_json::json!({ "id": assignment_id, "accepted_at": at }),
            ))
        }
        None => {
            let state: Option<(Uuid, Option<String>)> =
                sqlx::query_as("SELECT agent_id, release_reason FROM assignments WHERE id = $1")
                    .bind(assignment_id)
                    .fetch_optional(&api.pool)
                    .await?;
            match state {
                None => Err(ApiError::not_found("no such assignment")),
                // An agent accepting someone else's assignment is refused as such; a
                // supervisor naming the wrong agent made a mistake in a field.
                Some((owner, _)) if owner != agent_id && who.role == Role::Agent => {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "an agent may accept only its own assignments",
                    ))
                }
                Some((owner, _)) if owner != agent_id => Err(ApiError::field(
                    "agent_id",
                    "this assignment belongs to another agent",
                )),
                Some((_, reason)) => Err(conflict(
                    "id",
                    format!(
                        "the assignment was released ({})",
                        reason.unwrap_or_default()
                    ),
                )),
            }
        }
    }
}

/// What an agent's change answers when its commit or announcement failed: nothing stored is the
/// store's error; stored but not yet announced is a 503 naming what was stored (the outbox sweep
/// announces it).
pub(crate) fn committed(
    r: Result<(), CommitError>,
    stored_but_delayed: &str,
) -> Result<(), ApiError> {
    match r {
        Ok(()) => Ok(()),
        Err(CommitError::Commit(e)) => Err(e.into()),
        Err(CommitError::Publish(e)) => {
            Err(ApiError::unavailable(format!("{stored_but_delayed}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_collide_with_someone_elses_ticket_whoever_sends_them() {
        let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
        for role in [Role::Agent, Role::Supervisor, Role::Admin] {
            assert_eq!(collision(Some(ann), ann, role), Collision::None);
            assert!(matches!(
                collision(Some(bob), ann, role),
                Collision::Refused(_)
            ));
        }
        // A waiting ticket: an agent takes it first, a supervisor may answer it as it is.
        assert!(matches!(
            collision(None, ann, Role::Agent),
            Collision::Refused(_)
        ));
        assert_eq!(collision(None, ann, Role::Supervisor), Collision::None);
    }
}
