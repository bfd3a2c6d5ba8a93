//! Teams: `GET /v1/teams` (any role), `POST`, `GET` / `PUT` / `DELETE /v1/teams/{id}`
//! (writes: supervisors). A team has members (agents, who may be in several teams), a
//! supervisor, the skills it covers and the business calendar its SLA clocks run on; views
//! filter by team (a team's tickets: assigned to it or to one of its members).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiJson};
use uuid::Uuid;

use crate::audit::Actor;
use crate::auth::{Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/teams", get(list).post(create))
        .route("/v1/teams/{id}", get(read).put(update).delete(remove))
}

/// The most members one team has.
pub const MAX_MEMBERS: usize = 2_000;

/// A team.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub supervisor_id: Option<Uuid>,
    pub skills: Vec<String>,
    /// The business calendar (a name from `sla.calendars`) its SLA clocks run on.
    pub calendar: Option<String>,
    /// Its agents.
    pub members: Vec<Uuid>,
    pub version: i32,
    pub updated_at: DateTime<Utc>,
}

/// A new or changed team.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamInput {
    pub name: String,
    pub supervisor_id: Option<Uuid>,
    #[serde(default)]
    pub skills: Vec<String>,
    pub calendar: Option<String>,
    #[serde(default)]
    pub members: Vec<Uuid>,
    /// On change: the version read (409 when someone changed it since).
    pub version: Option<i32>,
}

fn short_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl TeamInput {
    fn check(&mut self) -> Result<(), ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ApiError::field(
                "name",
                "1 to 100 characters, no control characters",
            ));
        }
        self.name = name.to_string();
        if self.skills.len() > 100 {
            return Err(ApiError::field("skills", "at most 100 skills"));
        }
        if let Some(i) = self.skills.iter().position(|s| !short_name(s)) {
            return Err(ApiError::field(
                format!("skills[{i}]"),
                "1 to 64 letters, digits, _ - .",
            ));
        }
        if self.calendar.as_deref().is_some_and(|c| !short_name(c)) {
            return Err(ApiError::field(
                "calendar",
                "a calendar name: 1 to 64 letters, digits, _ - .",
            ));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(ApiError::field(
                "members",
                format!("at most {MAX_MEMBERS} members"),
            ));
        }
        self.skills.sort();
        self.skills.dedup();
        Ok(())
    }

    /// 400 naming the first member (or the supervisor) that is no agent, as the caller listed
    /// them; then the members sorted, each once.
    async fn check_agents(&mut self, api: &Api) -> Result<(), ApiError> {
        let known: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1)")
            .bind(&self.members)
            .fetch_all(&api.pool)
            .await?;
        if let Some(i) = self.members.iter().position(|m| !known.contains(m)) {
            return Err(ApiError::field(format!("members[{i}]"), "no such agent"));
        }
        if let Some(s) = self.supervisor_id {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)")
                    .bind(s)
                    .fetch_one(&api.pool)
                    .await?;
            if !exists {
                return Err(ApiError::field("supervisor_id", "no such agent"));
            }
        }
        self.members.sort();
        self.members.dedup();
        Ok(())
    }
}

const SELECT: &str = "SELECT t.id, t.name, t.supervisor_id, t.skills, t.calendar, t.version, t.updated_at,
        COALESCE((SELECT array_agg(m.agent_id ORDER BY m.agent_id) FROM team_members m WHERE m.team_id = t.id), '{}') AS members
        FROM teams t";

fn name_taken(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            crate::work::conflict("name", "a team has this name")
        }
        _ => e.into(),
    }
}

/// The team `id` as the audit log records it, read on `conn` (the change's transaction).
async fn snapshot(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let team: Option<Team> = sqlx::query_as(&format!("{SELECT} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(team.and_then(|t| serde_json::to_value(t).ok()))
}

/// Records `action` on team `id` by `actor`, with the team before and after.
async fn audit_team(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    action: &'static str,
    id: Uuid,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    crate::audit::record(
        conn,
        actor,
        crate::audit::Entry {
            action,
            subject: format!("team:{id}"),
            ticket_id: None,
            before,
            after,
        },
    )
    .await
}

async fn one(api: &Api, id: Uuid) -> Result<Team, ApiError> {
    sqlx::query_as(&format!("{SELECT} WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("no such team"))
}

#[utoipa::path(get, path = "/v1/teams", operation_id = "list_teams", tag = "teams", responses((status = 200, body = [Team])), security(("bearer" = [])))]
async fn list(State(api): State<Api>, _any_role: Principal) -> Result<Json<Vec<Team>>, ApiError> {
    Ok(Json(
        sqlx::query_as(&format!("{SELECT} ORDER BY t.name"))
            .fetch_all(&api.pool)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/teams/{id}", operation_id = "get_team", tag = "teams", params(("id" = Uuid, Path)), responses((status = 200, body = Team), (status = 404, description = "no such team")), security(("bearer" = [])))]
async fn read(
    State(api): State<Api>,
    _any_role: Principal,
    Path(id): Path<String>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(one(&api, parse_id(&id, "id")?).await?))
}

/// The team's members are exactly `members`.
async fn set_members(
    conn: &mut sqlx::PgConnection,
    team: Uuid,
    members: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND agent_id <> ALL($2)")
        .bind(team)
        .bind(members)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO team_members (team_id, agent_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(team)
    .bind(members)
    .execute(conn)
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/teams", operation_id = "create_team", tag = "teams", request_body = TeamInput, responses((status = 201, body = Team), (status = 400, description = "a field is invalid, named (`members[2]`)"), (status = 403, description = "supervisors only"), (status = 409, description = "a team has this name")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(mut input): ApiJson<TeamInput>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    actor.who.require(Role::Supervisor)?;
    input.check()?;
    input.check_agents(&api).await?;
    let id = Uuid::now_v7();
    let now = switchboard_core::clock::now();
    let mut tx = api.pool.begin().await?;
    sqlx::query(
        "INSERT INTO teams (id, name, supervisor_id, skills, calendar, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(&input.name)
    .bind(input.supervisor_id)
    .bind(&input.skills)
    .bind(&input.calendar)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(name_taken)?;
    set_members(&mut tx, id, &input.members).await?;
    let after = snapshot(&mut tx, id).await?;
    audit_team(&mut tx, &actor, "team.created", id, None, after).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(one(&api, id).await?)))
}

#[utoipa::path(put, path = "/v1/teams/{id}", operation_id = "update_team", tag = "teams", params(("id" = Uuid, Path)), request_body = TeamInput, responses((status = 200, body = Team), (status = 400, description = "a field is invalid, named"), (status = 403, description = "supervisors only"), (status = 404, description = "no such team"), (status = 409, description = "the name is taken, or the team changed since `version`")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(mut input): ApiJson<TeamInput>,
) -> Result<Json<Team>, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    input.check()?;
    input.check_agents(&api).await?;
    let mut tx = api.pool.begin().await?;
    let version: Option<i32> =
        sqlx::query_scalar("SELECT version FROM teams WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let version = version.ok_or_else(|| ApiError::not_found("no such team"))?;
    let before = snapshot(&mut tx, id).await?;
    if input.version.is_some_and(|v| v != version) {
        return Err(ApiError {
            field: Some("version".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the team changed (version {version}); read it again"),
            )
        });
    }
    sqlx::query(
        "UPDATE teams SET name = $2, supervisor_id = $3, skills = $4, calendar = $5, version = version + 1, updated_at = $6
         WHERE id = $1",
    )
    .bind(id)
    .bind(&input.name)
    .bind(input.supervisor_id)
    .bind(&input.skills)
    .bind(&input.calendar)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await
    .map_err(name_taken)?;
    set_members(&mut tx, id, &input.members).await?;
    let after = snapshot(&mut tx, id).await?;
    audit_team(&mut tx, &actor, "team.updated", id, before, after).await?;
    tx.commit().await?;
    Ok(Json(one(&api, id).await?))
}

#[utoipa::path(delete, path = "/v1/teams/{id}", operation_id = "delete_team", tag = "teams", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted: its views go with it, its tickets keep their assignees"), (status = 403, description = "supervisors only"), (status = 404, description = "no such team")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let before = snapshot(&mut tx, id).await?;
    let r = sqlx::query("DELETE FROM teams WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found("no such team"));
    }
    audit_team(&mut tx, &actor, "team.deleted", id, before, None).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: serde_json::Value) -> Result<TeamInput, String> {
        let mut t: TeamInput = serde_json::from_value(v).map_err(|e| e.to_string())?;
        t.check().map_err(|e| e.field.unwrap_or_default())?;
        Ok(t)
    }

    #[test]
    fn team_input_is_checked_and_tidied() {
        let t = input(serde_json::json!({"name": "  Returns EU ", "skills": ["returns", "billing", "returns"]})).unwrap();
        assert_eq!(t.name, "Returns EU");
        assert_eq!(t.skills, vec!["billing", "returns"]);
        assert_eq!(
            input(serde_json::json!({"name": "\u{0}"})).unwrap_err(),
            "name"
        );
        assert_eq!(
            input(serde_json::json!({"name": "A", "skills": ["ok", "no spaces"]})).unwrap_err(),
            "skills[1]"
        );
        assert_eq!(
            input(serde_json::json!({"name": "A", "calendar": "../etc"})).unwrap_err(),
            "calendar"
        );
        assert!(input(serde_json::json!({"name": "A", "colour": 1}))
            .unwrap_err()
            .contains("colour"));
        assert_eq!(
            input(serde_json::json!({"name": "Поддержка"}))
                .unwrap()
                .name,
            "Поддержка"
        );
    }
}
