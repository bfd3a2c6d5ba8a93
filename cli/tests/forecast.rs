//! The demand forecast and the staffing plan over real services: three weeks of `created`
//! events in ClickHouse (as the sink writes them), `switchboard forecast fit` (the job's code),
//! then `GET /v1/forecast` and `GET /v1/staffing` as a supervisor, with bad input and roles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use chrono::{DateTime, Datelike as _, Duration, DurationRound as _, Timelike as _, Utc};
use common::*;
use serde_json::Value;

/// Tickets created in the hour starting at `t` (a day curve peaking at 14:00, quiet weekends)
/// for channel `k` (0: email, 1: chat).
fn tickets(t: DateTime<Utc>, k: usize) -> usize {
    let day = [
        2, 1, 1, 1, 1, 2, 4, 7, 10, 13, 15, 16, 17, 18, 17, 15, 13, 11, 9, 8, 6, 5, 4, 3,
    ];
    let n = day[t.hour() as usize]
        * if t.weekday().number_from_monday() >= 6 {
            1
        } else {
            2
        };
    if k == 0 {
        n
    } else {
        n / 2
    }
}

fn fit(h: &Harness) -> String {
    let out = Command::new(switchboard_bin())
        .current_dir(repo())
        .args(["--config", "pipelines.yaml", "forecast", "fit"])
        .env(
            "SWITCHBOARD__SERVICES__CLICKHOUSE__URL",
            &h.services.clickhouse,
        )
        .env("SWITCHBOARD__SERVICES__CLICKHOUSE__DATABASE", &h.name)
        .env(
            "SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD",
            &h.services.clickhouse_password,
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "forecast fit failed: {err}");
    err
}

#[tokio::test]
async fn the_forecast_and_the_staffing_plan_come_from_the_history() {
    let (h, node) = start(&["serving"], &[]).await;
    // The first fit applies the ClickHouse schema and finds nothing to fit.
    let first = fit(&h);
    assert!(first.contains("fitted 0 series"), "{first}");

    // Three weeks up to the last whole hour.
    let now = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    let from = now - Duration::days(21);
    let mut rows = String::new();
    let mut yesterday = 0usize;
    let yesterday_date = (now - Duration::days(1)).date_naive();
    let mut n = 0u64;
    for i in 0..21 * 24 {
        let t = from + Duration::hours(i);
        for (k, channel) in ["email", "chat"].iter().enumerate() {
            for j in 0..tickets(t, k) {
                n += 1;
                let id = format!("00000000-0000-7000-8000-{n:012x}");
                let at = t.timestamp() + (j as i64 * 97) % 3600;
                if t.date_naive() == yesterday_date {
                    yesterday += 1;
                }
                rows.push_str(&serde_json::json!({
                    "event_id": format!("{id}-0"), "schema": "ticket_event", "version": 1, "topic": "", "key": id,
                    "ticket_id": id, "kind": "created", "occurred_at": at, "occurred_ms": at * 1000,
                    "payload": format!(r#"{{"ticket_id":"{id}","kind":"created","channel":"{channel}","category":"billing","priority":"normal"}}"#),
                }).to_string());
                rows.push('\n');
            }
        }
    }
    h.ch(&format!("INSERT INTO events FORMAT JSONEachRow\n{rows}"))
        .await;
    let out = fit(&h);
    // all, channel:email, channel:chat, category:billing.
    assert!(out.contains("fitted 4 series"), "{out}");

    let sup = h.issue_token(&node, "supervisor", None, "sup").await;
    let sup = h.caller(&node, &sup);
    let (s, f) = sup.get("/v1/forecast").await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["series"], "all");
    assert!(f["generated_at"].is_string(), "{f}");
    let hours = f["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 72, "three days of hours");
    // Yesterday came as inserted, hour by hour, and has no forecast (none was made before it).
    let came: f64 = hours[..24]
        .iter()
        .map(|x| x["actual"].as_f64().unwrap())
        .sum();
    assert_eq!(came as usize, yesterday);
    assert!(hours[..24].iter().all(|x| x["point"].is_null()));
    // Tomorrow is forecast, with ordered intervals, and its afternoon well above its night.
    let tomorrow: Vec<&Value> = hours[48..].iter().collect();
    for x in &tomorrow {
        let (l, p, u) = (
            x["lower"].as_f64().unwrap(),
            x["point"].as_f64().unwrap(),
            x["upper"].as_f64().unwrap(),
        );
        assert!(0.0 <= l && l <= p && p <= u, "{x}");
        assert!(x["actual"].is_null());
    }
    let at = |hour: u32| {
        tomorrow
            .iter()
            .find(|x| {
                x["hour"]
                    .as_str()
                    .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| t.hour() == hour)
            })
            .and_then(|x| x["point"].as_f64())
            .unwrap()
    };
    assert!(at(13) > 4.0 * at(2), "13:00 {} vs 02:00 {}", at(13), at(2));
    let available: Vec<&str> = f["series_available"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        available,
        ["all", "category:billing", "channel:chat", "channel:email"]
    );
    let (s, email) = sup.get("/v1/forecast?series=channel:email&days=2").await;
    assert_eq!(s, 200, "{email}");
    assert_eq!(email["hours"].as_array().unwrap().len(), 48);

    // The plan: every hour of today, needs from the forecast, on-shift agents counted.
    for (i, shift) in [("09:00", "17:00"), ("17:00", "01:00")].iter().enumerate() {
        h.created(
            &node,
            "/v1/agents",
            serde_json::json!({"name": format!("Shift {i}"), "email": format!("s{i}@example.com"), "skills": ["billing"],
                "languages": ["en"], "max_concurrent": 4, "timezone": "UTC", "shift_start": shift.0, "shift_end": shift.1}),
        )
        .await;
    }
    let tomorrow_date = (now + Duration::days(1)).date_naive();
    let (s, p) = sup.get(&format!("/v1/staffing?date={tomorrow_date}")).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["concurrency"], 4);
    let plan = p["hours"].as_array().unwrap();
    assert_eq!(plan.len(), 24);
    for (i, x) in plan.iter().enumerate() {
        let (needed, on, gap) = (
            x["needed"].as_i64().unwrap(),
            x["scheduled"].as_i64().unwrap(),
            x["gap"].as_i64().unwrap(),
        );
        assert_eq!(gap, on - needed, "{x}");
        assert_eq!(
            on,
            // 09-17 and 17-01 UTC: nobody from 01:00 to 09:00.
            if (1..9).contains(&i) { 0 } else { 1 },
            "hour {i}: {x}"
        );
        if x["tickets"].as_f64().unwrap() >= 1.0 {
            assert!(needed >= 1, "{x}");
        }
        let channels: Vec<&str> = x["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["channel"].as_str())
            .collect();
        assert_eq!(channels, ["chat", "email"]);
    }
    // The afternoon needs more than the night; a short hour is counted.
    assert!(
        plan[13]["needed"].as_i64() > plan[3]["needed"].as_i64(),
        "{p}"
    );
    let short = plan.iter().filter(|x| x["gap"].as_i64() < Some(0)).count();
    assert_eq!(p["short_hours"].as_u64(), Some(short as u64));
    assert!(
        short > 0,
        "one agent per hour cannot carry 40 tickets an hour: {p}"
    );
    // Handling time: no assignments yet, so the configured default.
    assert_eq!(p["basis"][0]["handle_secs"], 900.0);

    // Bad input names the parameter; unknown ones are refused.
    for (path, field) in [
        ("/v1/forecast?series=brand:x", "series"),
        ("/v1/forecast?series=channel:%27%3B%20DROP", "series"),
        ("/v1/forecast?series=channel:%E2%80%AEe", "series"),
        ("/v1/forecast?days=29", "days"),
        ("/v1/forecast?days=0", "days"),
        ("/v1/forecast?from=yesterday", "from"),
        ("/v1/staffing?date=2026-13-01", "date"),
    ] {
        let (s, v) = sup.get(path).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = sup.get("/v1/forecast?weeks=1").await;
    assert_eq!(s, 400, "{v}");
    let long = format!("/v1/forecast?series=channel:{}", "x".repeat(5000));
    let (s, v) = sup.get(&long).await;
    assert_refused(s, &v, 400, "series");
    // Supervisors only.
    let id = h
        .agent(&node, "a@example.com", &["billing"], 4, false)
        .await;
    let agent_token = h.issue_token(&node, "agent", Some(&id), "a").await;
    let agent = h.caller(&node, &agent_token);
    assert_eq!(agent.get("/v1/forecast").await.0, 403);
    assert_eq!(agent.get("/v1/staffing").await.0, 403);
    let (s, _) = h.get_anon(&node, "/v1/forecast").await;
    assert_eq!(s, 401);
}
