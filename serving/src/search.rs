//! Search: `GET /v1/search?q=` over the ticket number, the subject, every message (notes too),
//! the customer's name, email and phone, order numbers and tags, with the views' filters, ranked,
//! with highlighted snippets.
//!
//! The engine is Postgres full text (`0018_search.sql`: GIN indexes over generated `tsvector`
//! columns), chosen by `switchboard-sim bench workspace` (ARCHITECTURE.md, "Search"). A query is
//! parsed by `websearch_to_tsquery` (quotes, `or`, `-word`; it never fails on syntax), and a
//! one-token query is also tried as an exact ticket number, order number, email, phone and tag.
//!
//! Only the newest matches are ranked: the newest [`MAX_TEXT_HITS`] subjects and messages and
//! the newest [`MAX_NAME_HITS`] customers a query's words match. With the `rum` extension
//! (`0027_search_newest.sql`) an index scan returns matches newest first and stops there, so a
//! word in every message costs what a rare one does; without it (a Postgres that cannot load
//! `rum`) GIN finds every match and the newest are sorted out ([`Recency`]).
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
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Executor as _, Postgres, QueryBuilder};
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
/// The most subjects, and the most messages, one query ranks: a word in every message of a
/// large desk would otherwise rank them all. The newest win.
pub const MAX_TEXT_HITS: i64 = 1_000;
/// The most customers one query's name match reaches (each brings its tickets).
pub const MAX_NAME_HITS: i64 = 500;
/// A branch whose words the planner's statistics say are in at least this share of its rows is
/// read newest row first until enough match ([`Common`]).
const COMMON_SHARE: f64 = 0.01;
/// The memory one search's sorts may take before they spill to disk (for its transaction only).
const SORT_MEMORY: &str = "SET LOCAL work_mem = '64MB'";
/// The same, and one process for the search (a windowed one, see [`run`]); one statement in the
/// simple protocol, so one round trip.
const SORT_MEMORY_SERIAL: &str =
    "SET LOCAL work_mem = '64MB'; SET LOCAL max_parallel_workers_per_gather = 0";
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

/// How a query's newest matches are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recency {
    /// `rum` indexes keep each match's time: an index scan yields the newest first and stops
    /// at the cap.
    Rum,
    /// GIN yields every match; they are sorted by time and the newest kept.
    Sort,
}

impl Recency {
    /// Which the database offers: `rum` when its extension is installed there.
    pub async fn of(pool: &sqlx::PgPool) -> Result<Recency, sqlx::Error> {
        let rum: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'rum')")
                .fetch_one(pool)
                .await?;
        Ok(if rum { Recency::Rum } else { Recency::Sort })
    }

    /// `ORDER BY` the newest `column` first; `common`: the words are in so many rows that the
    /// newest rows, read in time order, hold enough matches soon.
    fn newest(self, column: &str, common: bool) -> String {
        match self {
            // Distance from now: `rum` orders by it inside the index, but reads every match's
            // time to do so; for a word in every tenth row, reading rows newest first (the
            // column's btree, the words checked on each) stops far sooner.
            Recency::Rum if !common => format!("{column} <=> now()"),
            _ => format!("{column} DESC"),
        }
    }
}

/// Which of a query's text branches (subjects, messages, customers' names) match so large a
/// share of their rows ([`COMMON_SHARE`], from the planner's statistics of the indexed words,
/// `pg_stats.most_common_elems`, the words taken as independent) that the newest matches are
/// found soonest by reading rows newest first: the cost of that is the limit over the share,
/// whatever the desk's size, where an index's is every match. A word the statistics do not track
/// is rarer than every one they do. `or` and `-word` queries take the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Common {
    pub subject: bool,
    pub message: bool,
    pub name: bool,
    /// The query as a tag is on at least [`COMMON_SHARE`] of the tickets.
    pub tag: bool,
}

impl Common {
    /// One round trip: the share of each text branch's words and of the query as a tag, and
    /// (`window`) where the newest recent window starts (`search_windows`' newest row).
    async fn of(
        pool: &sqlx::PgPool,
        q: &str,
        exact: &Exact,
        window: bool,
    ) -> Result<(Common, Option<DateTime<Utc>>), sqlx::Error> {
        let shares: Vec<(String, Option<f64>)> = sqlx::query_as(
            "WITH share AS (
                 SELECT s.tablename::text AS tablename, e.lexeme, e.freq::float8 AS freq FROM pg_stats s,
                     LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)
                 WHERE s.schemaname = current_schema()
                   AND ((s.tablename = 'tickets' AND s.attname = 'search')
                        OR (s.tablename = 'messages' AND s.attname = 'search')
                        OR (s.tablename = 'customers' AND s.attname = 'name_search')))
             SELECT b.tablename,
                    CASE WHEN websearch_to_tsquery(b.config, $1)::text ~ '[|!]' THEN 0
                         ELSE exp(sum(ln(greatest(coalesce(f.freq, 0), 1e-9)))) END
             FROM (VALUES ('tickets', 'english'::regconfig), ('messages', 'english'::regconfig),
                          ('customers', 'simple'::regconfig)) b(tablename, config)
             CROSS JOIN LATERAL unnest(tsvector_to_array(to_tsvector(b.config, $1))) AS l(lexeme)
             LEFT JOIN share f ON f.tablename = b.tablename AND f.lexeme = l.lexeme
             GROUP BY b.tablename, b.config
             UNION ALL
             SELECT 'tags', e.freq::float8 FROM pg_stats s,
                 LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(tag, freq)
             WHERE $2::text IS NOT NULL AND s.schemaname = current_schema()
               AND s.tablename = 'tickets' AND s.attname = 'tags' AND e.tag = $2
             UNION ALL
             SELECT 'window', extract(epoch FROM w.since)::float8
             FROM (SELECT since FROM search_windows ORDER BY created_at DESC LIMIT 1) w WHERE $3",
        )
        .bind(q)
        .bind(exact.tag.as_deref())
        .bind(window)
        .fetch_all(pool)
        .await?;
        let since = shares
            .iter()
            .find(|(t, _)| t == "window")
            .and_then(|(_, secs)| *secs)
            .and_then(|secs| DateTime::from_timestamp(secs.floor() as i64, 0));
        let common = |table: &str| {
            shares
                .iter()
                .any(|(t, share)| t == table && share.unwrap_or(0.0) >= COMMON_SHARE)
        };
        let common = Common {
            subject: common("tickets"),
            message: common("messages"),
            name: common("customers"),
            tag: common("tags"),
        };
        Ok((common, since))
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
#[allow(clippy::too_many_arguments)]
fn ranked_sql(
    recency: Recency,
    common: Common,
    since: Option<DateTime<Utc>>,
    q: &str,
    exact: &Exact,
    filter: &Filter,
    me: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> QueryBuilder<'static, Postgres> {
    let mut qb = QueryBuilder::<Postgres>::new("WITH hits AS (");
    // The query is bound into each branch, not joined from a CTE: an index scan can only be
    // ordered by time (and stop at the limit) when its tsquery is a value the plan sees.
    let english = |qb: &mut QueryBuilder<'static, Postgres>| {
        qb.push("websearch_to_tsquery('english', ");
        qb.push_bind(q.to_string());
        qb.push(")");
    };
    // Text: the subject and tags, then messages, then names, the newest matches of each.
    qb.push(
        "SELECT t.ticket_id, 2 * t.score AS score, 'subject' AS why FROM (
             SELECT t.id AS ticket_id, ts_rank(t.search, ",
    );
    english(&mut qb);
    qb.push(") AS score FROM tickets t WHERE t.search @@ ");
    english(&mut qb);
    qb.push(" ORDER BY ");
    qb.push(recency.newest("t.updated_at", common.subject));
    qb.push(" LIMIT ");
    qb.push_bind(MAX_TEXT_HITS);
    qb.push(
        ") t
         UNION ALL
         SELECT m.ticket_id, m.score, 'message' FROM (",
    );
    // One scan of messages: `extra` narrows it by time, `order` orders it.
    let messages = |qb: &mut QueryBuilder<'static, Postgres>,
                    extra: Option<(&str, DateTime<Utc>)>,
                    order: &str| {
        qb.push("SELECT m.ticket_id, ts_rank(m.search, ");
        english(qb);
        qb.push(") AS score FROM messages m WHERE m.search @@ ");
        english(qb);
        if let Some((op, since)) = extra {
            qb.push(format!(" AND m.received_at {op} "));
            qb.push_bind(since);
        }
        qb.push(" ORDER BY ");
        qb.push(order.to_string());
        qb.push(" LIMIT ");
        qb.push_bind(MAX_TEXT_HITS);
    };
    match since {
        // The recent window's index first, the whole-table index only for what it lacks: an
        // `Append` runs its branches in order and the limit above stops it, so a query with
        // enough recent matches never reads the long posting lists. Both branches are newest
        // first and their times disjoint, so the first matches are the newest of all.
        Some(since) if recency == Recency::Rum && !common.message => {
            let order = recency.newest("m.received_at", false);
            qb.push("SELECT w.ticket_id, w.score FROM ((");
            messages(&mut qb, Some((">=", since)), &order);
            qb.push(") UNION ALL (");
            messages(&mut qb, Some(("<", since)), &order);
            qb.push(")) w LIMIT ");
            qb.push_bind(MAX_TEXT_HITS);
        }
        _ => messages(
            &mut qb,
            None,
            &recency.newest("m.received_at", common.message),
        ),
    }
    qb.push(
        ") m
         UNION ALL
         SELECT t.id, 1, 'customer_name' FROM (
             SELECT c.id FROM customers c WHERE c.name_search @@ websearch_to_tsquery('simple', ",
    );
    qb.push_bind(q.to_string());
    qb.push(") ORDER BY ");
    qb.push(recency.newest("c.created_at", common.name));
    qb.push(" LIMIT ");
    qb.push_bind(MAX_NAME_HITS);
    qb.push(") c JOIN tickets t ON t.customer_id = c.id");
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
        // A tag on a large share of the desk: its newest tickets, like the words.
        qb.push(" UNION ALL SELECT t.id, 4, 'tag' FROM (SELECT t.id FROM tickets t WHERE t.merged_into IS NULL AND t.tags @> ARRAY[");
        qb.push_bind(tag.clone());
        // A rare tag: every ticket it is on, from the GIN index (ordering them by time would
        // invite the planner to read the whole table newest first for a tag nobody uses).
        qb.push(if common.tag {
            "]::text[] ORDER BY t.updated_at DESC LIMIT "
        } else {
            "]::text[] LIMIT "
        });
        qb.push_bind(MAX_TEXT_HITS);
        qb.push(") t");
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
    let recency = *api
        .search_recency
        .get_or_try_init(|| Recency::of(&api.pool))
        .await?;
    let results = run(
        &api.pool,
        recency,
        WindowUse::Newest,
        &q,
        &filter,
        who.agent_id,
        limit,
        offset,
    )
    .await?;
    metrics::histogram!(crate::telemetry::SEARCH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(Json(results))
}

/// Whether a search reads the recent window ([`crate::search_window`]) before the whole-table
/// index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowUse {
    /// The newest window, when there is one (what the API does).
    Newest,
    /// The whole-table index only (the benchmark's side-by-side figure).
    Ignore,
}

/// Runs a checked search: the ranked page, then the page's snippets.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pool: &sqlx::PgPool,
    recency: Recency,
    window: WindowUse,
    q: &str,
    filter: &Filter,
    me: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<Results, sqlx::Error> {
    let exact = Exact::of(q);
    let (common, window_since) = Common::of(
        pool,
        q,
        &exact,
        window == WindowUse::Newest && recency == Recency::Rum,
    )
    .await?;
    // Words read through `rum` (not rows newest first) start in the recent window.
    let since = window_since.filter(|_| !common.message);
    // Planned for this query's words each time (an unnamed statement): a plan cached for any
    // words would not know whether they are rare or in every message.
    let mut tx = pool.begin().await?;
    // `rum` sorts a word's matches by time in memory: at the default 4 MB a word in 0.5% of 30M
    // messages spilled to disk and took 2.5x as long (bench workspace, 10M tickets).
    // One process for a windowed search: a parallel plan could run the window's branch and the
    // older one at once, and the branches' order is what makes the first matches the newest.
    let settings = if since.is_some() {
        SORT_MEMORY_SERIAL
    } else {
        SORT_MEMORY
    };
    (&mut *tx).execute(settings).await?;
    let mut ranked: Vec<Ranked> = ranked_sql(
        recency,
        common,
        since,
        q,
        &exact,
        filter,
        me,
        limit + 1,
        offset,
    )
    .build_query_as()
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
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
             -- The page's tickets' messages, each checked: `OFFSET 0` keeps the word test off
             -- the full-text index, which would read every match of a common word to intersect.
             SELECT DISTINCT ON (m.ticket_id) m.ticket_id, m.id, m.text FROM (
                 SELECT m.ticket_id, m.id, m.text, m.received_at, m.search @@ q.tq AS hit,
                        ts_rank(m.search, q.tq) AS rank
                 FROM messages m, q WHERE m.ticket_id = ANY($1) OFFSET 0) m
             WHERE m.hit
             ORDER BY m.ticket_id, m.rank DESC, m.received_at DESC)
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
        for recency in [Recency::Rum, Recency::Sort] {
            let qb = ranked_sql(
                recency,
                Common::default(),
                None,
                q,
                &exact,
                &Filter::default(),
                None,
                20,
                0,
            );
            assert!(!qb.sql().contains("DROP"));
            let newest = if recency == Recency::Rum {
                "m.received_at <=> now()"
            } else {
                "m.received_at DESC"
            };
            assert!(qb.sql().contains(newest), "{}", qb.sql());
        }
        // A common word reads rows newest first, with or without `rum`.
        let common = Common {
            message: true,
            ..Common::default()
        };
        let qb = ranked_sql(
            Recency::Rum,
            common,
            None,
            "refund",
            &Exact::of("refund"),
            &Filter::default(),
            None,
            20,
            0,
        );
        assert!(qb.sql().contains("m.received_at DESC"), "{}", qb.sql());
        assert!(qb.sql().contains("t.updated_at <=> now()"), "{}", qb.sql());
    }

    #[test]
    fn a_window_is_read_before_the_older_messages_and_only_through_rum() {
        let since = "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let sql = |recency, common| {
            ranked_sql(
                recency,
                common,
                Some(since),
                "order parcel delivery",
                &Exact::of("order parcel delivery"),
                &Filter::default(),
                None,
                20,
                0,
            )
            .sql()
            .to_string()
        };
        let windowed = sql(Recency::Rum, Common::default());
        let recent = windowed.find("m.received_at >= $").expect(&windowed);
        let older = windowed.find("m.received_at < $").expect(&windowed);
        assert!(recent < older, "{windowed}");
        assert!(windowed.contains(")) w LIMIT $"), "{windowed}");
        assert_eq!(windowed.matches("m.received_at <=> now()").count(), 2);
        // Without rum, or for words read newest row first, the window plays no part.
        let common = Common {
            message: true,
            ..Common::default()
        };
        for plain in [
            sql(Recency::Sort, Common::default()),
            sql(Recency::Rum, common),
        ] {
            assert!(!plain.contains("m.received_at >="), "{plain}");
            assert!(!plain.contains(") w LIMIT"), "{plain}");
        }
    }
}
