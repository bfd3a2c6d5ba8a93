//! `switchboard up` on its own: starts the embedded broker, Postgres and ClickHouse under a data
//! directory, takes a message end to end, stops cleanly on SIGINT, and a second `up` resumes with
//! every ticket and event kept. Also `switchboard validate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::up;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_everything_stops_cleanly_and_resumes_with_data_kept() {
    let dir = up::folder();
    let ports = up::ports();
    let token = "up-test-token";
    let http = reqwest::Client::new();
    let mut node = up::start_ready(dir.path(), &ports, token, &http).await;

    let agent: Value = http
        .post(format!("{}/v1/agents", node.base))
        .bearer_auth(token)
        .json(&json!({"name": "Bo", "email": "bo@example.com", "skills": ["billing"], "max_concurrent": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_id = agent["id"].as_str().unwrap().to_string();
    let r = http
        .put(format!("{}/v1/agents/{agent_id}/status", node.base))
        .bearer_auth(token)
        .json(&json!({"status": "online"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/v1/messages", node.base))
        .bearer_auth(token)
        .json(&json!({"channel": "api", "customer": {"email": "ana@example.com"}, "text": "where is my refund?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let list_url = format!("{}/v1/tickets?customer_email=ana@example.com", node.base);
    let ticket = common::eventually("the assigned ticket", Duration::from_secs(60), || async {
        let v: Value = http
            .get(&list_url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let t = v["tickets"].get(0)?.clone();
        (!t["assigned_agent_id"].is_null()).then_some(t)
    })
    .await;
    let ch = format!("http://127.0.0.1:{}", ports[3]);

    // The local services are not open to anything else on this machine (a web page's script
    // posting to localhost included): ClickHouse and Postgres want the generated passwords,
    // which only the owner can read.
    let secrets = dir.path().join("data/secrets");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secrets), 0o700, "the secrets folder is private");
    for name in [
        "admin.token",
        "postgres.password",
        "clickhouse.password",
        "chat.secret",
    ] {
        let p = secrets.join(name);
        if matches!(name, "admin.token" | "chat.secret") && !p.exists() {
            continue; // the environment gave it
        }
        assert_eq!(mode(&p), 0o600, "{name} is readable by its owner only");
    }
    let ch_password = std::fs::read_to_string(secrets.join("clickhouse.password")).unwrap();
    for (user, password) in [
        (None, None),
        (Some("default"), Some("")),
        (Some("default"), Some("guess")),
    ] {
        let mut req = http.post(&ch).body("SELECT 1");
        if let Some(u) = user {
            req = req.basic_auth(u, password);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(
            !status.is_success() && body.trim() != "1",
            "clickhouse ran SQL for {user:?}/{password:?}: {status} {body}"
        );
    }
    let r = http
        .post(&ch)
        .basic_auth("default", Some(ch_password.trim()))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "1", "the password works");
    let hba = std::fs::read_to_string(dir.path().join("data/postgres/pg_hba.conf")).unwrap();
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!rules.is_empty());
    assert!(
        rules.iter().all(|l| l.ends_with("scram-sha-256")),
        "every postgres connection needs the password: {rules:?}"
    );

    let count_query = "SELECT count() FROM switchboard.events FINAL WHERE schema = 'ticket_event'";
    let events_before =
        common::eventually("events in clickhouse", Duration::from_secs(60), || async {
            let n: u64 = http
                .post(&ch)
                .basic_auth("default", Some(ch_password.trim()))
                .body(count_query)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (n >= 3).then_some(n)
        })
        .await;

    let status = up::sigint_and_wait(&mut node);
    assert!(status.success(), "clean exit on SIGINT: {status}");
    for port in &ports[1..] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "service on {port} stopped"
        );
    }

    // The second `up` resumes: same ticket, same events, and it keeps working.
    let mut node = up::start_ready(dir.path(), &ports, token, &http).await;
    let v: Value = http
        .get(&list_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tickets"].as_array().unwrap().len(), 1);
    assert_eq!(v["tickets"][0]["id"], ticket["id"]);
    assert_eq!(v["tickets"][0]["number"], ticket["number"]);
    assert_eq!(v["tickets"][0]["assigned_agent_id"], agent_id.as_str());
    let events_after: u64 = http
        .post(&ch)
        .basic_auth("default", Some(ch_password.trim()))
        .body(count_query)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        events_after >= events_before,
        "events kept: {events_before} -> {events_after}"
    );
    let r = http
        .post(format!("{}/v1/messages", node.base))
        .bearer_auth(token)
        .json(&json!({"channel": "api", "customer": {"email": "ana@example.com"}, "text": "and my invoice?", "ticket_id": ticket["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    common::eventually(
        "the reply on the resumed ticket",
        Duration::from_secs(60),
        || async {
            let v: Value = http
                .get(format!(
                    "{}/v1/tickets/{}",
                    node.base,
                    ticket["id"].as_str()?
                ))
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["messages"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    let status = up::sigint_and_wait(&mut node);
    assert!(status.success());
}

#[test]
fn validate_prints_every_error_with_its_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let good = common::repo().join("pipelines.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = std::fs::read_to_string(&good)
        .unwrap()
        .replace("inputs: [inbound.messages]", "inputs: [inbound.mesages]")
        .replace(
            "    outputs: [agent.presence, ticket.events, outbound.replies, assignments, commerce.events]\n",
            "    outputs: []\n",
        );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, &bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["validate"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        text.contains(&format!("bad.yaml:{}:", line_of("inbound.mesages"))),
        "{text}"
    );
    assert!(text.contains("unknown topic \"inbound.mesages\""), "{text}");
    assert!(
        text.contains(&format!(
            "bad.yaml:{}:",
            line_of("inputs: [ticket.events, agent.presence]")
        )),
        "{text}"
    );
    assert!(text.contains("no source or stage writes it"), "{text}");
    assert!(text.contains("4 error(s)"), "{text}");
}

/// A broker that holds its port and answers nothing (tansu 0.6 can lose its storage task to a
/// panic that way; here the process is stopped with SIGSTOP) is killed and started again by
/// `up` on the same port and data, and messages flow again without a restart of `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_is_restarted_and_messages_flow_again() {
    let dir = up::folder();
    let ports = up::ports();
    let token = "up-test-token";
    let http = reqwest::Client::new();
    let mut node = up::start_ready(dir.path(), &ports, token, &http).await;
    let pid_file = dir.path().join("data/run/tansu.pid");
    let pid_of = || -> i32 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let hung = pid_of();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hung),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let fresh = common::eventually("a new broker", Duration::from_secs(90), || async {
        let p = pid_of();
        (p != hung).then_some(p)
    })
    .await;
    // The hung one is gone, the new one runs.
    assert!(
        !std::path::Path::new(&format!("/proc/{hung}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{hung}/stat")).unwrap_or_default();
            stat.contains(") Z ")
        }
    );
    assert!(std::path::Path::new(&format!("/proc/{fresh}")).exists());
    // A message posted now becomes a ticket.
    let accepted = common::eventually("a 202 from the api", Duration::from_secs(60), || async {
        let r = http
            .post(format!("{}/v1/messages", node.base))
            .bearer_auth(token)
            .json(&json!({"channel": "api", "customer": {"email": "after@example.com"}, "text": "still there? ✓", "external_id": "after-restart"}))
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await;
    let _: () = accepted;
    let list_url = format!("{}/v1/tickets?customer_email=after@example.com", node.base);
    common::eventually("the ticket", Duration::from_secs(90), || async {
        let v: Value = http
            .get(&list_url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["tickets"].get(0).cloned()
    })
    .await;
    assert!(up::sigint_and_wait(&mut node).success());
}
