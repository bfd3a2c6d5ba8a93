//! Views: named, sorted filters over the tickets, the lists an agent works from.
//!
//! - `GET /v1/views`: the built-in views (my open, unassigned, all open, SLA at risk,
//!   escalated, pending on the customer, recently solved) and the saved views the caller sees:
//!   its own, its teams', and those shared with everyone.
//! - `POST /v1/views`, `PUT` / `DELETE /v1/views/{id}`: saved views, `personal` (its owner),
//!   `team` (shared with a team's members; by a member or a supervisor) or `everyone`
//!   (supervisors). A filter is typed and checked on every write: a bad one is a 400 naming
//!   its field (`filter.tags_any[2]`).
//! - `GET /v1/views/{id}/tickets`: a page of the view's tickets, with a keyset cursor (the sort
//!   key and the id of the last row), so concurrent inserts never repeat a ticket on the next
//!   page.
//! - `GET /v1/views/counts`: every visible view's count, capped at [`COUNT_CAP`] (`more`: the
//!   view holds more).
//!
//! The filter compiles to SQL with bound parameters only ([`Compiled`]); merged tickets are in
//! no view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use switchboard_contracts::Priority;
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{forbidden, Principal, Role};
use crate::tickets::{TicketSummary, SUMMARY};
use crate::{parse_id, Api};

/// Counts stop here: a view this full says `more` instead of its exact size.
pub const COUNT_CAP: i64 = 10_000;

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/views", get(list).post(create))
        .route("/v1/views/counts", get(counts))
        .route("/v1/views/{id}", put(update).delete(remove))
        .route("/v1/views/{id}/tickets", get(tickets))
}

/// Whose tickets a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Assignee {
    /// The caller's.
    Me,
    /// Nobody's (in the queue).
    Nobody,
    /// Anybody's (assigned).
    Anybody,
    Agent(Uuid),
}

impl TryFrom<String> for Assignee {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "me" => Ok(Assignee::Me),
            "none" => Ok(Assignee::Nobody),
            "any" => Ok(Assignee::Anybody),
            other => other
                .parse()
                .map(Assignee::Agent)
                .map_err(|_| format!("{other:?} is not me, none, any or an agent id")),
        }
    }
}

impl From<Assignee> for String {
    fn from(a: Assignee) -> String {
        match a {
            Assignee::Me => "me".into(),
            Assignee::Nobody => "none".into(),
            Assignee::Anybody => "any".into(),
            Assignee::Agent(id) => id.to_string(),
        }
    }
}

/// Where a ticket's SLA stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlaState {
    /// A running clock has warned (or breached).
    AtRisk,
    /// A running clock has breached.
    Breached,
}

/// Which tickets a view holds: every condition given must hold (lists: any of their values).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `open`, `pending`, `resolved`, `closed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// `me`, `none`, `any` or an agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Assignee>,
    /// The team's tickets: assigned to the team, or to one of its members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<Uuid>,
    /// Carries every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_all: Vec<String>,
    /// Carries at least one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_any: Vec<String>,
    /// Carries none of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_none: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel: Vec<String>,
    /// `low` ... `critical`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<String>,
    /// `general`, `senior`, `supervisor`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intent: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub language: Vec<String>,
    /// Sentiment (-1 to 1) below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment_below: Option<f32>,
    /// Sentiment (-1 to 1) above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment_above: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_before: Option<DateTime<Utc>>,
    /// Created in the last this many hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_within_hours: Option<u32>,
    /// Updated in the last this many hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_within_hours: Option<u32>,
    /// Resolved (or closed) in the last this many hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_within_hours: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaState>,
    /// Escalated (true) or never escalated (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// Custom fields holding these values (a multi-select: containing them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub fields: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The most values one list of a filter takes.
const MAX_VALUES: usize = 50;
/// The longest relative window, in hours (a year).
const MAX_HOURS: u32 = 24 * 366;

fn check_list(field: &str, values: &mut [String], known: Option<&[&str]>) -> Result<(), ApiError> {
    if values.len() > MAX_VALUES {
        return Err(ApiError::field(
            format!("filter.{field}"),
            format!("at most {MAX_VALUES} values"),
        ));
    }
    for (i, v) in values.iter_mut().enumerate() {
        let bad = |why: String| ApiError::field(format!("filter.{field}[{i}]"), why);
        if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
            return Err(bad("1 to 64 bytes, no control characters".into()));
        }
        if let Some(known) = known {
            if !known.contains(&v.as_str()) {
                return Err(bad(format!("{v:?} is not one of {}", known.join(", "))));
            }
        }
    }
    Ok(())
}

fn check_tags(field: &str, tags: &mut [String]) -> Result<(), ApiError> {
    if tags.len() > MAX_VALUES {
        return Err(ApiError::field(
            format!("filter.{field}"),
            format!("at most {MAX_VALUES} tags"),
        ));
    }
    for (i, t) in tags.iter_mut().enumerate() {
        *t = switchboard_tickets::tags::normalise(t)
            .map_err(|e| ApiError::field(format!("filter.{field}[{i}]"), e.to_string()))?;
    }
    Ok(())
}

impl Filter {
    /// The filter's tags and statuses when it names tags and nothing but statuses besides: a
    /// count [`ticket_tags`](tag_count_sql) answers alone.
    fn tags_only(&self) -> Option<(&[String], &[String])> {
        let rest = Filter {
            tags_all: Vec::new(),
            status: Vec::new(),
            ..self.clone()
        };
        (!self.tags_all.is_empty() && rest == Filter::default())
            .then_some((self.tags_all.as_slice(), self.status.as_slice()))
    }

    /// Checks every value and normalises tags, naming the first bad field.
    pub fn check(&mut self) -> Result<(), ApiError> {
        check_list(
            "status",
            &mut self.status,
            Some(&["open", "pending", "resolved", "closed"]),
        )?;
        check_list(
            "priority",
            &mut self.priority,
            Some(&["low", "medium", "high", "urgent", "critical"]),
        )?;
        check_list(
            "queue",
            &mut self.queue,
            Some(&["general", "senior", "supervisor"]),
        )?;
        check_list(
            "channel",
            &mut self.channel,
            Some(&["api", "email", "chat", "sms", "social", "voice"]),
        )?;
        check_list("category", &mut self.category, None)?;
        check_list("intent", &mut self.intent, None)?;
        check_list("language", &mut self.language, None)?;
        check_tags("tags_all", &mut self.tags_all)?;
        check_tags("tags_any", &mut self.tags_any)?;
        check_tags("tags_none", &mut self.tags_none)?;
        for (field, v) in [
            ("sentiment_below", self.sentiment_below),
            ("sentiment_above", self.sentiment_above),
        ] {
            if v.is_some_and(|v| !(-1.0..=1.0).contains(&v)) {
                return Err(ApiError::field(
                    format!("filter.{field}"),
                    "a sentiment is between -1 and 1",
                ));
            }
        }
        if self.fields.len() > 20 {
            return Err(ApiError::field("filter.fields", "at most 20 fields"));
        }
        for (key, v) in &self.fields {
            if !switchboard_tickets::fields::valid_key(key) {
                return Err(ApiError::field(
                    format!("filter.fields.{}", key.chars().take(64).collect::<String>()),
                    "not a field key",
                ));
            }
            if v.is_null() || v.is_object() || v.to_string().len() > 1_000 {
                return Err(ApiError::field(
                    format!("filter.fields.{key}"),
                    "a value (string, number, true/false or a list), up to 1,000 bytes",
                ));
            }
        }
        for (field, v) in [
            ("created_within_hours", self.created_within_hours),
            ("updated_within_hours", self.updated_within_hours),
            ("resolved_within_hours", self.resolved_within_hours),
        ] {
            if v.is_some_and(|h| h == 0 || h > MAX_HOURS) {
                return Err(ApiError::field(
                    format!("filter.{field}"),
                    format!("1 to {MAX_HOURS} hours"),
                ));
            }
        }
        Ok(())
    }

    /// Appends ` AND ...` for every condition, with bound values. `me`: the caller's agent
    /// (none: an `assignee: me` view holds nothing).
    pub fn push_sql(
        &self,
        qb: &mut QueryBuilder<'_, Postgres>,
        me: Option<Uuid>,
        now: DateTime<Utc>,
    ) {
        self.push_sql_team(qb, me, now, TeamSide::Either);
    }

    /// [`Filter::push_sql`] with the team's tickets taken from one `side`.
    fn push_sql_team(
        &self,
        qb: &mut QueryBuilder<'_, Postgres>,
        me: Option<Uuid>,
        now: DateTime<Utc>,
        side: TeamSide,
    ) {
        qb.push(" AND t.merged_into IS NULL");
        let any_of = |qb: &mut QueryBuilder<'_, Postgres>, col: &str, values: &[String]| {
            if !values.is_empty() {
                qb.push(format_args!(" AND {col} = ANY("));
                qb.push_bind(values.to_vec());
                qb.push(")");
            }
        };
        any_of(qb, "t.status", &self.status);
        any_of(qb, "t.priority", &self.priority);
        any_of(qb, "t.queue", &self.queue);
        any_of(qb, "t.channel", &self.channel);
        any_of(qb, "t.category", &self.category);
        any_of(qb, "t.intent", &self.intent);
        any_of(qb, "t.language", &self.language);
        match self.assignee {
            None => {}
            Some(Assignee::Nobody) => {
                qb.push(" AND t.assigned_agent_id IS NULL");
            }
            Some(Assignee::Anybody) => {
                qb.push(" AND t.assigned_agent_id IS NOT NULL");
            }
            Some(Assignee::Me) => {
                qb.push(" AND t.assigned_agent_id = ");
                qb.push_bind(me.unwrap_or(Uuid::nil()));
            }
            Some(Assignee::Agent(id)) => {
                qb.push(" AND t.assigned_agent_id = ");
                qb.push_bind(id);
            }
        }
        if let Some(team) = self.team_id {
            // The members as an array (an init plan), not a semi-join: both sides of the `OR`
            // are then index conditions (`tickets_team_live`, `tickets_live`).
            let members = |qb: &mut QueryBuilder<'_, Postgres>| {
                qb.push(
                    "t.assigned_agent_id = ANY(ARRAY(SELECT agent_id FROM team_members WHERE team_id = ",
                );
                qb.push_bind(team);
                qb.push("))");
            };
            match side {
                TeamSide::Either => {
                    qb.push(" AND (t.team_id = ");
                    qb.push_bind(team);
                    qb.push(" OR ");
                    members(qb);
                    qb.push(")");
                }
                TeamSide::Routed => {
                    qb.push(" AND t.team_id = ");
                    qb.push_bind(team);
                }
                TeamSide::MembersOnly => {
                    qb.push(" AND t.team_id IS DISTINCT FROM ");
                    qb.push_bind(team);
                    qb.push(" AND ");
                    members(qb);
                }
            }
        }
        if !self.tags_all.is_empty() {
            qb.push(" AND t.tags @> ");
            qb.push_bind(self.tags_all.clone());
        }
        if !self.tags_any.is_empty() {
            qb.push(" AND t.tags && ");
            qb.push_bind(self.tags_any.clone());
        }
        if !self.tags_none.is_empty() {
            qb.push(" AND NOT t.tags && ");
            qb.push_bind(self.tags_none.clone());
        }
        let cmp = |qb: &mut QueryBuilder<'_, Postgres>, sql: &str, at: Option<DateTime<Utc>>| {
            if let Some(at) = at {
                qb.push(sql);
                qb.push_bind(at);
            }
        };
        let ago = |h: Option<u32>| h.map(|h| now - Duration::hours(i64::from(h)));
        cmp(qb, " AND t.created_at >= ", self.created_after);
        cmp(qb, " AND t.created_at < ", self.created_before);
        cmp(qb, " AND t.updated_at >= ", self.updated_after);
        cmp(qb, " AND t.updated_at < ", self.updated_before);
        cmp(qb, " AND t.created_at >= ", ago(self.created_within_hours));
        cmp(qb, " AND t.updated_at >= ", ago(self.updated_within_hours));
        cmp(
            qb,
            " AND t.resolved_at >= ",
            ago(self.resolved_within_hours),
        );
        if let Some(s) = self.sentiment_below {
            qb.push(" AND t.sentiment < ");
            qb.push_bind(s);
        }
        if let Some(s) = self.sentiment_above {
            qb.push(" AND t.sentiment > ");
            qb.push_bind(s);
        }
        match self.sla {
            None => {}
            // The ticket's flags, kept with its clocks by the SLA processor (`0033_view_flags.sql`).
            Some(SlaState::AtRisk) => {
                qb.push(" AND t.sla_warned");
            }
            Some(SlaState::Breached) => {
                qb.push(" AND t.sla_breached");
            }
        }
        match self.escalated {
            None => {}
            Some(true) => {
                qb.push(" AND t.escalated_at IS NOT NULL");
            }
            Some(false) => {
                qb.push(" AND t.escalated_at IS NULL");
            }
        }
        if let Some(c) = self.customer_id {
            qb.push(" AND t.customer_id = ");
            qb.push_bind(c);
        }
        if !self.fields.is_empty() {
            qb.push(" AND t.fields @> ");
            qb.push_bind(sqlx::types::Json(self.fields.clone()));
        }
    }
}

/// What a view sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    UpdatedAt,
    CreatedAt,
    /// Priority (highest first by default).
    Priority,
    /// The earliest SLA deadline (soonest first by default; none last).
    Due,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    Desc,
}

/// A view's order; ties go by ticket id in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sort {
    pub by: SortBy,
    /// Default: descending for times and priority, ascending for `due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            by: SortBy::UpdatedAt,
            order: None,
        }
    }
}

/// Deadlines stand here when there is none, so they sort last going up.
const NO_DUE: DateTime<Utc> = DateTime::<Utc>::MAX_UTC;

impl Sort {
    fn desc(&self) -> bool {
        match self.order {
            Some(o) => o == Order::Desc,
            None => self.by != SortBy::Due,
        }
    }

    fn key_sql(&self) -> &'static str {
        match self.by {
            SortBy::UpdatedAt => "t.updated_at",
            SortBy::CreatedAt => "t.created_at",
            SortBy::Priority => "t.priority_rank",
            SortBy::Due => "COALESCE(t.next_due_at, 'infinity'::timestamptz)",
        }
    }

    fn tag(&self) -> &'static str {
        match (self.by, self.desc()) {
            (SortBy::UpdatedAt, true) => "ud",
            (SortBy::UpdatedAt, false) => "ua",
            (SortBy::CreatedAt, true) => "cd",
            (SortBy::CreatedAt, false) => "ca",
            (SortBy::Priority, true) => "pd",
            (SortBy::Priority, false) => "pa",
            (SortBy::Due, true) => "dd",
            (SortBy::Due, false) => "da",
        }
    }

    /// The sort key of a listed ticket, as the cursor carries it.
    fn key_of(&self, t: &TicketSummary) -> i64 {
        match self.by {
            SortBy::UpdatedAt => t.updated_at.timestamp_micros(),
            SortBy::CreatedAt => t.created_at.timestamp_micros(),
            SortBy::Priority => i64::from(priority_rank(&t.priority)),
            SortBy::Due => t.next_due_at.unwrap_or(NO_DUE).timestamp_micros(),
        }
    }

    /// Appends the keyset condition after `cursor`.
    fn push_after(&self, qb: &mut QueryBuilder<'_, Postgres>, cursor: &Cursor) {
        let op = if self.desc() { "<" } else { ">" };
        qb.push(format_args!(" AND ({}, t.id) {op} (", self.key_sql()));
        match self.by {
            SortBy::Priority => {
                qb.push_bind(i16::try_from(cursor.key).unwrap_or(i16::MAX));
            }
            SortBy::Due if cursor.key >= NO_DUE.timestamp_micros() => {
                qb.push("'infinity'::timestamptz");
            }
            _ => {
                qb.push_bind(DateTime::from_timestamp_micros(cursor.key).unwrap_or(NO_DUE));
            }
        }
        qb.push(", ");
        qb.push_bind(cursor.id);
        qb.push(")");
    }

    fn push_order(&self, qb: &mut QueryBuilder<'_, Postgres>) {
        let dir = if self.desc() { "DESC" } else { "ASC" };
        qb.push(format_args!(
            " ORDER BY {} {dir}, t.id {dir}",
            self.key_sql()
        ));
    }
}

fn priority_rank(p: &str) -> i16 {
    Priority::parse(p).map_or(0, |p| p as i16)
}

/// A page position: the sort it belongs to, the last row's sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    key: i64,
    id: Uuid,
}

impl Cursor {
    pub fn encode(sort: &Sort, t: &TicketSummary) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}|{}|{}",
            sort.tag(),
            sort.key_of(t),
            t.id
        ))
    }

    /// The cursor in `raw`, if it is one for `sort`.
    pub fn decode(raw: &str, sort: &Sort) -> Option<Cursor> {
        use base64::Engine as _;
        if raw.len() > 200 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.splitn(3, '|');
        let (tag, key, id) = (parts.next()?, parts.next()?, parts.next()?);
        (tag == sort.tag()).then_some(())?;
        Some(Cursor {
            key: key.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// Who a saved view is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Built in: every agent has it.
    Builtin,
    /// Its owner's alone.
    Personal,
    /// Shared with a team's members.
    Team,
    /// Shared with everyone.
    Everyone,
}

/// A view.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct View {
    /// A built-in view's name (`my-open`) or a saved view's uuid.
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub owner_agent_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub filter: Filter,
    pub sort: Sort,
    /// Saved views: send it back on change (optimistic concurrency).
    pub version: i32,
}

fn builtin(id: &str, name: &str, filter: Filter, by: SortBy) -> View {
    View {
        id: id.into(),
        name: name.into(),
        scope: Scope::Builtin,
        owner_agent_id: None,
        team_id: None,
        filter,
        sort: Sort { by, order: None },
        version: 0,
    }
}

fn statuses(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The views every agent has.
pub fn builtins() -> Vec<View> {
    let unsolved = statuses(&["open", "pending"]);
    vec![
        builtin(
            "my-open",
            "My open tickets",
            Filter {
                status: unsolved.clone(),
                assignee: Some(Assignee::Me),
                ..Filter::default()
            },
            SortBy::UpdatedAt,
        ),
        builtin(
            "unassigned",
            "Unassigned",
            Filter {
                status: statuses(&["open"]),
                assignee: Some(Assignee::Nobody),
                ..Filter::default()
            },
            SortBy::Priority,
        ),
        builtin(
            "all-open",
            "All open",
            Filter {
                status: unsolved.clone(),
                ..Filter::default()
            },
            SortBy::UpdatedAt,
        ),
        builtin(
            "sla-at-risk",
            "SLA at risk",
            Filter {
                status: unsolved.clone(),
                sla: Some(SlaState::AtRisk),
                ..Filter::default()
            },
            SortBy::Due,
        ),
        builtin(
            "escalated",
            "Escalated",
            Filter {
                status: unsolved,
                escalated: Some(true),
                ..Filter::default()
            },
            SortBy::UpdatedAt,
        ),
        builtin(
            "pending",
            "Pending on the customer",
            Filter {
                status: statuses(&["pending"]),
                ..Filter::default()
            },
            SortBy::UpdatedAt,
        ),
        builtin(
            "recently-solved",
            "Recently solved (7 days)",
            Filter {
                status: statuses(&["resolved", "closed"]),
                resolved_within_hours: Some(24 * 7),
                ..Filter::default()
            },
            SortBy::UpdatedAt,
        ),
    ]
}

/// A saved view's row.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    owner_agent_id: Option<Uuid>,
    team_id: Option<Uuid>,
    filter: sqlx::types::Json<Filter>,
    sort: sqlx::types::Json<Sort>,
    version: i32,
}

impl From<Row> for View {
    fn from(r: Row) -> View {
        let scope = match (r.owner_agent_id, r.team_id) {
            (Some(_), _) => Scope::Personal,
            (None, Some(_)) => Scope::Team,
            (None, None) => Scope::Everyone,
        };
        View {
            id: r.id.to_string(),
            name: r.name,
            scope,
            owner_agent_id: r.owner_agent_id,
            team_id: r.team_id,
            filter: r.filter.0,
            sort: r.sort.0,
            version: r.version,
        }
    }
}

const ROW: &str = "SELECT id, name, owner_agent_id, team_id, filter, sort, version FROM views";

/// The saved views `who` sees: its own, its teams', everyone's; supervisors see every view.
async fn visible(api: &Api, who: &Principal) -> Result<Vec<View>, ApiError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{ROW} WHERE $1 OR owner_agent_id = $2
              OR (owner_agent_id IS NULL AND team_id IS NULL)
              OR team_id IN (SELECT team_id FROM team_members WHERE agent_id = $2)
         ORDER BY position, name, id"
    ))
    .bind(who.role >= Role::Supervisor)
    .bind(who.agent_id)
    .fetch_all(&api.pool)
    .await?;
    Ok(rows.into_iter().map(View::from).collect())
}

/// The view `id` as `who` may read it: 404 unknown, 403 someone else's.
pub(crate) async fn readable(api: &Api, who: &Principal, id: &str) -> Result<View, ApiError> {
    if let Some(v) = builtins().into_iter().find(|v| v.id == id) {
        return Ok(v);
    }
    let id = parse_id(id, "id")?;
    let row: Option<Row> = sqlx::query_as(&format!("{ROW} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&api.pool)
        .await?;
    let view = View::from(row.ok_or_else(|| ApiError::not_found("no such view"))?);
    if who.role >= Role::Supervisor {
        return Ok(view);
    }
    let allowed = match view.scope {
        Scope::Builtin | Scope::Everyone => true,
        Scope::Personal => view.owner_agent_id == who.agent_id,
        Scope::Team => member(api, who, view.team_id).await?,
    };
    if allowed {
        Ok(view)
    } else {
        Err(forbidden("this view is not shared with you"))
    }
}

async fn member(api: &Api, who: &Principal, team: Option<Uuid>) -> Result<bool, ApiError> {
    let (Some(agent), Some(team)) = (who.agent_id, team) else {
        return Ok(false);
    };
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM team_members WHERE team_id = $1 AND agent_id = $2)",
    )
    .bind(team)
    .bind(agent)
    .fetch_one(&api.pool)
    .await?)
}

/// May `who` change (or delete) `view`? Personal: its owner (and supervisors); team: its
/// members and supervisors; everyone's: supervisors.
async fn writable(api: &Api, who: &Principal, view: &View) -> Result<(), ApiError> {
    if view.scope == Scope::Builtin {
        return Err(ApiError::field("id", "a built-in view cannot be changed"));
    }
    if who.role >= Role::Supervisor {
        return Ok(());
    }
    let ok = match view.scope {
        Scope::Personal => view.owner_agent_id == who.agent_id,
        Scope::Team => member(api, who, view.team_id).await?,
        Scope::Everyone | Scope::Builtin => false,
    };
    if ok {
        Ok(())
    } else {
        Err(forbidden(
            "only its owner, its team's members or a supervisor may change this view",
        ))
    }
}

#[utoipa::path(get, path = "/v1/views", operation_id = "list_views", tag = "views", responses((status = 200, body = [View], description = "the built-in views, then the saved views the caller sees")), security(("bearer" = [])))]
async fn list(State(api): State<Api>, who: Principal) -> Result<Json<Vec<View>>, ApiError> {
    let mut views = builtins();
    views.extend(visible(&api, &who).await?);
    Ok(Json(views))
}

/// A new or changed saved view.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewInput {
    pub name: String,
    /// `personal` (default), `team` (with `team_id`) or `everyone` (supervisors).
    #[serde(default)]
    pub scope: Option<Scope>,
    pub team_id: Option<Uuid>,
    pub filter: Filter,
    #[serde(default)]
    pub sort: Sort,
    /// Where it stands in the list (lower first).
    #[serde(default)]
    pub position: i32,
    /// On change: the version read (409 when someone changed it since).
    pub version: Option<i32>,
}

impl ViewInput {
    /// Checks the input and decides the owner and team: (owner, team). `owner`: whose a
    /// personal view is (the caller's when it creates one; its owner's when it is changed).
    async fn check(
        &mut self,
        api: &Api,
        who: &Principal,
        owner: Option<Uuid>,
    ) -> Result<(Option<Uuid>, Option<Uuid>), ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ApiError::field(
                "name",
                "1 to 100 characters, no control characters",
            ));
        }
        self.name = name.to_string();
        self.filter.check()?;
        match self.scope.unwrap_or(Scope::Personal) {
            Scope::Builtin => Err(ApiError::field("scope", "built-in views are built in")),
            Scope::Personal => {
                if self.team_id.is_some() {
                    return Err(ApiError::field("team_id", "a personal view has no team"));
                }
                let owner = owner.ok_or_else(|| {
                    ApiError::field(
                        "scope",
                        "this token belongs to no agent: share the view with a team or everyone",
                    )
                })?;
                Ok((Some(owner), None))
            }
            Scope::Team => {
                let team = self
                    .team_id
                    .ok_or_else(|| ApiError::field("team_id", "a team view names its team"))?;
                let exists: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM teams WHERE id = $1)")
                        .bind(team)
                        .fetch_one(&api.pool)
                        .await?;
                if !exists {
                    return Err(ApiError::field("team_id", "no such team"));
                }
                if who.role < Role::Supervisor && !member(api, who, Some(team)).await? {
                    return Err(forbidden("only its members share a view with a team"));
                }
                Ok((None, Some(team)))
            }
            Scope::Everyone => {
                who.require(Role::Supervisor)?;
                if self.team_id.is_some() {
                    return Err(ApiError::field(
                        "team_id",
                        "a view for everyone has no team",
                    ));
                }
                Ok((None, None))
            }
        }
    }
}

#[utoipa::path(post, path = "/v1/views", operation_id = "create_view", tag = "views", request_body = ViewInput, responses((status = 201, body = View), (status = 400, description = "a field is invalid, named (`filter.status[0]`)"), (status = 403, description = "sharing with a team the caller is not in, or with everyone without the supervisor role")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(mut input): ApiJson<ViewInput>,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let who = actor.who;
    let (owner, team) = input.check(&api, &who, who.agent_id).await?;
    let now = switchboard_core::clock::now();
    let mut tx = api.pool.begin().await?;
    let row: Row = sqlx::query_as(
        "INSERT INTO views (id, name, owner_agent_id, team_id, filter, sort, position, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
         RETURNING id, name, owner_agent_id, team_id, filter, sort, version",
    )
    .bind(Uuid::now_v7())
    .bind(&input.name)
    .bind(owner)
    .bind(team)
    .bind(sqlx::types::Json(&input.filter))
    .bind(sqlx::types::Json(&input.sort))
    .bind(input.position)
    .bind(crate::assign::actor(&who))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let view: View = row.into();
    let entry = Entry::config(
        "view.created",
        format!("view:{}", view.id),
        None::<()>,
        Some(&view),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(put, path = "/v1/views/{id}", operation_id = "update_view", tag = "views", params(("id" = String, Path, description = "a saved view's id")), request_body = ViewInput, responses((status = 200, body = View), (status = 400, description = "a field is invalid, named; or a built-in view"), (status = 403, description = "not the caller's to change"), (status = 404, description = "no such view"), (status = 409, description = "changed since `version`")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(mut input): ApiJson<ViewInput>,
) -> Result<Json<View>, ApiError> {
    let who = actor.who;
    let view = readable(&api, &who, &id).await?;
    writable(&api, &who, &view).await?;
    // A personal view stays its owner's, whoever changes it.
    let owner = view.owner_agent_id.or(who.agent_id);
    let (owner, team) = input.check(&api, &who, owner).await?;
    let mut tx = api.pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(
        "UPDATE views SET name = $2, owner_agent_id = $3, team_id = $4, filter = $5, sort = $6, position = $7,
                version = version + 1, updated_at = $8
         WHERE id = $1 AND ($9::int IS NULL OR version = $9)
         RETURNING id, name, owner_agent_id, team_id, filter, sort, version",
    )
    .bind(parse_id(&view.id, "id")?)
    .bind(&input.name)
    .bind(owner)
    .bind(team)
    .bind(sqlx::types::Json(&input.filter))
    .bind(sqlx::types::Json(&input.sort))
    .bind(input.position)
    .bind(switchboard_core::clock::now())
    .bind(input.version)
    .fetch_optional(&mut *tx)
    .await?;
    let after: View = row.map(Into::into).ok_or_else(|| {
        crate::work::conflict(
            "version",
            "the view changed since this version; read it again",
        )
    })?;
    let entry = Entry::config(
        "view.updated",
        format!("view:{}", after.id),
        Some(&view),
        Some(&after),
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(Json(after))
}

#[utoipa::path(delete, path = "/v1/views/{id}", operation_id = "delete_view", tag = "views", params(("id" = String, Path, description = "a saved view's id")), responses((status = 204, description = "deleted"), (status = 400, description = "a built-in view"), (status = 403, description = "not the caller's to delete"), (status = 404, description = "no such view")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = actor.who;
    let view = readable(&api, &who, &id).await?;
    writable(&api, &who, &view).await?;
    let mut tx = api.pool.begin().await?;
    sqlx::query("DELETE FROM views WHERE id = $1")
        .bind(parse_id(&view.id, "id")?)
        .execute(&mut *tx)
        .await?;
    let entry = Entry::config(
        "view.deleted",
        format!("view:{}", view.id),
        Some(&view),
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/views/{id}/tickets` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub tickets: Vec<TicketSummary>,
    /// Pass it as `cursor` for the next page; none: this was the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/views/{id}/tickets", operation_id = "view_tickets", tag = "views", params(("id" = String, Path, description = "a built-in view's name or a saved view's id"), PageQuery), responses((status = 200, body = Page), (status = 400, description = "a bad `limit` or `cursor`"), (status = 403, description = "the view is not shared with the caller"), (status = 404, description = "no such view")), security(("bearer" = [])))]
async fn tickets(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    let view = readable(&api, &who, &id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 200"));
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(Cursor::decode(c, &view.sort).ok_or_else(|| {
            ApiError::field("cursor", "not a cursor from this view's previous page")
        })?),
    };
    let mut qb = page_sql(
        &view,
        who.agent_id,
        cursor.as_ref(),
        limit + 1,
        switchboard_core::clock::now(),
    );
    let mut rows: Vec<TicketSummary> = qb.build_query_as().fetch_all(&api.pool).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|t| Cursor::encode(&view.sort, t)))
        .flatten();
    Ok(Json(Page {
        tickets: rows,
        next_cursor,
    }))
}

/// A view's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewCount {
    pub id: String,
    /// Exact up to the cap, the cap beyond it.
    pub count: i64,
    /// The view holds more than `count`.
    pub more: bool,
}

/// The query of a page of `view` after `cursor`: `limit` [`TicketSummary`] rows in the view's
/// order (`me`: the caller's agent).
pub fn page_sql(
    view: &View,
    me: Option<Uuid>,
    cursor: Option<&Cursor>,
    limit: i64,
    now: DateTime<Utc>,
) -> QueryBuilder<'static, Postgres> {
    let mut qb = QueryBuilder::<Postgres>::new(SUMMARY);
    qb.push(" WHERE true");
    view.filter.push_sql(&mut qb, me, now);
    if let Some(c) = cursor {
        view.sort.push_after(&mut qb, c);
    }
    view.sort.push_order(&mut qb);
    qb.push(" LIMIT ");
    qb.push_bind(limit);
    qb
}

/// Where a team's tickets come from in a count: both (`OR`), or one side of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TeamSide {
    Either,
    /// Routed to the team.
    Routed,
    /// Held by a member and not routed to the team.
    MembersOnly,
}

/// The query that counts `filter`'s tickets, stopping at [`COUNT_CAP`] + 1.
///
/// A team's tickets are counted as two disjoint halves (routed to the team; held by a member
/// and not routed to it), each of which an index answers alone (`tickets_team_live`,
/// `tickets_live`) where the `OR` of the two would read every match from the table.
pub fn count_sql(
    filter: &Filter,
    me: Option<Uuid>,
    now: DateTime<Utc>,
) -> QueryBuilder<'static, Postgres> {
    if let Some((tags, status)) = filter.tags_only() {
        return tag_count_sql(tags, status);
    }
    let mut qb =
        QueryBuilder::<Postgres>::new("SELECT count(*) FROM (SELECT 1 FROM tickets t WHERE true");
    if filter.team_id.is_some() {
        filter.push_sql_team(&mut qb, me, now, TeamSide::Routed);
        qb.push(" UNION ALL SELECT 1 FROM tickets t WHERE true");
        filter.push_sql_team(&mut qb, me, now, TeamSide::MembersOnly);
    } else {
        filter.push_sql(&mut qb, me, now);
    }
    qb.push(" LIMIT ");
    qb.push_bind(COUNT_CAP + 1);
    qb.push(") v");
    qb
}

/// A count of the unmerged tickets carrying every one of `tags` (in one of `status`, when
/// given) from `ticket_tags` alone: its btree holds the tag, the ticket and its status, so no
/// ticket row is read (`0033_view_flags.sql`).
fn tag_count_sql(tags: &[String], status: &[String]) -> QueryBuilder<'static, Postgres> {
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT count(*) FROM (SELECT 1 FROM ticket_tags g WHERE g.tag = ",
    );
    let (first, rest) = tags
        .split_first()
        .map_or(("", &[][..]), |(f, r)| (f.as_str(), r));
    qb.push_bind(first.to_string());
    if !status.is_empty() {
        qb.push(" AND g.status = ANY(");
        qb.push_bind(status.to_vec());
        qb.push(")");
    }
    for tag in rest {
        qb.push(" AND EXISTS (SELECT 1 FROM ticket_tags h WHERE h.tag = ");
        qb.push_bind(tag.clone());
        qb.push(" AND h.ticket_id = g.ticket_id)");
    }
    qb.push(" LIMIT ");
    qb.push_bind(COUNT_CAP + 1);
    qb.push(") v");
    qb
}

/// How many tickets `view` holds, up to [`COUNT_CAP`].
async fn count(api: &Api, who: &Principal, view: &View) -> Result<ViewCount, ApiError> {
    let mut qb = count_sql(&view.filter, who.agent_id, switchboard_core::clock::now());
    let n: i64 = qb.build_query_scalar().fetch_one(&api.pool).await?;
    Ok(ViewCount {
        id: view.id.clone(),
        count: n.min(COUNT_CAP),
        more: n > COUNT_CAP,
    })
}

/// A view as counted: its id and version.
type CountKey = (String, i32);

/// Counts of the views whose tickets do not depend on who asks (everything but `assignee:
/// me`), shared by an instance's live streams: a count begun after the change a stream waits
/// for serves every stream waiting for that change, however many show the view.
#[derive(Debug, Clone, Default)]
pub struct CountCache {
    inner: Arc<Mutex<HashMap<CountKey, (Instant, ViewCount)>>>,
}

impl CountCache {
    /// The view's count, if one was begun at or after `since`.
    fn get(&self, view: &View, since: Instant) -> Option<ViewCount> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(&(view.id.clone(), view.version))
            .filter(|(begun, _)| *begun >= since)
            .map(|(_, c)| c.clone())
    }

    /// Keeps `count`, begun at `begun`, unless a newer one is kept already.
    fn put(&self, view: &View, begun: Instant, count: &ViewCount) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Views come and go: drop what nobody refreshed for a minute.
        if inner.len() > 1_000 {
            inner.retain(|_, (at, _)| at.elapsed() < std::time::Duration::from_secs(60));
        }
        let key = (view.id.clone(), view.version);
        if inner.get(&key).is_none_or(|(at, _)| *at <= begun) {
            inner.insert(key, (begun, count.clone()));
        }
    }
}

/// Every view `who` sees, counted; with a cache, the shared views' counts begun at or after
/// `since` come from it.
pub(crate) async fn counts_for(
    api: &Api,
    who: &Principal,
    cache: Option<(&CountCache, Instant)>,
) -> Result<Vec<ViewCount>, ApiError> {
    let mut views = builtins();
    views.extend(visible(api, who).await?);
    let counted = views.iter().map(|v| async move {
        let shared = v.filter.assignee != Some(Assignee::Me);
        if let Some((cache, since)) = cache.filter(|_| shared) {
            if let Some(c) = cache.get(v, since) {
                metrics::counter!(crate::telemetry::VIEW_COUNT_REFRESHES_TOTAL, "cached" => "true")
                    .increment(1);
                return Ok(c);
            }
            let begun = Instant::now();
            let c = count(api, who, v).await?;
            cache.put(v, begun, &c);
            metrics::counter!(crate::telemetry::VIEW_COUNT_REFRESHES_TOTAL, "cached" => "false")
                .increment(1);
            return Ok(c);
        }
        count(api, who, v).await
    });
    futures::future::try_join_all(counted).await
}

#[utoipa::path(get, path = "/v1/views/counts", operation_id = "view_counts", tag = "views", responses((status = 200, body = [ViewCount], description = "every view the caller sees, in the order of `GET /v1/views`; live on the agent's stream as `counts` events")), security(("bearer" = [])))]
async fn counts(State(api): State<Api>, who: Principal) -> Result<Json<Vec<ViewCount>>, ApiError> {
    Ok(Json(counts_for(&api, &who, None).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Filter, String> {
        let mut f: Filter = serde_json::from_value(v).map_err(|e| e.to_string())?;
        f.check().map_err(|e| e.field.unwrap_or_default())?;
        Ok(f)
    }

    #[test]
    fn filters_are_typed_and_name_the_bad_field() {
        assert!(parse(serde_json::json!({"status": ["open"], "assignee": "me"})).is_ok());
        assert_eq!(
            parse(serde_json::json!({"status": ["open", "nope"]})),
            Err("filter.status[1]".into())
        );
        assert_eq!(
            parse(serde_json::json!({"tags_any": ["ok", "bad tag<"]})),
            Err("filter.tags_any[1]".into())
        );
        assert_eq!(
            parse(serde_json::json!({"sentiment_below": 3.0})),
            Err("filter.sentiment_below".into())
        );
        assert_eq!(
            parse(serde_json::json!({"resolved_within_hours": 0})),
            Err("filter.resolved_within_hours".into())
        );
        let unknown = parse(serde_json::json!({"colour": "red"})).unwrap_err();
        assert!(unknown.contains("colour"), "{unknown}");
        let bad = parse(serde_json::json!({"assignee": "someone"})).unwrap_err();
        assert!(bad.contains("not me, none, any"), "{bad}");
        let tags = parse(serde_json::json!({"tags_all": ["  VIP "]})).unwrap();
        assert_eq!(tags.tags_all, vec!["vip"]);
    }

    #[test]
    fn a_shared_count_serves_only_streams_that_saw_the_change_before_it_began() {
        let cache = CountCache::default();
        let view = &builtins()[1];
        let count = |n| ViewCount {
            id: view.id.clone(),
            count: n,
            more: false,
        };
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(10);
        let t2 = t0 + std::time::Duration::from_millis(20);
        assert_eq!(cache.get(view, t0), None);
        cache.put(view, t1, &count(3));
        assert_eq!(
            cache.get(view, t0),
            Some(count(3)),
            "begun after the change"
        );
        assert_eq!(cache.get(view, t1), Some(count(3)));
        assert_eq!(cache.get(view, t2), None, "begun before the change: stale");
        // An older count finishing late never replaces a newer one.
        cache.put(view, t2, &count(4));
        cache.put(view, t1, &count(3));
        assert_eq!(cache.get(view, t2), Some(count(4)));
        // A changed view (new version) is another entry.
        let mut changed = view.clone();
        changed.version += 1;
        assert_eq!(cache.get(&changed, t0), None);
    }

    #[test]
    fn a_team_is_counted_as_two_disjoint_halves() {
        let f = Filter {
            status: vec!["open".into()],
            team_id: Some(Uuid::nil()),
            ..Filter::default()
        };
        let sql = count_sql(&f, None, Utc::now()).into_sql();
        assert_eq!(sql.matches("UNION ALL").count(), 1, "{sql}");
        assert!(sql.contains("t.team_id IS DISTINCT FROM"), "{sql}");
        assert!(!sql.contains(" OR "), "{sql}");
        // Pages keep the one condition.
        let mut qb = QueryBuilder::<Postgres>::new("SELECT 1 FROM tickets t WHERE true");
        f.push_sql(&mut qb, None, Utc::now());
        assert!(qb
            .into_sql()
            .contains(" OR t.assigned_agent_id = ANY(ARRAY("));
    }

    #[test]
    fn filters_round_trip_through_storage() {
        for v in builtins() {
            let json = serde_json::to_value(&v.filter).unwrap();
            let back: Filter = serde_json::from_value(json).unwrap();
            assert_eq!(back, v.filter, "{}", v.id);
        }
    }

    #[test]
    fn the_sql_binds_every_value_and_quotes_none() {
        let f = Filter {
            status: vec!["open".into()],
            category: vec!["x'; DROP TABLE tickets; --".into()],
            tags_any: vec!["vip".into()],
            team_id: Some(Uuid::nil()),
            ..Filter::default()
        };
        let mut qb = QueryBuilder::<Postgres>::new("SELECT 1 FROM tickets t WHERE true");
        f.push_sql(&mut qb, None, Utc::now());
        let sql = qb.sql();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains("t.category = ANY($2)"), "{sql}");
        assert!(sql.contains("t.tags && $5"), "{sql}");
    }

    #[test]
    fn cursors_belong_to_their_sort() {
        let sort = Sort::default();
        let t: TicketSummary = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "number": "T-1", "status": "open", "channel": "api", "subject": null,
            "category": null, "intent": null, "priority": "high", "sentiment": null, "required_skill": null,
            "assigned_agent_id": null, "customer_id": Uuid::nil(), "customer_email": null, "customer_verified": true,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00.123456Z", "language": null,
            "queue": "general", "contact_count": 1, "escalation_reason": null, "first_response_at": null,
            "next_due_at": null, "bot_state": null, "kb_suggestions": [], "version": 1, "tags": [], "team_id": null, "fields": {}
        }))
        .unwrap();
        let c = Cursor::encode(&sort, &t);
        let back = Cursor::decode(&c, &sort).unwrap();
        assert_eq!(back.id, Uuid::nil());
        assert_eq!(back.key, t.updated_at.timestamp_micros());
        let other = Sort {
            by: SortBy::Priority,
            order: None,
        };
        assert!(Cursor::decode(&c, &other).is_none());
        assert!(Cursor::decode("not base64 !", &sort).is_none());
        assert!(Cursor::decode(&"A".repeat(10_000), &sort).is_none());
        // Due: a ticket without a deadline sorts last and its cursor says so.
        let due = Sort {
            by: SortBy::Due,
            order: None,
        };
        let c = Cursor::decode(&Cursor::encode(&due, &t), &due).unwrap();
        assert_eq!(c.key, NO_DUE.timestamp_micros());
    }
}
