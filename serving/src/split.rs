//! Split: `POST /v1/tickets/{id}/split` moves selected messages into a new ticket of the same
//! customer (a second question asked in the same thread).
//!
//! One transaction under the source ticket's row lock, by its agent or a supervisor. The new
//! ticket copies the source's channel, subject, priority, category, skill and language, points
//! back (`split_from`), and its history is replayed as events at the times they happened: its
//! `created` at the first moved customer message and a `message_added` per moved message, so the
//! SLA stage starts its clocks when the customer asked (a question that has waited past its
//! target is breached at once, as it should be) and a moved reply stops the first-response
//! clock (a moved reply older than the question is history and stops nothing). The new ticket
//! keeps the conversation (a chat's replies still reach the customer's chat); later messages of
//! that conversation join the newest open ticket of it, the split one. The router then routes it
//! like any new ticket. The source gets a `split_off` event
//! naming the new ticket and the messages. The new ticket's id derives from the source and the
//! message set, so a retry answers with the same ticket and moves nothing twice.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{derived_id, Channel, Direction, TicketChange};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::store;
use uuid::Uuid;

use crate::auth::Principal;
use crate::work::{committed, conflict};
use crate::{parse_id, Api};

/// The most messages one split moves.
pub const MAX_MESSAGES: usize = 500;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/{id}/split", post(split))
}

/// `POST /v1/tickets/{id}/split` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitInput {
    /// The messages to move, at least one from the customer; not all of the ticket's.
    pub message_ids: Vec<Uuid>,
}

/// The new ticket.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitOutput {
    pub ticket_id: Uuid,
    pub number: String,
    pub split_from: Uuid,
    pub messages_moved: usize,
    /// A retry: the split was done before.
    pub duplicate: bool,
}

#[derive(sqlx::FromRow)]
struct Source {
    number: String,
    customer_id: Uuid,
    channel: String,
    subject: Option<String>,
    priority: String,
    priority_rank: i16,
    category: Option<String>,
    required_skill: Option<String>,
    language: Option<String>,
    conversation_key: Option<String>,
    status: String,
    merged_into: Option<Uuid>,
    assigned_agent_id: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct Moved {
    id: Uuid,
    direction: String,
    received_at: DateTime<Utc>,
    /// A machine sent it (`metadata.automatic`).
    automatic: bool,
}

#[utoipa::path(post, path = "/v1/tickets/{id}/split", operation_id = "split_ticket", tag = "tickets", params(("id" = Uuid, Path)), request_body = SplitInput, responses((status = 201, body = SplitOutput, description = "the new ticket, routed like any new one"), (status = 200, body = SplitOutput, description = "a retry of the same split"), (status = 400, description = "`message_ids`: empty, too many, listed twice, not this ticket's (`message_ids[i]`), none from the customer, or every message of the ticket"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such ticket"), (status = 409, description = "the ticket was merged")), security(("bearer" = [])))]
async fn split(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SplitInput>,
) -> Result<(StatusCode, Json<SplitOutput>), ApiError> {
    let source_id = parse_id(&id, "id")?;
    let ids = input.message_ids;
    if ids.is_empty() || ids.len() > MAX_MESSAGES {
        return Err(ApiError::field(
            "message_ids",
            format!("1 to {MAX_MESSAGES} messages"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(i) = ids.iter().position(|m| !seen.insert(*m)) {
        return Err(ApiError::field(format!("message_ids[{i}]"), "listed twice"));
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    let key: String = sorted.iter().map(|m| m.simple().to_string()).collect();
    let new_id = derived_id(source_id, &format!("split:{key}"));

    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, source_id).await?;
    who.check_assignee(assignee)?;
    let done: Option<String> = sqlx::query_scalar("SELECT number FROM tickets WHERE id = $1")
        .bind(new_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(number) = done {
        return Ok((
            StatusCode::OK,
            Json(SplitOutput {
                ticket_id: new_id,
                number,
                split_from: source_id,
                messages_moved: ids.len(),
                duplicate: true,
            }),
        ));
    }
    let src: Source = sqlx::query_as(
        "SELECT number, customer_id, channel, subject, priority, priority_rank, category, required_skill,
                language, conversation_key, status, merged_into, assigned_agent_id
         FROM tickets WHERE id = $1",
    )
    .bind(source_id)
    .fetch_one(&mut *tx)
    .await?;
    if src.merged_into.is_some() {
        return Err(conflict(
            "id",
            "the ticket was merged; split the one it was merged into",
        ));
    }
    let moved: Vec<Moved> = sqlx::query_as(
        "SELECT id, direction, received_at, metadata ? 'automatic' AS automatic FROM messages WHERE ticket_id = $1 AND id = ANY($2)
         ORDER BY received_at, id",
    )
    .bind(source_id)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if moved.len() != ids.len() {
        let found: std::collections::HashSet<Uuid> = moved.iter().map(|m| m.id).collect();
        let i = ids.iter().position(|m| !found.contains(m)).unwrap_or(0);
        return Err(ApiError::field(
            format!("message_ids[{i}]"),
            "not a message of this ticket",
        ));
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE ticket_id = $1")
        .bind(source_id)
        .fetch_one(&mut *tx)
        .await?;
    if total as usize == moved.len() {
        return Err(ApiError::field(
            "message_ids",
            "leave at least one message on the ticket (or reassign it instead)",
        ));
    }
    let Some(asked) = moved
        .iter()
        .find(|m| m.direction == "inbound")
        .map(|m| m.received_at)
    else {
        return Err(ApiError::field(
            "message_ids",
            "a new ticket starts with a customer message: include one",
        ));
    };
    let now = switchboard_core::clock::now();
    let seq: i64 = sqlx::query_scalar("SELECT nextval('ticket_number_seq')")
        .fetch_one(&mut *tx)
        .await?;
    let number = format!("T-{}-{:06}", now.year(), seq);
    let channel = Channel::parse(&src.channel).unwrap_or(Channel::Api);
    sqlx::query(
        "INSERT INTO tickets (id, number, customer_id, channel, conversation_key, subject, status, priority,
                              priority_rank, category, required_skill, language, split_from, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(new_id)
    .bind(&number)
    .bind(src.customer_id)
    .bind(&src.channel)
    .bind(&src.conversation_key)
    .bind(&src.subject)
    .bind(&src.priority)
    .bind(src.priority_rank)
    .bind(&src.category)
    .bind(&src.required_skill)
    .bind(&src.language)
    .bind(source_id)
    .bind(asked)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE messages SET ticket_id = $2 WHERE id = ANY($1)")
        .bind(&ids)
        .bind(new_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE note_mentions SET ticket_id = $2 WHERE message_id = ANY($1)")
        .bind(&ids)
        .bind(new_id)
        .execute(&mut *tx)
        .await?;
    // The first response, if a moved reply answered the moved question.
    sqlx::query(
        "UPDATE tickets SET first_response_at = (SELECT min(received_at) FROM messages
            WHERE ticket_id = $1 AND direction = 'outbound' AND received_at >= $2)
         WHERE id = $1",
    )
    .bind(new_id)
    .bind(asked)
    .execute(&mut *tx)
    .await?;
    let priority = switchboard_contracts::Priority::parse(&src.priority)
        .unwrap_or(switchboard_contracts::Priority::Medium);
    // The new ticket's history, at the times it happened.
    store::add_ticket_event_at(
        &mut tx,
        derived_id(new_id, "created"),
        new_id,
        &number,
        src.customer_id,
        TicketChange::Created {
            channel,
            subject: src.subject.clone(),
            priority,
            category: src.category.clone(),
            required_skill: src.required_skill.clone(),
            language: src.language.clone(),
        },
        asked,
    )
    .await?;
    // Replies written before the question are history, not an answer to it: replaying them
    // would stop the new ticket's first-response clock.
    for m in moved
        .iter()
        .filter(|m| !(m.direction == "outbound" && m.received_at < asked))
    {
        let direction = match m.direction.as_str() {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            _ => Direction::Note,
        };
        store::add_ticket_event_at(
            &mut tx,
            derived_id(new_id, &format!("moved:{}", m.id)),
            new_id,
            &number,
            src.customer_id,
            TicketChange::MessageAdded {
                message_id: m.id,
                direction,
                channel,
                automatic: m.automatic,
            },
            m.received_at.max(asked),
        )
        .await?;
    }
    store::add_ticket_event(
        &mut tx,
        derived_id(new_id, "split_off"),
        source_id,
        &src.number,
        src.customer_id,
        TicketChange::SplitOff {
            into_ticket_id: new_id,
            message_ids: moved.iter().map(|m| m.id).collect(),
        },
    )
    .await?;
    sqlx::query("UPDATE tickets SET version = version + 1, updated_at = $2 WHERE id = $1")
        .bind(source_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    committed(
        tx.commit(&api.outbox).await,
        "the split is stored; its events are delayed",
    )?;
    tracing::info!(ticket_id = %source_id, into = %new_id, messages = moved.len(), status = %src.status, holder = ?src.assigned_agent_id, "ticket split");
    Ok((
        StatusCode::CREATED,
        Json(SplitOutput {
            ticket_id: new_id,
            number,
            split_from: source_id,
            messages_moved: moved.len(),
            duplicate: false,
        }),
    ))
}
