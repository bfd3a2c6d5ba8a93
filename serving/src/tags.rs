//! Tags on a ticket: `POST /v1/tickets/{id}/tags` adds, `DELETE` removes (`{tags: [...]}`,
//! normalised as [`switchboard_tickets::tags`] says). An agent tags the tickets it holds, a
//! supervisor any; each change is one `tags_changed` event.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::tags;
use uuid::Uuid;

use crate::auth::Principal;
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/{id}/tags", post(add).delete(remove))
}

/// Tags to add or remove.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsInput {
    pub tags: Vec<String>,
}

/// The ticket's tags after a change.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagsOutput {
    pub id: Uuid,
    /// Every tag the ticket carries now, sorted.
    pub tags: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub version: i32,
}

#[utoipa::path(post, path = "/v1/tickets/{id}/tags", operation_id = "add_tags", tag = "tickets", params(("id" = Uuid, Path)), request_body = TagsInput, responses((status = 200, body = TagsOutput), (status = 400, description = "a tag is invalid, named (`tags[1]`), or the ticket would carry more than 50"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such ticket"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn add(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TagsInput>,
) -> Result<Json<TagsOutput>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    Ok(Json(change(&api, &who, ticket_id, &input.tags, &[]).await?))
}

#[utoipa::path(delete, path = "/v1/tickets/{id}/tags", operation_id = "remove_tags", tag = "tickets", params(("id" = Uuid, Path)), request_body = TagsInput, responses((status = 200, body = TagsOutput), (status = 400, description = "a tag is invalid, named (`tags[1]`)"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such ticket"), (status = 503, description = "stored; its event is delayed")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TagsInput>,
) -> Result<Json<TagsOutput>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    Ok(Json(change(&api, &who, ticket_id, &[], &input.tags).await?))
}

/// Adds `add` and removes `remove` on `ticket_id` as `who`: one transaction with its event (the
/// route and bulk actions both).
pub(crate) async fn change(
    api: &Api,
    who: &Principal,
    ticket_id: Uuid,
    add: &[String],
    remove: &[String],
) -> Result<TagsOutput, ApiError> {
    if add.is_empty() && remove.is_empty() {
        return Err(ApiError::field("tags", "name at least one tag"));
    }
    let named =
        |(i, e): (usize, tags::TagError)| ApiError::field(format!("tags[{i}]"), e.to_string());
    let add = tags::normalise_all(add).map_err(named)?;
    let remove = tags::normalise_all(remove).map_err(named)?;
    who.may_act_on_ticket(&api.pool, ticket_id).await?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    // Again under the row lock: the ticket may have moved since the check above.
    who.check_assignee(assignee)?;
    let now = switchboard_core::clock::now();
    let (change, version) = tags::change(&mut tx, ticket_id, &add, &remove, now)
        .await?
        .ok_or_else(|| ApiError::not_found("no such ticket"))?
        .map_err(|e| ApiError::field("tags", e.to_string()))?;
    committed(
        tx.commit(&api.outbox).await,
        "the tags are stored; their event is delayed",
    )?;
    Ok(TagsOutput {
        id: ticket_id,
        tags: change.tags,
        added: change.added,
        removed: change.removed,
        version,
    })
}
