//! Agents' corrections of the models' triage against real services, and the export for the next
//! training round: `PUT /v1/tickets/{id}/triage` changes the category and intent and flags the
//! sentiment, recorded beside what the model said; bad input is refused by name; an agent may
//! correct only the tickets it holds; `switchboard models export-training-data` writes the
//! labelled examples, scrubbed of the customer's data, the latest correction winning, and a data
//! card that counts them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, start, switchboard_bin, Harness, Node, CORE};

use serde_json::{json, Value};
use uuid::Uuid;

async fn message(h: &Harness, node: &Node, email: &str, name: &str, text: &str) -> Uuid {
    h.message_ticket(
        node,
        json!({"channel": "api", "customer": {"email": email, "name": name}, "text": text}),
    )
    .await
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn corrections_are_recorded_and_exported_as_scrubbed_labelled_examples() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__KB__BOT_CHANNELS", "sms")]).await;
    let t = message(
        &h,
        &node,
        "nora.bell@example.org",
        "Nora Bell",
        "Hi, this is Nora Bell: I want to cancel order #5521, call me on +44 20 7946 0011",
    )
    .await;
    let path = format!("/v1/tickets/{t}/triage");

    // Refused by name, nothing recorded.
    for (body, field) in [
        (json!({}), "category"),
        (json!({"category": "1st"}), "category"),
        (json!({"intent": "cancel order"}), "intent"),
        (json!({"intent": "x".repeat(5_000)}), "intent"),
        (json!({"intent": "cancel\u{0}order"}), "intent"),
        (json!({"sentiment": "furious"}), "sentiment"),
        (json!({"sentiment": 3}), "sentiment"),
        (json!({"mood": "bad"}), "mood"),
    ] {
        let (s, v) = h.put(&node, &path, body).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = h
        .put(
            &node,
            &format!("/v1/tickets/{}/triage", Uuid::new_v4()),
            json!({"sentiment": "neutral"}),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    // An agent may correct only a ticket it holds.
    let agent = h.agent(&node, "corrector@example.com", &[], 5, false).await;
    let token = h
        .issue_token(&node, "agent", Some(&agent), "corrector")
        .await;
    let (s, _) = h
        .caller(&node, &token)
        .put(&path, json!({"sentiment": "neutral"}))
        .await;
    assert_eq!(s, 403);
    let pool = h.pg().await;
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM triage_corrections")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(none, 0);

    // A first correction of the intent, then the right one with the category and the sentiment.
    let (s, v) = h.put(&node, &path, json!({"intent": "track_order"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = h
        .put(
            &node,
            &path,
            json!({"category": "CANCEL", "intent": "cancel_order", "sentiment": "negative"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["corrected"],
        json!(["category", "intent", "sentiment"]),
        "{v}"
    );
    let (s, ticket) = h.get(&node, &format!("/v1/tickets/{t}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (&ticket["category"], &ticket["intent"]),
        (&json!("CANCEL"), &json!("cancel_order"))
    );
    assert_eq!(ticket["version"], v["version"]);
    // Each correction is a ticket event, kept in the audit log with what the ticket had said.
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT after FROM audit_log WHERE action = 'ticket.triage_corrected' AND ticket_id = $1 ORDER BY at, id",
    )
    .bind(t)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["previous_intent"], "track_order", "{events:?}");
    assert_eq!(
        (&events[1]["category"], &events[1]["sentiment"]),
        (&json!("CANCEL"), &json!("negative"))
    );
    // What the model said is kept beside it.
    let (model_intent, versions): (Option<String>, Value) = sqlx::query_as(
        "SELECT model_value, model_versions FROM triage_corrections WHERE field = 'intent' ORDER BY at LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let first = &ticket["messages"][0];
    assert_eq!(model_intent.as_deref(), first["intent"].as_str());
    assert_eq!(versions, first["model_versions"]);

    // The export: one example per message and field, the latest correction winning, scrubbed.
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(switchboard_bin())
        .current_dir(common::repo())
        .arg("--config")
        .arg(&h.config)
        .args(["models", "export-training-data", "--out"])
        .arg(out.path())
        .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &h.pg_url)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let intents = lines(&out.path().join("intent.jsonl"));
    assert_eq!(intents.len(), 1, "{intents:?}");
    let e = &intents[0];
    assert_eq!(
        (&e["label"], &e["intent"]),
        (&json!("cancel_order"), &json!("cancel_order"))
    );
    assert_eq!(e["channel"], "api");
    let text = e["text"].as_str().unwrap();
    assert!(text.contains("cancel order"), "{text}");
    for personal in ["Nora", "Bell", "5521", "7946", "nora.bell"] {
        assert!(!text.contains(personal), "{personal} exported: {text}");
    }
    assert_eq!(
        lines(&out.path().join("category.jsonl"))[0]["category"],
        "CANCEL"
    );
    assert_eq!(
        lines(&out.path().join("sentiment.jsonl"))[0]["label"],
        "negative"
    );
    let card = std::fs::read_to_string(out.path().join("DATA_CARD.md")).unwrap();
    assert!(card.contains("| `intent.jsonl` | 1 |"), "{card}");
    assert!(card.contains("-> cancel_order (1)"), "{card}");
    assert!(card.contains("## Privacy"), "{card}");
    // The models' quality per channel as agents saw it: the one API ticket, corrected in all.
    assert!(
        card.contains("| api | 1 | 1 (100.0 %) | 1 (100.0 %) | 1 (100.0 %) |"),
        "{card}"
    );
    // A window without corrections exports nothing, and an empty window is refused.
    let run = |args: &[&str]| {
        std::process::Command::new(switchboard_bin())
            .current_dir(common::repo())
            .arg("--config")
            .arg(&h.config)
            .args(["models", "export-training-data", "--out"])
            .arg(out.path())
            .args(args)
            .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &h.pg_url)
            .output()
            .unwrap()
    };
    assert!(run(&["--until", "2000-01-01"]).status.success());
    assert!(lines(&out.path().join("intent.jsonl")).is_empty());
    let bad = run(&["--since", "2030-01-02", "--until", "2030-01-01"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}
