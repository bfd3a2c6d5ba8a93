//! Internal notes with mentions: `POST /v1/tickets/{id}/notes` (any agent, on any ticket: a
//! note is how a colleague is brought in) and `GET /v1/agents/{id}/mentions` (the notes that
//! named an agent, newest first). A mentioned agent is told on its live stream (`mention`),
//! whether or not it holds the ticket. A note is never sent to the customer.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_contracts::derived_id;
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use switchboard_tickets::notes::{self, NoteError, MAX_BYTES};
use uuid::Uuid;

use crate::auth::Principal;
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tickets/{id}/notes", post(add))
        .route("/v1/agents/{id}/mentions", get(mentions))
}

/// A new internal note.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteInput {
    /// 1 byte to 64 KiB; `@email` or `@agent-id` mentions an agent.
    pub text: String,
    /// Agents to tell besides those the text names (the console's autocomplete).
    #[serde(default)]
    pub mentions: Vec<Uuid>,
    /// Makes a retry safe: the same id stores the note once.
    pub request_id: Option<String>,
}

/// A stored note.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoteOutput {
    pub id: Uuid,
    /// The agents told.
    pub mentioned: Vec<Uuid>,
    /// A retry of a stored note.
    pub duplicate: bool,
}

#[utoipa::path(post, path = "/v1/tickets/{id}/notes", operation_id = "add_note", tag = "tickets", params(("id" = Uuid, Path)), request_body = NoteInput, responses((status = 201, body = NoteOutput), (status = 200, body = NoteOutput, description = "a retry of the same request_id"), (status = 400, description = "a field is invalid, named (`mentions[1]`)"), (status = 404, description = "no such ticket"), (status = 503, description = "stored; its events are delayed")), security(("bearer" = [])))]
async fn add(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<NoteInput>,
) -> Result<(StatusCode, Json<NoteOutput>), ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    let text = input.text.trim();
    if text.is_empty() || text.len() > MAX_BYTES {
        return Err(ApiError::field("text", "1 byte to 64 KiB"));
    }
    if text.contains(|c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(ApiError::field("text", "no control characters"));
    }
    if input.mentions.len() > notes::MAX_MENTIONS {
        return Err(ApiError::field(
            "mentions",
            format!("at most {} agents", notes::MAX_MENTIONS),
        ));
    }
    let message_id = match &input.request_id {
        Some(r) if r.is_empty() || r.len() > 200 => {
            return Err(ApiError::field("request_id", "1 to 200 characters"))
        }
        Some(r) => derived_id(ticket_id, &format!("note:{r}")),
        None => Uuid::now_v7(),
    };
    let author = match who.agent_id {
        Some(a) => a.to_string(),
        None => crate::assign::actor(&who),
    };
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let now = switchboard_core::clock::now();
    let added = match notes::add(
        &mut tx,
        ticket_id,
        message_id,
        (who.agent_id, &author),
        text,
        &input.mentions,
        now,
    )
    .await?
    {
        Ok(a) => a,
        Err(NoteError::NoTicket) => return Err(ApiError::not_found("no such ticket")),
        Err(e @ NoteError::NoAgent(i)) => {
            return Err(ApiError::field(format!("mentions[{i}]"), e.to_string()))
        }
        Err(e @ NoteError::TooMany) => return Err(ApiError::field("text", e.to_string())),
    };
    committed(
        tx.commit(&api.outbox).await,
        "the note is stored; its events are delayed",
    )?;
    tracing::info!(ticket_id = %ticket_id, message_id = %added.message_id, mentioned = added.mentioned.len(), "note added");
    let status = if added.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(NoteOutput {
            id: added.message_id,
            mentioned: added.mentioned,
            duplicate: added.duplicate,
        }),
    ))
}

/// `GET /v1/agents/{id}/mentions` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MentionsQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// A note that named the agent.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Mention {
    pub message_id: Uuid,
    pub ticket_id: Uuid,
    pub ticket_number: String,
    /// Who wrote it: an agent's id, or the token that did.
    pub author: Option<String>,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/v1/agents/{id}/mentions", operation_id = "agent_mentions", tag = "agents", params(("id" = Uuid, Path), MentionsQuery), responses((status = 200, body = [Mention], description = "newest first"), (status = 403, description = "another agent's")), security(("bearer" = [])))]
async fn mentions(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MentionsQuery>,
) -> Result<Json<Vec<Mention>>, ApiError> {
    let agent = parse_id(&id, "id")?;
    who.require_self_or(agent)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 200"));
    }
    let rows: Vec<Mention> = sqlx::query_as(
        "SELECT n.message_id, n.ticket_id, t.number AS ticket_number, m.author, m.text, n.created_at
         FROM note_mentions n JOIN messages m ON m.id = n.message_id JOIN tickets t ON t.id = n.ticket_id
         WHERE n.agent_id = $1 ORDER BY n.created_at DESC, n.message_id DESC LIMIT $2",
    )
    .bind(agent)
    .bind(limit)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}
