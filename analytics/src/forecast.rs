//! Demand forecast: tickets per hour for the next days, per channel and per category, with
//! prediction intervals, from the hourly history in ClickHouse (`ticket_volume_hourly`).
//!
//! The model is `augurs`' MSTL (daily and weekly seasonality by LOESS decomposition) with an
//! AutoETS trend, fitted on `ln(1 + count)` so that the daily curve scales with the week's
//! volume and intervals never go below zero. Holidays (the business calendars' closed dates)
//! are taken out of the history before the fit (each replaced by the mean of the same hours a
//! week before and after) and the ratio they showed is applied to the holidays ahead; with no
//! holiday in the history, [`ForecastConfig::holiday_factor`] is used.
//!
//! [`forecast`] is the pure core; [`load_history`], [`store`] and [`run_once`] are the
//! ClickHouse side. Each run is stored with its `generated_at`, so the forecast made before a
//! day (day-ahead) and the latest intraday re-forecast can both be read back.

use std::collections::{BTreeMap, BTreeSet};

use augurs::ets::AutoETS;
use augurs::forecaster::transforms::YeoJohnson;
use augurs::forecaster::{Forecaster, Transformer as _};
use augurs::mstl::MSTLModel;
use chrono::{DateTime, Duration, DurationRound as _, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// `forecast:` in pipelines.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastConfig {
    /// Runs the forecast job (in the serving role, one instance at a time, when ClickHouse is
    /// configured).
    pub enabled: bool,
    /// How often the forecast is fitted again (the intraday re-forecast), seconds.
    pub every_secs: u64,
    /// Days ahead.
    pub horizon_days: u32,
    /// Days of history fitted on (eight weeks: the weekly pattern eight times over).
    pub history_days: u32,
    /// Below this many days of history no forecast is made for a series.
    pub min_history_days: u32,
    /// The prediction interval's coverage (0.9: nine hours in ten inside it).
    pub level: f64,
    /// Volume on a holiday relative to a normal day, when the history has no holiday to learn
    /// it from.
    pub holiday_factor: f64,
    /// Closed dates besides the business calendars' holidays, `YYYY-MM-DD`.
    pub holidays: Vec<NaiveDate>,
    /// What the staffing plan (`GET /v1/staffing`) holds each hour to.
    pub staffing: crate::staffing::StaffingConfig,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            enabled: true,
            every_secs: 3600,
            horizon_days: 14,
            history_days: 56,
            min_history_days: 3,
            level: 0.9,
            holiday_factor: 0.4,
            holidays: Vec::new(),
            staffing: crate::staffing::StaffingConfig::default(),
        }
    }
}

impl ForecastConfig {
    /// The error names the key that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err("forecast.level must be between 0 and 1".into());
        }
        if !(self.holiday_factor.is_finite() && self.holiday_factor >= 0.0) {
            return Err("forecast.holiday_factor must be 0 or more".into());
        }
        if self.horizon_days == 0 || self.horizon_days > 92 {
            return Err("forecast.horizon_days must be 1 to 92".into());
        }
        if self.min_history_days == 0 || self.history_days < self.min_history_days {
            return Err(
                "forecast.history_days must be at least min_history_days (1 or more)".into(),
            );
        }
        if self.every_secs < 60 {
            return Err("forecast.every_secs must be 60 or more".into());
        }
        self.staffing.check()
    }
}

/// Why a forecast could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{have} hours of history, {need} needed")]
    NotEnoughHistory { have: usize, need: usize },
    #[error("the model failed: {0}")]
    Model(String),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl ForecastError {
    /// ClickHouse failures pass; too little history or a model failure stays until the data
    /// changes (the next run tries again anyway).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ForecastError::ClickHouse(_))
    }
}

/// An hourly series: `counts[i]` tickets in the hour `start + i` hours.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: DateTime<Utc>,
    pub counts: Vec<f64>,
}

/// One hour ahead.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HourForecast {
    pub hour: DateTime<Utc>,
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
}

/// What a fit learnt beside the forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub hours: Vec<HourForecast>,
    /// The holiday ratio applied (learnt from the history, or the configured one).
    pub holiday_factor: f64,
    /// Whether `holiday_factor` was learnt from holidays in the history.
    pub holiday_learnt: bool,
}

const DAY: usize = 24;
const WEEK: usize = 168;

/// Forecasts `horizon` hours after the end of `history`.
pub fn forecast(
    history: &Series,
    horizon: usize,
    cfg: &ForecastConfig,
    holidays: &BTreeSet<NaiveDate>,
) -> Result<Fitted, ForecastError> {
    let n = history.counts.len();
    let need = (cfg.min_history_days as usize * DAY).max(2 * DAY);
    if n < need {
        return Err(ForecastError::NotEnoughHistory { have: n, need });
    }
    let hour_at = |i: usize| history.start + Duration::hours(i as i64);
    let is_holiday = |t: DateTime<Utc>| holidays.contains(&t.date_naive());
    // Counts are never negative or NaN (ClickHouse gives counts; a caller might not).
    let mut y: Vec<f64> = history
        .counts
        .iter()
        .map(|c| if c.is_finite() { c.max(0.0) } else { 0.0 })
        .collect();
    // Holidays out: each holiday hour becomes the mean of the same hour a week before and
    // after (whichever exist and are no holiday); the day's ratio to that is what holidays do.
    let (mut seen, mut normal) = (0.0, 0.0);
    let mut holiday_hours = 0usize;
    let original = y.clone();
    for (i, slot) in y.iter_mut().enumerate() {
        if !is_holiday(hour_at(i)) {
            continue;
        }
        holiday_hours += 1;
        let around: Vec<f64> = [i.checked_sub(WEEK), Some(i + WEEK).filter(|j| *j < n)]
            .into_iter()
            .flatten()
            .filter(|j| !is_holiday(hour_at(*j)))
            .map(|j| original[j])
            .collect();
        if around.is_empty() {
            continue;
        }
        let mean = around.iter().sum::<f64>() / around.len() as f64;
        seen += original[i];
        normal += mean;
        *slot = mean;
    }
    let (holiday_factor, holiday_learnt) = if holiday_hours >= DAY && normal > 0.0 {
        (seen / normal, true)
    } else {
        (cfg.holiday_factor, false)
    };
    // Weekly seasonality needs two weeks to be told from noise; before that, daily only.
    let periods = if n >= 2 * WEEK {
        vec![DAY, WEEK]
    } else {
        vec![DAY]
    };
    let mstl = MSTLModel::new(periods, AutoETS::non_seasonal().into_trend_model());
    let log1p = YeoJohnson::new()
        .with_lambda(0.0)
        .map_err(|e| ForecastError::Model(e.to_string()))?;
    let mut model = Forecaster::new(mstl).with_transformers(vec![log1p.boxed()]);
    model
        .fit(y.as_slice())
        .map_err(|e| ForecastError::Model(e.to_string()))?;
    let out = model
        .predict(horizon, cfg.level)
        .map_err(|e| ForecastError::Model(e.to_string()))?;
    let intervals = out.intervals.as_ref();
    let end = hour_at(n);
    let hours = (0..horizon.min(out.point.len()))
        .map(|i| {
            let hour = end + Duration::hours(i as i64);
            let factor = if is_holiday(hour) {
                holiday_factor
            } else {
                1.0
            };
            let clean = |v: f64| {
                if v.is_finite() {
                    v.max(0.0) * factor
                } else {
                    0.0
                }
            };
            let point = clean(out.point[i]);
            let lower = intervals
                .and_then(|iv| iv.lower.get(i).copied())
                .map_or(point, clean)
                .min(point);
            let upper = intervals
                .and_then(|iv| iv.upper.get(i).copied())
                .map_or(point, clean)
                .max(point);
            HourForecast {
                hour,
                point,
                lower,
                upper,
            }
        })
        .collect();
    Ok(Fitted {
        hours,
        holiday_factor,
        holiday_learnt,
    })
}

/// Mean absolute percentage error of `forecast` against `actual`, over the pairs whose actual
/// is above zero (a share: 0.1 is 10 %). `None` when there is no such pair.
pub fn mape(actual: &[f64], forecast: &[f64]) -> Option<f64> {
    let errs: Vec<f64> = actual
        .iter()
        .zip(forecast)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, f)| (a - f).abs() / a)
        .collect();
    (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64)
}

/// Sums hourly values into days of 24 (a last partial day is left out).
pub fn daily(hours: &[f64]) -> Vec<f64> {
    hours.chunks_exact(DAY).map(|d| d.iter().sum()).collect()
}

/// The series a forecast is made for: every ticket, and per channel and per category.
pub fn series_names(channels: &BTreeSet<String>, categories: &BTreeSet<String>) -> Vec<String> {
    std::iter::once(ALL.to_string())
        .chain(channels.iter().map(|c| format!("channel:{c}")))
        .chain(categories.iter().map(|c| format!("category:{c}")))
        .collect()
}

/// The series of every ticket.
pub const ALL: &str = "all";

/// One row of ClickHouse's `forecasts`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct ForecastRow {
    /// Seconds since the epoch (ClickHouse `DateTime`), when the run was made.
    pub generated_at: u32,
    pub series: String,
    pub hour: u32,
    pub point: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
}

#[derive(Debug, Row, Deserialize)]
struct VolumeRow {
    h: u32,
    channel: String,
    category: String,
    n: u64,
}

/// Hourly history per series over `[from, to)`, hours aligned; hours without tickets are
/// zero. A series starts at its first ticket (the hours before the desk opened are no data).
pub async fn load_history(
    ch: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BTreeMap<String, Series>, ForecastError> {
    let rows: Vec<VolumeRow> = ch
        .query(
            "SELECT toUInt32(hour) AS h, channel, category, toUInt64(uniqExactMerge(tickets)) AS n
             FROM ticket_volume_hourly WHERE hour >= toDateTime(?) AND hour < toDateTime(?)
             GROUP BY hour, channel, category",
        )
        .bind(u32::try_from(from.timestamp().max(0)).unwrap_or(0))
        .bind(u32::try_from(to.timestamp().max(0)).unwrap_or(u32::MAX))
        .fetch_all()
        .await?;
    let hours = usize::try_from((to - from).num_hours().max(0)).unwrap_or(0);
    let mut dense: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows {
        let Some(i) = usize::try_from((i64::from(r.h) - from.timestamp()) / 3600)
            .ok()
            .filter(|i| *i < hours)
        else {
            continue;
        };
        let n = r.n as f64;
        let mut add = |name: String| dense.entry(name).or_insert_with(|| vec![0.0; hours])[i] += n;
        add(ALL.into());
        if !r.channel.is_empty() {
            add(format!("channel:{}", r.channel));
        }
        if !r.category.is_empty() {
            add(format!("category:{}", r.category));
        }
    }
    Ok(dense
        .into_iter()
        .filter_map(|(name, counts)| {
            let first = counts.iter().position(|c| *c > 0.0)?;
            Some((
                name,
                Series {
                    start: from + Duration::hours(first as i64),
                    counts: counts[first..].to_vec(),
                },
            ))
        })
        .collect())
}

/// Writes one run's rows.
pub async fn store(ch: &clickhouse::Client, rows: &[ForecastRow]) -> Result<(), ForecastError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = ch.insert::<ForecastRow>("forecasts").await?;
    for r in rows {
        insert.write(r).await?;
    }
    insert.end().await?;
    Ok(())
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub series: usize,
    pub rows: usize,
    /// Series left out, with why (too little history).
    pub skipped: Vec<(String, String)>,
}

/// One run at `now`: the history up to the last whole hour, a forecast for every series with
/// enough of it, stored under `generated_at = now`.
pub async fn run_once(
    ch: &clickhouse::Client,
    cfg: &ForecastConfig,
    holidays: &BTreeSet<NaiveDate>,
    now: DateTime<Utc>,
) -> Result<RunSummary, ForecastError> {
    let to = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let from = to - Duration::days(i64::from(cfg.history_days));
    let history = load_history(ch, from, to).await?;
    let horizon = cfg.horizon_days as usize * DAY;
    let generated_at = u32::try_from(now.timestamp().max(0)).unwrap_or(0);
    let mut summary = RunSummary::default();
    let mut rows = Vec::new();
    for (name, mut series) in history {
        // A series that went quiet still gets its zeros up to now.
        let have = usize::try_from((to - series.start).num_hours().max(0)).unwrap_or(0);
        series.counts.resize(have, 0.0);
        match forecast(&series, horizon, cfg, holidays) {
            Ok(fit) => {
                summary.series += 1;
                rows.extend(fit.hours.iter().map(|h| ForecastRow {
                    generated_at,
                    series: name.clone(),
                    hour: u32::try_from(h.hour.timestamp().max(0)).unwrap_or(0),
                    point: h.point,
                    lower: h.lower,
                    upper: h.upper,
                    level: cfg.level,
                }));
            }
            Err(e @ ForecastError::ClickHouse(_)) => return Err(e),
            Err(e) => summary.skipped.push((name, e.to_string())),
        }
    }
    summary.rows = rows.len();
    store(ch, &rows).await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A desk with a daily curve, quieter weekends and a mild upward trend, no noise.
    fn desk(weeks: usize, start: DateTime<Utc>) -> Series {
        let curve = [
            0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.6, 1.0, 1.6, 2.0, 2.1, 1.9, 1.7, 1.8, 1.8, 1.7, 1.5,
            1.3, 1.2, 1.3, 1.2, 0.9, 0.5, 0.3,
        ];
        let week = [1.1, 1.0, 1.0, 1.0, 0.95, 0.6, 0.5];
        let counts = (0..weeks * WEEK)
            .map(|i| 40.0 * curve[i % DAY] * week[(i / DAY) % 7] * (1.0 + i as f64 / 20_000.0))
            .collect();
        Series { start, counts }
    }

    fn monday() -> DateTime<Utc> {
        "2026-11-02T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_regular_desk_is_forecast_within_a_few_percent() {
        let all = desk(9, monday());
        let history = Series {
            start: all.start,
            counts: all.counts[..8 * WEEK].to_vec(),
        };
        let fit = forecast(&history, WEEK, &ForecastConfig::default(), &BTreeSet::new()).unwrap();
        assert_eq!(fit.hours.len(), WEEK);
        assert_eq!(fit.hours[0].hour, monday() + Duration::weeks(8));
        let point: Vec<f64> = fit.hours.iter().map(|h| h.point).collect();
        let actual = &all.counts[8 * WEEK..];
        let hourly = mape(actual, &point).unwrap();
        let day = mape(&daily(actual), &daily(&point)).unwrap();
        assert!(hourly < 0.05, "hourly mape {hourly}");
        assert!(day < 0.03, "daily mape {day}");
        // The weekend is told from the week.
        let sat: f64 = point[5 * DAY..6 * DAY].iter().sum();
        let mon: f64 = point[..DAY].iter().sum();
        assert!(sat < mon * 0.6, "saturday {sat} monday {mon}");
        for h in &fit.hours {
            assert!(
                h.lower <= h.point && h.point <= h.upper && h.lower >= 0.0,
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_holiday_in_the_history_teaches_what_the_next_one_does() {
        let mut all = desk(9, monday());
        // Wednesday of week 4 and Wednesday of week 9 are holidays at 30 % of a normal day.
        let h1 = (3 * 7 + 2) * DAY;
        let h2 = (8 * 7 + 2) * DAY;
        for i in (h1..h1 + DAY).chain(h2..h2 + DAY) {
            all.counts[i] *= 0.3;
        }
        let holidays: BTreeSet<NaiveDate> = [h1, h2]
            .iter()
            .map(|i| (monday() + Duration::hours(*i as i64)).date_naive())
            .collect();
        let history = Series {
            start: all.start,
            counts: all.counts[..8 * WEEK].to_vec(),
        };
        let fit = forecast(&history, WEEK, &ForecastConfig::default(), &holidays).unwrap();
        assert!(fit.holiday_learnt);
        assert!(
            (fit.holiday_factor - 0.3).abs() < 0.03,
            "{}",
            fit.holiday_factor
        );
        let point: Vec<f64> = fit.hours.iter().map(|h| h.point).collect();
        let day = daily(&point);
        let actual = daily(&all.counts[8 * WEEK..]);
        let err = (day[2] - actual[2]).abs() / actual[2];
        assert!(
            err < 0.08,
            "holiday forecast {} actual {}",
            day[2],
            actual[2]
        );
        // The holiday left the rest of the week alone.
        assert!(mape(&actual, &day).unwrap() < 0.05);

        // Without a holiday to learn from, the configured ratio.
        let short = Series {
            start: all.start + Duration::weeks(4),
            counts: all.counts[4 * WEEK..8 * WEEK].to_vec(),
        };
        let fit = forecast(&short, WEEK, &ForecastConfig::default(), &holidays).unwrap();
        assert!(!fit.holiday_learnt);
        assert_eq!(fit.holiday_factor, ForecastConfig::default().holiday_factor);
    }

    #[test]
    fn too_little_history_is_refused_and_says_how_much_is_needed() {
        let s = Series {
            start: monday(),
            counts: vec![3.0; 30],
        };
        let err = forecast(&s, 24, &ForecastConfig::default(), &BTreeSet::new()).unwrap_err();
        assert!(matches!(
            err,
            ForecastError::NotEnoughHistory { have: 30, need: 72 }
        ));
        assert!(!err.is_retryable());
        // Daily seasonality alone from three days.
        let s = Series {
            start: monday(),
            counts: desk(1, monday()).counts[..72].to_vec(),
        };
        let fit = forecast(&s, 24, &ForecastConfig::default(), &BTreeSet::new()).unwrap();
        assert_eq!(fit.hours.len(), 24);
    }

    #[test]
    fn mape_skips_hours_with_nothing_and_daily_sums_whole_days() {
        assert_eq!(mape(&[0.0, 10.0], &[5.0, 12.0]), Some(0.2));
        assert_eq!(mape(&[0.0], &[1.0]), None);
        assert_eq!(daily(&[1.0; 50]), vec![24.0, 24.0]);
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = ForecastConfig {
            level: 1.5,
            ..ForecastConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("forecast.level"));
        let bad = ForecastConfig {
            history_days: 1,
            ..ForecastConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("forecast.history_days"));
        assert!(ForecastConfig::default().check().is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the counts (zeros, spikes, NaN, huge), a forecast is finite, ordered
        /// (lower <= point <= upper) and never negative.
        #[test]
        fn any_history_gives_finite_ordered_non_negative_hours(
            counts in proptest::collection::vec(
                prop_oneof![Just(0.0), 0.0..50.0f64, Just(f64::NAN), Just(1e9)], 72..400),
        ) {
            let s = Series { start: monday(), counts };
            if let Ok(fit) = forecast(&s, 48, &ForecastConfig::default(), &BTreeSet::new()) {
                prop_assert_eq!(fit.hours.len(), 48);
                for h in &fit.hours {
                    prop_assert!(h.point.is_finite() && h.lower.is_finite() && h.upper.is_finite());
                    prop_assert!(h.lower >= 0.0 && h.lower <= h.point && h.point <= h.upper);
                }
            }
        }
    }
}
