//! Bulk actions: `POST /v1/tickets/bulk` applies one action (tags, status, assign, merge into
//! one ticket, apply a macro) to up to
//! [`MAX_TICKETS`] tickets, each ticket in its own transaction through the same code as the
//! single-ticket route, so a ticket the caller may not touch (or that moved) fails alone and the
//! rest go through. The answer lists every ticket's outcome in the order given.
//!
//! The action is checked before any ticket is touched: a bad tag or status is one 400 naming
//! it (`action.add[2]`), not a hundred failures.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::tags;
use uuid::Uuid;

use crate::assign::AssignInput;
use crate::auth::Principal;
use crate::Api;

/// The most tickets one bulk action touches.
pub const MAX_TICKETS: usize = 100;
/// Tickets worked at once.
const CONCURRENCY: usize = 8;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/bulk", post(bulk))
}

/// What to do to each ticket.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = BulkAction)]
pub enum Action {
    /// Add and remove tags.
    Tags {
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Set the status (`open`, `pending`, `resolved`, `closed`).
    Status { status: String },
    /// Give to an agent, a team's queue, or back to the queue (as `POST /v1/tickets/{id}/assign`).
    Assign {
        agent_id: Option<Uuid>,
        team_id: Option<Uuid>,
        #[serde(default)]
        reason: String,
        #[serde(default, rename = "override")]
        override_constraints: bool,
    },
    /// Merge each ticket into `into_ticket_id` (supervisors; same customer).
    Merge { into_ticket_id: Uuid },
    /// Apply a macro to each ticket (as `POST /v1/tickets/{id}/macros/{macro_id}`, each ticket
    /// all or nothing).
    Macro {
        macro_id: Uuid,
        #[serde(default)]
        agent_id: Option<Uuid>,
        #[serde(default)]
        take_over: bool,
        /// Idempotency key: a retried bulk call applies nothing twice to any ticket.
        #[serde(default)]
        request_id: Option<String>,
    },
}

/// A bulk action.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkInput {
    /// 1 to 100 tickets, each once.
    pub ticket_ids: Vec<Uuid>,
    pub action: Action,
}

/// Why one ticket failed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

/// One ticket's outcome.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    pub ticket_id: Uuid,
    /// The HTTP status the single-ticket route would have answered.
    pub status: u16,
    /// What the single-ticket route answers, when it succeeded.
    pub result: Option<serde_json::Value>,
    pub error: Option<Failure>,
}

/// Every ticket's outcome, in the order given.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkOutput {
    pub results: Vec<Outcome>,
    pub succeeded: usize,
    pub failed: usize,
    /// The changes are stored but the broker did not take their events now; the outbox sweep
    /// publishes them within seconds (what a single ticket's route answers with 503).
    pub events_delayed: bool,
}

/// The action, checked: tags normalised, the status known.
enum Checked {
    Tags(Vec<String>, Vec<String>),
    Status(crate::work::StatusChange),
    Assign(AssignInput),
    Merge(Uuid),
    Macro(Uuid, crate::macros::ApplyInput),
}

fn check(action: Action) -> Result<Checked, ApiError> {
    match action {
        Action::Tags { add, remove } => {
            if add.is_empty() && remove.is_empty() {
                return Err(ApiError::field("action.add", "name a tag to add or remove"));
            }
            let named = |list: &'static str| {
                move |(i, e): (usize, tags::TagError)| {
                    ApiError::field(format!("action.{list}[{i}]"), e.to_string())
                }
            };
            Ok(Checked::Tags(
                tags::normalise_all(&add).map_err(named("add"))?,
                tags::normalise_all(&remove).map_err(named("remove"))?,
            ))
        }
        Action::Status { status } => {
            if switchboard_contracts::TicketStatus::parse(&status).is_none() {
                return Err(ApiError::field(
                    "action.status",
                    format!("{status:?} is not one of open, pending, resolved, closed"),
                ));
            }
            Ok(Checked::Status(crate::work::StatusChange {
                status,
                version: None,
            }))
        }
        Action::Assign {
            agent_id,
            team_id,
            reason,
            override_constraints,
        } => Ok(Checked::Assign(AssignInput {
            agent_id,
            team_id,
            reason,
            override_constraints,
        })),
        Action::Merge { into_ticket_id } => Ok(Checked::Merge(into_ticket_id)),
        Action::Macro {
            macro_id,
            agent_id,
            take_over,
            request_id,
        } => Ok(Checked::Macro(
            macro_id,
            crate::macros::ApplyInput {
                agent_id,
                take_over,
                preview: false,
                request_id,
            },
        )),
    }
}

#[utoipa::path(post, path = "/v1/tickets/bulk", operation_id = "bulk_action", tag = "tickets", request_body = BulkInput, responses((status = 200, body = BulkOutput, description = "every ticket's outcome: each succeeded or failed alone"), (status = 400, description = "the action or the list is invalid, named (`action.add[1]`, `ticket_ids`)")), security(("bearer" = [])))]
async fn bulk(
    State(api): State<Api>,
    who: Principal,
    ApiJson(input): ApiJson<BulkInput>,
) -> Result<Json<BulkOutput>, ApiError> {
    Ok(Json(apply(&api, &who, input).await?))
}

/// Applies a bulk action as `who` (the route, and `switchboard-sim bench workspace`).
pub async fn apply(api: &Api, who: &Principal, input: BulkInput) -> Result<BulkOutput, ApiError> {
    let ids = input.ticket_ids;
    if ids.is_empty() || ids.len() > MAX_TICKETS {
        return Err(ApiError::field(
            "ticket_ids",
            format!("1 to {MAX_TICKETS} tickets"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(i) = ids.iter().position(|id| !seen.insert(*id)) {
        return Err(ApiError::field(format!("ticket_ids[{i}]"), "listed twice"));
    }
    let action = check(input.action)?;
    if let Checked::Assign(a) = &action {
        // The same rules the single route applies before it looks at a ticket.
        if a.override_constraints && who.role < crate::auth::Role::Supervisor {
            return Err(ApiError {
                field: Some("action.override".into()),
                ..ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "forbidden",
                    "only a supervisor overrides an agent's constraints",
                )
            });
        }
    }
    match &action {
        Checked::Merge(_) => who.require(crate::auth::Role::Supervisor)?,
        // An unknown macro is one 404, not a hundred.
        Checked::Macro(m, _) => {
            crate::macros::visible(api, who, *m)
                .await
                .map_err(|e| ApiError {
                    field: Some("action.macro_id".into()),
                    ..e
                })?;
        }
        _ => {}
    }
    let started = std::time::Instant::now();
    // Each ticket's transaction commits alone; their events go to the broker in one batch at
    // the end (in commit order per ticket), not a round trip and an outbox delete each.
    let api = &Api {
        outbox: api.outbox.deferring(),
        ..api.clone()
    };
    let action = &action;
    let results: Vec<Outcome> = futures::stream::iter(ids)
        .map(|ticket_id| async move {
            let r = match action {
                Checked::Tags(add, remove) => crate::tags::change(api, who, ticket_id, add, remove)
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default()),
                Checked::Status(s) => crate::work::change_status(api, who, ticket_id, s).await,
                Checked::Assign(a) => crate::assign::assign_one(api, who, ticket_id, a)
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default()),
                Checked::Merge(into) => crate::work::merge_one(api, who, ticket_id, *into).await,
                Checked::Macro(m, input) => crate::macros::apply(api, who, ticket_id, *m, input)
                    .await
                    .map(|o| serde_json::to_value(o).unwrap_or_default()),
            };
            match r {
                Ok(v) => Outcome {
                    ticket_id,
                    status: 200,
                    result: Some(v),
                    error: None,
                },
                Err(e) => Outcome {
                    ticket_id,
                    status: e.status.as_u16(),
                    result: None,
                    error: Some(Failure {
                        code: e.code.to_string(),
                        message: e.message,
                        field: e.field,
                    }),
                },
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let events_delayed = match api.outbox.flush().await {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(error = %e, "bulk action stored; its events wait for the outbox sweep");
            true
        }
    };
    let succeeded = results.iter().filter(|r| r.error.is_none()).count();
    tracing::info!(
        tickets = results.len(),
        succeeded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bulk action"
    );
    Ok(BulkOutput {
        failed: results.len() - succeeded,
        succeeded,
        results,
        events_delayed,
    })
}
