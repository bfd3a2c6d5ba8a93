//! Assign and transfer: `POST /v1/tickets/{id}/assign` gives a ticket to an agent
//! (`agent_id`), hands it to a team's queue (`team_id`), or releases it to the queue (neither),
//! with a reason, through [`switchboard_tickets::assign`].
//!
//! An agent moves the tickets it holds, and takes an unassigned ticket for itself; it cannot
//! override an agent's constraints (offline, full, lacking the skill). A supervisor moves any
//! ticket and may override (`override: true`); the recorded reason names what was overridden.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::assign::{self, Refusal, Request, Target};
use uuid::Uuid;

use crate::auth::{forbidden, Principal, Role};
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/{id}/assign", post(assign_ticket))
}

/// Where the ticket goes: `agent_id`, `team_id`, or neither (the queue).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignInput {
    pub agent_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    /// Why (kept in the assignment's reason): up to 500 characters.
    #[serde(default)]
    pub reason: String,
    /// Assign even if the agent is offline, full or lacks the skill (supervisors only).
    #[serde(default, rename = "override")]
    pub override_constraints: bool,
}

/// What the assignment did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignOutput {
    pub ticket_id: Uuid,
    /// The ticket's agent after it (none: in a queue).
    pub agent_id: Option<Uuid>,
    pub assignment_id: Option<Uuid>,
    /// The agent it was taken from.
    pub released_agent_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    /// As recorded with the assignment and shown where routing decisions are explained.
    pub reason: String,
    /// The constraints a supervisor overrode.
    pub overridden: Vec<String>,
}

/// Who did it, as recorded.
pub(crate) fn actor(who: &Principal) -> String {
    who.name()
}

#[utoipa::path(post, path = "/v1/tickets/{id}/assign", operation_id = "assign_ticket", tag = "tickets", params(("id" = Uuid, Path)), request_body = AssignInput, responses((status = 200, body = AssignOutput), (status = 400, description = "a field is invalid, named; `agent_id` and `team_id` together"), (status = 403, description = "an agent on a ticket it does not hold, or overriding"), (status = 404, description = "no such ticket"), (status = 409, description = "the agent cannot take it (`agent_id`: offline, full, lacking the skill; a supervisor may override) or the ticket is solved or merged"), (status = 503, description = "stored; its events are delayed")), security(("bearer" = [])))]
async fn assign_ticket(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<AssignInput>,
) -> Result<Json<AssignOutput>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    Ok(Json(assign_one(&api, &who, ticket_id, &input).await?))
}

/// The answer to a refused assignment.
pub(crate) fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::NoTicket => ApiError::not_found("no such ticket"),
        Refusal::NoAgent => ApiError::field("agent_id", r.to_string()),
        Refusal::NoTeam => ApiError::field("team_id", r.to_string()),
        Refusal::Constraints(_) => crate::work::conflict("agent_id", r.to_string()),
        Refusal::Solved(_) | Refusal::Merged => {
            ApiError::new(StatusCode::CONFLICT, "conflict", r.to_string())
        }
    }
}

/// Gives `ticket_id` where `input` says, as `who` (the route and bulk actions both).
pub(crate) async fn assign_one(
    api: &Api,
    who: &Principal,
    ticket_id: Uuid,
    input: &AssignInput,
) -> Result<AssignOutput, ApiError> {
    let reason = input.reason.trim();
    if reason.chars().count() > 500 || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::field(
            "reason",
            "up to 500 characters, no control characters",
        ));
    }
    let target = match (input.agent_id, input.team_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "team_id",
                "give the ticket to an agent or to a team, not both",
            ))
        }
        (Some(a), None) => Target::Agent(a),
        (None, Some(t)) => Target::Team(t),
        (None, None) => Target::Queue,
    };
    if input.override_constraints && who.role < Role::Supervisor {
        return Err(ApiError {
            field: Some("override".into()),
            ..forbidden("only a supervisor overrides an agent's constraints")
        });
    }
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    // Under the row lock: an agent moves what it holds, or takes a waiting ticket for itself.
    let taking_for_itself =
        assignee.is_none() && target == Target::Agent(who.agent_id.unwrap_or_default());
    if !taking_for_itself {
        who.check_assignee(assignee)?;
    }
    let req = Request {
        target,
        reason: reason.to_string(),
        by: actor(who),
        by_agent: who.agent_id,
        override_constraints: input.override_constraints,
    };
    let now = switchboard_core::clock::now();
    let outcome = assign::assign(&mut tx, ticket_id, &req, now)
        .await?
        .map_err(refused)?;
    committed(
        tx.commit(&api.outbox).await,
        "the assignment is stored; its events are delayed",
    )?;
    tracing::info!(ticket_id = %ticket_id, target = ?target, by = %req.by, overridden = outcome.overridden.len(), "ticket assigned by hand");
    let agent_id = match (outcome.assigned, target) {
        (Some((_, a)), _) => Some(a),
        // Already this agent's: nothing changed.
        (None, Target::Agent(a)) => Some(a),
        (None, _) => None,
    };
    Ok(AssignOutput {
        ticket_id,
        agent_id,
        assignment_id: outcome.assigned.map(|(id, _)| id),
        released_agent_id: outcome.released,
        team_id: outcome.team_id,
        reason: outcome.reason,
        overridden: outcome.overridden,
    })
}
