//! `switchboard-sim forecast` end to end on the real ClickHouse: nine simulated weeks (daily and
//! weekly seasonality, a holiday in the history and one in the week forecast, dated bursts), the
//! ninth forecast by the job's code from the eight before it, held to the goals (daily MAPE
//! under 10 %, hourly under 20 %), and a day of the staffing plan written as shifts the
//! simulator takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../cli/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{repo, services};
use serde_json::Value;

#[test]
fn nine_simulated_weeks_forecast_the_ninth_within_the_goals() {
    let s = services();
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan.yaml");
    let chart = tmp.path().join("week.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-sim"))
        .current_dir(repo())
        .args(["forecast", "--json", "--plan-day", "2026-11-23"])
        .arg("--plan-out")
        .arg(&plan)
        .arg("--chart")
        .arg(&chart)
        .env("SWITCHBOARD__SERVICES__CLICKHOUSE__URL", &s.clickhouse)
        .env(
            "SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD",
            &s.clickhouse_password,
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "forecast failed:\n{stdout}\n{stderr}"
    );
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let daily = r["mape_daily"].as_f64().unwrap();
    let hourly = r["mape_hourly"].as_f64().unwrap();
    assert!(daily < 0.10, "daily MAPE {daily}:\n{stdout}");
    assert!(hourly < 0.20, "hourly MAPE {hourly}:\n{stdout}");
    // A 90 % interval holds most hours (not all: it is an interval, not a bound).
    let coverage = r["coverage"].as_f64().unwrap();
    assert!((0.8..=1.0).contains(&coverage), "{coverage}:\n{stdout}");
    // Every channel of the model was forecast.
    let series: Vec<&str> = r["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["series"].as_str())
        .collect();
    for ch in ["email", "chat", "sms", "social", "voice"] {
        assert!(
            series.contains(&format!("channel:{ch}").as_str()),
            "{series:?}"
        );
    }
    // The holiday in the ninth week was forecast as one (learnt from the one in week 4).
    let holiday = stdout
        .lines()
        .find(|l| l.contains("2026-11-25") && l.contains("holiday"))
        .unwrap_or_else(|| panic!("no holiday line:\n{stdout}"));
    let err: f64 = holiday
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(err.abs() < 10.0, "{holiday}");
    // The plan beats the shipped shifts on Erlang's expectation, and its day is shifts the
    // simulator takes (count and eight-hour shifts whose shares add up to one).
    let st = &r["staffing"];
    assert!(
        st["plan_in_time"].as_f64().unwrap() >= 0.8,
        "{st}:\n{stdout}"
    );
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("count: "), "{text}");
    let shares: f64 = text
        .lines()
        .filter_map(|l| l.split("share: ").nth(1))
        .map(|v| v.trim_end_matches(" }").parse::<f64>().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 0.01, "{text}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polygon"), "{svg}");
}
