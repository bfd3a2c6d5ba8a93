//! Search's recent window: a partial `rum` index over the newest messages, so a query whose
//! newest matches are recent reads short posting lists.
//!
//! A `rum` index scan ordered by time still intersects every word's whole posting list before
//! its first row (three common words on a 30M-message desk: lists of 19M, 2M and 1.9M entries,
//! 670 ms). The window index holds only the messages received since its `since` (about
//! `search.window_rows` of them when it is built), so the same words' lists there are a fraction
//! as long. Search reads the window first and the whole-table index only for what the window
//! lacks (`search::ranked_sql`: a lazy `UNION ALL` under the branch's limit; a query with enough
//! recent matches never touches the whole-table index).
//!
//! [`WindowJob`] builds the window again every `search.window_every_secs` on one instance at a
//! time (an advisory lock), `CREATE INDEX CONCURRENTLY` so writes go on, records it in
//! `search_windows` once it is valid (search reads the newest row), then drops the older
//! windows. A desk under `search.window_min_messages`, or a database without `rum`, has none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{Executor as _, PgPool};
use switchboard_core::db::JobLock;
use switchboard_core::runtime::every;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Every window index's name starts with this (`messages_search_window_<cutoff>_<built>`).
pub const INDEX_PREFIX: &str = "messages_search_window_";

/// A `LIKE` pattern for the window indexes' names (`_` escaped).
pub const INDEX_LIKE: &str = "messages\\_search\\_window\\_%";

/// `search:` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Build and use the recent window at all.
    pub window: bool,
    /// How many of the newest messages the window holds when it is built (it grows until the
    /// next build).
    pub window_rows: u64,
    /// A desk with fewer messages than this (the planner's estimate) gets no window: its
    /// whole-table index is short enough.
    pub window_min_messages: u64,
    /// How often the window is built again (at least 60).
    pub window_every_secs: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            window: true,
            window_rows: 2_000_000,
            window_min_messages: 4_000_000,
            window_every_secs: 86_400,
        }
    }
}

impl SearchConfig {
    /// What `switchboard validate` refuses.
    pub fn check(&self) -> Result<(), String> {
        if self.window && self.window_rows == 0 {
            return Err("search.window_rows must be at least 1".into());
        }
        if self.window_every_secs < 60 {
            return Err("search.window_every_secs must be at least 60".into());
        }
        Ok(())
    }
}

/// The window search reads: messages received at or after `since` are in `index`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Window {
    pub index_name: String,
    pub since: DateTime<Utc>,
    pub rows: i64,
    pub created_at: DateTime<Utc>,
}

/// The newest valid window, if any.
pub async fn current(pool: &PgPool) -> Result<Option<Window>, sqlx::Error> {
    sqlx::query_as(
        "SELECT index_name, since, rows, created_at FROM search_windows ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub enum Built {
    /// A window was built (and the older ones dropped), in this many seconds.
    Window { window: Window, secs: f64 },
    /// The newest window is younger than `window_every_secs`.
    NotDue,
    /// Another instance holds the job.
    Busy,
    /// No `rum` or the window is off (windows dropped), or the desk is too small for one (a
    /// window already there stays).
    NotNeeded,
}

/// One pass: builds a window when the newest is older than `window_every_secs` (or `force`),
/// on one instance at a time.
pub async fn build_if_due(
    pool: &PgPool,
    cfg: &SearchConfig,
    now: DateTime<Utc>,
    force: bool,
) -> Result<Built, sqlx::Error> {
    let rum: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'rum')")
            .fetch_one(pool)
            .await?;
    if let Some(w) = current(pool).await? {
        let due = w.created_at
            + chrono::Duration::seconds(i64::try_from(cfg.window_every_secs).unwrap_or(i64::MAX));
        if !force && cfg.window && rum && due > now {
            return Ok(Built::NotDue);
        }
    }
    let Some(mut lock) = JobLock::try_acquire(pool, "switchboard:search-window").await? else {
        return Ok(Built::Busy);
    };
    let result = build(lock.conn(), cfg, rum).await;
    lock.release().await;
    result
}

/// Under the lock: the cutoff, the index, its row, the older windows dropped.
async fn build(
    conn: &mut sqlx::PgConnection,
    cfg: &SearchConfig,
    rum: bool,
) -> Result<Built, sqlx::Error> {
    let estimate: f64 = sqlx::query_scalar(
        "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = 'messages'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !rum || !cfg.window {
        // Turned off: search would go on reading a window it finds, and writes keep it.
        drop_windows(conn, None).await?;
        return Ok(Built::NotNeeded);
    }
    let cutoff: Option<DateTime<Utc>> = if estimate < cfg.window_min_messages as f64 {
        None
    } else {
        // The received time of the `window_rows`-th newest message (the btree on received_at),
        // to the hour below.
        sqlx::query_scalar(
            "SELECT date_trunc('hour', received_at) FROM messages ORDER BY received_at DESC OFFSET $1 LIMIT 1",
        )
        .bind(i64::try_from(cfg.window_rows).unwrap_or(i64::MAX))
        .fetch_optional(&mut *conn)
        .await?
    };
    // Too few messages for a window to help: a window already there stays (it is still right).
    let Some(since) = cutoff else {
        return Ok(Built::NotNeeded);
    };
    // What an interrupted build left (an invalid index no row names) goes first: every insert
    // would go on maintaining it.
    let live: Option<String> = sqlx::query_scalar(
        "SELECT index_name FROM search_windows ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    drop_windows(conn, live.as_deref()).await?;
    let started = std::time::Instant::now();
    // Named by its cutoff and its build time: never the name of the window searches use now,
    // even when the cutoff has not moved.
    let name = format!(
        "{INDEX_PREFIX}{}_{}",
        since.timestamp(),
        Utc::now().timestamp_millis()
    );
    // DDL as a bare string: the simple protocol, outside any transaction (as CONCURRENTLY
    // needs), never prepared.
    let create = format!(
        "CREATE INDEX CONCURRENTLY {name} ON messages
             USING rum (search rum_tsvector_addon_ops, received_at) WITH (attach = 'received_at', to = 'search')
             WHERE received_at >= '{}'::timestamptz",
        since.to_rfc3339()
    );
    if let Err(e) = conn.execute(create.as_str()).await {
        // A failed concurrent build leaves an invalid index behind: drop it now.
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
        if let Err(d) = conn.execute(drop.as_str()).await {
            warn!(error = %d, index = %name, "dropping a failed search window failed");
        }
        return Err(e);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE received_at >= $1")
        .bind(since)
        .fetch_one(&mut *conn)
        .await?;
    let window: Window = sqlx::query_as(
        "INSERT INTO search_windows (index_name, since, rows) VALUES ($1, $2, $3)
         RETURNING index_name, since, rows, created_at",
    )
    .bind(&name)
    .bind(since)
    .bind(rows)
    .fetch_one(&mut *conn)
    .await?;
    drop_windows(conn, Some(&name)).await?;
    Ok(Built::Window {
        window,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Drops every window but `keep`: its row first (searches starting from now on read the newer
/// one), then its index (`CONCURRENTLY`: a search still using it finishes first).
async fn drop_windows(
    conn: &mut sqlx::PgConnection,
    keep: Option<&str>,
) -> Result<(), sqlx::Error> {
    let old: Vec<String> = sqlx::query_scalar(
        "DELETE FROM search_windows WHERE index_name IS DISTINCT FROM $1::text RETURNING index_name",
    )
    .bind(keep)
    .fetch_all(&mut *conn)
    .await?;
    // Also any index of the name's shape no row names (a build that failed after creating it).
    let stray: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename = 'messages'
           AND indexname LIKE $2 AND indexname::text IS DISTINCT FROM $1::text",
    )
    .bind(keep)
    .bind(INDEX_LIKE)
    .fetch_all(&mut *conn)
    .await?;
    let mut names: Vec<String> = old.into_iter().chain(stray).collect();
    names.sort();
    names.dedup();
    for n in names {
        // Names are ours (`messages_search_window_<cutoff>_<built>`); checked anyway before quoting.
        if n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {n}");
            conn.execute(drop.as_str()).await?;
        }
    }
    Ok(())
}

/// The building loop (serving role).
#[derive(Debug)]
pub struct WindowJob {
    pub pool: PgPool,
    pub config: SearchConfig,
}

impl switchboard_core::runtime::Background for WindowJob {
    fn name(&self) -> &'static str {
        "search-window"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        job_loop(self, shutdown)
    }
}

async fn job_loop(job: WindowJob, shutdown: CancellationToken) {
    // Soon after the start (a desk restored from a backup has no window yet), then every few
    // minutes; a pass builds only when the newest window is older than `window_every_secs`. A
    // build cut off by a stop leaves an invalid index the next build drops first.
    let interval = Duration::from_secs(job.config.window_every_secs.clamp(60, 600));
    let job = &job;
    every(&shutdown, Duration::from_secs(15), interval, || async move {
        let now = switchboard_core::clock::now();
        match build_if_due(&job.pool, &job.config, now, false).await {
            Ok(Built::Window { window, secs }) => info!(
                index = %window.index_name,
                since = %window.since,
                rows = window.rows,
                secs,
                "search window built"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, retry = true, "search window build failed, retrying at the next pass")
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(SearchConfig::default().check(), Ok(()));
        let zero = SearchConfig {
            window_rows: 0,
            ..SearchConfig::default()
        };
        assert!(zero.check().unwrap_err().contains("window_rows"));
        let often = SearchConfig {
            window_every_secs: 5,
            ..SearchConfig::default()
        };
        assert!(often.check().unwrap_err().contains("window_every_secs"));
        let off = SearchConfig {
            window: false,
            window_rows: 0,
            ..SearchConfig::default()
        };
        assert_eq!(off.check(), Ok(()));
    }
}
