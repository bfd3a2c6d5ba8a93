//! `switchboard-sim forecast`: the demand forecast checked on simulated weeks.
//!
//! Draws `--weeks` weeks of arrivals from a traffic model (`deploy/simulate/weeks.yaml`: daily
//! and weekly seasonality, a holiday, bursts on given days) with the simulator's own arrival
//! process, writes all but the last week into a scratch ClickHouse database as the sink would
//! (`created` ticket events; the materialized views build the hourly volume), runs the forecast
//! job's code (`switchboard_analytics::forecast::run_once`) at the start of the last week, then
//! writes the last week and compares: MAPE per hour and per day, and how often the prediction
//! interval held the hour. It then plans the last week's agents by Erlang C from the forecast
//! and sets the plan and the model's shipped shifts against what came, per hour: the service
//! level each would give (Erlang C's expectation; `--plan-out` writes the plan's shifts for
//! `switchboard-sim simulate --shifts`, which runs a day of it through the real system).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Datelike as _, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use switchboard_analytics::forecast::{self as fc, ForecastConfig};
use switchboard_analytics::sink::EventRow;
use switchboard_analytics::staffing::{self, StaffingConfig, Workload};
use switchboard_cli::config::Config;

use crate::simulate::model::{self, SimConfig};

/// Arguments of `forecast`.
#[derive(Debug, clap::Args)]
pub(crate) struct ForecastArgs {
    /// The traffic model.
    #[arg(long, default_value = "deploy/simulate/weeks.yaml")]
    model: PathBuf,
    /// Weeks drawn; the last is forecast from the others (at least 3).
    #[arg(long, default_value_t = 9)]
    weeks: u32,
    /// New tickets per average day instead of the model's.
    #[arg(long)]
    tickets_per_day: Option<f64>,
    /// Seed instead of the model's.
    #[arg(long)]
    seed: Option<u64>,
    /// Agents on the model's shifts instead of its count (the shipped staffing compared).
    #[arg(long)]
    agents: Option<usize>,
    /// Mean time a ticket holds an agent's slot (assignment to release), seconds, for the plan.
    #[arg(long, default_value_t = 900.0)]
    handle_secs: f64,
    /// Writes a day of the plan as shifts (YAML) for `simulate --shifts`.
    #[arg(long)]
    plan_out: Option<PathBuf>,
    /// The day of the last week `--plan-out` writes (default: its busiest).
    #[arg(long)]
    plan_day: Option<NaiveDate>,
    /// Writes the last week's chart (forecast band, forecast, what came) as SVG.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Prints the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Keep the scratch database.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Row, Deserialize)]
struct Ahead {
    series: String,
    hour: u32,
    point: f64,
    lower: f64,
    upper: f64,
}

/// How one series did over the week.
#[derive(Debug, Clone, serde::Serialize)]
struct Score {
    series: String,
    tickets: f64,
    mape_hourly: Option<f64>,
    mape_daily: Option<f64>,
    /// Share of hours whose count fell inside the prediction interval.
    coverage: f64,
}

fn events(arrivals: &[(i64, &'static str)], first: u64, out: &mut Vec<EventRow>) {
    for (i, (secs, channel)) in arrivals.iter().enumerate() {
        let n = first + i as u64;
        let ticket = format!("00000000-0000-7000-8000-{n:012x}");
        let at = u32::try_from((*secs).max(0)).unwrap_or(u32::MAX);
        out.push(EventRow {
            event_id: format!("{ticket}-0"),
            schema: "ticket_event".into(),
            version: 1,
            topic: String::new(),
            key: ticket.clone(),
            ticket_id: ticket.clone(),
            kind: "created".into(),
            occurred_at: at,
            occurred_ms: u64::from(at) * 1000,
            payload: format!(
                r#"{{"ticket_id":"{ticket}","kind":"created","channel":"{channel}","priority":"normal"}}"#
            ),
        });
    }
}

async fn insert(
    client: &clickhouse::Client,
    arrivals: &[(i64, &'static str)],
    first: u64,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    for (k, chunk) in arrivals.chunks(500_000).enumerate() {
        let mut rows = Vec::with_capacity(chunk.len());
        events(chunk, first + (k * 500_000) as u64, &mut rows);
        let mut insert = client.insert::<EventRow>("events").await?;
        for r in &rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        eprintln!(
            "  {what}: {} of {} tickets written ({:.0}/s)",
            (k * 500_000 + chunk.len()),
            arrivals.len(),
            (k * 500_000 + chunk.len()) as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
    }
    Ok(())
}

/// Agents on shift per hour of the day by the model's shifts (count spread by share).
fn shipped(sim: &SimConfig) -> [f64; 24] {
    let total: f64 = sim
        .agents
        .shifts
        .iter()
        .map(|s| s.share)
        .sum::<f64>()
        .max(1e-9);
    let mut on = [0.0; 24];
    for s in &sim.agents.shifts {
        let (Ok(a), Ok(b)) = (model::time_of_day(&s.start), model::time_of_day(&s.end)) else {
            continue;
        };
        let n = sim.agents.count as f64 * s.share / total;
        for (h, slot) in on.iter_mut().enumerate() {
            let m = h as u32 * 60 + 30;
            let covered = if a <= b {
                m >= a && m < b
            } else {
                m >= a || m < b
            };
            if covered {
                *slot += n;
            }
        }
    }
    on
}

/// Eight-hour shifts that cover `needed` agents per hour of a day (greedy: at each hour short,
/// start the missing agents' shifts; the day wraps).
fn cover(needed: &[u32; 24]) -> Vec<(u32, u32)> {
    let mut starts = [0u32; 24];
    // Twice round the day, so that the first hours count the shifts started the evening before.
    for _ in 0..2 {
        for h in 0..24 {
            let on: u32 = (0..8).map(|k| starts[(h + 24 - k) % 24]).sum();
            if on < needed[h] {
                starts[h] += needed[h] - on;
            }
        }
    }
    starts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(h, n)| (h as u32, *n))
        .collect()
}

pub(crate) async fn forecast(cfg: &Config, args: ForecastArgs) -> Result<()> {
    anyhow::ensure!(args.weeks >= 3, "--weeks must be at least 3");
    let mut sim = SimConfig::load(&args.model)?;
    if let Some(t) = args.tickets_per_day {
        anyhow::ensure!(
            t.is_finite() && t > 0.0,
            "--tickets-per-day must be positive"
        );
        sim.tickets_per_day = t;
    }
    if let Some(n) = args.agents {
        anyhow::ensure!(n > 0, "--agents must be positive");
        sim.agents.count = n;
    }
    let url = cfg.services.clickhouse.url.clone();
    anyhow::ensure!(
        !url.is_empty(),
        "set services.clickhouse.url (e.g. from `switchboard services --env-file F; source F`)"
    );
    let mut rng = model::rng(args.seed.or(sim.seed));
    let start = sim.start();
    let cut = start + Duration::weeks(i64::from(args.weeks - 1));
    let end = cut + Duration::weeks(1);
    eprintln!(
        "switchboard-sim forecast: {} weeks of {} (about {:.0} tickets a day), the last forecast from the others",
        args.weeks,
        args.model.display(),
        sim.tickets_per_day
    );
    let arrivals = sim.arrivals(start, args.weeks * 168, &mut rng);
    let split = arrivals.partition_point(|(s, _)| *s < cut.timestamp());
    let (history, week) = arrivals.split_at(split);

    let mut ch_cfg = cfg.services.clickhouse.clone();
    ch_cfg.database = format!(
        "sim_forecast_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    switchboard_analytics::migrate(&ch_cfg, &url)
        .await
        .context("schema")?;
    let client = switchboard_analytics::client(&ch_cfg, &url);
    let result = check(&sim, &args, &client, history, week, (start, cut, end)).await;
    if !args.keep {
        client
            .query(&format!("DROP DATABASE {}", ch_cfg.database))
            .execute()
            .await?;
    } else {
        eprintln!("kept the scratch database {}", ch_cfg.database);
    }
    result
}

async fn check(
    sim: &SimConfig,
    args: &ForecastArgs,
    client: &clickhouse::Client,
    history: &[(i64, &'static str)],
    week: &[(i64, &'static str)],
    (start, cut, end): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>),
) -> Result<()> {
    insert(client, history, 0, "history").await?;
    let holidays: BTreeSet<NaiveDate> = sim.holidays.iter().map(|h| h.date).collect();
    let fcfg = ForecastConfig {
        horizon_days: 7,
        history_days: (args.weeks - 1) * 7,
        ..ForecastConfig::default()
    };
    let t = Instant::now();
    let run = fc::run_once(client, &fcfg, &holidays, cut).await?;
    eprintln!(
        "  forecast job: {} series fitted in {:.2} s ({} rows stored){}",
        run.series,
        t.elapsed().as_secs_f64(),
        run.rows,
        if run.skipped.is_empty() {
            String::new()
        } else {
            format!(", skipped {:?}", run.skipped)
        }
    );
    insert(client, week, history.len() as u64, "last week").await?;

    // What the job stored, and what came (both read back from ClickHouse).
    let ahead: Vec<Ahead> = client
        .query(
            "SELECT series, toUInt32(hour) AS hour, point, lower, upper FROM forecasts FINAL
             WHERE generated_at = toDateTime(?) ORDER BY series, hour",
        )
        .bind(u32::try_from(cut.timestamp()).unwrap_or(0))
        .fetch_all()
        .await?;
    let came = fc::load_history(client, cut, end).await?;
    let hours = 168usize;
    // Each series' 168 hours of the week, in order (the job forecasts from `cut` on).
    let mut by_series: BTreeMap<String, Vec<&Ahead>> = BTreeMap::new();
    for a in &ahead {
        let i = (i64::from(a.hour) - cut.timestamp()) / 3600;
        if (0..hours as i64).contains(&i) {
            by_series.entry(a.series.clone()).or_default().push(a);
        }
    }
    anyhow::ensure!(
        by_series.values().all(|v| v.len() == hours),
        "the forecast does not cover the week's {hours} hours"
    );
    let actual_of = |series: &str| -> Vec<f64> {
        let mut v = vec![0.0; hours];
        if let Some(s) = came.get(series) {
            let off = usize::try_from((s.start - cut).num_hours()).unwrap_or(0);
            for (i, c) in s.counts.iter().enumerate() {
                if let Some(slot) = v.get_mut(off + i) {
                    *slot = *c;
                }
            }
        }
        v
    };
    let mut scores = Vec::new();
    for (series, rows) in &by_series {
        let actual = actual_of(series);
        let point: Vec<f64> = rows.iter().map(|r| r.point).collect();
        let inside = rows
            .iter()
            .zip(&actual)
            .filter(|(r, a)| **a >= r.lower.floor() && **a <= r.upper.ceil())
            .count();
        scores.push(Score {
            series: series.clone(),
            tickets: actual.iter().sum(),
            mape_hourly: fc::mape(&actual, &point),
            mape_daily: fc::mape(&fc::daily(&actual), &fc::daily(&point)),
            coverage: inside as f64 / rows.len().max(1) as f64,
        });
    }
    let pct = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{:.1}%", v * 100.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nforecast of week {} ({} to {}) from the {} weeks before it, {:.0}% intervals:",
        args.weeks,
        cut.date_naive(),
        (end - Duration::days(1)).date_naive(),
        args.weeks - 1,
        fcfg.level * 100.0
    );
    let _ = writeln!(
        out,
        "  {:<18} {:>9} {:>12} {:>11} {:>14}",
        "series", "tickets", "hourly MAPE", "daily MAPE", "in interval"
    );
    for s in &scores {
        let _ = writeln!(
            out,
            "  {:<18} {:>9.0} {:>12} {:>11} {:>13.0}%",
            s.series,
            s.tickets,
            pct(s.mape_hourly),
            pct(s.mape_daily),
            s.coverage * 100.0
        );
    }
    let all_actual = actual_of(fc::ALL);
    let all_point: Vec<f64> = by_series
        .get(fc::ALL)
        .map(|r| r.iter().map(|a| a.point).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\n  {:<12} {:>4} {:>10} {:>9} {:>7}",
        "day", "", "forecast", "came", "error"
    );
    for (d, (a, f)) in fc::daily(&all_actual)
        .iter()
        .zip(fc::daily(&all_point))
        .enumerate()
    {
        let date = (cut + Duration::days(d as i64)).date_naive();
        let _ = writeln!(
            out,
            "  {:<12} {:>4} {:>10.0} {:>9.0} {:>6.1}%{}",
            date,
            date.weekday(),
            f,
            a,
            (f - a) / a.max(1.0) * 100.0,
            if holidays.contains(&date) {
                "  holiday"
            } else {
                ""
            }
        );
    }

    // Staffing the week: the plan (Erlang C on the forecast, per channel) against the model's
    // shifts, both judged on what came.
    let scfg = StaffingConfig::default();
    let conc = u32::try_from(sim.agents.max_concurrent.max(1)).unwrap_or(1);
    let channels: Vec<String> = by_series
        .keys()
        .filter_map(|s| s.strip_prefix("channel:").map(str::to_string))
        .collect();
    let per_channel: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = channels
        .iter()
        .map(|c| {
            let name = format!("channel:{c}");
            let f = by_series
                .get(&name)
                .map(|r| r.iter().map(|a| a.point).collect())
                .unwrap_or_else(|| vec![0.0; hours]);
            (c.as_str(), (f, actual_of(&name)))
        })
        .collect();
    let ship = shipped(sim);
    let (mut plan_hours, mut ship_hours) = (0.0, 0.0);
    let (mut plan_in_time, mut ship_in_time, mut came_total) = (0.0, 0.0, 0.0);
    let mut needed_week = vec![0u32; hours];
    for h in 0..hours {
        let (mut slots, mut erl, mut tickets, mut wt) = (0u32, 0.0, 0.0, 0.0);
        for (c, (f, a)) in &per_channel {
            let target = scfg.target(c);
            slots += staffing::plan(
                Workload {
                    tickets_per_hour: f[h],
                    handle_secs: args.handle_secs,
                    concurrency: 1,
                },
                target,
            )
            .slots;
            erl += a[h] / 3600.0 * args.handle_secs;
            tickets += a[h];
            wt += a[h] * target.answer_within_secs;
        }
        let needed = slots.div_ceil(conc);
        needed_week[h] = needed;
        let on_shift = ship[h % 24].round() as u32;
        plan_hours += f64::from(needed);
        ship_hours += f64::from(on_shift);
        if tickets > 0.0 {
            let t = wt / tickets;
            let sl = |agents: u32| staffing::service_level(agents * conc, erl, args.handle_secs, t);
            plan_in_time += sl(needed) * tickets;
            ship_in_time += sl(on_shift) * tickets;
            came_total += tickets;
        }
    }
    let _ = writeln!(
        out,
        "\nstaffing week {} for {:.0}% of tickets picked up in time ({} s chat, {} s voice, {} s email; {:.0} s handling, {conc} at once):",
        args.weeks,
        scfg.service_level * 100.0,
        scfg.target("chat").answer_within_secs,
        scfg.target("voice").answer_within_secs,
        scfg.target("email").answer_within_secs,
        args.handle_secs
    );
    let _ = writeln!(
        out,
        "  shipped shifts ({} agents): {:.0} agent-hours, {:.1}% in time (Erlang C on what came)",
        sim.agents.count,
        ship_hours,
        ship_in_time / came_total.max(1.0) * 100.0
    );
    let _ = writeln!(
        out,
        "  plan from the forecast:    {:.0} agent-hours, {:.1}% in time",
        plan_hours,
        plan_in_time / came_total.max(1.0) * 100.0
    );
    // A day of the plan (the busiest unless asked) as shifts for `simulate --shifts`.
    let busiest = match args.plan_day {
        Some(d) => {
            let i = (d - cut.date_naive()).num_days();
            anyhow::ensure!(
                (0..7).contains(&i),
                "--plan-day {d} is not in the forecast week ({} to {})",
                cut.date_naive(),
                (end - Duration::days(1)).date_naive()
            );
            i as usize
        }
        None => (0..7)
            .max_by_key(|d| needed_week[d * 24..d * 24 + 24].iter().sum::<u32>())
            .unwrap_or(0),
    };
    let mut day = [0u32; 24];
    day.copy_from_slice(&needed_week[busiest * 24..busiest * 24 + 24]);
    let shifts = cover(&day);
    let count: u32 = shifts.iter().map(|(_, n)| n).sum();
    if let Some(path) = &args.plan_out {
        let mut y = format!(
            "# The staffing plan for {} (a day of week {}), as eight-hour shifts:\n# switchboard-sim forecast --plan-out; used by switchboard-sim simulate --shifts.\ncount: {count}\nshifts:\n",
            (cut + Duration::days(busiest as i64)).date_naive(),
            args.weeks
        );
        for (h, n) in &shifts {
            let _ = writeln!(
                y,
                "  - {{ start: \"{h:02}:00\", end: \"{:02}:00\", share: {:.4} }}",
                (h + 8) % 24,
                f64::from(*n) / f64::from(count.max(1))
            );
        }
        std::fs::write(path, y).with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(
            out,
            "  the plan for {} ({count} agents in {} shifts) written to {}",
            (cut + Duration::days(busiest as i64)).date_naive(),
            shifts.len(),
            path.display()
        );
    }
    if let Some(path) = &args.chart {
        let rows = by_series.get(fc::ALL).cloned().unwrap_or_default();
        std::fs::write(path, chart(&rows, &all_actual))
            .with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(out, "  chart written to {}", path.display());
    }
    print!("{out}");
    if args.json {
        let all = scores.iter().find(|s| s.series == fc::ALL);
        println!(
            "{}",
            serde_json::json!({
                "weeks": args.weeks,
                "start": start,
                "mape_hourly": all.and_then(|s| s.mape_hourly),
                "mape_daily": all.and_then(|s| s.mape_daily),
                "coverage": all.map(|s| s.coverage),
                "series": scores,
                "staffing": {
                    "shipped_agent_hours": ship_hours,
                    "shipped_in_time": ship_in_time / came_total.max(1.0),
                    "plan_agent_hours": plan_hours,
                    "plan_in_time": plan_in_time / came_total.max(1.0),
                    "plan_busiest_day_agents": count,
                }
            })
        );
    }
    Ok(())
}

/// The week as SVG: the interval as a band, the forecast as a line, what came as dots.
fn chart(rows: &[&Ahead], actual: &[f64]) -> String {
    let (w, h, pad) = (1000.0, 300.0, 30.0);
    let n = rows.len().max(1) as f64;
    let top = rows
        .iter()
        .map(|r| r.upper)
        .chain(actual.iter().copied())
        .fold(1.0f64, f64::max);
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / n;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / top;
    let mut band = String::new();
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(band, "{:.1},{:.1} ", x(i), y(r.upper));
    }
    for (i, r) in rows.iter().enumerate().rev() {
        let _ = write!(band, "{:.1},{:.1} ", x(i), y(r.lower));
    }
    let line: String = rows
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1} ", x(i), y(r.point)))
        .collect();
    let dots: String = actual
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"#d9480f\"/>",
                x(i),
                y(*a)
            )
        })
        .collect();
    let days: String = (0..=7)
        .map(|d| {
            let xd = x(d * 24);
            format!(
                "<line x1=\"{xd:.1}\" x2=\"{xd:.1}\" y1=\"{pad}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
                h - pad
            )
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"tickets per hour: forecast band and line, what came as dots\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>{days}\
         <polygon points=\"{band}\" fill=\"#2f6fed\" fill-opacity=\"0.18\"/>\
         <polyline points=\"{line}\" fill=\"none\" stroke=\"#2f6fed\" stroke-width=\"1.5\"/>{dots}\
         <text x=\"4\" y=\"{:.1}\" font-size=\"11\">{top:.0}/h</text>\
         <text x=\"{pad}\" y=\"{:.1}\" font-size=\"11\">forecast (line, band: interval) and what came (dots), one week</text></svg>\n",
        pad - 4.0,
        h - 8.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_cover_every_hour_of_the_plan() {
        let mut needed = [2u32; 24];
        needed[9..18].copy_from_slice(&[10; 9]);
        needed[22] = 5;
        let shifts = cover(&needed);
        let mut on = [0u32; 24];
        for (h, n) in &shifts {
            for k in 0..8 {
                on[(*h as usize + k) % 24] += n;
            }
        }
        for h in 0..24 {
            assert!(
                on[h] >= needed[h],
                "hour {h}: {} on, {} needed",
                on[h],
                needed[h]
            );
        }
        // Not wildly more than needed: eight-hour shifts waste some hours around a nine-hour
        // peak, not half of them.
        let count: u32 = shifts.iter().map(|(_, n)| n).sum();
        let needed_hours: u32 = needed.iter().sum();
        assert!(
            f64::from(count * 8) <= 1.5 * f64::from(needed_hours),
            "{count} agents for {needed:?}"
        );
    }
}
