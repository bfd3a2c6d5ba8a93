//! Demand forecast and staffing plan for supervisors: `GET /v1/forecast` (tickets per hour
//! ahead, per series, beside what came and what the day-ahead forecast said) and
//! `GET /v1/staffing` (agents needed per hour against agents on shift, the gaps flagged).
//!
//! [`ForecastJob`] fits the forecast (`switchboard_analytics::forecast`) every
//! `forecast.every_secs` on one instance at a time (an advisory lock) and only when the newest
//! run is older than that, so instances and restarts never fit twice in a row.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{
    DateTime, Datelike as _, Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone as _, Utc,
};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchboard_analytics::forecast::{self as fc, ForecastConfig};
use switchboard_analytics::staffing::{self, Workload};
use switchboard_core::db::JobLock;
use switchboard_core::http::{ApiError, ApiQuery};
use switchboard_core::runtime::every;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/forecast", get(forecast))
        .route("/v1/staffing", get(staffing_plan))
}

/// The forecast settings and the holidays the job and the plan use.
#[derive(Debug, Clone, Default)]
pub struct Forecasting {
    pub config: ForecastConfig,
    /// The business calendars' holidays and `forecast.holidays`.
    pub holidays: BTreeSet<NaiveDate>,
}

/// The fitting loop (serving role, when ClickHouse is configured and `forecast.enabled`).
#[derive(Debug)]
pub struct ForecastJob {
    pub pool: PgPool,
    pub clickhouse: clickhouse::Client,
    pub forecasting: Forecasting,
}

impl switchboard_core::runtime::Background for ForecastJob {
    fn name(&self) -> &'static str {
        "forecast"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        job_loop(self, shutdown)
    }
}

async fn newest_run(ch: &clickhouse::Client) -> Result<u32, clickhouse::error::Error> {
    ch.query("SELECT toUInt32(max(generated_at)) FROM forecasts")
        .fetch_one()
        .await
}

/// One pass: fits and stores when the newest run is older than `every_secs` and no other
/// instance holds the job. What it did; `None` when it had nothing to do.
pub async fn fit_if_due(
    pool: &PgPool,
    ch: &clickhouse::Client,
    f: &Forecasting,
    now: DateTime<Utc>,
) -> Result<Option<fc::RunSummary>, String> {
    let newest = newest_run(ch).await.map_err(|e| e.to_string())?;
    if i64::from(newest) + i64::try_from(f.config.every_secs).unwrap_or(i64::MAX) > now.timestamp()
    {
        return Ok(None);
    }
    let Some(lock) = JobLock::try_acquire(pool, "switchboard:forecast")
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let result = fc::run_once(ch, &f.config, &f.holidays, now).await;
    lock.release().await;
    result.map(Some).map_err(|e| e.to_string())
}

async fn job_loop(job: ForecastJob, shutdown: CancellationToken) {
    // A minute after the start (the first pass finds the history a restart left), then every
    // few minutes; a pass fits only when the newest run is older than `every_secs`. A fit cut
    // off by a stop stored nothing: the next pass fits again.
    let interval = Duration::from_secs(job.forecasting.config.every_secs.clamp(60, 600));
    let job = &job;
    every(&shutdown, Duration::from_secs(60), interval, || async move {
        let now = switchboard_core::clock::now();
        match fit_if_due(&job.pool, &job.clickhouse, &job.forecasting, now).await {
            Ok(Some(s)) => info!(
                series = s.series,
                rows = s.rows,
                skipped = s.skipped.len(),
                "demand forecast fitted"
            ),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, retry = true, "demand forecast failed, retrying at the next pass")
            }
        }
    })
    .await;
}

/// `GET /v1/forecast` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ForecastQuery {
    /// `all` (default), `channel:<name>` or `category:<name>`.
    pub series: Option<String>,
    /// First day shown, `YYYY-MM-DD` (UTC; default yesterday).
    pub from: Option<NaiveDate>,
    /// Days shown (1 to 28; default 3).
    pub days: Option<u32>,
}

/// One hour of the window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ForecastHour {
    pub hour: DateTime<Utc>,
    /// The newest forecast for the hour made before it ended (none: no run covered it), with
    /// its prediction interval.
    pub point: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// What the forecast made before the hour's day began said (none: no run that early).
    pub day_ahead: Option<f64>,
    /// Tickets that came (none: the hour has not ended).
    pub actual: Option<f64>,
}

/// `GET /v1/forecast`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ForecastAnswer {
    pub series: String,
    /// The newest run of this series (none: never fitted).
    pub generated_at: Option<DateTime<Utc>>,
    /// The prediction interval's coverage.
    pub level: f64,
    pub hours: Vec<ForecastHour>,
    /// Mean absolute percentage error of the day-ahead forecast over the ended hours shown
    /// (hours with tickets), as a share; hourly and per whole day.
    pub mape_hourly: Option<f64>,
    pub mape_daily: Option<f64>,
    /// Every series with a forecast.
    pub series_available: Vec<String>,
}

/// Aliases differ from the columns: ClickHouse would read an alias named like a column inside
/// the next aggregate.
#[derive(Debug, Row, Deserialize)]
struct HourRow {
    h: u32,
    p: f64,
    lo: f64,
    up: f64,
    da: f64,
    da_runs: u64,
}

#[derive(Debug, Row, Deserialize)]
struct ActualRow {
    h: u32,
    n: u64,
}

fn ch_down(e: clickhouse::error::Error) -> ApiError {
    ApiError::unavailable(format!("clickhouse: {e}"))
}

fn secs(t: DateTime<Utc>) -> u32 {
    u32::try_from(t.timestamp().max(0)).unwrap_or(u32::MAX)
}

fn at(s: u32) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(i64::from(s), 0).unwrap_or_default()
}

/// A series name as the job writes them: `all`, `channel:x`, `category:x` (x: lowercase
/// letters, digits, `_` and `-`, at most 64).
fn series_name(s: Option<&str>) -> Result<String, ApiError> {
    let s = s.unwrap_or(fc::ALL);
    let ok_value = |v: &str| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let ok = s == fc::ALL
        || s.strip_prefix("channel:").is_some_and(ok_value)
        || s.strip_prefix("category:").is_some_and(ok_value);
    if !ok {
        return Err(ApiError::field(
            "series",
            "all, channel:<name> or category:<name> (lowercase letters, digits, _ and -)",
        ));
    }
    Ok(s.to_string())
}

/// Hours of `series` over `[from, to)`: the newest forecast made before each hour, the
/// day-ahead one, and what came.
async fn hours_of(
    ch: &clickhouse::Client,
    series: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<ForecastHour>, clickhouse::error::Error> {
    let rows: Vec<HourRow> = ch
        .query(
            "SELECT toUInt32(hour) AS h,
                    argMax(point, generated_at) AS p, argMax(lower, generated_at) AS lo, argMax(upper, generated_at) AS up,
                    argMaxIf(point, generated_at, toUInt32(generated_at) <= intDiv(toUInt32(hour), 86400) * 86400) AS da,
                    toUInt64(countIf(toUInt32(generated_at) <= intDiv(toUInt32(hour), 86400) * 86400)) AS da_runs
             FROM forecasts
             WHERE series = ? AND hour >= toDateTime(?) AND hour < toDateTime(?) AND generated_at <= hour + 3599
             GROUP BY hour ORDER BY hour",
        )
        .bind(series)
        .bind(secs(from))
        .bind(secs(to))
        .fetch_all()
        .await?;
    let filter = match series.split_once(':') {
        Some(("channel", v)) => format!("AND channel = '{v}'"),
        Some(("category", v)) => format!("AND category = '{v}'"),
        _ => String::new(),
    };
    // `v` is checked by `series_name` (lowercase letters, digits, `_`, `-`): no quoting needed.
    let actual: Vec<ActualRow> = ch
        .query(&format!(
            "SELECT toUInt32(hour) AS h, toUInt64(uniqExactMerge(tickets)) AS n FROM ticket_volume_hourly
             WHERE hour >= toDateTime(?) AND hour < toDateTime(?) {filter} GROUP BY hour"
        ))
        .bind(secs(from))
        .bind(secs(to))
        .fetch_all()
        .await?;
    let actual: BTreeMap<u32, f64> = actual.into_iter().map(|r| (r.h, r.n as f64)).collect();
    let ended = |h: u32| i64::from(h) + 3600 <= now.timestamp();
    let rows: BTreeMap<u32, HourRow> = rows.into_iter().map(|r| (r.h, r)).collect();
    let hours = (to - from).num_hours().max(0);
    Ok((0..hours)
        .map(|i| {
            let h = secs(from + ChronoDuration::hours(i));
            let r = rows.get(&h);
            ForecastHour {
                hour: at(h),
                point: r.map(|r| r.p),
                lower: r.map(|r| r.lo),
                upper: r.map(|r| r.up),
                day_ahead: r.filter(|r| r.da_runs > 0).map(|r| r.da),
                actual: ended(h).then(|| actual.get(&h).copied().unwrap_or(0.0)),
            }
        })
        .collect())
}

fn clickhouse(api: &Api) -> Result<&clickhouse::Client, ApiError> {
    api.clickhouse
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the forecast needs ClickHouse (services.clickhouse)"))
}

/// A day ClickHouse's `DateTime` holds (1970 to 2105): beyond it the hours would not fit, and
/// far enough out date arithmetic would overflow.
fn in_range(d: NaiveDate, field: &str) -> Result<NaiveDate, ApiError> {
    if (1970..=2105).contains(&d.year()) {
        Ok(d)
    } else {
        Err(ApiError::field(field, "a date from 1970 to 2105"))
    }
}

fn window(
    from: Option<NaiveDate>,
    days: Option<u32>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let days = days.unwrap_or(3);
    if !(1..=28).contains(&days) {
        return Err(ApiError::field("days", "1 to 28"));
    }
    let from = in_range(
        from.unwrap_or_else(|| now.date_naive() - ChronoDuration::days(1)),
        "from",
    )?;
    let start = Utc.from_utc_datetime(&from.and_time(NaiveTime::MIN));
    Ok((start, start + ChronoDuration::days(i64::from(days))))
}

#[utoipa::path(get, path = "/v1/forecast", operation_id = "demand_forecast", tag = "reports", params(ForecastQuery), responses((status = 200, body = ForecastAnswer, description = "tickets per hour: forecast with its interval, the day-ahead forecast and what came"), (status = 400, description = "a parameter is invalid, named"), (status = 403, description = "supervisors only"), (status = 503, description = "no ClickHouse, or it did not answer")), security(("bearer" = [])))]
async fn forecast(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(q): ApiQuery<ForecastQuery>,
) -> Result<Json<ForecastAnswer>, ApiError> {
    who.require(Role::Supervisor)?;
    let series = series_name(q.series.as_deref())?;
    let now = switchboard_core::clock::now();
    let (from, to) = window(q.from, q.days, now)?;
    let ch = clickhouse(&api)?;
    let hours = hours_of(ch, &series, from, to, now)
        .await
        .map_err(ch_down)?;
    let newest: u32 = ch
        .query("SELECT toUInt32(max(generated_at)) FROM forecasts WHERE series = ?")
        .bind(&series)
        .fetch_one()
        .await
        .map_err(ch_down)?;
    let available: Vec<String> = ch
        .query("SELECT DISTINCT series FROM forecasts ORDER BY series")
        .fetch_all()
        .await
        .map_err(ch_down)?;
    // Day-ahead error over the ended hours that had a day-ahead forecast.
    let pairs: Vec<(DateTime<Utc>, f64, f64)> = hours
        .iter()
        .filter_map(|h| Some((h.hour, h.actual?, h.day_ahead?)))
        .collect();
    let (a, f): (Vec<f64>, Vec<f64>) = pairs.iter().map(|(_, a, f)| (*a, *f)).unzip();
    let mut days: BTreeMap<NaiveDate, (f64, f64, usize)> = BTreeMap::new();
    for (h, a, f) in &pairs {
        let d = days.entry(h.date_naive()).or_default();
        d.0 += a;
        d.1 += f;
        d.2 += 1;
    }
    let (da, df): (Vec<f64>, Vec<f64>) = days
        .values()
        .filter(|d| d.2 == 24)
        .map(|d| (d.0, d.1))
        .unzip();
    Ok(Json(ForecastAnswer {
        series,
        generated_at: (newest > 0).then(|| at(newest)),
        level: api.forecasting.config.level,
        hours,
        mape_hourly: fc::mape(&a, &f),
        mape_daily: fc::mape(&da, &df),
        series_available: available,
    }))
}

/// `GET /v1/staffing` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StaffingQuery {
    /// The day planned, `YYYY-MM-DD` (UTC; default today).
    pub date: Option<NaiveDate>,
}

/// One channel's share of an hour.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelNeed {
    pub channel: String,
    /// Forecast tickets.
    pub tickets: f64,
    /// Slots (tickets worked at once) Erlang C asks for.
    pub slots: u32,
    pub erlangs: f64,
}

/// An hour of the plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StaffingHour {
    pub hour: DateTime<Utc>,
    pub tickets: f64,
    /// Agents needed for every channel's target.
    pub needed: u32,
    /// Agents whose shift covers the hour (agents without a shift count always).
    pub scheduled: u32,
    /// `scheduled - needed`: below zero the hour is short.
    pub gap: i64,
    /// The share answered in time expected with the scheduled agents (Erlang C over the
    /// hour's whole load).
    pub expected_service_level: f64,
    pub channels: Vec<ChannelNeed>,
}

/// What a channel's plan used.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelBasis {
    pub channel: String,
    /// Mean assignment-to-release time over the last 7 days, seconds.
    pub handle_secs: f64,
    /// Assignments it was measured on (below `min_samples`: the configured default was used).
    pub samples: i64,
    pub answer_within_secs: f64,
}

/// `GET /v1/staffing`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StaffingAnswer {
    pub date: NaiveDate,
    pub service_level: f64,
    pub max_occupancy: f64,
    /// Tickets an agent works at once (the agents' median `max_concurrent`).
    pub concurrency: u32,
    pub basis: Vec<ChannelBasis>,
    pub hours: Vec<StaffingHour>,
    /// Hours where fewer agents are on shift than needed.
    pub short_hours: u32,
    /// Agent-hours missing over the day (the sum of the negative gaps).
    pub short_agent_hours: i64,
}

/// Agents on shift at each hour of `date` (UTC hours; an agent's shift is in its timezone).
fn on_shift(
    agents: &[(Option<NaiveTime>, Option<NaiveTime>, String)],
    date: NaiveDate,
) -> [u32; 24] {
    let mut out = [0u32; 24];
    let start = Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN));
    for (h, slot) in out.iter_mut().enumerate() {
        // The middle of the hour decides.
        let t = start + ChronoDuration::minutes(h as i64 * 60 + 30);
        *slot = u32::try_from(
            agents
                .iter()
                .filter(|(s, e, tz)| match (s, e, tz.parse::<chrono_tz::Tz>()) {
                    (Some(s), Some(e), Ok(tz)) => {
                        let local = t.with_timezone(&tz).time();
                        if s <= e {
                            local >= *s && local < *e
                        } else {
                            local >= *s || local < *e
                        }
                    }
                    _ => true,
                })
                .count(),
        )
        .unwrap_or(u32::MAX);
    }
    out
}

#[derive(Debug, Row, Deserialize)]
struct SeriesHour {
    series: String,
    h: u32,
    p: f64,
}

#[utoipa::path(get, path = "/v1/staffing", operation_id = "staffing_plan", tag = "reports", params(StaffingQuery), responses((status = 200, body = StaffingAnswer, description = "agents needed per hour (Erlang C on the forecast) against agents on shift"), (status = 400, description = "a parameter is invalid, named"), (status = 403, description = "supervisors only"), (status = 503, description = "no ClickHouse, or it did not answer")), security(("bearer" = [])))]
async fn staffing_plan(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(q): ApiQuery<StaffingQuery>,
) -> Result<Json<StaffingAnswer>, ApiError> {
    who.require(Role::Supervisor)?;
    let now = switchboard_core::clock::now();
    let date = in_range(q.date.unwrap_or_else(|| now.date_naive()), "date")?;
    let start = Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN));
    let ch = clickhouse(&api)?;
    let cfg = &api.forecasting.config.staffing;
    // The newest forecast made before each hour, per channel (the total when there is none).
    let rows: Vec<SeriesHour> = ch
        .query(
            "SELECT series, toUInt32(hour) AS h, argMax(point, generated_at) AS p FROM forecasts
             WHERE (series = 'all' OR startsWith(series, 'channel:')) AND hour >= toDateTime(?) AND hour < toDateTime(?)
               AND generated_at <= hour + 3599
             GROUP BY series, hour",
        )
        .bind(secs(start))
        .bind(secs(start + ChronoDuration::days(1)))
        .fetch_all()
        .await
        .map_err(ch_down)?;
    let mut by_channel: BTreeMap<String, [f64; 24]> = BTreeMap::new();
    let mut total = [0.0f64; 24];
    for r in rows {
        let Some(h) = usize::try_from((i64::from(r.h) - start.timestamp()) / 3600)
            .ok()
            .filter(|h| *h < 24)
        else {
            continue;
        };
        match r.series.strip_prefix("channel:") {
            Some(c) => by_channel.entry(c.to_string()).or_insert([0.0; 24])[h] = r.p,
            None => total[h] = r.p,
        }
    }
    if by_channel.is_empty() {
        by_channel.insert(fc::ALL.to_string(), total);
    }
    // Handling time per channel, measured: assignment to release over the last 7 days.
    let measured: Vec<(String, f64, i64)> = sqlx::query_as(
        "SELECT t.channel, avg(extract(epoch FROM s.released_at - s.assigned_at))::float8, count(*)
         FROM assignments s JOIN tickets t ON t.id = s.ticket_id
         WHERE s.released_at IS NOT NULL AND s.assigned_at > $1 - interval '7 days'
         GROUP BY t.channel",
    )
    .bind(now)
    .fetch_all(&api.pool)
    .await?;
    let measured: BTreeMap<String, (f64, i64)> =
        measured.into_iter().map(|(c, s, n)| (c, (s, n))).collect();
    let concurrency: Option<f64> = sqlx::query_scalar(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY max_concurrent)::float8 FROM agents WHERE deactivated_at IS NULL",
    )
    .fetch_one(&api.pool)
    .await?;
    let concurrency = concurrency.map_or(1, |c| c.clamp(1.0, 100.0) as u32);
    let shifts: Vec<(Option<NaiveTime>, Option<NaiveTime>, String)> = sqlx::query_as(
        "SELECT shift_start, shift_end, timezone FROM agents WHERE deactivated_at IS NULL",
    )
    .fetch_all(&api.pool)
    .await?;
    let scheduled = on_shift(&shifts, date);
    let basis: Vec<ChannelBasis> = by_channel
        .keys()
        .map(|c| {
            let (handle, samples) = measured.get(c).copied().unwrap_or((0.0, 0));
            let handle = if samples >= i64::from(cfg.min_samples) && handle > 0.0 {
                handle
            } else {
                cfg.default_handle_secs
            };
            ChannelBasis {
                channel: c.clone(),
                handle_secs: handle,
                samples,
                answer_within_secs: cfg.target(c).answer_within_secs,
            }
        })
        .collect();
    let mut hours = Vec::with_capacity(24);
    for h in 0..24 {
        let mut channels = Vec::new();
        let (mut slots, mut erlangs, mut tickets, mut weighted_t) = (0u32, 0.0, 0.0, 0.0);
        for b in &basis {
            let n = by_channel.get(&b.channel).map_or(0.0, |v| v[h]);
            let p = staffing::plan(
                Workload {
                    tickets_per_hour: n,
                    handle_secs: b.handle_secs,
                    concurrency: 1,
                },
                cfg.target(&b.channel),
            );
            slots = slots.saturating_add(p.slots);
            erlangs += p.erlangs;
            tickets += n;
            weighted_t += n * b.answer_within_secs;
            channels.push(ChannelNeed {
                channel: b.channel.clone(),
                tickets: n,
                slots: p.slots,
                erlangs: p.erlangs,
            });
        }
        let needed = slots.div_ceil(concurrency);
        let on = scheduled[h];
        // The expected share in time with the agents on shift: the hour's pooled load, its
        // ticket-weighted handling time and target.
        let expected = if tickets > 0.0 {
            let handle = erlangs * 3600.0 / tickets;
            staffing::service_level(
                on.saturating_mul(concurrency),
                erlangs,
                handle,
                weighted_t / tickets,
            )
        } else {
            1.0
        };
        hours.push(StaffingHour {
            hour: start + ChronoDuration::hours(h as i64),
            tickets,
            needed,
            scheduled: on,
            gap: i64::from(on) - i64::from(needed),
            expected_service_level: expected,
            channels,
        });
    }
    let short: Vec<i64> = hours.iter().map(|h| h.gap).filter(|g| *g < 0).collect();
    Ok(Json(StaffingAnswer {
        date,
        service_level: cfg.service_level,
        max_occupancy: cfg.max_occupancy,
        concurrency,
        basis,
        short_hours: u32::try_from(short.len()).unwrap_or(u32::MAX),
        short_agent_hours: -short.iter().sum::<i64>(),
        hours,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_names_are_checked_and_name_the_field() {
        assert_eq!(series_name(None).unwrap(), "all");
        assert_eq!(series_name(Some("channel:email")).unwrap(), "channel:email");
        assert_eq!(
            series_name(Some("category:order_issue")).unwrap(),
            "category:order_issue"
        );
        for bad in [
            "",
            "channel:",
            "channel:E",
            "brand:x",
            "channel:a'b",
            "category:ü",
            &"channel:x".repeat(20),
        ] {
            let e = series_name(Some(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("series"), "{bad}");
        }
    }

    #[test]
    fn shifts_count_in_each_agents_timezone_and_across_midnight() {
        let t = |s: &str| NaiveTime::parse_from_str(s, "%H:%M").ok();
        let agents = vec![
            (t("09:00"), t("17:00"), "UTC".to_string()),
            // 09:00-17:00 in Berlin (winter, UTC+1) is 08:00-16:00 UTC.
            (t("09:00"), t("17:00"), "Europe/Berlin".to_string()),
            (t("22:00"), t("06:00"), "UTC".to_string()),
            // No shift: always counted.
            (None, None, "UTC".to_string()),
        ];
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let on = on_shift(&agents, day);
        assert_eq!(on[3], 2); // night shift and the shiftless
        assert_eq!(on[8], 2); // Berlin and the shiftless
        assert_eq!(on[9], 3);
        assert_eq!(on[16], 2);
        assert_eq!(on[22], 2);
    }

    #[test]
    fn the_window_defaults_to_yesterday_and_refuses_a_long_one() {
        let now: DateTime<Utc> = "2026-12-03T10:15:00Z".parse().unwrap();
        let (from, to) = window(None, None, now).unwrap();
        assert_eq!(from.to_rfc3339(), "2026-12-02T00:00:00+00:00");
        assert_eq!(to - from, ChronoDuration::days(3));
        assert_eq!(
            window(None, Some(29), now).unwrap_err().field.as_deref(),
            Some("days")
        );
        assert!(window(None, Some(0), now).is_err());
        // Dates beyond ClickHouse's DateTime (and near chrono's end) are refused, not added to.
        let far = NaiveDate::from_ymd_opt(262_000, 12, 31).unwrap();
        assert_eq!(
            window(Some(far), Some(28), now)
                .unwrap_err()
                .field
                .as_deref(),
            Some("from")
        );
        assert_eq!(
            in_range(NaiveDate::MIN, "date")
                .unwrap_err()
                .field
                .as_deref(),
            Some("date")
        );
    }
}
