//! Custom fields: `GET /v1/fields` (any role), `POST` / `PUT` / `DELETE /v1/fields/{id}`
//! (admins; a deleted field is deactivated, its values stay in history), and
//! `PUT /v1/tickets/{id}/fields` (`{values: {key: value | null}}`, by an agent on the tickets it
//! holds or a supervisor), each value checked by [`switchboard_tickets::fields`]: a bad one is a
//! 400 naming `values.<key>`. A field `required_to_resolve` keeps its ticket from being resolved
//! or closed until it holds a value (409 naming `fields.<key>`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::fields::{self, FieldError, Kind};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::work::committed;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/fields", get(list).post(create))
        .route("/v1/fields/{id}", put(update).delete(remove))
        .route("/v1/tickets/{id}/fields", put(set))
}

/// A field as defined.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Field {
    pub id: Uuid,
    /// What tickets, views and rules call it (`order_number`).
    pub key: String,
    pub name: String,
    /// `text`, `number`, `dropdown`, `multi_select`, `date`, `checkbox`.
    pub kind: String,
    pub options: Vec<String>,
    pub required_to_resolve: bool,
    pub position: i32,
    pub version: i32,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, key, name, kind, options, required_to_resolve, position, version, updated_at";

#[utoipa::path(get, path = "/v1/fields", operation_id = "list_fields", tag = "tickets", responses((status = 200, body = [Field], description = "the active fields, in order")), security(("bearer" = [])))]
async fn list(State(api): State<Api>, _any_role: Principal) -> Result<Json<Vec<Field>>, ApiError> {
    let rows: Vec<Field> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fields WHERE active ORDER BY position, key"
    ))
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows))
}

/// A new field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldInput {
    /// 1 to 64 of `a-z 0-9 _`, starting with a letter; fixed once created.
    pub key: String,
    pub name: String,
    /// Fixed once created.
    pub kind: String,
    /// A dropdown's or multi-select's choices.
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub required_to_resolve: bool,
    #[serde(default)]
    pub position: i32,
}

/// A changed field (its key and kind stay).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldUpdate {
    pub name: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub required_to_resolve: bool,
    #[serde(default)]
    pub position: i32,
    /// The version read (409 when someone changed it since).
    pub version: Option<i32>,
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            "1 to 100 characters, no control characters",
        ));
    }
    Ok(name.to_string())
}

fn check_options(kind: Kind, options: &[String]) -> Result<(), ApiError> {
    fields::check_options(kind, options).map_err(|(i, why)| {
        ApiError::field(
            i.map_or_else(|| "options".to_string(), |i| format!("options[{i}]")),
            why,
        )
    })
}

#[utoipa::path(post, path = "/v1/fields", operation_id = "create_field", tag = "tickets", request_body = FieldInput, responses((status = 201, body = Field), (status = 400, description = "a field is invalid, named (`options[2]`)"), (status = 403, description = "admins only"), (status = 409, description = "a field has this key")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(input): ApiJson<FieldInput>,
) -> Result<(StatusCode, Json<Field>), ApiError> {
    actor.who.require(Role::Admin)?;
    if !fields::valid_key(&input.key) {
        return Err(ApiError::field(
            "key",
            "1 to 64 of a-z 0-9 _, starting with a letter",
        ));
    }
    let name = check_name(&input.name)?;
    let kind = Kind::parse(&input.kind).ok_or_else(|| {
        ApiError::field(
            "kind",
            "one of text, number, dropdown, multi_select, date, checkbox",
        )
    })?;
    check_options(kind, &input.options)?;
    let now = switchboard_core::clock::now();
    let mut tx = api.pool.begin().await?;
    let row: Result<Field, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO fields (id, key, name, kind, options, required_to_resolve, position, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&input.key)
    .bind(&name)
    .bind(kind.as_str())
    .bind(&input.options)
    .bind(input.required_to_resolve)
    .bind(input.position)
    .bind(now)
    .fetch_one(&mut *tx)
    .await;
    match row {
        Ok(f) => {
            let entry = Entry::config(
                "field.created",
                format!("field:{}", f.id),
                None::<()>,
                Some(&f),
            );
            audit::commit_with(tx, &actor, entry).await?;
            Ok((StatusCode::CREATED, Json(f)))
        }
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            Err(crate::work::conflict("key", "a field has this key"))
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(put, path = "/v1/fields/{id}", operation_id = "update_field", tag = "tickets", params(("id" = Uuid, Path)), request_body = FieldUpdate, responses((status = 200, body = Field), (status = 400, description = "a field is invalid, named"), (status = 403, description = "admins only"), (status = 404, description = "no such field"), (status = 409, description = "changed since `version`")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<FieldUpdate>,
) -> Result<Json<Field>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let name = check_name(&input.name)?;
    let mut tx = api.pool.begin().await?;
    let before: Option<Field> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fields WHERE id = $1 AND active FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let before = before.ok_or_else(|| ApiError::not_found("no such field"))?;
    let kind = Kind::parse(&before.kind).ok_or_else(|| ApiError::not_found("no such field"))?;
    check_options(kind, &input.options)?;
    let row: Option<Field> = sqlx::query_as(&format!(
        "UPDATE fields SET name = $2, options = $3, required_to_resolve = $4, position = $5,
                version = version + 1, updated_at = $6
         WHERE id = $1 AND active AND ($7::int IS NULL OR version = $7) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&name)
    .bind(&input.options)
    .bind(input.required_to_resolve)
    .bind(input.position)
    .bind(switchboard_core::clock::now())
    .bind(input.version)
    .fetch_optional(&mut *tx)
    .await?;
    let f = row.ok_or_else(|| {
        crate::work::conflict(
            "version",
            "the field changed since this version; read it again",
        )
    })?;
    let entry = Entry::config(
        "field.updated",
        format!("field:{id}"),
        Some(&before),
        Some(&f),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(f))
}

#[utoipa::path(delete, path = "/v1/fields/{id}", operation_id = "delete_field", tag = "tickets", params(("id" = Uuid, Path)), responses((status = 204, description = "deactivated: tickets keep their values, nobody sets it again"), (status = 403, description = "admins only"), (status = 404, description = "no such field")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let done = sqlx::query(
        "UPDATE fields SET active = false, version = version + 1, updated_at = $2 WHERE id = $1 AND active",
    )
    .bind(id)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such field"));
    }
    let entry = Entry::config(
        "field.deactivated",
        format!("field:{id}"),
        None::<()>,
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Values to set (`null` clears one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetInput {
    #[schema(value_type = Object)]
    pub values: BTreeMap<String, Value>,
}

/// The ticket's fields after a change.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetOutput {
    pub id: Uuid,
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Value>,
    pub changed: Vec<String>,
    pub version: i32,
}

#[utoipa::path(put, path = "/v1/tickets/{id}/fields", operation_id = "set_fields", tag = "tickets", params(("id" = Uuid, Path)), request_body = SetInput, responses((status = 200, body = SetOutput), (status = 400, description = "a value is invalid or a field unknown, named (`values.reason`)"), (status = 403, description = "an agent on a ticket it does not hold"), (status = 404, description = "no such ticket")), security(("bearer" = [])))]
async fn set(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SetInput>,
) -> Result<Json<SetOutput>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    if input.values.is_empty() || input.values.len() > 100 {
        return Err(ApiError::field("values", "1 to 100 fields"));
    }
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    who.check_assignee(assignee)?;
    let (fields, changed, version) = fields::set(
        &mut tx,
        ticket_id,
        &input.values,
        switchboard_core::clock::now(),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("no such ticket"))?
    .map_err(|e| {
        let why = match &e {
            FieldError::Unknown(_) => "no such field".to_string(),
            FieldError::Invalid(_, why) => why.clone(),
        };
        ApiError::field(format!("values.{}", e.key()), why)
    })?;
    committed(
        tx.commit(&api.outbox).await,
        "the fields are stored; their event is delayed",
    )?;
    Ok(Json(SetOutput {
        id: ticket_id,
        fields,
        changed,
        version,
    }))
}
