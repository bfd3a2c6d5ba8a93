//! The audit log: who changed what, when and from where.
//!
//! - [`Actor`]: the caller as the log names it, with its address and user agent (an extractor
//!   in place of [`Principal`] on the routes that record).
//! - [`record`]: one entry, written on the connection of the change's own transaction.
//! - `GET /v1/audit?actor=&subject=&ticket=&action=&since=&until=&cursor=&limit=` (admins):
//!   newest first, a keyset cursor; `format=csv` for a spreadsheet.
//!
//! Recorded: agents (created, updated with before and after, deactivated, reactivated,
//! imported), tokens (issued, revoked), teams, views, fields, macros, canned replies and
//! knowledge-base articles (created, updated,
//! deleted, before and after), identities linked and sessions opened and ended (single sign-on),
//! refused sign-ins, and every change a person or a token makes to a ticket (status, assignment,
//! team, merge, split, tags, fields, priority: `ticket.<kind>`, written by
//! `switchboard_tickets::store` beside the ticket's event, whose `actor` names the caller).
//! Rules' changes (the router, SLA clocks, the bot) are named on their events only.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiQuery};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/audit", get(list))
}

/// The caller of a change, as the log names it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub who: Principal,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The name the log gives a caller that is not a token or an agent (`cli`, `system`,
    /// `sso`, `sso:<subject>`); none for a request's caller.
    pub label: Option<String>,
}

impl Actor {
    /// A change made outside any request (`cli`, `system`).
    pub fn local(name: &str) -> Actor {
        Actor {
            who: Principal {
                role: Role::Admin,
                agent_id: None,
                token_id: None,
                session_id: None,
            },
            ip: None,
            user_agent: None,
            label: Some(name.to_string()),
        }
    }

    /// `agent:<id>` (by token or session), `token:<id>`, `admin` (the configured admin token),
    /// or the label of [`Actor::local`] and the sign-in.
    pub fn name(&self) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => self.who.name(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let who = Principal::from_request_parts(parts, state).await?;
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip().to_string());
        let user_agent = user_agent(&parts.headers);
        Ok(Actor {
            who,
            ip,
            user_agent,
            label: None,
        })
    }
}

/// The request's `User-Agent` as the log keeps it: text, no control characters, 300 at most.
pub fn user_agent(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().filter(|c| !c.is_control()).take(300).collect())
}

/// The request's peer address, when the server recorded one (an extractor that never fails).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip()),
        ))
    }
}

/// What one entry says happened.
#[derive(Debug)]
pub struct Entry {
    pub action: &'static str,
    pub subject: String,
    pub ticket_id: Option<Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl Entry {
    /// A change of configuration (a view, a field, a macro): `subject` before and after.
    pub fn config(
        action: &'static str,
        subject: String,
        before: Option<impl Serialize>,
        after: Option<impl Serialize>,
    ) -> Entry {
        Entry {
            action,
            subject,
            ticket_id: None,
            before: before.and_then(|b| serde_json::to_value(b).ok()),
            after: after.and_then(|a| serde_json::to_value(a).ok()),
        }
    }
}

/// Records `entry` by `actor` in `tx` and commits: a one-statement change and its entry land
/// together or not at all.
pub async fn commit_with(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &Actor,
    entry: Entry,
) -> Result<(), ApiError> {
    record(&mut tx, actor, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes `entry` by `actor` on `conn` (the change's own transaction).
pub async fn record(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    entry: Entry,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, role, action, subject, ticket_id, before, after, ip, user_agent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(Uuid::now_v7())
    .bind(switchboard_core::clock::now())
    .bind(actor.name())
    .bind(actor.who.role.as_str())
    .bind(entry.action)
    .bind(&entry.subject)
    .bind(entry.ticket_id)
    .bind(entry.before)
    .bind(entry.after)
    .bind(actor.ip.as_deref().filter(|ip| !ip.is_empty()))
    .bind(&actor.user_agent)
    .execute(conn)
    .await?;
    Ok(())
}

/// `GET /v1/audit` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `admin`, `token:<id>`, `agent:<id>`, `cli`.
    pub actor: Option<String>,
    /// `agent:<id>`, `token:<id>`, `ticket:<id>`.
    pub subject: Option<String>,
    pub ticket: Option<Uuid>,
    /// An action (`agent.updated`) or its kind (`agent`).
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// 1 to 500 (default 100).
    pub limit: Option<i64>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// One entry.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: Option<String>,
    pub action: String,
    pub subject: String,
    pub ticket_id: Option<Uuid>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A page of entries.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// A filter value: 1 to 200 characters, no control characters.
fn short(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(v) if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) => Err(
            ApiError::field(field, "1 to 200 characters, no control characters"),
        ),
        v => Ok(v),
    }
}

/// The cursor: the last entry's time and id.
fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (at, id) = c.split_once('_')?;
    let micros: i64 = at.parse().ok()?;
    Some((
        DateTime::from_timestamp_micros(micros)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// A CSV cell that a spreadsheet shows as text, never runs as a formula.
fn cell(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    }
}

#[utoipa::path(get, path = "/v1/audit", operation_id = "audit_log", tag = "access", params(AuditQuery), responses((status = 200, body = AuditPage, description = "newest first; `format=csv`: text/csv with the same columns"), (status = 400, description = "a parameter is invalid, named"), (status = 403, description = "admins only")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    who.require(Role::Admin)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 500"));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::field("format", "json or csv")),
    };
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            parse_cursor(c)
                .ok_or_else(|| ApiError::field("cursor", "not a cursor of this list"))?,
        ),
    };
    let actor = short("actor", q.actor)?;
    let subject = short("subject", q.subject)?;
    let action = short("action", q.action)?;
    let rows: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, at, actor, role, action, subject, ticket_id, before, after, ip, user_agent
         FROM audit_log
         WHERE ($1::text IS NULL OR actor = $1)
           AND ($2::text IS NULL OR subject = $2)
           AND ($3::uuid IS NULL OR ticket_id = $3)
           AND ($4::text IS NULL OR action = $4 OR action LIKE replace(replace($4, '%', ''), '_', '\\_') || '.%')
           AND ($5::timestamptz IS NULL OR at >= $5)
           AND ($6::timestamptz IS NULL OR at < $6)
           AND ($7::timestamptz IS NULL OR (at, id) < ($7, $8))
         ORDER BY at DESC, id DESC LIMIT $9",
    )
    .bind(actor)
    .bind(subject)
    .bind(q.ticket)
    .bind(action)
    .bind(q.since)
    .bind(q.until)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit + 1)
    .fetch_all(&api.pool)
    .await?;
    let mut entries = rows;
    let more = entries.len() as i64 > limit;
    entries.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| {
            entries
                .last()
                .map(|e| format!("{}_{}", e.at.timestamp_micros(), e.id))
        })
        .flatten();
    if !csv {
        return Ok(Json(AuditPage {
            entries,
            next_cursor,
        })
        .into_response());
    }
    let mut out = csv_writer();
    let _ = out.write_record([
        "at",
        "actor",
        "role",
        "action",
        "subject",
        "ticket_id",
        "before",
        "after",
        "ip",
        "user_agent",
    ]);
    for e in &entries {
        let json =
            |v: &Option<serde_json::Value>| v.as_ref().map(ToString::to_string).unwrap_or_default();
        let _ = out.write_record([
            e.at.to_rfc3339(),
            cell(&e.actor),
            e.role.clone().unwrap_or_default(),
            cell(&e.action),
            cell(&e.subject),
            e.ticket_id.map(|t| t.to_string()).unwrap_or_default(),
            cell(&json(&e.before)),
            cell(&json(&e.after)),
            e.ip.clone().unwrap_or_default(),
            cell(e.user_agent.as_deref().unwrap_or_default()),
        ]);
    }
    let body = out.into_inner().unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Some(c) = next_cursor.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert("x-next-cursor", c);
    }
    Ok(resp)
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        let at = DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        let c = format!("{}_{id}", at.timestamp_micros());
        assert_eq!(parse_cursor(&c), Some((at, id)));
        for bad in [
            "",
            "_",
            "x_y",
            "1_",
            &format!("_{id}"),
            "99999999999999999999_x",
            "1_ünï",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("agent.updated"), "agent.updated");
    }

    #[test]
    fn actors_are_named_by_what_they_are() {
        let t = Uuid::now_v7();
        let token = Actor {
            who: Principal {
                role: Role::Supervisor,
                agent_id: None,
                token_id: Some(t),
                session_id: None,
            },
            ip: Some("127.0.0.1".into()),
            user_agent: None,
            label: None,
        };
        assert_eq!(token.name(), format!("token:{t}"));
        let admin = Actor {
            who: Principal {
                role: Role::Admin,
                agent_id: None,
                token_id: None,
                session_id: None,
            },
            ip: None,
            user_agent: None,
            label: None,
        };
        assert_eq!(admin.name(), "admin");
        assert_eq!(Actor::local("cli").name(), "cli");
    }
}
