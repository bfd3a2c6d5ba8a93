//! `switchboard-sim simulate` end to end: a short compressed day through every front door against
//! the real services, with hostile traffic; the report must account for every accepted message
//! in Postgres and ClickHouse, show every hostile request refused, and chart the run.
//!
//! It runs the `switchboard` built beside `switchboard-sim` (`target/<profile>/switchboard`):
//! build the workspace first (`scripts/test.sh` does; `cargo test -p switchboard-loadgen` alone
//! does not build the other package's binary).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../cli/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{repo, services};
use serde_json::Value;

/// The Bitext texts beside the repository, else a small stand-in written from the knowledge
/// base's seed questions (same columns).
fn texts(dir: &std::path::Path) -> std::path::PathBuf {
    let shared = repo().join("../shared/data/bitext");
    if shared.join("bitext_customer_service_8k.csv").exists() {
        return shared;
    }
    let seed = std::fs::read_to_string(repo().join("processors/kb/helpcentre.jsonl")).unwrap();
    let mut csv = String::from("flags,utterance,category,intent\n");
    for l in seed.lines().filter(|l| !l.trim().is_empty()) {
        let a: Value = serde_json::from_str(l).unwrap();
        let q = a["question"]
            .as_str()
            .unwrap_or_else(|| a["title"].as_str().unwrap());
        csv.push_str(&format!(
            "B,\"{}\",{},{}\n",
            q.replace('"', "'"),
            a["category"].as_str().unwrap_or("ORDER"),
            a["intent"].as_str().unwrap_or("x")
        ));
    }
    std::fs::write(dir.join("bitext_customer_service_8k.csv"), &csv).unwrap();
    std::fs::write(
        dir.join("bitext_20k_utterances.csv"),
        "flags,utterance,category,intent\n",
    )
    .unwrap();
    dir.to_path_buf()
}

/// `switchboard-sim simulate` against the test services, its data, texts and report under
/// `tmp` (the report in `tmp/report`); the caller adds the run's own arguments.
fn simulate(tmp: &std::path::Path) -> Command {
    let s = services();
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard-sim"));
    c.current_dir(repo())
        .arg("simulate")
        .arg("--texts")
        .arg(texts(tmp))
        .arg("--out")
        .arg(tmp.join("report"))
        .env("SWITCHBOARD__SERVICES__KAFKA__BROKERS", &s.kafka)
        .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &s.postgres)
        .env("SWITCHBOARD__SERVICES__CLICKHOUSE__URL", &s.clickhouse)
        .env("SWITCHBOARD__DATA_DIR", tmp.join("data"));
    c
}

#[test]
fn a_compressed_day_through_the_front_doors_loses_nothing_and_refuses_the_hostile() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    // The shipped day with more post-purchase traffic, so a short run surely has some.
    let day = std::fs::read_to_string(repo().join("deploy/simulate/day.yaml")).unwrap();
    let day = day
        .replacen("wismo_share: 0.15", "wismo_share: 0.3", 1)
        .replacen("return_share: 0.04", "return_share: 0.12", 1);
    assert!(day.contains("wismo_share: 0.3") && day.contains("return_share: 0.12"));
    let model = tmp.path().join("day.yaml");
    std::fs::write(&model, day).unwrap();
    let output = simulate(tmp.path())
        .args(["--quiet", "--strict", "--flat", "--seed", "11"])
        .arg("--model")
        .arg(&model)
        .args([
            "--duration",
            "30m",
            "--speed",
            "60",
            "--tickets-per-day",
            "6000",
            "--agents",
            "8",
            "--hostile",
            "0.3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed:\n{stdout}\n{stderr}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();

    // Every channel carried traffic and every valid request was accepted.
    for ch in ["email", "chat", "sms", "social", "voice"] {
        let offered = r["offered"][ch].as_u64().unwrap_or(0);
        assert!(offered > 0, "no {ch} traffic:\n{stdout}");
        assert_eq!(r["accepted"][ch].as_u64(), Some(offered), "{ch}:\n{stdout}");
        assert!(r["ack_ms"][ch]["p99"].as_f64().unwrap() > 0.0);
    }
    assert!(r["errors"].as_object().unwrap().is_empty(), "{stdout}");
    // Accounted for in both stores.
    let accepted: u64 = r["accepted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        r["extra"]["postgres_inbound"].as_u64().unwrap() >= accepted,
        "{stdout}"
    );
    assert!(
        r["extra"]["clickhouse_inbound"].as_u64().unwrap() >= accepted,
        "{stdout}"
    );
    // Hostile traffic of every kind, each refused as it should be.
    let hostile = r["hostile"].as_object().unwrap();
    assert!(hostile.len() >= 5, "{stdout}");
    for (k, h) in hostile {
        assert_eq!(h["sent"], h["as_expected"], "{k}: {h}");
    }
    // Agents worked: assignments reached them, customers saw answers, tickets were resolved.
    assert!(r["assign_ms"]["count"].as_u64().unwrap() > 0, "{stdout}");
    assert!(
        r["first_response_sim_secs"]["count"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(
        r["agent_calls"]["reply"][0].as_u64().unwrap() > 0,
        "{stdout}"
    );
    // The run was sampled and charted.
    let timeline = r["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 5, "{stdout}");
    assert!(timeline.last().unwrap()["procs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "processors" && p["rss_mib"].as_f64().unwrap() > 0.0));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("polyline"),
        "no charts"
    );
    assert!(stdout.contains("nothing lost"), "{stdout}");
    // Post-purchase traffic: where-is-my-order questions about orders the shop announced, each
    // accounted for by what the bot did; every return the help centre took is stored, and the
    // report says how many the policy approved itself.
    let pp = &r["extra"]["post_purchase"];
    let asked = pp["wismo_asked"].as_f64().unwrap_or(0.0);
    assert!(asked > 0.0, "{stdout}");
    let accounted: f64 = [
        "wismo_deflected",
        "wismo_handed_over",
        "wismo_reopened",
        "wismo_not_answered_by_bot",
    ]
    .iter()
    .map(|k| pp[*k].as_f64().unwrap_or(0.0))
    .sum();
    // (two questions of one customer may share a ticket)
    assert!(accounted > 0.0 && accounted <= asked, "{pp}");
    assert!(
        pp["bot_order_answers_answered"].as_f64().unwrap_or(0.0)
            + pp["bot_order_answers_handed_over"].as_f64().unwrap_or(0.0)
            > 0.0,
        "the bot answered no where-is-my-order question from the order's data: {pp}\n{stdout}"
    );
    let started = r["counts"]["returns_started"].as_u64().unwrap_or(0);
    assert!(started > 0, "{stdout}");
    assert_eq!(pp["returns_stored"].as_f64(), Some(started as f64), "{pp}");
    assert!(pp["returns_auto_approved"].as_f64().unwrap() <= started as f64);
    assert!(
        stdout.contains("where is my order:") && stdout.contains("returns:"),
        "{stdout}"
    );
}

/// Two instances of every role, the front doors behind HAProxy, and a chaos loop that SIGKILLs
/// one instance of each role in turn while the day runs: nothing accepted is lost, no reply
/// reaches a customer twice or out of order, no valid request fails (callers retry what met a
/// restart, as providers do), and every killed instance is ready again. A record a kill left
/// half-handled may end in the dead-letter topic with its reason (the stated guarantee: stored
/// or dead-lettered); the report names the reasons, and any other problem fails the test.
#[test]
fn two_of_every_role_under_chaos_lose_and_repeat_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let output = simulate(tmp.path())
        .args(["--quiet", "--flat", "--seed", "12"])
        .args([
            "--duration",
            "100m",
            "--speed",
            "60",
            "--tickets-per-day",
            "6000",
            "--agents",
            "8",
            "--hostile",
            "0.1",
            "--instances",
            "ingest=2,processors=2,serving=2,sink=2",
            "--chaos",
            "10s",
            "--chaos-pause",
            "2s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate under chaos failed:\n{stdout}\n{stderr}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let e = &r["extra"];
    // Every role was killed at least once (the bag holds each role once per round), and each
    // killed instance answered /readyz again with the backlog of its kill stored.
    let kills = e["kills"].as_array().unwrap();
    let mut roles: Vec<&str> = kills.iter().map(|k| k["role"].as_str().unwrap()).collect();
    roles.sort_unstable();
    roles.dedup();
    assert_eq!(
        roles,
        ["ingest", "processors", "serving", "sink"],
        "{stdout}"
    );
    for k in kills {
        assert!(k["ready_secs"].as_f64().is_some_and(f64::is_finite), "{k}");
        assert!(k["caught_up_secs"].as_f64().is_some(), "{k}");
    }
    // The front doors went on answering: everything offered was accepted.
    assert!(r["errors"].as_object().unwrap().is_empty(), "{stdout}");
    let accepted: u64 = r["accepted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(accepted > 100, "{stdout}");
    for (ch, offered) in r["offered"].as_object().unwrap() {
        assert_eq!(&r["accepted"][ch], offered, "{ch}:\n{stdout}");
    }
    assert!(
        e["postgres_inbound"].as_u64().unwrap() >= accepted,
        "{stdout}"
    );
    assert!(
        e["clickhouse_inbound"].as_u64().unwrap() >= accepted,
        "{stdout}"
    );
    // Replies reached the customers once each and in order.
    assert!(r["first_response_sim_secs"]["count"].as_u64().unwrap() > 0);
    assert_eq!(e["duplicate_replies"].as_u64(), Some(0), "{stdout}");
    assert_eq!(e["out_of_order_replies"].as_u64(), Some(0), "{stdout}");
    // The load balancer and both instances of each role were sampled.
    let names: Vec<String> = r["timeline"].as_array().unwrap().last().unwrap()["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for n in ["haproxy", "ingest-2", "processors-2", "serving-2", "sink-2"] {
        assert!(names.iter().any(|x| x == n), "{n} not sampled: {names:?}");
    }
    assert!(stdout.contains("chaos:"), "{stdout}");
    for problem in stdout.lines().filter(|l| l.starts_with("PROBLEM")) {
        assert!(
            problem.contains("dead letters") && problem.contains("reasons: "),
            "{problem}\n{stdout}"
        );
    }
}

/// A rolling restart under load: two of every role, the front doors behind HAProxy, and a third
/// into the run every instance is stopped with SIGTERM and started again, one by one. Callers do
/// not retry here, so a request a stopping instance dropped would be a failure: there must be
/// none, nothing accepted may be lost, no reply repeated, and each instance must drain by itself.
#[test]
fn a_rolling_restart_of_every_instance_fails_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report");
    let output = simulate(tmp.path())
        .args(["--quiet", "--strict", "--flat", "--seed", "13"])
        .args([
            "--duration",
            "150m",
            "--speed",
            "60",
            "--tickets-per-day",
            "6000",
            "--agents",
            "8",
            "--hostile",
            "0",
            "--instances",
            "ingest=2,processors=2,serving=2,sink=2",
            "--rolling-restart",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate with a rolling restart failed:\n{stdout}\n{stderr}"
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let e = &r["extra"];
    // All eight instances restarted in turn, each drained by itself and came back.
    let restarts = e["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 8, "{stdout}");
    for x in restarts {
        assert_eq!(x["drained"], true, "{x}");
        assert!(x["ready_secs"].as_f64().is_some_and(f64::is_finite), "{x}");
    }
    // No request failed and none was retried by its caller; everything accepted was stored.
    assert!(r["errors"].as_object().unwrap().is_empty(), "{stdout}");
    assert_eq!(e["retried"].as_u64(), Some(0), "{stdout}");
    for (ch, offered) in r["offered"].as_object().unwrap() {
        assert_eq!(&r["accepted"][ch], offered, "{ch}:\n{stdout}");
    }
    let accepted: u64 = r["accepted"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        e["postgres_inbound"].as_u64().unwrap() >= accepted,
        "{stdout}"
    );
    assert_eq!(e["duplicate_replies"].as_u64(), Some(0), "{stdout}");
    assert_eq!(e["out_of_order_replies"].as_u64(), Some(0), "{stdout}");
    // Acks were measured on both sides of the restart and set side by side.
    assert!(
        r["ack_restarting_ms"]["count"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(
        r["ack_steady_ms"]["count"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(
        stdout.contains("rolling restart:") && stdout.contains("p99"),
        "{stdout}"
    );
}
