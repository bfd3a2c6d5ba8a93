//! Search: `GET /v1/search?q=` over the ticket number, the subject, every message (notes too),
//! the customer's name, email and phone, order numbers and tags, with the views' filters, ranked,
//! with highlighted snippets.
//!
//! The engine is Postgres full text (`0018_search.sql`: GIN indexes over generated `tsvector`
//! columns), chosen by `switchboard-sim bench workspace` (ARCHITECTURE.md, "Search"). A query is
//! parsed by `websearch_to_tsquery` (quotes, `or`, `-word`; it never fails on syntax), and a
//! one-token query is also tried as an exact ticket number, order number, email, phone and tag.
//!
//! Scores add up per ticket: an exact number 10, an order number, email or phone 5, a tag 4, the
//! subject and tags twice their text rank, each matching message its text rank, the customer's
//! name 1. Ties go to the most recently updated ticket.
//!
//! Snippets never carry markup: a snippet is a list of parts, each `{text, hit}`, so a page
//! shows the highlights without rendering anything the customer wrote as HTML.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use switchboard_core::http::{ApiError, ApiQuery};
use uuid::Uuid;

use crate::auth::Principal;
use crate::tickets::{TicketSummary, SUMMARY_COLUMNS};
use crate::views::{Assignee, Filter};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/search", get(search))
}

/// The longest query, in characters.
const MAX_QUERY: usize = 500;
/// The most messages one query ranks: a word in every message of a large desk would otherwise
/// rank them all. The newest win.
const MAX_MESSAGE_HITS: i64 = 5_000;
/// The deepest a page reaches (`offset + limit`).
const MAX_DEPTH: i64 = 1_000;

/// Where a highlight starts and ends in `ts_headline`'s output: private-use characters, removed
/// from the text first, so what a customer wrote cannot forge a highlight.
const START: char = '\u{E000}';
const STOP: char = '\u{E001}';

/// `GET /v1/search` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words (`"quoted phrase"`, `or`, `-excluded`), a ticket number, an order number, an
    /// email or a phone; 1 to 500 characters.
    pub q: String,
    /// Search within a view (a built-in view's name or a saved view's id).
    pub view: Option<String>,
    /// Comma-separated statuses.
    pub status: Option<String>,
    /// Comma-separated channels.
    pub channel: Option<String>,
    /// Comma-separated priorities.
    pub priority: Option<String>,
    /// `me`, `none`, `any` or an agent id.
    pub assignee: Option<String>,
    pub team_id: Option<Uuid>,
    /// Comma-separated tags, every one of which the ticket carries.
    pub tags: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<i64>,
    /// Results to skip (`offset + limit` at most 1,000).
    pub offset: Option<i64>,
}

/// One part of a snippet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Part {
    pub text: String,
    /// This part matched the query.
    pub hit: bool,
}

/// Where a ticket matched, and how.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    pub ticket: TicketSummary,
    pub score: f32,
    /// What matched: `number`, `order`, `email`, `phone`, `tag`, `subject`, `message`,
    /// `customer_name`.
    pub matched: Vec<String>,
    /// The subject with its matching words marked (when the subject matched).
    pub subject: Option<Vec<Part>>,
    /// The best matching message's excerpt (when a message matched).
    pub snippet: Option<Vec<Part>>,
    /// The message the snippet comes from.
    pub message_id: Option<Uuid>,
}

/// A page of results.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Results {
    pub hits: Vec<Hit>,
    /// Pass it as `offset` for the next page; none: this was the last.
    pub next_offset: Option<i64>,
}

/// The exact forms a one-token query may take.
#[derive(Debug, Default, PartialEq, Eq)]
struct Exact {
    /// `T-2026-000123`, upper-cased.
    number: Option<String>,
    /// The token as an order's number (`order_key`: `#1001` and `1001` alike) and as the
    /// shop's order id.
    order: Option<(String, String)>,
    /// A normalised email or phone, and which.
    identity: Option<(&'static str, String)>,
    /// The token as a tag.
    tag: Option<String>,
}

impl Exact {
    fn of(q: &str) -> Exact {
        let token = q.trim();
        if token.is_empty() || token.contains(char::is_whitespace) || token.len() > 254 {
            return Exact::default();
        }
        let upper = token.to_uppercase();
        let number = (upper.starts_with("T-") && upper.len() <= 32).then_some(upper);
        let order = switchboard_contracts::order_key(token).map(|k| (k, token.to_string()));
        let identity = switchboard_contracts::normalise_email(token)
            .map(|e| ("email", e))
            .or_else(|| switchboard_contracts::normalise_phone(token).map(|p| ("phone", p)));
        let tag = switchboard_tickets::tags::normalise(token).ok();
        Exact {
            number,
            order,
            identity,
            tag,
        }
    }
}

/// Splits `ts_headline` output into parts.
fn parts(marked: &str) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    let mut hit = false;
    let mut text = String::new();
    for c in marked.chars() {
        if c == START || c == STOP {
            if !text.is_empty() {
                out.push(Part {
                    text: std::mem::take(&mut text),
                    hit,
                });
            }
            hit = c == START;
        } else {
            text.push(c);
        }
    }
    if !text.is_empty() {
        out.push(Part { text, hit });
    }
    out
}

fn list(field: &str, raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if raw.len() > 2_000 {
        return Err(ApiError::field(field, "at most 2,000 characters"));
    }
    Ok(raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

impl SearchQuery {
    /// The query text and the filter, checked; a bad value names its parameter.
    fn check(&self, base: Filter) -> Result<(String, Filter, i64, i64), ApiError> {
        let q = self.q.trim();
        if q.is_empty() || q.chars().count() > MAX_QUERY {
            return Err(ApiError::field("q", format!("1 to {MAX_QUERY} characters")));
        }
        if q.chars().any(|c| c.is_control() || c == START || c == STOP) {
            return Err(ApiError::field("q", "no control characters"));
        }
        let mut f = base;
        let status = list("status", self.status.as_deref())?;
        if !status.is_empty() {
            f.status = status;
        }
        let channel = list("channel", self.channel.as_deref())?;
        if !channel.is_empty() {
            f.channel = channel;
        }
        let priority = list("priority", self.priority.as_deref())?;
        if !priority.is_empty() {
            f.priority = priority;
        }
        if let Some(a) = &self.assignee {
            f.assignee =
                Some(Assignee::try_from(a.clone()).map_err(|e| ApiError::field("assignee", e))?);
        }
        if self.team_id.is_some() {
            f.team_id = self.team_id;
        }
        f.tags_all.extend(list("tags", self.tags.as_deref())?);
        f.check().map_err(|mut e| {
            // `filter.status[1]` is the parameter `status` here.
            e.field = e.field.map(|f| {
                let f = f.trim_start_matches("filter.");
                let f = f.split('[').next().unwrap_or(f);
                if f == "tags_all" {
                    "tags".into()
                } else {
                    f.to_string()
                }
            });
            e
        })?;
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::field("limit", "1 to 100"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 || offset + limit > MAX_DEPTH {
            return Err(ApiError::field(
                "offset",
                format!("0 or more, and offset + limit at most {MAX_DEPTH}"),
            ));
        }
        Ok((q.to_string(), f, limit, offset))
    }
}

/// A ranked ticket, before its snippets.
#[derive(Debug, sqlx::FromRow)]
struct Ranked {
    #[sqlx(flatten)]
    ticket: TicketSummary,
    score: f32,
    matched: Vec<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct Excerpt {
    ticket_id: Uuid,
    message_id: Option<Uuid>,
    snippet: Option<String>,
    subject: Option<String>,
}

/// The ranked, filtered page of `q` (`limit` rows from `offset`): the hits' tickets with their
/// scores and what matched (`me`: the caller's agent, for `assignee: me`).
pub fn search_sql(
    q: &str,
    filter: &Filter,
    me: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> QueryBuilder<'static, Postgres> {
    ranked_sql(q, &Exact::of(q), filter, me, limit, offset)
}

fn ranked_sql(
    q: &str,
    exact: &Exact,
    filter: &Filter,
    me: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> QueryBuilder<'static, Postgres> {
    let mut qb =
        QueryBuilder::<Postgres>::new("WITH q AS (SELECT websearch_to_tsquery('english', ");
    qb.push_bind(q.to_string());
    qb.push(") AS tq, websearch_to_tsquery('simple', ");
    qb.push_bind(q.to_string());
    qb.push(") AS sq), hits AS (");
    // Text: the subject and tags, then messages (the newest MAX_MESSAGE_HITS), then names.
    qb.push(
        "SELECT t.id AS ticket_id, 2 * ts_rank(t.search, q.tq) AS score, 'subject' AS why
         FROM tickets t, q WHERE t.search @@ q.tq
         UNION ALL
         SELECT m.ticket_id, m.score, 'message' FROM (
             SELECT m.ticket_id, ts_rank(m.search, q.tq) AS score FROM messages m, q
             WHERE m.search @@ q.tq ORDER BY m.received_at DESC LIMIT ",
    );
    qb.push_bind(MAX_MESSAGE_HITS);
    qb.push(
        ") m
         UNION ALL
         SELECT t.id, 1, 'customer_name' FROM customers c JOIN tickets t ON t.customer_id = c.id, q
         WHERE to_tsvector('simple', coalesce(c.name, '')) @@ q.sq",
    );
    if let Some(n) = &exact.number {
        qb.push(" UNION ALL SELECT t.id, 10, 'number' FROM tickets t WHERE t.number = ");
        qb.push_bind(n.clone());
    }
    if let Some((key, id)) = &exact.order {
        qb.push(
            " UNION ALL SELECT t.id, 5, 'order' FROM orders o JOIN tickets t ON t.customer_id = o.customer_id
              WHERE lower(ltrim(btrim(o.number), '#')) = ",
        );
        qb.push_bind(key.clone());
        qb.push(" OR o.external_id = ");
        qb.push_bind(id.clone());
    }
    if let Some((kind, value)) = &exact.identity {
        qb.push(
            " UNION ALL SELECT t.id, 5, ci.kind FROM customer_identities ci JOIN tickets t ON t.customer_id = ci.customer_id
              WHERE ci.kind = ",
        );
        qb.push_bind(*kind);
        qb.push(" AND ci.value = ");
        qb.push_bind(value.clone());
    }
    if let Some(tag) = &exact.tag {
        qb.push(" UNION ALL SELECT t.id, 4, 'tag' FROM tickets t WHERE t.tags @> ARRAY[");
        qb.push_bind(tag.clone());
        qb.push("]::text[]");
    }
    qb.push(
        "), scored AS (
            SELECT ticket_id, sum(score)::real AS score,
                   array_agg(DISTINCT why) FILTER (WHERE why IS NOT NULL) AS matched
            FROM hits GROUP BY ticket_id)
         SELECT ",
    );
    qb.push(SUMMARY_COLUMNS);
    qb.push(
        ", s.score, coalesce(s.matched, '{}') AS matched
         FROM scored s JOIN tickets t ON t.id = s.ticket_id JOIN customers c ON c.id = t.customer_id
         WHERE true",
    );
    filter.push_sql(&mut qb, me, switchboard_core::clock::now());
    qb.push(" ORDER BY s.score DESC, t.updated_at DESC, t.id DESC LIMIT ");
    qb.push_bind(limit);
    qb.push(" OFFSET ");
    qb.push_bind(offset);
    qb
}

#[utoipa::path(get, path = "/v1/search", operation_id = "search", tag = "tickets", params(SearchQuery), responses((status = 200, body = Results), (status = 400, description = "a parameter is invalid, named (`q`, `status`, `limit`...)"), (status = 403, description = "`view` is not shared with the caller"), (status = 404, description = "no such `view`")), security(("bearer" = [])))]
async fn search(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<Results>, ApiError> {
    let base = match &query.view {
        Some(v) => {
            crate::views::readable(&api, &who, v)
                .await
                .map_err(|mut e| {
                    if e.field.as_deref() == Some("id") {
                        e.field = Some("view".into());
                    }
                    e
                })?
                .filter
        }
        None => Filter::default(),
    };
    let (q, filter, limit, offset) = query.check(base)?;
    let started = std::time::Instant::now();
    let results = run(&api.pool, &q, &filter, who.agent_id, limit, offset).await?;
    metrics::histogram!(crate::telemetry::SEARCH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(Json(results))
}

/// Runs a checked search: the ranked page, then the page's snippets.
pub async fn run(
    pool: &sqlx::PgPool,
    q: &str,
    filter: &Filter,
    me: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<Results, sqlx::Error> {
    let mut ranked: Vec<Ranked> = search_sql(q, filter, me, limit + 1, offset)
        .build_query_as()
        .fetch_all(pool)
        .await?;
    let more = ranked.len() as i64 > limit;
    ranked.truncate(usize::try_from(limit).unwrap_or(0));
    let ids: Vec<Uuid> = ranked.iter().map(|r| r.ticket.id).collect();
    let options = format!(
        "StartSel={START}, StopSel={STOP}, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \""
    );
    // The best message of each ticket on the page, and its subject, marked.
    let excerpts: Vec<Excerpt> = sqlx::query_as(
        "WITH q AS (SELECT websearch_to_tsquery('english', $2) AS tq),
         best AS (
             SELECT DISTINCT ON (m.ticket_id) m.ticket_id, m.id, m.text
             FROM messages m, q WHERE m.ticket_id = ANY($1) AND m.search @@ q.tq
             ORDER BY m.ticket_id, ts_rank(m.search, q.tq) DESC, m.received_at DESC)
         SELECT t.id AS ticket_id, b.id AS message_id,
                CASE WHEN b.id IS NOT NULL THEN ts_headline('english', translate(b.text, $4, ''), q.tq, $3) END AS snippet,
                CASE WHEN t.search @@ q.tq AND t.subject IS NOT NULL
                     THEN ts_headline('english', translate(t.subject, $4, ''), q.tq, $3 || ', HighlightAll=true') END AS subject
         FROM tickets t CROSS JOIN q LEFT JOIN best b ON b.ticket_id = t.id
         WHERE t.id = ANY($1)",
    )
    .bind(&ids)
    .bind(q)
    .bind(&options)
    .bind(format!("{START}{STOP}"))
    .fetch_all(pool)
    .await?;
    let hits = ranked
        .into_iter()
        .map(|r| {
            let e = excerpts.iter().find(|e| e.ticket_id == r.ticket.id);
            let subject = e
                .and_then(|e| e.subject.as_deref())
                .map(parts)
                .filter(|p| p.iter().any(|p| p.hit));
            let snippet = e
                .and_then(|e| e.snippet.as_deref())
                .map(parts)
                .filter(|p| p.iter().any(|p| p.hit));
            Hit {
                score: r.score,
                matched: r.matched,
                message_id: snippet.as_ref().and(e.and_then(|e| e.message_id)),
                subject,
                snippet,
                ticket: r.ticket,
            }
        })
        .collect::<Vec<_>>();
    Ok(Results {
        next_offset: more.then_some(offset + limit),
        hits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlights_become_parts_and_never_markup() {
        let marked = format!("the {START}refund{STOP} for <b>order</b> {START}1001{STOP}");
        let p = parts(&marked);
        assert_eq!(
            p,
            vec![
                Part {
                    text: "the ".into(),
                    hit: false
                },
                Part {
                    text: "refund".into(),
                    hit: true
                },
                Part {
                    text: " for <b>order</b> ".into(),
                    hit: false
                },
                Part {
                    text: "1001".into(),
                    hit: true
                },
            ]
        );
        assert!(parts("").is_empty());
        // An unmatched stop, or text that is all markers, gives nothing odd.
        assert_eq!(parts(&format!("{STOP}{START}{STOP}")), Vec::<Part>::new());
    }

    #[test]
    fn one_token_queries_are_tried_exactly() {
        let e = Exact::of("t-2026-000123");
        assert_eq!(e.number.as_deref(), Some("T-2026-000123"));
        let e = Exact::of("#1001");
        assert_eq!(e.order, Some(("1001".into(), "#1001".into())));
        assert_eq!(e.number, None);
        let e = Exact::of("Ann@Example.COM");
        assert_eq!(e.identity, Some(("email", "ann@example.com".into())));
        let e = Exact::of("+1 (555) 010-9999");
        assert_eq!(e, Exact::default(), "spaces: not one token");
        let e = Exact::of("+1-555-010-9999");
        assert_eq!(e.identity, Some(("phone", "+15550109999".into())));
        assert_eq!(Exact::of("VIP").tag.as_deref(), Some("vip"));
        assert_eq!(Exact::of("two words"), Exact::default());
        // Hostile: long, non-ASCII, markers.
        let long = "9".repeat(10_000);
        assert_eq!(Exact::of(&long), Exact::default());
        assert!(Exact::of("ünïcödé").number.is_none());
    }

    fn query(v: serde_json::Value) -> SearchQuery {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn bad_parameters_are_named() {
        let field = |v: serde_json::Value| {
            query(v)
                .check(Filter::default())
                .err()
                .and_then(|e| e.field)
        };
        assert_eq!(field(serde_json::json!({"q": "  "})), Some("q".into()));
        assert_eq!(
            field(serde_json::json!({"q": "a".repeat(501)})),
            Some("q".into())
        );
        assert_eq!(field(serde_json::json!({"q": "a\u{0}b"})), Some("q".into()));
        assert_eq!(
            field(serde_json::json!({"q": "x", "status": "open,nope"})),
            Some("status".into())
        );
        assert_eq!(
            field(serde_json::json!({"q": "x", "tags": "ok,bad tag<"})),
            Some("tags".into())
        );
        assert_eq!(
            field(serde_json::json!({"q": "x", "assignee": "who"})),
            Some("assignee".into())
        );
        assert_eq!(
            field(serde_json::json!({"q": "x", "limit": 0})),
            Some("limit".into())
        );
        assert_eq!(
            field(serde_json::json!({"q": "x", "offset": 990, "limit": 20})),
            Some("offset".into())
        );
        let (q, f, limit, offset) =
            query(serde_json::json!({"q": " refund ", "status": "open, pending", "tags": "VIP"}))
                .check(Filter::default())
                .unwrap();
        assert_eq!((q.as_str(), limit, offset), ("refund", 20, 0));
        assert_eq!(f.status, vec!["open", "pending"]);
        assert_eq!(f.tags_all, vec!["vip"]);
    }

    #[test]
    fn the_query_binds_what_the_caller_typed() {
        let exact = Exact::of("#1001");
        let q = "x'); DROP TABLE tickets; --";
        let qb = ranked_sql(q, &exact, &Filter::default(), None, 20, 0);
        assert!(!qb.sql().contains("DROP"));
    }
}
