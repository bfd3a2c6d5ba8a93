//! Macros: `GET/POST /v1/macros`, `PUT/DELETE /v1/macros/{id}`, and
//! `POST /v1/tickets/{id}/macros/{macro_id}` to apply one (or preview it).
//!
//! A macro is shared with everyone, with a team's members, or personal to its agent. Supervisors
//! write shared and team macros; every agent writes its own. Applying one runs its actions in
//! order in **one transaction** under the ticket's row lock: all of them or none (a required
//! field missing at "resolve" refuses the whole macro, reply included). A reply follows the
//! reply route's collision rule (409 `take_over` on someone else's ticket unless taken over);
//! state changes need what the single routes need (an agent on a ticket it holds). `preview`
//! fills the texts and lists the changes without touching anything.
//!
//! Canned replies are macros with one reply action (`crate::canned` reads and writes those).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_contracts::{derived_id, Priority, TicketStatus};
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_tickets::assign::{self, Request, Target};
use switchboard_tickets::macros::{self, Action, Context};
use switchboard_tickets::{fields, store, tags};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{forbidden, Principal, Role};
use crate::work::{committed, conflict};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/macros", get(list).post(create))
        .route("/v1/macros/{id}", put(update).delete(remove))
        .route("/v1/tickets/{id}/macros/{macro_id}", post(apply_route))
}

/// A macro.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Macro {
    pub id: Uuid,
    pub title: String,
    /// Personal: its agent's alone.
    pub owner_agent_id: Option<Uuid>,
    /// Shared with this team's members.
    pub team_id: Option<Uuid>,
    #[schema(value_type = Vec<Action>)]
    pub actions: Jsonb<Vec<Action>>,
    pub tags: Vec<String>,
    pub version: i32,
    pub updated_at: DateTime<Utc>,
}

/// A new or changed macro.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MacroInput {
    pub title: String,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Share with this team (supervisors).
    #[serde(default)]
    pub team_id: Option<Uuid>,
    /// The caller's own (any agent); neither this nor `team_id`: shared with everyone
    /// (supervisors).
    #[serde(default)]
    pub personal: bool,
    /// On update: the version read (optimistic concurrency); omitted, last write wins.
    #[serde(default)]
    pub version: Option<i32>,
}

const COLUMNS: &str = "id, title, owner_agent_id, team_id, actions, tags, version, updated_at";

/// Who a macro belongs to, checked against who writes it.
fn scope(who: &Principal, input: &MacroInput) -> Result<(Option<Uuid>, Option<Uuid>), ApiError> {
    match (input.personal, input.team_id) {
        (true, Some(_)) => Err(ApiError::field(
            "team_id",
            "a personal macro is not shared with a team",
        )),
        (true, None) => who
            .agent_id
            .map(|a| (Some(a), None))
            .ok_or_else(|| forbidden("a personal macro belongs to an agent: use an agent's token")),
        (false, team) => {
            if who.role < Role::Supervisor {
                return Err(ApiError {
                    field: Some("personal".into()),
                    ..forbidden("only supervisors share macros; an agent writes personal ones")
                });
            }
            Ok((None, team))
        }
    }
}

fn check(input: &MacroInput) -> Result<(), ApiError> {
    let title = input.title.trim();
    if title.is_empty() || title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(ApiError::field(
            "title",
            "1 to 200 characters, no control characters",
        ));
    }
    macros::check(&input.actions).map_err(|(f, why)| ApiError::field(f, why))?;
    if input.tags.len() > 20 || input.tags.iter().any(|t| t.is_empty() || t.len() > 50) {
        return Err(ApiError::field("tags", "at most 20 tags of 1 to 50 bytes"));
    }
    Ok(())
}

fn stored(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            conflict("title", "a macro with this title exists where it is shared")
        }
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            ApiError::field("team_id", "no such team")
        }
        _ => e.into(),
    }
}

/// The macros `who` may see and apply: shared ones, its teams', its own (a supervisor: every
/// team's).
const VISIBLE: &str = "((owner_agent_id IS NULL AND team_id IS NULL) OR owner_agent_id = $1
    OR team_id IN (SELECT team_id FROM team_members WHERE agent_id = $1)
    OR ($2 AND team_id IS NOT NULL))";

#[utoipa::path(get, path = "/v1/macros", operation_id = "list_macros", tag = "tickets", responses((status = 200, body = [Macro], description = "the macros the caller may apply: shared, its teams', its own")), security(("bearer" = [])))]
async fn list(State(api): State<Api>, who: Principal) -> Result<Json<Vec<Macro>>, ApiError> {
    Ok(Json(
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM macros WHERE {VISIBLE} ORDER BY lower(title), id LIMIT 500"
        ))
        .bind(who.agent_id)
        .bind(who.role >= Role::Supervisor)
        .fetch_all(&api.pool)
        .await?,
    ))
}

#[utoipa::path(post, path = "/v1/macros", operation_id = "create_macro", tag = "tickets", request_body = MacroInput, responses((status = 201, body = Macro), (status = 400, description = "a field or action is invalid, named (`actions[1].text`)"), (status = 403, description = "an agent sharing a macro"), (status = 409, description = "the title exists where it is shared")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(input): ApiJson<MacroInput>,
) -> Result<(StatusCode, Json<Macro>), ApiError> {
    let who = actor.who;
    check(&input)?;
    let (owner, team) = scope(&who, &input)?;
    let mut tx = api.pool.begin().await?;
    let m: Macro = sqlx::query_as(&format!(
        "INSERT INTO macros (id, title, owner_agent_id, team_id, actions, tags, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(input.title.trim())
    .bind(owner)
    .bind(team)
    .bind(Jsonb(&input.actions))
    .bind(&input.tags)
    .bind(crate::assign::actor(&who))
    .fetch_one(&mut *tx)
    .await
    .map_err(stored)?;
    let entry = Entry::config(
        "macro.created",
        format!("macro:{}", m.id),
        None::<()>,
        Some(&m),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

/// The macro `id` if `who` may change it: its owner a personal one, a supervisor the rest.
async fn writable(api: &Api, who: &Principal, id: Uuid) -> Result<Macro, ApiError> {
    let m: Option<Macro> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM macros WHERE id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?;
    let m = m.ok_or_else(|| ApiError::not_found("no such macro"))?;
    let mine = m.owner_agent_id.is_some() && m.owner_agent_id == who.agent_id;
    // What the caller cannot see (another agent's own, another team's) does not exist for it.
    visible(api, who, id).await?;
    if !mine && who.role < Role::Supervisor {
        return Err(forbidden("only supervisors change shared macros"));
    }
    Ok(m)
}

#[utoipa::path(put, path = "/v1/macros/{id}", operation_id = "update_macro", tag = "tickets", params(("id" = Uuid, Path)), request_body = MacroInput, responses((status = 200, body = Macro), (status = 400, description = "a field or action is invalid, named"), (status = 403, description = "an agent changing a shared macro"), (status = 404, description = "no such macro (or another agent's)"), (status = 409, description = "`version`: changed since read; `title`: exists")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<MacroInput>,
) -> Result<Json<Macro>, ApiError> {
    let who = actor.who;
    let id = parse_id(&id, "id")?;
    check(&input)?;
    let before = writable(&api, &who, id).await?;
    let (owner, team) = scope(&who, &input)?;
    let mut tx = api.pool.begin().await?;
    let m: Option<Macro> = sqlx::query_as(&format!(
        "UPDATE macros SET title = $2, owner_agent_id = $3, team_id = $4, actions = $5, tags = $6,
                version = version + 1, updated_at = now()
         WHERE id = $1 AND ($7::int IS NULL OR version = $7) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(input.title.trim())
    .bind(owner)
    .bind(team)
    .bind(Jsonb(&input.actions))
    .bind(&input.tags)
    .bind(input.version)
    .fetch_optional(&mut *tx)
    .await
    .map_err(stored)?;
    let m = m.ok_or_else(|| {
        conflict(
            "version",
            "the macro changed since this version; read it again",
        )
    })?;
    let entry = Entry::config(
        "macro.updated",
        format!("macro:{id}"),
        Some(&before),
        Some(&m),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(m))
}

#[utoipa::path(delete, path = "/v1/macros/{id}", operation_id = "delete_macro", tag = "tickets", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted"), (status = 403, description = "an agent deleting a shared macro"), (status = 404, description = "no such macro (or another agent's)")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "id")?;
    let before = writable(&api, &actor.who, id).await?;
    let mut tx = api.pool.begin().await?;
    sqlx::query("DELETE FROM macros WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entry = Entry::config(
        "macro.deleted",
        format!("macro:{id}"),
        Some(&before),
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tickets/{id}/macros/{macro_id}` body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyInput {
    /// Who sends the macro's reply or note (default: the caller's agent).
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    /// Take the ticket over when the macro replies on someone else's ticket.
    #[serde(default)]
    pub take_over: bool,
    /// Fill the texts and list the changes; change nothing.
    #[serde(default)]
    pub preview: bool,
    /// Idempotency key of the client: applying the same macro with the same key to the same
    /// ticket again changes and sends nothing twice (answers `duplicate: true`).
    #[serde(default)]
    pub request_id: Option<String>,
}

/// What a macro did (or, previewed, would do) to a ticket.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyOutput {
    pub ticket_id: Uuid,
    pub macro_id: Uuid,
    pub applied: bool,
    /// The reply as sent (placeholders filled).
    pub reply: Option<String>,
    pub reply_id: Option<Uuid>,
    pub note: Option<String>,
    /// Each action, said in words (`status: resolved`, `tags: +vip -new`).
    pub changes: Vec<String>,
    /// A retry of an applied `request_id`: nothing was done again.
    pub duplicate: bool,
    /// Previewed: why applying it now would be refused (a collision, a ticket the caller does
    /// not hold), if it would.
    pub refusal: Option<String>,
}

#[utoipa::path(post, path = "/v1/tickets/{id}/macros/{macro_id}", operation_id = "apply_macro", tag = "tickets", params(("id" = Uuid, Path), ("macro_id" = Uuid, Path)), request_body = ApplyInput, responses((status = 200, body = ApplyOutput, description = "applied (all actions in one transaction) or previewed"), (status = 400, description = "a field is invalid, named; a macro that replies needs an agent (`agent_id`)"), (status = 403, description = "an agent changing a ticket it does not hold, or replying as another agent"), (status = 404, description = "no such ticket or macro"), (status = 409, description = "`take_over`: the reply would collide; a required field missing at resolve; the ticket solved or merged for a team hand-over")), security(("bearer" = [])))]
async fn apply_route(
    State(api): State<Api>,
    who: Principal,
    Path((id, macro_id)): Path<(String, String)>,
    ApiJson(input): ApiJson<ApplyInput>,
) -> Result<Json<ApplyOutput>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    let macro_id = parse_id(&macro_id, "macro_id")?;
    Ok(Json(apply(&api, &who, ticket_id, macro_id, &input).await?))
}

/// The macro `id` if `who` may apply it.
pub(crate) async fn visible(api: &Api, who: &Principal, id: Uuid) -> Result<Macro, ApiError> {
    let m: Option<Macro> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM macros WHERE id = $3 AND {VISIBLE}"
    ))
    .bind(who.agent_id)
    .bind(who.role >= Role::Supervisor)
    .bind(id)
    .fetch_optional(&api.pool)
    .await?;
    m.ok_or_else(|| ApiError::not_found("no such macro"))
}

/// What the placeholders of `ticket_id` are filled with: the customer, the agent `author`, and
/// the ticket's order (its newest shipment's tracking, the day it was placed).
pub(crate) async fn context(
    conn: &mut sqlx::PgConnection,
    ticket_id: Uuid,
    author: Option<Uuid>,
) -> Result<Context, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        number: String,
        name: Option<String>,
        email: Option<String>,
        phone: Option<String>,
        agent: Option<String>,
        order_name: Option<String>,
        tracking_url: Option<String>,
        tracking_number: Option<String>,
        ordered_at: Option<chrono::DateTime<chrono::Utc>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.number, c.name, c.email, c.phone,
                (SELECT name FROM agents WHERE id = $2) AS agent,
                t.fields->>'order_number' AS order_name,
                o.fulfillments->-1->>'tracking_url' AS tracking_url,
                o.fulfillments->-1->>'tracking_number' AS tracking_number,
                o.created_at AS ordered_at
         FROM tickets t JOIN customers c ON c.id = t.customer_id
         LEFT JOIN LATERAL (SELECT fulfillments, created_at FROM orders
                            WHERE customer_id = t.customer_id AND number = t.fields->>'order_number'
                            ORDER BY updated_at DESC LIMIT 1) o ON true
         WHERE t.id = $1",
    )
    .bind(ticket_id)
    .bind(author)
    .fetch_optional(conn)
    .await?;
    let r = row.ok_or_else(|| ApiError::not_found("no such ticket"))?;
    Ok(Context {
        customer_name: r.name,
        customer_email: r.email,
        ticket_number: r.number,
        agent_name: r.agent,
        order_name: r.order_name,
        customer_phone: r.phone,
        order_tracking_url: r.tracking_url,
        order_tracking_number: r.tracking_number,
        order_date: r.ordered_at.map(|d| d.format("%-d %B %Y").to_string()),
    })
}

/// The longest filled reply or note (the reply route's limit).
const MAX_RENDERED: usize = 64 * 1024;

/// One action in words.
fn describe(a: &Action) -> String {
    match a {
        Action::Reply { .. } => "reply".into(),
        Action::Note { .. } => "internal note".into(),
        Action::Status { status } => format!("status: {status}"),
        Action::Priority { priority } => format!("priority: {priority}"),
        Action::Tags { add, remove } => {
            let mut s = String::from("tags:");
            for t in add {
                s.push_str(&format!(" +{t}"));
            }
            for t in remove {
                s.push_str(&format!(" -{t}"));
            }
            s
        }
        Action::Fields { values } => format!(
            "fields: {}",
            values.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        Action::Team { team_id } => format!("team: {team_id}"),
    }
}

/// Applies (or previews) macro `macro_id` to `ticket_id` as `who`: the route and bulk actions.
pub(crate) async fn apply(
    api: &Api,
    who: &Principal,
    ticket_id: Uuid,
    macro_id: Uuid,
    input: &ApplyInput,
) -> Result<ApplyOutput, ApiError> {
    let m = visible(api, who, macro_id).await?;
    let actions = m.actions.0;
    let writes = actions
        .iter()
        .any(|a| matches!(a, Action::Reply { .. } | Action::Note { .. }));
    let author = input.agent_id.or(who.agent_id);
    if let Some(a) = input.agent_id {
        who.require_self_or(a)?;
    }
    if writes && author.is_none() {
        return Err(ApiError::field(
            "agent_id",
            "this macro writes a reply or note: name the agent who sends it",
        ));
    }
    if let Some(a) = author.filter(|_| writes) {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM agents WHERE id = $1")
            .bind(a)
            .fetch_optional(&api.pool)
            .await?;
        if exists.is_none() {
            return Err(ApiError::field("agent_id", "no such agent"));
        }
    }
    if input
        .request_id
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.len() > 200)
    {
        return Err(ApiError::field("request_id", "1 to 200 characters"));
    }
    let mut out = ApplyOutput {
        ticket_id,
        macro_id,
        applied: !input.preview,
        reply: None,
        reply_id: None,
        note: None,
        changes: actions.iter().map(describe).collect(),
        duplicate: false,
        refusal: None,
    };
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    // A preview reads without the row lock: it must not hold up the router or the SLA stage.
    let assignee = if input.preview {
        let a: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT assigned_agent_id FROM tickets WHERE id = $1")
                .bind(ticket_id)
                .fetch_optional(&mut *tx)
                .await?;
        a.ok_or_else(|| ApiError::not_found("no such ticket"))?
    } else {
        Principal::locked_assignee(&mut tx, ticket_id).await?
    };
    let ctx = context(&mut tx, ticket_id, author).await?;
    for (i, a) in actions.iter().enumerate() {
        let rendered = match a {
            Action::Reply { text } | Action::Note { text } => macros::render(text, &ctx),
            _ => continue,
        };
        // Filled placeholders can grow a text past what a reply may be.
        if rendered.len() > MAX_RENDERED {
            return Err(ApiError::field(
                format!("actions[{i}].text"),
                "the filled text is over 64 KiB",
            ));
        }
        match a {
            Action::Reply { .. } => out.reply = Some(rendered),
            Action::Note { .. } => {
                // Several notes read as one.
                let t = rendered;
                out.note = Some(match out.note.take() {
                    Some(n) => format!("{n}\n\n{t}"),
                    None => t,
                });
            }
            _ => {}
        }
    }
    let held_by_other = actions
        .iter()
        .any(|a| !matches!(a, Action::Reply { .. } | Action::Note { .. }))
        && who.check_assignee(assignee).is_err();
    if input.preview {
        // What applying would meet, said in words; nothing written (the transaction rolls
        // back as it drops).
        let collides = match (author, &out.reply) {
            (Some(a), Some(_)) => matches!(
                crate::work::collision(assignee, a, who.role),
                crate::work::Collision::Refused(_)
            ),
            _ => false,
        };
        out.refusal = if collides {
            Some("the ticket is someone else's: applying needs take_over".into())
        } else if held_by_other {
            Some("an agent changes only the tickets it holds".into())
        } else {
            None
        };
        return Ok(out);
    }
    let cause = match &input.request_id {
        Some(r) => derived_id(ticket_id, &format!("macro:{macro_id}:{r}")),
        None => Uuid::now_v7(),
    };
    let first = sqlx::query(
        "INSERT INTO macro_applications (id, ticket_id, macro_id, applied_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(cause)
    .bind(ticket_id)
    .bind(macro_id)
    .execute(&mut *tx)
    .await?;
    if first.rows_affected() == 0 {
        out.duplicate = true;
        out.applied = false;
        return Ok(out);
    }
    let now = switchboard_core::clock::now();
    let mut assignee = assignee;
    if let (Some(author), Some(_)) = (author, &out.reply) {
        crate::work::resolve_collision(&mut tx, who, ticket_id, assignee, author, input.take_over)
            .await?;
        assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    }
    if actions
        .iter()
        .any(|a| !matches!(a, Action::Reply { .. } | Action::Note { .. }))
    {
        who.check_assignee(assignee)?;
    }
    for (i, a) in actions.iter().enumerate() {
        let at = |f: &str| format!("actions[{i}].{f}");
        match a {
            Action::Reply { .. } | Action::Note { .. } => {
                let internal = matches!(a, Action::Note { .. });
                let text = match a {
                    Action::Reply { text } | Action::Note { text } => macros::render(text, &ctx),
                    _ => continue,
                };
                let id = derived_id(cause, &format!("macro:{i}"));
                let author = author.unwrap_or_default();
                crate::work::add_reply(&mut tx, ticket_id, author, &text, internal, id, now)
                    .await?;
                if !internal {
                    out.reply_id = Some(id);
                }
            }
            Action::Status { status } => {
                let to = TicketStatus::parse(status)
                    .ok_or_else(|| ApiError::field(at("status"), "not a status"))?;
                crate::work::status_in(&mut tx, &api.public_url, ticket_id, to, None).await?;
            }
            Action::Priority { priority } => {
                let to = Priority::parse(priority)
                    .ok_or_else(|| ApiError::field(at("priority"), "not a priority"))?;
                store::set_priority(&mut tx, ticket_id, to, &format!("macro {}", m.title), now)
                    .await?;
            }
            Action::Tags { add, remove } => {
                let norm = |l: &[String]| tags::normalise_all(l).map_err(|(_, e)| e);
                let (add, remove) = (norm(add), norm(remove));
                let (Ok(add), Ok(remove)) = (add, remove) else {
                    return Err(ApiError::field(at("add"), "a tag is invalid"));
                };
                tags::change(&mut tx, ticket_id, &add, &remove, now)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such ticket"))?
                    .map_err(|e| ApiError::field(at("add"), e.to_string()))?;
            }
            Action::Fields { values } => {
                fields::set(&mut tx, ticket_id, values, now)
                    .await?
                    .ok_or_else(|| ApiError::not_found("no such ticket"))?
                    .map_err(|e| {
                        ApiError::field(at(&format!("values.{}", e.key())), e.to_string())
                    })?;
            }
            Action::Team { team_id } => {
                let req = Request {
                    target: Target::Team(*team_id),
                    reason: format!("macro {}", m.title),
                    by: crate::assign::actor(who),
                    by_agent: who.agent_id,
                    override_constraints: false,
                };
                assign::assign(&mut tx, ticket_id, &req, now)
                    .await?
                    .map_err(crate::assign::refused)?;
            }
        }
    }
    committed(
        tx.commit(&api.outbox).await,
        "the macro's changes are stored; their events are delayed",
    )?;
    tracing::info!(ticket_id = %ticket_id, macro_id = %macro_id, actions = actions.len(), "macro applied");
    Ok(out)
}
