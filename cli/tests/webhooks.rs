//! Outbound webhooks over real services, checked by a receiver that verifies every delivery
//! with the Standard Webhooks reference package from PyPI (`tests/webhooks/receiver.py`):
//! subscriptions checked on save, every subscribed event and a rule's `webhook` action
//! delivered and verified, retries with backoff until an endpoint recovers, the dead letter
//! after the last attempt and its redelivery, a slow endpoint that delays nobody else, and
//! secret rotation with two valid signatures, then one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, free_port, repo, start, CORE};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The receiver process (killed on drop).
struct Receiver {
    child: Child,
    base: String,
    state: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let python = std::env::var("SWITCHBOARD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/var/tmp/switchboard"))
            .join("webhooks-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: scripts/setup.sh installs standardwebhooks",
            python.display()
        );
        let port = free_port();
        let state = std::env::temp_dir().join(format!("webhooks-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("secrets.json"), "{}").unwrap();
        let child = Command::new(python)
            .arg(repo().join("cli/tests/webhooks/receiver.py"))
            .arg(port.to_string())
            .arg(&state)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        eventually("the receiver", Duration::from_secs(20), || {
            let (client, base) = (client.clone(), base.clone());
            async move { client.get(&base).send().await.ok().map(|_| ()) }
        })
        .await;
        Receiver { child, base, state }
    }

    /// The secrets the receiver tries for `path` (in order: the indexes it reports).
    fn secrets(&self, path: &str, secrets: &[&str]) {
        let file = self.state.join("secrets.json");
        let mut all: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        all[path] = json!(secrets);
        std::fs::write(&file, all.to_string()).unwrap();
    }

    fn log(&self) -> Vec<Value> {
        read_log(&self.state)
    }
}

fn read_log(state: &Path) -> Vec<Value> {
    std::fs::read_to_string(state.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of<'a>(log: &'a [Value], path: &str) -> Vec<&'a Value> {
    log.iter().filter(|r| r["path"] == path).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_retried_dead_lettered_and_rotated() {
    let rx = Receiver::start().await;
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
            ("SWITCHBOARD__WEBHOOKS__MAX_ATTEMPTS", "3"),
            ("SWITCHBOARD__WEBHOOKS__BACKOFF_BASE_MS", "200"),
            ("SWITCHBOARD__WEBHOOKS__BACKOFF_MAX_MS", "1000"),
            ("SWITCHBOARD__WEBHOOKS__POLL_MS", "100"),
        ],
    )
    .await;
    let sue = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue);

    // Admins only; every bad part named; hostile text refused, not stored.
    let ok_a = format!("{}/ok/a", rx.base);
    let (s, v) = sue
        .post("/v1/webhooks", json!({"url": ok_a, "events": ["*"]}))
        .await;
    assert_eq!(s, 403, "{v}");
    for (body, field) in [
        (
            json!({"url": "ftp://example.com/x", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": format!("{}/\u{0}", rx.base), "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://user:pw@example.com/", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": ok_a, "events": ["ticket.created", "ticket.exploded"]}),
            "events[1]",
        ),
        (json!({"url": ok_a, "events": []}), "events[0]"),
        (
            json!({"url": ok_a, "events": ["*"], "description": "bell\u{7}"}),
            "description",
        ),
        (
            json!({"url": ok_a, "events": ["*"], "colour": "red"}),
            "colour",
        ),
    ] {
        let (s, v) = h.post(&node, "/v1/webhooks", body.clone()).await;
        assert_refused(s, &v, 400, field);
    }
    // Deeply nested input is refused, not recursed into.
    let deep = format!(
        r#"{{"url": "{ok_a}", "events": {}"deep"{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let resp = h
        .http
        .post(format!("{}/v1/webhooks", node.base))
        .bearer_auth(&h.token)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let create = |url: String, events: Value, description: &'static str| {
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h
                .post(
                    node,
                    "/v1/webhooks",
                    json!({"url": url, "events": events, "description": description}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
            v
        }
    };
    let a = create(
        ok_a.clone(),
        json!(["ticket.created", "ticket.tags_changed"]),
        "CRM — ünïcode",
    )
    .await;
    let flaky = create(
        format!("{}/flaky/b", rx.base),
        json!(["ticket.created"]),
        "",
    )
    .await;
    let down = create(format!("{}/down/c", rx.base), json!(["ticket.created"]), "").await;
    let slow = create(format!("{}/slow/d", rx.base), json!(["ticket.created"]), "").await;
    for (w, path) in [
        (&a, "/ok/a"),
        (&flaky, "/flaky/b"),
        (&down, "/down/c"),
        (&slow, "/slow/d"),
    ] {
        rx.secrets(path, &[w["secret"].as_str().unwrap()]);
    }
    // The secret is shown once.
    let (_, listed) = h.get(&node, "/v1/webhooks").await;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert!(listed[0].get("secret").is_none(), "{listed}");
    assert!(!listed.to_string().contains("whsec_"));

    // A rule calls webhook A with the ticket (and tags it, which A also hears about).
    let (s, v) = sue
        .post(
            "/v1/rules",
            json!({"name": "tell the CRM", "kind": "trigger", "on": ["created"], "enabled": true,
                   "actions": [{"type": "tags", "add": ["hooked"]},
                               {"type": "webhook", "webhook_id": a["id"]}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sue
        .post(
            "/v1/rules",
            json!({"name": "nowhere", "kind": "trigger", "on": ["created"],
                   "actions": [{"type": "webhook", "webhook_id": uuid::Uuid::now_v7()}]}),
        )
        .await;
    assert_refused(s, &v, 400, "actions[0].webhook_id");

    for i in 0..3 {
        let (s, v) = h
            .post(
                &node,
                "/v1/messages",
                json!({"channel": "api", "customer": {"email": format!("hook{i}@example.com")},
                       "text": format!("Where is my order {i}? ✈"), "external_id": format!("hook-{i}")}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }

    // A hears of every created ticket, every tag change and every rule fire, each verified by
    // the reference verifier, each once (the receiver may see a retry, never a second id).
    let log = eventually("A's deliveries", Duration::from_secs(60), || async {
        let log = rx.log();
        let a = of(&log, "/ok/a");
        let types = |t: &str| a.iter().filter(|r| r["type"] == t).count();
        (types("ticket.created") == 3
            && types("ticket.tags_changed") == 3
            && types("rule.fired") == 3)
            .then_some(log)
    })
    .await;
    let a_log = of(&log, "/ok/a");
    assert_eq!(a_log.len(), 9, "{a_log:?}");
    for r in &a_log {
        assert_eq!(r["verified"], json!([0]), "{r}");
        assert_eq!(r["signatures"], 1);
    }
    let ids: std::collections::BTreeSet<&str> =
        a_log.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 9);
    let fired: Value = serde_json::from_str(
        a_log.iter().find(|r| r["type"] == "rule.fired").unwrap()["body"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fired["data"]["rule"]["name"], "tell the CRM");
    assert!(fired["data"]["ticket"]["number"]
        .as_str()
        .unwrap()
        .starts_with("T-"));

    // The slow endpoint (6 s an answer) held nobody else: A had everything before it answered.
    let slow_done = eventually("the slow endpoint", Duration::from_secs(60), || async {
        let log = rx.log();
        let s = of(&log, "/slow/d");
        (s.len() == 3).then(|| {
            s.iter()
                .map(|r| r["at"].as_f64().unwrap())
                .fold(f64::MAX, f64::min)
        })
    })
    .await;
    let a_created_last = a_log
        .iter()
        .filter(|r| r["type"] == "ticket.created")
        .map(|r| r["at"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(a_created_last < slow_done, "A waited for the slow endpoint");

    // The flaky endpoint got each event after two 503s, backed off, same id every time.
    let deliveries = |w: &Value, state: &str| {
        let path = format!(
            "/v1/webhooks/{}/deliveries?state={state}",
            w["id"].as_str().unwrap()
        );
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h.get(node, &path).await;
            assert_eq!(s, 200, "{v}");
            v.as_array().unwrap().clone()
        }
    };
    let done = eventually(
        "the flaky endpoint's deliveries",
        Duration::from_secs(60),
        || async {
            let d = deliveries(&flaky, "delivered").await;
            (d.len() == 3).then_some(d)
        },
    )
    .await;
    for d in &done {
        assert_eq!(d["attempts"], 3, "{d}");
        let (_, detail) = h
            .get(
                &node,
                &format!(
                    "/v1/webhooks/{}/deliveries/{}",
                    flaky["id"].as_str().unwrap(),
                    d["id"].as_str().unwrap()
                ),
            )
            .await;
        let tries = detail["attempt_log"].as_array().unwrap();
        assert_eq!(tries.len(), 3, "{detail}");
        assert_eq!(tries[0]["status"], 503);
        assert_eq!(tries[2]["status"], 204);
        let t = |i: usize| {
            chrono::DateTime::parse_from_rfc3339(tries[i]["at"].as_str().unwrap()).unwrap()
        };
        assert!(
            t(1) - t(0) >= chrono::Duration::milliseconds(150),
            "{detail}"
        );
    }
    let flaky_log = of(&log, "/flaky/b");
    assert!(flaky_log.iter().all(|r| r["verified"] == json!([0])));

    // The endpoint that is down: every attempt used, then failed (the dead letter), listed with
    // the endpoint's answer cleaned of control characters.
    let dead = eventually("the dead letters", Duration::from_secs(60), || async {
        let d = deliveries(&down, "failed").await;
        (d.len() == 3).then_some(d)
    })
    .await;
    for d in &dead {
        assert_eq!(d["attempts"], 3);
        assert_eq!(d["last_status"], 500);
        let err = d["last_error"].as_str().unwrap();
        assert!(err.starts_with("answered 500: try again later"), "{err}");
        assert!(!err.contains('\u{1}'));
    }
    // Redelivered once it is back up: a fresh set of attempts, the log numbered on.
    std::fs::write(rx.state.join("up-c"), "").unwrap();
    let one = dead[0]["id"].as_str().unwrap();
    let path = format!(
        "/v1/webhooks/{}/deliveries/{one}/redeliver",
        down["id"].as_str().unwrap()
    );
    let (s, v) = sue.post(&path, json!({})).await;
    assert_eq!(s, 403, "admins only: {v}");
    let (s, v) = h.post(&node, &path, json!({})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["state"], "pending");
    let (s, v) = h.post(&node, &path, json!({})).await;
    let delivered = if s == 409 {
        assert_refused(s, &v, 409, "state");
        eventually("the redelivery", Duration::from_secs(30), || async {
            let d = deliveries(&down, "delivered").await;
            (d.len() == 1).then_some(d)
        })
        .await
    } else {
        // Already delivered before the second call: redelivered again, fine.
        assert_eq!(s, 202, "{v}");
        eventually("the redelivery", Duration::from_secs(30), || async {
            let d = deliveries(&down, "delivered").await;
            (d.len() == 1).then_some(d)
        })
        .await
    };
    assert_eq!(delivered[0]["id"], dead[0]["id"]);
    let (_, detail) = h
        .get(
            &node,
            &format!(
                "/v1/webhooks/{}/deliveries/{one}",
                down["id"].as_str().unwrap()
            ),
        )
        .await;
    let tries: Vec<i64> = detail["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(&tries[..4], &[1, 2, 3, 4], "{detail}");

    // Rotation: the new secret and the old one both sign for the overlap...
    let a_id = a["id"].as_str().unwrap();
    let old = a["secret"].as_str().unwrap().to_string();
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/webhooks/{a_id}/rotate"),
            json!({"overlap_hours": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let new = v["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    rx.secrets("/ok/a", &[&new, &old]);
    let send = |ext: &'static str| {
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h
                .post(node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("{ext}@example.com")}, "text": "Hello", "external_id": ext}))
                .await;
            assert_eq!(s, 202, "{v}");
        }
    };
    send("rot-1").await;
    let both = eventually(
        "a delivery under both secrets",
        Duration::from_secs(60),
        || async {
            let log = rx.log();
            of(&log, "/ok/a")
                .iter()
                .find(|r| r["type"] == "ticket.created" && r["signatures"] == 2)
                .map(|r| (*r).clone())
        },
    )
    .await;
    assert_eq!(both["verified"], json!([0, 1]), "{both}");
    // ...and after a rotation without overlap (a leaked secret) only the newest verifies.
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/webhooks/{a_id}/rotate"),
            json!({"overlap_hours": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let newest = v["secret"].as_str().unwrap().to_string();
    rx.secrets("/ok/a", &[&newest, &new, &old]);
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/webhooks/{a_id}/rotate"),
            json!({"overlap_hours": 200}),
        )
        .await;
    assert_refused(s, &v, 400, "overlap_hours");
    send("rot-2").await;
    let single = eventually(
        "a delivery under the newest secret",
        Duration::from_secs(60),
        || async {
            let log = rx.log();
            let a = of(&log, "/ok/a");
            let created: Vec<&&Value> =
                a.iter().filter(|r| r["type"] == "ticket.created").collect();
            (created.len() == 5).then(|| (*created[4]).clone())
        },
    )
    .await;
    assert_eq!(single["verified"], json!([0]), "{single}");
    assert_eq!(single["signatures"], 1);

    // A disabled webhook hears nothing new; a deleted one takes its ledger with it.
    let (s, v) = h
        .put(
            &node,
            &format!("/v1/webhooks/{a_id}"),
            json!({"url": ok_a, "events": ["*"], "enabled": false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = h
        .delete(
            &node,
            &format!("/v1/webhooks/{}", slow["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = h
        .get(
            &node,
            &format!("/v1/webhooks/{}/deliveries", slow["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 404);
    // Every change is audited, no secret in the record.
    let pool = h.pg().await;
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE subject LIKE 'webhook%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for want in [
        "webhook.created",
        "webhook.secret_rotated",
        "webhook.redelivered",
        "webhook.updated",
        "webhook.deleted",
    ] {
        assert!(audited.iter().any(|a| a == want), "{want} in {audited:?}");
    }
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE coalesce(before::text, '') || coalesce(after::text, '') LIKE '%whsec_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
}

/// An endpoint that stays down does not grow the ledger without bound: past
/// `webhooks.max_pending_per_endpoint` waiting deliveries, new events are ledgered as failed at
/// once ("backlog full"), listed with the dead letters and redeliverable like them.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoints_backlog_is_capped_and_the_rest_listed_as_failed() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true"),
            ("SWITCHBOARD__WEBHOOKS__MAX_PENDING_PER_ENDPOINT", "2"),
            // Long waits between attempts: the first deliveries stay pending.
            ("SWITCHBOARD__WEBHOOKS__BACKOFF_BASE_MS", "600000"),
            ("SWITCHBOARD__WEBHOOKS__MAX_ATTEMPTS", "8"),
        ],
    )
    .await;
    // Nothing listens on this port: every attempt is refused.
    let port = free_port();
    let (s, hook) = h
        .post(
            &node,
            "/v1/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/gone"), "events": ["ticket.created"]}),
        )
        .await;
    assert_eq!(s, 201, "{hook}");
    let path = |state: &str| {
        format!(
            "/v1/webhooks/{}/deliveries?state={state}",
            hook["id"].as_str().unwrap()
        )
    };
    let send = |i: usize| {
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h
                .post(
                    node,
                    "/v1/messages",
                    json!({"channel": "api", "customer": {"email": format!("gone{i}@example.com")},
                    "text": format!("Hallo {i} \u{1b}[31m ✉"), "external_id": format!("gone-{i}")}),
                )
                .await;
            assert_eq!(s, 202, "{v}");
        }
    };
    for i in 0..2 {
        send(i).await;
    }
    eventually("two waiting", Duration::from_secs(60), || async {
        let (_, v) = h.get(&node, &path("pending")).await;
        (v.as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    // The fan-out reads the backlogs every 2 s: past that, the endpoint is known to be full.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 2..5 {
        send(i).await;
    }
    let failed = eventually("three refused", Duration::from_secs(60), || async {
        let (_, v) = h.get(&node, &path("failed")).await;
        let v = v.as_array().cloned().unwrap_or_default();
        (v.len() == 3).then_some(v)
    })
    .await;
    for d in &failed {
        assert_eq!(d["attempts"], 0, "{d}");
        assert!(
            d["last_error"]
                .as_str()
                .unwrap()
                .starts_with("backlog full"),
            "{d}"
        );
    }
    let (_, pending) = h.get(&node, &path("pending")).await;
    assert_eq!(pending.as_array().unwrap().len(), 2, "{pending}");
    // Refused ones are redeliverable like any dead letter.
    let (s, v) = h
        .post(
            &node,
            &format!(
                "/v1/webhooks/{}/deliveries/{}/redeliver",
                hook["id"].as_str().unwrap(),
                failed[0]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["state"], "pending");
}
