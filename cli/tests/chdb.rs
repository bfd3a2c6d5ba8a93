//! The ClickHouse SQL on current ClickHouse: every schema file (tables and materialized views)
//! and every dashboard query run in chdb (ClickHouse 26.x in process, installed by
//! scripts/setup.sh), on a few events inserted twice (a replay must not count twice). The same
//! SQL runs on the Debian 18.16 server in the other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::run_with_input;
use serde_json::{json, Value};

fn python() -> PathBuf {
    let cache =
        std::env::var("SWITCHBOARD_CACHE").unwrap_or_else(|_| "/var/tmp/switchboard".into());
    PathBuf::from(cache).join("chdb-venv/bin/python")
}

#[test]
fn schema_and_dashboard_queries_run_on_current_clickhouse() {
    let py = python();
    assert!(py.exists(), "chdb is missing: run scripts/setup.sh");
    let files: Vec<Value> = switchboard_analytics::schema::SCHEMA
        .iter()
        .map(|(n, sql)| json!([n, sql]))
        .collect();
    let queries: Vec<Value> = switchboard_serving::dashboard::history_sql(24)
        .into_iter()
        .map(|(n, sql)| json!([n, sql]))
        .collect();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let input = json!({"files": files, "queries": queries}).to_string();
    let out = run_with_input(
        Command::new(&py).arg(repo.join("analytics/chdb_check.py")),
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "chdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: std::collections::HashMap<String, Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_string(), v["data"].clone())
        })
        .collect();
    let version = results["version"][0][0].as_str().unwrap();
    assert!(
        version.split('.').next().unwrap().parse::<u32>().unwrap() >= 24,
        "{version}"
    );
    // Each ticket once, although every event arrived twice.
    let mut by_channel: Vec<(String, u64)> = results["by_channel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str()
                    .map_or_else(|| r[1].as_u64().unwrap(), |s| s.parse().unwrap()),
            )
        })
        .collect();
    by_channel.sort();
    assert_eq!(
        by_channel,
        [("chat".to_string(), 1), ("email".to_string(), 1)]
    );
    let sla = &results["sla"][0];
    assert_eq!(
        (sla[0].as_str(), sla[1].to_string().trim_matches('"')),
        (Some("met"), "2")
    );
    assert_eq!(results["first_response"][0][0][0].as_f64(), Some(60.0));
    assert_eq!(results["resolution"][0][0][0].as_f64(), Some(600.0));
    assert_eq!(results["sentiment"][0][1].as_f64(), Some(-0.5));
}
