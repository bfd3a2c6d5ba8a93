//! `/v1/agents`: create agents, change their status, list their assignments.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{normalise_email, AgentPresence, AgentStatus, Envelope};
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use tracing::info;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{forbidden, Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/agents", post(create).get(directory))
        .route("/v1/agents/{id}", get(get_agent).put(update))
        .route("/v1/agents/{id}/deactivate", post(deactivate))
        .route("/v1/agents/{id}/reactivate", post(reactivate))
        .route("/v1/agents/{id}/status", put(set_status))
        .route("/v1/agents/{id}/assignments", get(assignments))
}

/// `POST /v1/agents` body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub languages: Vec<String>,
    pub max_concurrent: i32,
    /// `agent` (default), `senior` or `supervisor`.
    #[serde(default)]
    pub level: Option<String>,
    /// IANA timezone of the shift (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Shift start and end, `HH:MM` in `timezone`; both or neither (no shift: always on).
    #[serde(default)]
    pub shift_start: Option<String>,
    #[serde(default)]
    pub shift_end: Option<String>,
    /// Level 1 to 5 per skill (a skill without one counts as 3).
    #[serde(default)]
    pub skill_levels: std::collections::BTreeMap<String, u8>,
    /// Most tickets at once per channel (within `max_concurrent`).
    #[serde(default)]
    pub channel_capacity: std::collections::BTreeMap<String, i32>,
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub skills: Vec<String>,
    pub languages: Vec<String>,
    pub max_concurrent: i32,
    pub status: String,
    pub active_count: i32,
    pub status_changed_at: DateTime<Utc>,
    pub level: String,
    pub timezone: String,
    pub shift_start: Option<chrono::NaiveTime>,
    pub shift_end: Option<chrono::NaiveTime>,
    pub skill_levels: serde_json::Value,
    pub channel_capacity: serde_json::Value,
    pub channel_active: serde_json::Value,
    pub csat_count: i32,
    pub response_count: i32,
    /// Bumped by every change of the settings; `PUT` names the version it changes.
    pub version: i32,
    /// Set while the agent is deactivated (never online, no tokens, holds no tickets).
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// The columns of an [`AgentView`].
const AGENT_COLUMNS: &str = "id, name, email, skills, languages, max_concurrent, status, active_count, status_changed_at, level, timezone,
        shift_start, shift_end, skill_levels, channel_capacity, channel_active, csat_count, response_count, version, deactivated_at";

fn clean_list(field: &str, items: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, s) in items.into_iter().enumerate() {
        let s = s.trim().to_lowercase();
        if s.is_empty() || s.len() > 64 {
            return Err(ApiError::field(
                format!("{field}[{i}]"),
                "must be 1 to 64 characters",
            ));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

/// An agent's settings, checked and normalised (`POST` and `PUT /v1/agents`).
struct Checked {
    name: String,
    email: String,
    skills: Vec<String>,
    languages: Vec<String>,
    max_concurrent: i32,
    level: String,
    timezone: String,
    shift_start: Option<chrono::NaiveTime>,
    shift_end: Option<chrono::NaiveTime>,
    skill_levels: serde_json::Value,
    channel_capacity: serde_json::Value,
}

/// Checks `req`, naming the first bad field.
fn check(req: NewAgent) -> Result<Checked, ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            "name must be 1 to 200 characters, no control characters",
        ));
    }
    let email = normalise_email(&req.email).ok_or_else(|| {
        ApiError::field("email", format!("{:?} is not an email address", req.email))
    })?;
    let skills = clean_list("skills", req.skills)?;
    let languages = clean_list("languages", req.languages)?;
    if !(1..=1000).contains(&req.max_concurrent) {
        return Err(ApiError::field(
            "max_concurrent",
            "max_concurrent must be between 1 and 1000",
        ));
    }
    let level = req.level.unwrap_or_else(|| "agent".into());
    if !matches!(level.as_str(), "agent" | "senior" | "supervisor") {
        return Err(ApiError::field(
            "level",
            format!("{level:?} is not one of agent, senior, supervisor"),
        ));
    }
    let timezone = req.timezone.unwrap_or_else(|| "UTC".into());
    if timezone.parse::<chrono_tz::Tz>().is_err() {
        return Err(ApiError::field(
            "timezone",
            format!("{timezone:?} is not an IANA timezone"),
        ));
    }
    let time = |field: &str, v: Option<String>| -> Result<Option<chrono::NaiveTime>, ApiError> {
        v.map(|t| {
            chrono::NaiveTime::parse_from_str(&t, "%H:%M")
                .map_err(|_| ApiError::field(field, format!("{t:?} is not HH:MM")))
        })
        .transpose()
    };
    let (shift_start, shift_end) = (
        time("shift_start", req.shift_start)?,
        time("shift_end", req.shift_end)?,
    );
    if shift_start.is_some() != shift_end.is_some() {
        return Err(ApiError::field(
            "shift_end",
            "give both shift_start and shift_end, or neither",
        ));
    }
    for (skill, l) in &req.skill_levels {
        if !(1..=5).contains(l) {
            return Err(ApiError::field(
                format!("skill_levels.{skill}"),
                "a level is 1 to 5",
            ));
        }
        if !skills.contains(&skill.to_lowercase()) {
            return Err(ApiError::field(
                format!("skill_levels.{skill}"),
                "not one of the agent's skills",
            ));
        }
    }
    for (channel, c) in &req.channel_capacity {
        if !matches!(
            channel.as_str(),
            "api" | "email" | "chat" | "sms" | "social" | "voice"
        ) {
            return Err(ApiError::field(
                format!("channel_capacity.{channel}"),
                "not a channel",
            ));
        }
        if !(1..=req.max_concurrent).contains(c) {
            return Err(ApiError::field(
                format!("channel_capacity.{channel}"),
                "must be 1 to max_concurrent",
            ));
        }
    }
    let skill_levels: serde_json::Map<String, serde_json::Value> = req
        .skill_levels
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), serde_json::Value::from(v)))
        .collect();
    Ok(Checked {
        name,
        email,
        skills,
        languages,
        max_concurrent: req.max_concurrent,
        level,
        timezone,
        shift_start,
        shift_end,
        skill_levels: serde_json::Value::Object(skill_levels),
        channel_capacity: serde_json::to_value(&req.channel_capacity).unwrap_or_default(),
    })
}

#[utoipa::path(post, path = "/v1/agents", operation_id = "create_agent", tag = "agents", request_body = NewAgent, responses((status = 201, description = "created: {id}"), (status = 400, description = "a field is invalid"), (status = 403, description = "admins only"), (status = 409, description = "the email exists")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(req): ApiJson<NewAgent>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    actor.who.require(Role::Admin)?;
    let mut tx = api.pool.begin().await?;
    let id = create_agent(&mut tx, &actor, req).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// An agent's settings, as the audit log records them before and after a change.
fn settings(a: &AgentView) -> serde_json::Value {
    serde_json::json!({
        "name": a.name, "email": a.email, "skills": a.skills, "languages": a.languages,
        "max_concurrent": a.max_concurrent, "level": a.level, "timezone": a.timezone,
        "shift_start": a.shift_start, "shift_end": a.shift_end, "skill_levels": a.skill_levels,
        "channel_capacity": a.channel_capacity, "version": a.version,
    })
}

/// Checks `req` as `POST /v1/agents` does, naming the first bad field.
pub fn validate(req: &NewAgent) -> Result<(), ApiError> {
    check(req.clone()).map(|_| ())
}

/// Creates the agent `req` describes on `conn` (a transaction's, for an import that also puts
/// it in a team): its id; 409 naming `email` when the address is an agent's already.
pub async fn create_agent(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    req: NewAgent,
) -> Result<Uuid, ApiError> {
    let Checked {
        name,
        email,
        skills,
        languages,
        max_concurrent,
        level,
        timezone,
        shift_start,
        shift_end,
        skill_levels,
        channel_capacity,
    } = check(req)?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO agents (id, name, email, skills, languages, max_concurrent, level, timezone, shift_start, shift_end,
                             skill_levels, channel_capacity)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(id)
    .bind(&name)
    .bind(&email)
    .bind(&skills)
    .bind(&languages)
    .bind(max_concurrent)
    .bind(&level)
    .bind(&timezone)
    .bind(shift_start)
    .bind(shift_end)
    .bind(&skill_levels)
    .bind(&channel_capacity)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError {
            field: Some("email".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "an agent with this email exists",
            )
        });
    }
    let created: AgentView =
        sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    audit::record(
        conn,
        actor,
        Entry {
            action: "agent.created",
            subject: format!("agent:{id}"),
            ticket_id: None,
            before: None,
            after: Some(settings(&created)),
        },
    )
    .await?;
    info!(agent_id = %id, "agent created");
    Ok(id)
}

/// `GET /v1/agents` query: the directory a colleague is picked from (assignment, `@mention`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    /// The start of a name (or of any word in it) or of an email, 1 to 100 characters.
    pub q: Option<String>,
    /// Members of this team only.
    pub team_id: Option<Uuid>,
    /// `online`, `away` or `offline`.
    pub status: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// `true`: the deactivated agents instead (supervisors and admins).
    pub deactivated: Option<bool>,
}

/// A colleague as the directory shows it: who they are, whether they can take a ticket now.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AgentCard {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub status: String,
    pub level: String,
    pub active_count: i32,
    pub max_concurrent: i32,
    pub team_ids: Vec<Uuid>,
    /// Set for a deactivated agent (listed with `deactivated=true` only).
    pub deactivated_at: Option<DateTime<Utc>>,
}

/// `q` as a `LIKE` prefix: lowercased, its wildcards escaped.
fn like_prefix(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 1);
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[utoipa::path(get, path = "/v1/agents", operation_id = "agent_directory", tag = "agents", params(DirectoryQuery), responses((status = 200, body = [AgentCard], description = "matching agents, names starting with `q` first, then by name"), (status = 400, description = "a parameter is invalid, named"), (status = 403, description = "`deactivated=true` as an agent")), security(("bearer" = [])))]
async fn directory(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(query): ApiQuery<DirectoryQuery>,
) -> Result<Json<Vec<AgentCard>>, ApiError> {
    let deactivated = query.deactivated.unwrap_or(false);
    if deactivated && who.role < Role::Supervisor {
        return Err(ApiError {
            field: Some("deactivated".into()),
            ..forbidden("only supervisors and admins list deactivated agents")
        });
    }
    let q = match query.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) if q.chars().count() > 100 || q.chars().any(char::is_control) => {
            return Err(ApiError::field(
                "q",
                "1 to 100 characters, no control characters",
            ));
        }
        Some(q) => Some(like_prefix(q.trim_start_matches('@'))),
    };
    if let Some(s) = &query.status {
        if AgentStatus::parse(s).is_none() {
            return Err(ApiError::field("status", "online, away or offline"));
        }
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 100"));
    }
    let cards: Vec<AgentCard> = sqlx::query_as(
        "SELECT a.id, a.name, a.email, a.status, a.level, a.active_count, a.max_concurrent,
                coalesce(array_agg(m.team_id ORDER BY m.team_id) FILTER (WHERE m.team_id IS NOT NULL), '{}') AS team_ids,
                a.deactivated_at
         FROM agents a LEFT JOIN team_members m ON m.agent_id = a.id
         WHERE (a.deactivated_at IS NOT NULL) = $5
           AND ($1::text IS NULL OR lower(a.name) LIKE $1 OR lower(a.name) LIKE '% ' || $1 OR lower(a.email) LIKE $1)
           AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM team_members t WHERE t.agent_id = a.id AND t.team_id = $2))
           AND ($3::text IS NULL OR a.status = $3)
         GROUP BY a.id
         ORDER BY ($1::text IS NOT NULL AND lower(a.name) LIKE $1) DESC, lower(a.name), a.id
         LIMIT $4",
    )
    .bind(q)
    .bind(query.team_id)
    .bind(query.status)
    .bind(limit)
    .bind(deactivated)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(cards))
}

#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path)), responses((status = 200, body = AgentView), (status = 403, description = "another agent"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn get_agent(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let id = parse_id(&id, "id")?;
    who.require_self_or(id)?;
    let agent: Option<AgentView> =
        sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"))
            .bind(id)
            .fetch_optional(&api.pool)
            .await?;
    agent
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such agent"))
}

/// `PUT /v1/agents/{id}/status` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: String,
}

#[utoipa::path(put, path = "/v1/agents/{id}/status", operation_id = "set_agent_status", tag = "agents", params(("id" = Uuid, Path)), request_body = StatusChange, responses((status = 200, description = "{id, status}"), (status = 400, description = "not a status"), (status = 403, description = "another agent"), (status = 404, description = "no such agent"), (status = 409, description = "the agent is deactivated (offline only)")), security(("bearer" = [])))]
async fn set_status(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StatusChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    who.require_self_or(id)?;
    let status = AgentStatus::parse(&req.status).ok_or_else(|| {
        ApiError::field(
            "status",
            format!("{:?} is not one of online, away, offline", req.status),
        )
    })?;
    let previous: Option<(String, bool)> = sqlx::query_as(
        "UPDATE agents a SET status = CASE WHEN old.deactivated THEN a.status ELSE $2 END,
                             status_changed_at = CASE WHEN old.deactivated THEN a.status_changed_at ELSE $3 END
         FROM (SELECT id, status, deactivated_at IS NOT NULL AS deactivated FROM agents WHERE id = $1 FOR UPDATE) old
         WHERE a.id = old.id RETURNING old.status, old.deactivated",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(switchboard_core::clock::now())
    .fetch_optional(&api.pool)
    .await?;
    let Some((previous, deactivated)) = previous else {
        return Err(ApiError::not_found("no such agent"));
    };
    if deactivated && status != AgentStatus::Offline {
        return Err(deactivated_conflict("status"));
    }
    announce(&api, id, status, &previous).await?;
    info!(agent_id = %id, status = status.as_str(), "agent status changed");
    Ok(Json(
        serde_json::json!({ "id": id, "status": status.as_str() }),
    ))
}

/// 409 naming `field`: a deactivated agent cannot do that.
fn deactivated_conflict(field: &str) -> ApiError {
    crate::work::conflict(
        field,
        "the agent is deactivated: an admin reactivates it first",
    )
}

/// Tells the router and the streams that `id` is now `status` (it was `previous`). The change
/// is stored first; if it cannot be published the client gets 503 and retries (the router's
/// periodic sweep picks the change up regardless).
async fn announce(
    api: &Api,
    id: Uuid,
    status: AgentStatus,
    previous: &str,
) -> Result<(), ApiError> {
    let env = Envelope::new(
        Uuid::now_v7(),
        switchboard_core::clock::now(),
        AgentPresence {
            agent_id: id,
            status,
            previous: AgentStatus::parse(previous),
        },
    );
    api.publisher
        .publish(&env)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable(format!("status stored but not yet announced: {e}")))
}

/// `PUT /v1/agents/{id}` body: every setting of the agent (as `POST /v1/agents`) and the
/// version it replaces.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    /// The `version` of `GET /v1/agents/{id}` this change was made from.
    pub version: i32,
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub languages: Vec<String>,
    pub max_concurrent: i32,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub shift_start: Option<String>,
    #[serde(default)]
    pub shift_end: Option<String>,
    #[serde(default)]
    pub skill_levels: std::collections::BTreeMap<String, u8>,
    #[serde(default)]
    pub channel_capacity: std::collections::BTreeMap<String, i32>,
}

#[utoipa::path(put, path = "/v1/agents/{id}", operation_id = "update_agent", tag = "agents", params(("id" = Uuid, Path)), request_body = AgentUpdate, responses((status = 200, body = AgentView), (status = 400, description = "a field is invalid, named"), (status = 403, description = "admins only"), (status = 404, description = "no such agent"), (status = 409, description = "`version`: changed since it was read; `email`: another agent's; `max_concurrent`: below the tickets it holds now")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AgentUpdate>,
) -> Result<Json<AgentView>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let version = req.version;
    let c = check(NewAgent {
        name: req.name,
        email: req.email,
        skills: req.skills,
        languages: req.languages,
        max_concurrent: req.max_concurrent,
        level: req.level,
        timezone: req.timezone,
        shift_start: req.shift_start,
        shift_end: req.shift_end,
        skill_levels: req.skill_levels,
        channel_capacity: req.channel_capacity,
    })?;
    let mut tx = api.pool.begin().await?;
    let before: Option<AgentView> = sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(before) = before else {
        return Err(ApiError::not_found("no such agent"));
    };
    let (current, active, email) = (before.version, before.active_count, before.email.clone());
    if current != version {
        return Err(crate::work::conflict(
            "version",
            format!("the agent changed since version {version}: it is at version {current}; read it again"),
        ));
    }
    if c.max_concurrent < active {
        return Err(crate::work::conflict(
            "max_concurrent",
            format!("the agent holds {active} tickets now; hand some over first"),
        ));
    }
    if c.email != email {
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE email = $1)")
                .bind(&c.email)
                .fetch_one(&mut *tx)
                .await?;
        if taken {
            return Err(crate::work::conflict(
                "email",
                "another agent has this email",
            ));
        }
    }
    sqlx::query(
        "UPDATE agents SET name = $2, email = $3, skills = $4, languages = $5, max_concurrent = $6, level = $7,
                timezone = $8, shift_start = $9, shift_end = $10, skill_levels = $11, channel_capacity = $12,
                version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&c.name)
    .bind(&c.email)
    .bind(&c.skills)
    .bind(&c.languages)
    .bind(c.max_concurrent)
    .bind(&c.level)
    .bind(&c.timezone)
    .bind(c.shift_start)
    .bind(c.shift_end)
    .bind(&c.skill_levels)
    .bind(&c.channel_capacity)
    .execute(&mut *tx)
    .await
    .map_err(|e| match e.as_database_error().and_then(|d| d.constraint()) {
        Some("agents_email_key") => crate::work::conflict("email", "another agent has this email"),
        _ => ApiError::from(e),
    })?;
    let agent: AgentView =
        sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    audit::record(
        &mut tx,
        &actor,
        Entry {
            action: "agent.updated",
            subject: format!("agent:{id}"),
            ticket_id: None,
            before: Some(settings(&before)),
            after: Some(settings(&agent)),
        },
    )
    .await?;
    tx.commit().await?;
    info!(agent_id = %id, version = agent.version, "agent updated");
    Ok(Json(agent))
}

/// What deactivating an agent did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deactivated {
    pub id: Uuid,
    pub deactivated_at: DateTime<Utc>,
    /// Its tokens revoked now (its sessions end with them).
    pub tokens_revoked: u64,
    /// The tickets it held, back in the queue (SLA clocks running on).
    pub released: Vec<Uuid>,
    /// Tickets that could not be released now, with why; deactivating again retries them.
    pub failed: Vec<NotReleased>,
}

/// A ticket deactivation could not hand back.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotReleased {
    pub ticket_id: Uuid,
    /// What `POST /v1/tickets/{id}/assign` answered.
    pub status: u16,
    pub message: String,
}

#[utoipa::path(post, path = "/v1/agents/{id}/deactivate", operation_id = "deactivate_agent", tag = "agents", params(("id" = Uuid, Path)), responses((status = 200, body = Deactivated, description = "offline for good, tokens revoked, tickets back in the queue; again: releases what is left"), (status = 403, description = "admins only"), (status = 404, description = "no such agent"), (status = 503, description = "stored; the status change is not announced yet: call again")), security(("bearer" = [])))]
async fn deactivate(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<Deactivated>, ApiError> {
    let who = actor.who;
    who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let now = switchboard_core::clock::now();
    // Offline and without tokens first, in one transaction: the router then hands it nothing
    // more while its tickets go back.
    let mut tx = api.pool.begin().await?;
    let row: Option<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT status, deactivated_at FROM agents WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((previous, already)) = row else {
        return Err(ApiError::not_found("no such agent"));
    };
    let deactivated_at = already.unwrap_or(now);
    sqlx::query(
        "UPDATE agents SET deactivated_at = $2, status = 'offline',
                status_changed_at = CASE WHEN status = 'offline' THEN status_changed_at ELSE $3 END,
                version = version + CASE WHEN deactivated_at IS NULL THEN 1 ELSE 0 END, updated_at = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(deactivated_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let tokens_revoked = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let sessions_revoked = crate::sessions::revoke_all(&mut tx, id, "deactivated").await?;
    if already.is_none() {
        audit::record(
            &mut tx,
            &actor,
            Entry {
                action: "agent.deactivated",
                subject: format!("agent:{id}"),
                ticket_id: None,
                before: Some(serde_json::json!({ "status": previous })),
                after: Some(serde_json::json!({ "status": "offline", "deactivated_at": deactivated_at, "tokens_revoked": tokens_revoked, "sessions_revoked": sessions_revoked })),
            },
        )
        .await?;
    }
    tx.commit().await?;
    if previous != "offline" {
        announce(&api, id, AgentStatus::Offline, &previous).await?;
    }
    // Each ticket it holds goes back through the assignment path: its own transaction, its
    // events, the agent's load, the reason in the history; the SLA clocks are the ticket's.
    let held: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tickets WHERE assigned_agent_id = $1 AND merged_into IS NULL ORDER BY id",
    )
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    let admin = Principal {
        role: Role::Admin,
        agent_id: None,
        token_id: who.token_id,
        session_id: None,
    };
    let back = crate::assign::AssignInput {
        agent_id: None,
        team_id: None,
        reason: "the agent was deactivated".into(),
        override_constraints: false,
    };
    let mut released = Vec::new();
    let mut failed = Vec::new();
    for ticket_id in held {
        match crate::assign::assign_one(&api, &admin, ticket_id, &back).await {
            Ok(_) => released.push(ticket_id),
            Err(e) => failed.push(NotReleased {
                ticket_id,
                status: e.status.as_u16(),
                message: e.message,
            }),
        }
    }
    info!(agent_id = %id, tokens_revoked, released = released.len(), failed = failed.len(), "agent deactivated");
    Ok(Json(Deactivated {
        id,
        deactivated_at,
        tokens_revoked,
        released,
        failed,
    }))
}

#[utoipa::path(post, path = "/v1/agents/{id}/reactivate", operation_id = "reactivate_agent", tag = "agents", params(("id" = Uuid, Path)), responses((status = 200, body = AgentView, description = "active again, offline until it says otherwise; it needs a new token"), (status = 403, description = "admins only"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn reactivate(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    actor.who.require(Role::Admin)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let was: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT deactivated_at FROM agents WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(was) = was else {
        return Err(ApiError::not_found("no such agent"));
    };
    let agent: AgentView = sqlx::query_as(&format!(
        "UPDATE agents SET deactivated_at = NULL,
                version = version + CASE WHEN deactivated_at IS NULL THEN 0 ELSE 1 END, updated_at = now()
         WHERE id = $1 RETURNING {AGENT_COLUMNS}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(was) = was {
        audit::record(
            &mut tx,
            &actor,
            Entry {
                action: "agent.reactivated",
                subject: format!("agent:{id}"),
                ticket_id: None,
                before: Some(serde_json::json!({ "deactivated_at": was })),
                after: Some(serde_json::json!({ "deactivated_at": null })),
            },
        )
        .await?;
    }
    tx.commit().await?;
    info!(agent_id = %id, "agent reactivated");
    Ok(Json(agent))
}

/// One active assignment.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AssignmentView {
    pub assignment_id: Uuid,
    pub ticket_id: Uuid,
    pub ticket_number: String,
    pub subject: Option<String>,
    pub priority: String,
    pub category: Option<String>,
    pub status: String,
    pub reason: String,
    pub assigned_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/v1/agents/{id}/assignments", tag = "agents", params(("id" = Uuid, Path)), responses((status = 200, description = "{assignments: [AssignmentView]}"), (status = 403, description = "another agent"), (status = 404, description = "no such agent")), security(("bearer" = [])))]
async fn assignments(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id, "id")?;
    who.require_self_or(id)?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(&api.pool)
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("no such agent"));
    }
    let rows: Vec<AssignmentView> = sqlx::query_as(
        "SELECT a.id AS assignment_id, t.id AS ticket_id, t.number AS ticket_number, t.subject, t.priority,
                t.category, t.status, a.reason, a.assigned_at
         FROM assignments a JOIN tickets t ON t.id = a.ticket_id
         WHERE a.agent_id = $1 AND a.released_at IS NULL ORDER BY a.assigned_at",
    )
    .bind(id)
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(
        serde_json::json!({ "agent_id": id, "assignments": rows }),
    ))
}
