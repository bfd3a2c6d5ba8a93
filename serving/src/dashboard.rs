//! The supervisor dashboard's data: `GET /v1/dashboard?hours=24` (supervisor).
//!
//! Live state comes from Postgres (queues and their oldest wait, agents by status, SLA clocks at
//! risk, the agent table, CSAT); history from ClickHouse (ticket volume by channel and category,
//! hourly volume, SLA events, first-response and resolution p50/p90, sentiment trend), read from
//! the tables `analytics/sql/002_dashboards.sql` keeps (replay-safe counts). Without ClickHouse
//! the history parts are `null`. `GET /v1/dashboard/agents.csv` exports the agent table.
//! Every chart drills down to `GET /v1/tickets?channel=&category=&queue=`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiQuery};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/dashboard", get(dashboard))
        .route("/v1/dashboard/agents.csv", get(agents_csv))
}

/// `GET /v1/dashboard` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// How far back the history goes (1 to 720 hours; default 24).
    pub hours: Option<u32>,
}

#[derive(Debug, Row, Deserialize, Serialize)]
struct KeyCount {
    key: String,
    n: u64,
}

#[derive(Debug, Row, Deserialize, Serialize)]
struct HourValue {
    hour: u32,
    value: f64,
}

#[derive(Debug, Row, Deserialize)]
struct Quantiles {
    q: Vec<f64>,
}

/// A row of the agent table.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AgentLine {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub active: i32,
    pub capacity: i32,
    pub handled: i64,
    pub handling_secs: Option<f64>,
    pub csat: Option<f64>,
    pub sla_met_pct: Option<f64>,
}

async fn agent_table(api: &Api, hours: u32) -> Result<Vec<AgentLine>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.name, a.status, a.active_count AS active, a.max_concurrent AS capacity,
                (SELECT count(*) FROM assignments s WHERE s.agent_id = a.id AND s.assigned_at > $2 - make_interval(hours => $1)) AS handled,
                (SELECT avg(extract(epoch FROM s.released_at - s.assigned_at))::float8 FROM assignments s
                  WHERE s.agent_id = a.id AND s.released_at IS NOT NULL AND s.assigned_at > $2 - make_interval(hours => $1)) AS handling_secs,
                (SELECT avg(rating)::float8 FROM csat c WHERE c.agent_id = a.id AND c.rating IS NOT NULL) AS csat,
                (SELECT 100.0 * count(*) FILTER (WHERE k.breached_at IS NULL) / NULLIF(count(*), 0)
                   FROM sla_clocks k JOIN assignments s ON s.ticket_id = k.ticket_id AND s.agent_id = a.id
                  WHERE k.started_at > $2 - make_interval(hours => $1))::float8 AS sla_met_pct
         FROM agents a ORDER BY a.name",
    )
    .bind(hours as i32)
    .bind(switchboard_core::clock::now())
    .fetch_all(&api.pool)
    .await?)
}

pub(crate) fn window(w: &Window) -> Result<u32, ApiError> {
    let h = w.hours.unwrap_or(24);
    if !(1..=720).contains(&h) {
        return Err(ApiError::field("hours", "1 to 720"));
    }
    Ok(h)
}

/// The dashboard's history queries over the last `hours`, by name (also run on current
/// ClickHouse through chdb by `cli/tests/chdb.rs`).
pub fn history_sql(hours: u32) -> Vec<(&'static str, String)> {
    let since = format!("now() - {}", u64::from(hours) * 3600);
    let by = |col: &str| {
        format!(
            "SELECT {col} AS key, uniqExactMerge(tickets) AS n FROM ticket_volume_hourly
             WHERE hour >= toStartOfHour({since}) GROUP BY key ORDER BY n DESC"
        )
    };
    let times = |until: &str| {
        format!(
            "SELECT quantiles(0.5, 0.9)((r - c) / 1000) AS q FROM (
               SELECT ticket_id, minIf(occurred_ms, kind = 'created') AS c, minIf(occurred_ms, {until}) AS r
               FROM ticket_facts WHERE occurred_at >= {since} GROUP BY ticket_id)
             WHERE c > 0 AND r >= c"
        )
    };
    vec![
        ("by_channel", by("channel")),
        ("by_category", by("category")),
        (
            "hourly",
            format!(
                "SELECT toUInt32(hour) AS hour, toFloat64(uniqExactMerge(tickets)) AS value FROM ticket_volume_hourly
                 WHERE hour >= toStartOfHour({since}) GROUP BY hour ORDER BY hour"
            ),
        ),
        (
            "sla",
            format!(
                "SELECT kind AS key, uniqExactMerge(events) AS n FROM sla_hourly
                 WHERE hour >= toStartOfHour({since}) GROUP BY key"
            ),
        ),
        ("first_response", times("kind = 'message_added' AND direction = 'outbound'")),
        ("resolution", times("kind = 'resolved'")),
        (
            "sentiment",
            format!(
                "SELECT toUInt32(toStartOfHour(occurred_at)) AS hour, avg(sentiment) AS value FROM predictions FINAL
                 WHERE occurred_at >= {since} GROUP BY hour ORDER BY hour"
            ),
        ),
    ]
}

/// Runs [`history_sql`] and shapes the answer.
pub async fn history(
    ch: &clickhouse::Client,
    hours: u32,
) -> Result<serde_json::Value, clickhouse::error::Error> {
    let sql: std::collections::HashMap<&str, String> = history_sql(hours).into_iter().collect();
    let get = |name: &str| sql.get(name).cloned().unwrap_or_default();
    let by_channel: Vec<KeyCount> = ch.query(&get("by_channel")).fetch_all().await?;
    let by_category: Vec<KeyCount> = ch.query(&get("by_category")).fetch_all().await?;
    let hourly: Vec<HourValue> = ch.query(&get("hourly")).fetch_all().await?;
    let sla: Vec<KeyCount> = ch.query(&get("sla")).fetch_all().await?;
    let frt: Quantiles = ch.query(&get("first_response")).fetch_one().await?;
    let resolution: Quantiles = ch.query(&get("resolution")).fetch_one().await?;
    let sentiment: Vec<HourValue> = ch.query(&get("sentiment")).fetch_all().await?;
    let q = |v: &Quantiles, i: usize| v.q.get(i).copied().filter(|x| x.is_finite());
    Ok(serde_json::json!({
        "by_channel": by_channel,
        "by_category": by_category,
        "hourly": hourly,
        "sla": sla,
        "first_response_secs": {"p50": q(&frt, 0), "p90": q(&frt, 1)},
        "resolution_secs": {"p50": q(&resolution, 0), "p90": q(&resolution, 1)},
        "sentiment_hourly": sentiment,
    }))
}

#[utoipa::path(get, path = "/v1/dashboard", tag = "reports", params(Window), responses((status = 200, description = "live state and history"), (status = 400, description = "`hours` out of range"), (status = 403, description = "supervisors only"), (status = 503, description = "the analytics store did not answer")), security(("bearer" = [])))]
async fn dashboard(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(w): ApiQuery<Window>,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(Role::Supervisor)?;
    let hours = window(&w)?;
    let queues: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
        "SELECT queue, count(*), extract(epoch FROM $1 - min(created_at))::float8 FROM tickets
         WHERE status = 'open' AND assigned_agent_id IS NULL AND merged_into IS NULL GROUP BY queue ORDER BY queue",
    )
    .bind(switchboard_core::clock::now())
    .fetch_all(&api.pool)
    .await?;
    let agents: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, count(*), count(*) FILTER (WHERE active_count > 0) FROM agents GROUP BY status",
    )
    .fetch_all(&api.pool)
    .await?;
    let (at_risk, breached_open): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE warned_at IS NOT NULL AND breached_at IS NULL),
                count(DISTINCT ticket_id) FILTER (WHERE breached_at IS NOT NULL)
         FROM sla_clocks WHERE stopped_at IS NULL",
    )
    .fetch_one(&api.pool)
    .await?;
    let (csat_mean, csat_answered): (Option<f64>, i64) = sqlx::query_as(
        "SELECT avg(rating)::float8, count(rating) FROM csat WHERE answered_at > $2 - make_interval(hours => $1)",
    )
    .bind(hours as i32)
    .bind(switchboard_core::clock::now())
    .fetch_one(&api.pool)
    .await?;
    let history = match &api.clickhouse {
        Some(ch) => Some(
            history(ch, hours)
                .await
                .map_err(|e| ApiError::unavailable(format!("clickhouse: {e}")))?,
        ),
        None => None,
    };
    Ok(Json(serde_json::json!({
        "hours": hours,
        "queues": queues.into_iter().map(|(queue, waiting, oldest)| serde_json::json!({"queue": queue, "waiting": waiting, "oldest_wait_secs": oldest})).collect::<Vec<_>>(),
        "agents_by_status": agents.into_iter().map(|(status, n, busy)| serde_json::json!({"status": status, "agents": n, "busy": busy})).collect::<Vec<_>>(),
        "sla_at_risk": at_risk,
        "sla_breached_open": breached_open,
        "csat": {"mean": csat_mean, "answered": csat_answered},
        "agents": agent_table(&api, hours).await?,
        "drafts": crate::drafts::acceptance(&api.pool, hours).await?,
        "history": history,
    })))
}

fn csv_field(s: &str) -> String {
    // Quoted, and never read as a formula by a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[utoipa::path(get, path = "/v1/dashboard/agents.csv", tag = "reports", params(Window), responses((status = 200, description = "text/csv"), (status = 400, description = "`hours` out of range"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn agents_csv(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(w): ApiQuery<Window>,
) -> Result<Response, ApiError> {
    who.require(Role::Supervisor)?;
    let hours = window(&w)?;
    let mut out = String::from(
        "agent_id,name,status,active,capacity,handled,handling_secs,csat,sla_met_pct\n",
    );
    let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_default();
    for a in agent_table(&api, hours).await? {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            a.id,
            csv_field(&a.name),
            a.status,
            a.active,
            a.capacity,
            a.handled,
            f(a.handling_secs),
            f(a.csat),
            f(a.sla_met_pct)
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"agents.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("Ann \"A\" Lee"), "\"Ann \"\"A\"\" Lee\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
    }
}
