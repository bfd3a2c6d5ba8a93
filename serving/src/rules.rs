//! The team's own rules: `GET/POST /v1/rules`, `GET/PUT/DELETE /v1/rules/{id}`,
//! `GET /v1/rules/{id}/versions` (every saved version and who saved it), `GET /v1/rules/{id}/fires`
//! (what it did), `GET /v1/rules/fields` (what a condition may test), and
//! `POST /v1/rules/dry-run`: a draft rule replayed over the last days of history in ClickHouse
//! (`switchboard_tickets::replay`), reporting which tickets it would have touched and how,
//! changing nothing.
//!
//! Any role reads rules; supervisors write them. A rule is checked on every save
//! (`switchboard_tickets::rules`: an unknown field, a bad pattern, an action a trigger may not
//! take, an automation that would act for ever: 400 naming it), its custom fields, teams,
//! agents and macros must exist, and an enabled rule may not close a loop with the other
//! enabled rules (400 `actions` naming them). Every write is versioned (`rule_versions`) and in
//! the audit log with the rule before and after. The processors' `rules` stage runs them.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::rules::{self, Action, Compiled, Conditions, Kind, On, Rule};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::work::conflict;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/rules", get(list).post(create))
        .route("/v1/rules/fields", get(fields))
        .route("/v1/rules/dry-run", axum::routing::post(dry_run_route))
        .route("/v1/rules/{id}", get(read).put(update).delete(remove))
        .route("/v1/rules/{id}/versions", get(versions))
        .route("/v1/rules/{id}/fires", get(fires))
}

/// The most rules a desk keeps.
pub const MAX_RULES: i64 = 5_000;

/// A stored rule.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleOut {
    pub id: Uuid,
    pub name: String,
    pub kind: Kind,
    pub on: Vec<On>,
    pub conditions: Conditions,
    pub actions: Vec<Action>,
    pub enabled: bool,
    /// Rules run in ascending position (then creation order).
    pub position: i32,
    pub version: i32,
    pub created_by: String,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    definition: Jsonb<Rule>,
    enabled: bool,
    position: i32,
    version: i32,
    created_by: String,
    updated_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for RuleOut {
    fn from(r: Row) -> RuleOut {
        let d = r.definition.0;
        RuleOut {
            id: r.id,
            name: r.name,
            kind: d.kind,
            on: d.on,
            conditions: d.conditions,
            actions: d.actions,
            enabled: r.enabled,
            position: r.position,
            version: r.version,
            created_by: r.created_by,
            updated_by: r.updated_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, name, definition, enabled, position, version, created_by, updated_by, created_at, updated_at";

/// A new or changed rule.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleInput {
    pub name: String,
    pub kind: Kind,
    /// The events a trigger runs on.
    #[serde(default)]
    pub on: Vec<On>,
    #[serde(default)]
    pub conditions: Conditions,
    pub actions: Vec<Action>,
    /// Off until enabled (dry-run it first).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub position: i32,
    /// On update: the version read (409 when someone changed it since).
    #[serde(default)]
    pub version: Option<i32>,
}

impl RuleInput {
    fn rule(&self) -> Rule {
        Rule {
            kind: self.kind,
            on: self.on.clone(),
            conditions: self.conditions.clone(),
            actions: self.actions.clone(),
        }
    }
}

/// Checks `input` as rule `id`: its own shape and what it names (loops: [`check_loops`]).
async fn check(api: &Api, id: Uuid, input: &RuleInput) -> Result<Compiled, ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "name",
            "1 to 200 characters, no control characters",
        ));
    }
    if !(-1_000_000..=1_000_000).contains(&input.position) {
        return Err(ApiError::field("position", "from -1000000 to 1000000"));
    }
    let rule = input.rule();
    let compiled = Compiled::new(id, name, &rule).map_err(|e| ApiError::field(e.field, e.why))?;
    // Custom fields named by conditions and actions exist.
    let defs = switchboard_tickets::fields::defs(&api.pool).await?;
    let known = |k: &str| defs.iter().any(|d| d.key == k);
    for (group, list) in [("all", &rule.conditions.all), ("any", &rule.conditions.any)] {
        for (i, c) in list.iter().enumerate() {
            if let Some(k) = c.field.strip_prefix("fields.") {
                if !known(k) {
                    return Err(ApiError::field(
                        format!("conditions.{group}[{i}].field"),
                        format!("no active custom field {k}"),
                    ));
                }
            }
        }
    }
    for (i, a) in rule.actions.iter().enumerate() {
        match a {
            Action::Fields { values } => {
                for (k, v) in values {
                    let def = defs.iter().find(|d| &d.key == k).ok_or_else(|| {
                        ApiError::field(
                            format!("actions[{i}].values.{k}"),
                            "no active custom field",
                        )
                    })?;
                    def.check(v)
                        .map_err(|why| ApiError::field(format!("actions[{i}].values.{k}"), why))?;
                }
            }
            Action::Team { team_id } => exists(api, "teams", *team_id, i, "team_id").await?,
            Action::Webhook { webhook_id } => {
                exists(api, "webhooks", *webhook_id, i, "webhook_id").await?
            }
            Action::Assignee { agent_id: Some(a) } => {
                exists(api, "agents", *a, i, "agent_id").await?
            }
            Action::Macro { macro_id } => {
                let shared: Option<bool> = sqlx::query_scalar(
                    "SELECT owner_agent_id IS NULL AND team_id IS NULL FROM macros WHERE id = $1",
                )
                .bind(macro_id)
                .fetch_optional(&api.pool)
                .await?;
                match shared {
                    None => {
                        return Err(ApiError::field(
                            format!("actions[{i}].macro_id"),
                            "no such macro",
                        ))
                    }
                    Some(false) => {
                        return Err(ApiError::field(
                            format!("actions[{i}].macro_id"),
                            "a rule applies shared macros only",
                        ))
                    }
                    Some(true) => {}
                }
            }
            Action::Notify { to, .. } => {
                for (j, r) in to.iter().enumerate() {
                    if let Some(a) = r.strip_prefix("agent:").and_then(|a| a.parse().ok()) {
                        exists(api, "agents", a, i, &format!("to[{j}]")).await?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(compiled)
}

async fn exists(
    api: &Api,
    table: &'static str,
    id: Uuid,
    i: usize,
    field: &str,
) -> Result<(), ApiError> {
    let found: Option<i32> = sqlx::query_scalar(&format!("SELECT 1 FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::field(
            format!("actions[{i}].{field}"),
            format!("no such {}", table.trim_end_matches('s')),
        )),
    }
}

async fn one(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<Option<RuleOut>, sqlx::Error> {
    let r: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM rules WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(RuleOut::from))
}

/// Keeps the saved version `id` is at now.
async fn keep_version(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rule_versions (rule_id, version, name, definition, enabled, saved_by, saved_at)
         SELECT id, version, name, definition, enabled, updated_by, updated_at FROM rules WHERE id = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

#[utoipa::path(get, path = "/v1/rules", operation_id = "list_rules", tag = "rules", responses((status = 200, body = [RuleOut], description = "every rule, in the order they run")), security(("bearer" = [])))]
async fn list(State(api): State<Api>, _any: Principal) -> Result<Json<Vec<RuleOut>>, ApiError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules ORDER BY position, created_at, id"
    ))
    .fetch_all(&api.pool)
    .await?;
    Ok(Json(rows.into_iter().map(RuleOut::from).collect()))
}

/// A field a condition may test.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldInfo {
    pub field: String,
    pub about: String,
}

#[utoipa::path(get, path = "/v1/rules/fields", operation_id = "rule_fields", tag = "rules", responses((status = 200, body = [FieldInfo], description = "what a condition may test: the ticket's fields and the active custom fields")), security(("bearer" = [])))]
async fn fields(State(api): State<Api>, _any: Principal) -> Result<Json<Vec<FieldInfo>>, ApiError> {
    let mut out: Vec<FieldInfo> = rules::FIELDS
        .iter()
        .map(|(f, a)| FieldInfo {
            field: f.to_string(),
            about: a.to_string(),
        })
        .collect();
    for d in switchboard_tickets::fields::defs(&api.pool).await? {
        out.push(FieldInfo {
            field: format!("fields.{}", d.key),
            about: format!("custom field ({})", d.kind.as_str()),
        });
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/rules/{id}", operation_id = "get_rule", tag = "rules", params(("id" = Uuid, Path)), responses((status = 200, body = RuleOut), (status = 404, description = "no such rule")), security(("bearer" = [])))]
async fn read(
    State(api): State<Api>,
    _any: Principal,
    Path(id): Path<String>,
) -> Result<Json<RuleOut>, ApiError> {
    let id = parse_id(&id, "id")?;
    let mut conn = api.pool.acquire().await?;
    Ok(Json(
        one(&mut conn, id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such rule"))?,
    ))
}

#[utoipa::path(post, path = "/v1/rules", operation_id = "create_rule", tag = "rules", request_body = RuleInput, responses((status = 201, body = RuleOut), (status = 400, description = "a part of the rule is invalid, named (`conditions.all[2].value`, `actions[1].type`), or it would loop with the enabled rules (`actions`)"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(input): ApiJson<RuleInput>,
) -> Result<(StatusCode, Json<RuleOut>), ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = Uuid::now_v7();
    let compiled = check(&api, id, &input).await?;
    let mut tx = api.pool.begin().await?;
    // One rule write at a time: the loop check sees every enabled rule.
    sqlx::query("SELECT revision FROM rules_revision FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    if input.enabled {
        check_loops(&mut tx, id, compiled).await?;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rules")
        .fetch_one(&mut *tx)
        .await?;
    if n >= MAX_RULES {
        return Err(conflict("name", format!("at most {MAX_RULES} rules")));
    }
    let by = crate::assign::actor(&actor.who);
    sqlx::query(
        "INSERT INTO rules (id, name, kind, definition, enabled, position, created_by, updated_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $8)",
    )
    .bind(id)
    .bind(input.name.trim())
    .bind(input.kind.as_str())
    .bind(Jsonb(input.rule()))
    .bind(input.enabled)
    .bind(input.position)
    .bind(&by)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    keep_version(&mut tx, id).await?;
    let after = one(&mut tx, id).await?;
    let entry = Entry::config(
        "rule.created",
        format!("rule:{id}"),
        None::<()>,
        after.as_ref(),
    );
    audit::commit_with(tx, &actor, entry).await?;
    let out = after.ok_or_else(|| ApiError::not_found("no such rule"))?;
    tracing::info!(rule_id = %id, enabled = out.enabled, "rule created");
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(put, path = "/v1/rules/{id}", operation_id = "update_rule", tag = "rules", params(("id" = Uuid, Path)), request_body = RuleInput, responses((status = 200, body = RuleOut), (status = 400, description = "a part of the rule is invalid, named, or it would loop"), (status = 403, description = "supervisors only"), (status = 404, description = "no such rule"), (status = 409, description = "`version`: changed since read")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RuleInput>,
) -> Result<Json<RuleOut>, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let compiled = check(&api, id, &input).await?;
    let mut tx = api.pool.begin().await?;
    sqlx::query("SELECT revision FROM rules_revision FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    if input.enabled {
        check_loops(&mut tx, id, compiled).await?;
    }
    let before = one(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such rule"))?;
    if input.version.is_some_and(|v| v != before.version) {
        return Err(conflict(
            "version",
            format!(
                "the rule changed (version {}); read it again",
                before.version
            ),
        ));
    }
    sqlx::query(
        "UPDATE rules SET name = $2, kind = $3, definition = $4, enabled = $5, position = $6,
                version = version + 1, updated_by = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(id)
    .bind(input.name.trim())
    .bind(input.kind.as_str())
    .bind(Jsonb(input.rule()))
    .bind(input.enabled)
    .bind(input.position)
    .bind(crate::assign::actor(&actor.who))
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    keep_version(&mut tx, id).await?;
    let after = one(&mut tx, id).await?;
    let entry = Entry::config(
        "rule.updated",
        format!("rule:{id}"),
        Some(&before),
        after.as_ref(),
    );
    audit::commit_with(tx, &actor, entry).await?;
    tracing::info!(rule_id = %id, "rule updated");
    Ok(Json(
        after.ok_or_else(|| ApiError::not_found("no such rule"))?,
    ))
}

#[utoipa::path(delete, path = "/v1/rules/{id}", operation_id = "delete_rule", tag = "rules", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted (its versions and fires stay for the record)"), (status = 403, description = "supervisors only"), (status = 404, description = "no such rule")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let before = one(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such rule"))?;
    sqlx::query("DELETE FROM rules WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = Entry::config(
        "rule.deleted",
        format!("rule:{id}"),
        Some(&before),
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A saved version of a rule.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RuleVersion {
    pub version: i32,
    pub name: String,
    #[schema(value_type = Rule)]
    pub definition: Jsonb<Rule>,
    pub enabled: bool,
    pub saved_by: String,
    pub saved_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/v1/rules/{id}/versions", operation_id = "rule_versions", tag = "rules", params(("id" = Uuid, Path)), responses((status = 200, body = [RuleVersion], description = "newest first")), security(("bearer" = [])))]
async fn versions(
    State(api): State<Api>,
    _any: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<RuleVersion>>, ApiError> {
    let id = parse_id(&id, "id")?;
    Ok(Json(
        sqlx::query_as(
            "SELECT version, name, definition, enabled, saved_by, saved_at FROM rule_versions
             WHERE rule_id = $1 ORDER BY version DESC LIMIT 200",
        )
        .bind(id)
        .fetch_all(&api.pool)
        .await?,
    ))
}

/// `GET /v1/rules/{id}/fires` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FiresQuery {
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// What a rule did to a ticket.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Fire {
    pub ticket_id: Uuid,
    pub fired_at: DateTime<Utc>,
    /// The actions, in words.
    pub actions: Vec<String>,
}

#[utoipa::path(get, path = "/v1/rules/{id}/fires", operation_id = "rule_fires", tag = "rules", params(("id" = Uuid, Path), FiresQuery), responses((status = 200, body = [Fire], description = "what the rule did, newest first"), (status = 400, description = "`limit` out of range"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn fires(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<FiresQuery>,
) -> Result<Json<Vec<Fire>>, ApiError> {
    who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 1000"));
    }
    Ok(Json(
        sqlx::query_as(
            "SELECT ticket_id, fired_at, actions FROM rule_fires WHERE rule_id = $1
             ORDER BY fired_at DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&api.pool)
        .await?,
    ))
}

/// `POST /v1/rules/dry-run` body: a draft rule and how far back to replay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunInput {
    pub kind: Kind,
    #[serde(default)]
    pub on: Vec<On>,
    #[serde(default)]
    pub conditions: Conditions,
    pub actions: Vec<Action>,
    /// Days of history to replay (1 to 90, default 7).
    #[serde(default)]
    pub days: Option<u32>,
    /// Where from: `auto` (default: the topics while they hold the whole window and it is at
    /// most 300,000 records, else ClickHouse), `kafka` or `clickhouse`.
    #[serde(default)]
    pub source: DrySource,
}

/// What a dry run found, and how long it took.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRunOutput {
    #[serde(flatten)]
    pub result: switchboard_tickets::replay::DryRun,
    pub days: u32,
    /// Where the history came from: `kafka` or `clickhouse`.
    pub source: &'static str,
    pub took_ms: u64,
}

#[utoipa::path(post, path = "/v1/rules/dry-run", operation_id = "dry_run_rule", tag = "rules", request_body = DryRunInput, responses((status = 200, body = DryRunOutput, description = "which tickets the rule would have touched in the last `days`, and how; nothing changed"), (status = 400, description = "a part of the rule is invalid, named"), (status = 403, description = "supervisors only"), (status = 429, description = "two dry runs are already running on this instance: try again (Retry-After)"), (status = 503, description = "neither the topics nor the analytics store could replay the window (the reason says why)")), security(("bearer" = [])))]
async fn dry_run_route(
    State(api): State<Api>,
    who: Principal,
    ApiJson(input): ApiJson<DryRunInput>,
) -> Result<Json<DryRunOutput>, ApiError> {
    who.require(Role::Supervisor)?;
    let days = input.days.unwrap_or(7);
    if !(1..=90).contains(&days) {
        return Err(ApiError::field("days", "1 to 90"));
    }
    let rule = Rule {
        kind: input.kind,
        on: input.on,
        conditions: input.conditions,
        actions: input.actions,
    };
    let compiled =
        Compiled::new(Uuid::nil(), "draft", &rule).map_err(|e| ApiError::field(e.field, e.why))?;
    // Each replay may hold a window of history: a few at once per instance, the rest are told
    // to come back.
    let Ok(slot) = api.dry_runs.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "busy",
            format!("{DRY_RUNS_AT_ONCE} dry runs are running on this instance; try again shortly"),
        );
        e.retry_after_secs = Some(5);
        return Err(e);
    };
    let started = std::time::Instant::now();
    let (result, source) = dry_run_from(
        input.source,
        api.kafka.as_ref(),
        api.clickhouse.as_ref(),
        &compiled,
        days,
        switchboard_core::clock::now(),
        Some(slot),
    )
    .await
    .map_err(ApiError::unavailable)?;
    Ok(Json(DryRunOutput {
        result,
        days,
        source,
        took_ms: started.elapsed().as_millis() as u64,
    }))
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct HistoryRow {
    schema: String,
    event_id: String,
    ticket_id: String,
    occurred_ms: u64,
    payload: String,
    message: String,
}

/// Replays `rule` over the `days` before `now` from ClickHouse's `events`, one ticket at a
/// time (rows stream in ticket order; memory holds one ticket's history).
pub async fn dry_run(
    ch: &clickhouse::Client,
    rule: &Compiled,
    days: u32,
    now: DateTime<Utc>,
) -> Result<switchboard_tickets::replay::DryRun, clickhouse::error::Error> {
    use switchboard_tickets::replay::{Recorded, Replay};
    let since = now - chrono::Duration::days(i64::from(days));
    let since_ms = since.timestamp_millis().max(0) as u64;
    // Messages a day older than the window, for tickets whose message came just before it.
    let messages_ms = since_ms.saturating_sub(86_400_000);
    let mut cursor = ch
        .query(
            "SELECT e.schema AS schema, e.event_id AS event_id, e.ticket_id AS ticket_id,
                    e.occurred_ms AS occurred_ms, e.payload AS payload, m.msg AS message
             FROM (SELECT schema, event_id, ticket_id, occurred_ms, payload,
                          if(kind = 'message_added', visitParamExtractString(payload, 'message_id'), '') AS mid
                   FROM events FINAL
                   WHERE schema IN ('ticket_event', 'enrichment_result', 'sla_event')
                     AND occurred_at >= toDateTime(?) AND occurred_ms >= ? AND occurred_ms <= ?
                     AND ticket_id != '') AS e
             LEFT JOIN (SELECT visitParamExtractString(payload, 'message_id') AS mid, any(payload) AS msg
                        FROM events WHERE schema = 'inbound_message'
                          AND occurred_at >= toDateTime(?) AND occurred_ms >= ?
                        GROUP BY mid) AS m ON e.mid = m.mid
             ORDER BY e.ticket_id, e.occurred_ms, e.event_id",
        )
        .bind(since_ms / 1000)
        .bind(since_ms)
        .bind(now.timestamp_millis().max(0) as u64)
        .bind(messages_ms / 1000)
        .bind(messages_ms)
        .fetch::<HistoryRow>()?;
    let mut replay = Replay::new(rule, since, now);
    let mut current: Option<Uuid> = None;
    let mut history: Vec<Recorded> = Vec::new();
    while let Some(row) = cursor.next().await? {
        let Ok(ticket) = Uuid::parse_str(&row.ticket_id) else {
            continue;
        };
        if current != Some(ticket) {
            if let Some(t) = current.take() {
                replay.ticket(t, &history);
            }
            history.clear();
            current = Some(ticket);
        }
        let at = DateTime::from_timestamp_millis(row.occurred_ms as i64).unwrap_or(now);
        let event_id = Uuid::parse_str(&row.event_id).unwrap_or_default();
        let Some(recorded) = recorded(&row.schema, event_id, at, &row.payload, &row.message) else {
            continue;
        };
        history.push(recorded);
    }
    if let Some(t) = current {
        replay.ticket(t, &history);
    }
    Ok(replay.finish())
}

/// One recorded thing as either source gives it (the envelope's schema, id, time and payload;
/// the customer's message payload for a `message_added`): `None` for what the replay does not
/// read, or an event of a kind newer than this build.
fn recorded(
    schema: &str,
    event_id: Uuid,
    at: DateTime<Utc>,
    payload: &str,
    message: &str,
) -> Option<switchboard_tickets::replay::Recorded> {
    use switchboard_tickets::replay::Recorded;
    Some(match schema {
        "ticket_event" => Recorded::Ticket {
            event_id,
            at,
            event: Box::new(
                serde_json::from_str::<switchboard_contracts::TicketEvent>(payload).ok()?,
            ),
            message: serde_json::from_str(message).ok(),
        },
        "enrichment_result" => Recorded::Enrichment {
            at,
            payload: serde_json::from_str(payload).ok()?,
        },
        "sla_event" => {
            let v = serde_json::from_str::<serde_json::Value>(payload).ok()?;
            let on = match v.get("kind").and_then(|k| k.as_str()) {
                Some("warning") => On::SlaWarning,
                Some("breached") => On::SlaBreached,
                _ => return None,
            };
            Recorded::Sla { event_id, at, on }
        }
        _ => return None,
    })
}

/// Dry runs one instance runs at once; another gets 429.
pub const DRY_RUNS_AT_ONCE: usize = 2;

/// The most payload bytes a dry run from Kafka holds; a larger window is an error (`auto`
/// then replays from ClickHouse, which streams one ticket at a time).
pub const KAFKA_MAX_BYTES: usize = 512 * 1024 * 1024;

/// The most records a dry run reads from Kafka when asked to (`source: kafka`).
pub const KAFKA_MAX_RECORDS: u64 = 2_000_000;

/// The most records `auto` reads from Kafka; a larger window goes to ClickHouse, which reads
/// history faster than a broker serves it (`switchboard-sim bench rules` compares the two: on
/// the embedded broker the topics take about three times ClickHouse's time, broker-bound).
pub const KAFKA_AUTO_MAX_RECORDS: u64 = 300_000;

/// Replays `rule` over the `days` before `now` from the topics themselves (`ticket.events`,
/// `enrichments`, `sla.events`, and `inbound.messages` from a day earlier for the messages),
/// deduplicated by event id as ClickHouse's `FINAL` does, each ticket's history in the same
/// order. Blocking (call it off the async workers); holds the window in memory, at most
/// `max_records` (more is an error, found before anything is read) and [`KAFKA_MAX_BYTES`] of
/// payloads. Also says whether the topics still held the whole window (the messages topic,
/// read a day further back, is not counted); with `only_retained`, a window they no longer
/// hold is not read (the answer is empty and says `false`).
pub fn dry_run_kafka(
    kafka: &switchboard_core::config::KafkaConfig,
    rule: &Compiled,
    days: u32,
    now: DateTime<Utc>,
    max_records: u64,
    only_retained: bool,
) -> Result<(switchboard_tickets::replay::DryRun, bool), switchboard_core::Error> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use switchboard_contracts::Topic;
    use switchboard_tickets::replay::Replay;
    let since = now - chrono::Duration::days(i64::from(days));
    let (since_ms, now_ms) = (since.timestamp_millis(), now.timestamp_millis());
    let messages_ms = since_ms - 86_400_000;
    struct Row {
        at: DateTime<Utc>,
        event_id: Uuid,
        schema: String,
        payload: String,
        mid: Option<Uuid>,
    }
    let mut tickets: BTreeMap<Uuid, Vec<Row>> = BTreeMap::new();
    let mut messages: HashMap<Uuid, String> = HashMap::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut held = 0usize;
    let from = |topic, since_ms, required| switchboard_core::kafka::WindowTopic {
        topic,
        since_ms,
        required,
    };
    let window = switchboard_core::kafka::read_window(
        kafka,
        &[
            from(Topic::TicketEvents, since_ms, true),
            from(Topic::Enrichments, since_ms, true),
            from(Topic::SlaEvents, since_ms, true),
            from(Topic::InboundMessages, messages_ms, false),
        ],
        max_records,
        std::time::Duration::from_secs(120),
        only_retained,
        |topic, bytes| {
            held += bytes.len();
            if held > KAFKA_MAX_BYTES {
                return false;
            }
            // Only the envelope's head and the payload's keys are read here; the payload
            // itself stays text until its ticket is replayed.
            #[derive(Deserialize)]
            struct Head<'a> {
                #[serde(borrow)]
                schema: std::borrow::Cow<'a, str>,
                event_id: Uuid,
                occurred_at: DateTime<Utc>,
                #[serde(borrow)]
                payload: &'a serde_json::value::RawValue,
            }
            #[derive(Deserialize)]
            struct Keys<'a> {
                #[serde(default)]
                ticket_id: Option<Uuid>,
                #[serde(default)]
                message_id: Option<Uuid>,
                #[serde(default, borrow)]
                kind: Option<std::borrow::Cow<'a, str>>,
            }
            let Ok(head) = serde_json::from_slice::<Head<'_>>(bytes) else {
                return true;
            };
            let Ok(keys) = serde_json::from_str::<Keys<'_>>(head.payload.get()) else {
                return true;
            };
            // Milliseconds, as ClickHouse keeps them: both sources replay the same times.
            let ms = head.occurred_at.timestamp_millis();
            let Some(at) = DateTime::from_timestamp_millis(ms) else {
                return true;
            };
            if topic == Topic::InboundMessages {
                if let (true, Some(mid)) = (ms >= messages_ms, keys.message_id) {
                    messages
                        .entry(mid)
                        .or_insert_with(|| head.payload.get().to_string());
                }
                return true;
            }
            if ms < since_ms || ms > now_ms || !seen.insert(head.event_id) {
                return true;
            }
            let Some(ticket) = keys.ticket_id else {
                return true;
            };
            let mid = keys
                .message_id
                .filter(|_| keys.kind.as_deref() == Some("message_added"));
            tickets.entry(ticket).or_default().push(Row {
                at,
                event_id: head.event_id,
                schema: head.schema.into_owned(),
                payload: head.payload.get().to_string(),
                mid,
            });
            true
        },
    )?;
    let mut replay = Replay::new(rule, since, now);
    let mut history = Vec::new();
    for (ticket, mut rows) in tickets {
        // As ClickHouse orders them: time, then the id (its text sorts as its bytes do).
        rows.sort_by_key(|r| (r.at, r.event_id));
        history.clear();
        for r in &rows {
            let message = r
                .mid
                .as_ref()
                .and_then(|m| messages.get(m))
                .map(String::as_str)
                .unwrap_or("");
            if let Some(rec) = recorded(&r.schema, r.event_id, r.at, &r.payload, message) {
                history.push(rec);
            }
        }
        replay.ticket(ticket, &history);
    }
    Ok((replay.finish(), window.retained))
}

/// Where a dry run replays from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrySource {
    /// The topics while they still hold the whole window and it is small (at most 300,000
    /// records), otherwise ClickHouse.
    #[default]
    Auto,
    Kafka,
    Clickhouse,
}

/// Replays `rule` from `source`: the result and where it came from (`kafka`, `clickhouse`).
/// An error says why neither could (for the caller's 503).
/// `slot`, when given, is held until the replay is over, even when the caller gives up on it
/// (a blocking read from the topics runs on).
pub async fn dry_run_from(
    source: DrySource,
    kafka: Option<&switchboard_core::config::KafkaConfig>,
    ch: Option<&clickhouse::Client>,
    rule: &Compiled,
    days: u32,
    now: DateTime<Utc>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(switchboard_tickets::replay::DryRun, &'static str), String> {
    let slot = std::sync::Arc::new(slot);
    let mut why_not_kafka = String::from("no broker configured");
    if source != DrySource::Clickhouse {
        if let Some(k) = kafka {
            let (k, r) = (k.clone(), rule.clone());
            let max = if source == DrySource::Kafka {
                KAFKA_MAX_RECORDS
            } else {
                KAFKA_AUTO_MAX_RECORDS
            };
            let only_retained = source == DrySource::Auto;
            let held = slot.clone();
            let read = tokio::task::spawn_blocking(move || {
                let _slot = held;
                dry_run_kafka(&k, &r, days, now, max, only_retained)
            })
            .await
            .map_err(|e| format!("the kafka replay stopped: {e}"))?;
            match read {
                Ok((out, true)) => return Ok((out, "kafka")),
                Ok((out, false)) if source == DrySource::Kafka => {
                    let mut out = out;
                    out.caveats.push(
                        "the topics no longer hold the whole window: its oldest events are missing"
                            .into(),
                    );
                    return Ok((out, "kafka"));
                }
                Ok((_, false)) => {
                    why_not_kafka = "the topics no longer hold the whole window".into()
                }
                Err(e) => why_not_kafka = e.to_string(),
            }
        }
        if source == DrySource::Kafka {
            return Err(format!("kafka: {why_not_kafka}"));
        }
    }
    let Some(ch) = ch else {
        return Err(format!(
            "no analytics store to replay from, and not from kafka: {why_not_kafka}"
        ));
    };
    let out = dry_run(ch, rule, days, now)
        .await
        .map_err(|e| format!("clickhouse: {e}"))?;
    Ok((out, "clickhouse"))
}

/// Refuses `compiled` (rule `id`) when, enabled, it would close a loop with the other enabled
/// rules; read on `conn`, the write's transaction, after `rules_revision` is locked, so two
/// enables at once cannot each miss the other.
async fn check_loops(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    compiled: Compiled,
) -> Result<(), ApiError> {
    let others: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rules WHERE enabled AND id <> $1"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let found = tokio::task::spawn_blocking(move || {
        let mut set: Vec<Compiled> = others
            .iter()
            .filter_map(|r| Compiled::new(r.id, &r.name, &r.definition.0).ok())
            .collect();
        set.push(compiled);
        let patterns: usize = set.iter().map(|c| c.pattern_bytes).sum();
        if patterns > rules::SET_PATTERN_BUDGET {
            return Err(patterns);
        }
        Ok(rules::find_loop(&set, Some(id)).map(|ids| {
            ids.iter()
                .filter(|i| **i != id)
                .filter_map(|i| set.iter().find(|c| c.id == *i))
                .map(|c| format!("{:?}", c.name))
                .collect::<Vec<_>>()
        }))
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("checking for loops: {e}")))?
    .map_err(|bytes| {
        ApiError::field(
            "conditions",
            format!(
                "the enabled rules' patterns would take {} MiB with this one, past the {} MiB a desk's rules may use: simplify a pattern or disable a rule",
                bytes.div_ceil(1 << 20),
                rules::SET_PATTERN_BUDGET >> 20
            ),
        )
    })?;
    match found {
        Some(names) => Err(ApiError::field(
            "actions",
            format!(
                "with the enabled rule(s) {} this rule would set itself off for ever (they undo each other's changes or keep replying)",
                names.join(", ")
            ),
        )),
        None => Ok(()),
    }
}
