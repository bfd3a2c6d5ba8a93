//! Canned replies: `GET /v1/canned-replies?q=` (any role; `q` matches title, body or tag),
//! `POST` / `PUT /v1/canned-replies/{id}` / `DELETE` (supervisor). The agent console offers them
//! in the reply box. A canned reply is a shared macro with one reply action (`crate::macros`):
//! these routes read and write exactly those, so a canned reply can be applied as a macro and
//! a macro edited to do more leaves this list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/canned-replies", get(list).post(create))
        .route("/v1/canned-replies/{id}", put(update).delete(remove))
}

/// A canned reply.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Canned {
    pub id: Uuid,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

/// A new or changed canned reply.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CannedInput {
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl CannedInput {
    fn check(&self) -> Result<(), ApiError> {
        if self.title.trim().is_empty() || self.title.len() > 200 {
            return Err(ApiError::field("title", "1 to 200 bytes"));
        }
        if self.body.trim().is_empty() || self.body.len() > 16 * 1024 {
            return Err(ApiError::field("body", "1 byte to 16 KiB"));
        }
        if self.tags.len() > 20 || self.tags.iter().any(|t| t.is_empty() || t.len() > 50) {
            return Err(ApiError::field("tags", "at most 20 tags of 1 to 50 bytes"));
        }
        // What a macro's reply may be: known placeholders, no control characters.
        switchboard_tickets::macros::check(&[switchboard_tickets::macros::Action::Reply {
            text: self.body.clone(),
        }])
        .map_err(|(_, why)| ApiError::field("body", why))?;
        Ok(())
    }
}

/// `GET /v1/canned-replies` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Search {
    pub q: Option<String>,
}

/// A canned reply's columns, from its macro.
const CANNED: &str = "id, title, actions->0->>'text' AS body, tags, updated_at";
/// The macros that are canned replies: shared, one reply action.
const IS_CANNED: &str = "owner_agent_id IS NULL AND team_id IS NULL
    AND jsonb_array_length(actions) = 1 AND actions->0->>'type' = 'reply'";

fn reply_action(body: &str) -> sqlx::types::Json<Vec<switchboard_tickets::macros::Action>> {
    sqlx::types::Json(vec![switchboard_tickets::macros::Action::Reply {
        text: body.to_string(),
    }])
}

fn conflict_or(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError {
            field: Some("title".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a canned reply has this title",
            )
        },
        _ => e.into(),
    }
}

#[utoipa::path(get, path = "/v1/canned-replies", operation_id = "list_canned_replies", tag = "tickets", params(Search), responses((status = 200, body = [Canned]), (status = 400, description = "`q` too long")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    _who: Principal,
    ApiQuery(s): ApiQuery<Search>,
) -> Result<Json<Vec<Canned>>, ApiError> {
    let q =
        s.q.map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
    if q.as_ref().is_some_and(|q| q.len() > 100) {
        return Err(ApiError::field("q", "at most 100 bytes"));
    }
    Ok(Json(
        sqlx::query_as(&format!(
            "SELECT {CANNED} FROM macros WHERE {IS_CANNED}
               AND ($1::text IS NULL OR strpos(lower(title), $1) > 0 OR strpos(lower(actions->0->>'text'), $1) > 0 OR $1 = ANY(tags))
             ORDER BY title LIMIT 200"
        ))
        .bind(q)
        .fetch_all(&api.pool)
        .await?,
    ))
}

#[utoipa::path(post, path = "/v1/canned-replies", operation_id = "create_canned_reply", tag = "tickets", request_body = CannedInput, responses((status = 201, body = Canned), (status = 400, description = "a field is invalid, named"), (status = 403, description = "supervisors only"), (status = 409, description = "the title exists")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(c): ApiJson<CannedInput>,
) -> Result<(StatusCode, Json<Canned>), ApiError> {
    let who = actor.who;
    who.require(Role::Supervisor)?;
    c.check()?;
    let mut tx = api.pool.begin().await?;
    let row: Canned = sqlx::query_as(&format!(
        "INSERT INTO macros (id, title, actions, tags, created_by) VALUES ($1, $2, $3, $4, $5)
         RETURNING {CANNED}"
    ))
    .bind(Uuid::now_v7())
    .bind(c.title.trim())
    .bind(reply_action(&c.body))
    .bind(&c.tags)
    .bind(crate::assign::actor(&who))
    .fetch_one(&mut *tx)
    .await
    .map_err(conflict_or)?;
    let entry = Entry::config(
        "canned_reply.created",
        format!("canned_reply:{}", row.id),
        None::<()>,
        Some(&row),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

#[utoipa::path(put, path = "/v1/canned-replies/{id}", operation_id = "update_canned_reply", tag = "tickets", params(("id" = Uuid, Path)), request_body = CannedInput, responses((status = 200, body = Canned), (status = 400, description = "a field is invalid, named"), (status = 403, description = "supervisors only"), (status = 404, description = "no such canned reply"), (status = 409, description = "the title exists")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<CannedInput>,
) -> Result<Json<Canned>, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    c.check()?;
    let mut tx = api.pool.begin().await?;
    let before: Option<Canned> = sqlx::query_as(&format!(
        "SELECT {CANNED} FROM macros WHERE id = $1 AND {IS_CANNED} FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let row: Option<Canned> = sqlx::query_as(&format!(
        "UPDATE macros SET title = $2, actions = $3, tags = $4, updated_at = $5, version = version + 1
         WHERE id = $1 AND {IS_CANNED} RETURNING {CANNED}"
    ))
    .bind(id)
    .bind(c.title.trim())
    .bind(reply_action(&c.body))
    .bind(&c.tags)
    .bind(switchboard_core::clock::now())
    .fetch_optional(&mut *tx)
    .await
    .map_err(conflict_or)?;
    let row = row.ok_or_else(|| ApiError::not_found("no such canned reply"))?;
    let entry = Entry::config(
        "canned_reply.updated",
        format!("canned_reply:{id}"),
        before,
        Some(&row),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(row))
}

#[utoipa::path(delete, path = "/v1/canned-replies/{id}", operation_id = "delete_canned_reply", tag = "tickets", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted"), (status = 403, description = "supervisors only"), (status = 404, description = "no such canned reply")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let gone: Option<Canned> = sqlx::query_as(&format!(
        "DELETE FROM macros WHERE id = $1 AND {IS_CANNED} RETURNING {CANNED}"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let gone = gone.ok_or_else(|| ApiError::not_found("no such canned reply"))?;
    let entry = Entry::config(
        "canned_reply.deleted",
        format!("canned_reply:{id}"),
        Some(&gone),
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}
