//! The agent console (`console/`, Vue 3 + TypeScript, built by scripts/setup.sh and embedded in
//! the binary) in headless Chromium: `console/tests/e2e.cjs` drives two agents and a supervisor
//! through collision, take-over, search, a shared view, a macro in bulk, an `@mention` picked
//! from the directory, a split and a hand-over by name, a rule drafted, dry-run and enabled, with
//! axe-core on every screen. Screenshots and axe reports are kept under
//! `$CARGO_TARGET_DIR/browser-artifacts/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{eventually, node_modules, repo, start};

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_and_a_supervisor_work_a_desk_in_the_console() {
    let axe = repo().join("console/node_modules/axe-core/axe.min.js");
    assert!(
        node_modules().join("playwright-core").exists()
            && axe.exists()
            && repo().join("console/dist/index.html").exists(),
        "playwright-core, axe-core or the console build missing: run scripts/setup.sh"
    );
    // The sink too: the rules screen's dry run replays ClickHouse's history.
    let (h, node) = start(
        &["ingest", "processors", "serving", "sink"],
        &[("SWITCHBOARD__MODELS__ENABLED", "false")],
    )
    .await;
    let pool = h.pg().await;
    // The console is served from the binary, under the strict policy.
    let r = h.fetch(&node, "/console/", None).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(
        html.contains("/console/assets/index.js") && !html.contains("<script>"),
        "{html}"
    );
    assert_eq!(
        h.fetch(&node, "/console/assets/nope.js", None)
            .await
            .status(),
        404
    );

    let ann = h.agent(&node, "ann@example.com", &[], 10, true).await;
    let bob = h.agent(&node, "bob@example.com", &[], 10, false).await;
    h.agent(&node, "dee@example.com", &["returns"], 2, false)
        .await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let sup_token = h.issue_token(&node, "supervisor", None, "sue").await;
    // Six tickets, all Ann's; the first with three messages and an order.
    for i in 0..6 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("c{i}@example.com")}, "subject": format!("Question {i}"), "text": "Hello, a question", "external_id": format!("con-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    eventually("six tickets for ann", Duration::from_secs(90), || {
        let pool = pool.clone();
        let ann = ann.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tickets WHERE assigned_agent_id = $1::uuid",
            )
            .bind(ann)
            .fetch_one(&pool)
            .await
            .unwrap();
            (n == 6).then_some(())
        }
    })
    .await;
    let (ticket, number, customer): (uuid::Uuid, String, uuid::Uuid) = sqlx::query_as(
        "SELECT t.id, t.number, t.customer_id FROM tickets t JOIN customer_identities ci ON ci.customer_id = t.customer_id
         WHERE ci.value = 'c0@example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for (i, text) in [
        "About my order, second message",
        "Third: the lampshades arrived cracked",
    ]
    .iter()
    .enumerate()
    {
        let (s, _) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "c0@example.com"}, "text": text, "ticket_id": ticket, "external_id": format!("con-0-{i}")}))
            .await;
        assert_eq!(s, 202);
    }
    sqlx::query(
        "INSERT INTO orders (id, customer_id, external_id, number, total_cents, created_at, updated_at)
         VALUES ($1, $2, 'gid-5005', '#5005', 4200, now(), now())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(customer)
    .execute(&pool)
    .await
    .unwrap();
    eventually("three messages", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            (common::count(
                &pool,
                &format!("SELECT count(*) FROM messages WHERE ticket_id = '{ticket}'"),
            )
            .await
                == 3)
                .then_some(())
        }
    })
    .await;
    let (s, _) = h.agent_status(&node, &bob, "online").await;
    assert_eq!(s, 200);
    let (s, v) = h
        .post(&node, "/v1/macros", json!({"title": "Refund issued", "actions": [
            {"type": "reply", "text": "Hi {{customer.first_name}}, your refund for {{ticket.number}} is on its way."},
            {"type": "tags", "add": ["refund"]}]}))
        .await;
    assert_eq!(s, 201, "{v}");

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("browser-artifacts/console");
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, dir) = (node.base.clone(), dir.clone());
        let (ann_token, bob_token) = (ann_token.clone(), bob_token.clone());
        let admin_token = h.token.clone();
        let (ticket, number) = (ticket.to_string(), number.clone());
        move || {
            Command::new("node")
                .arg(repo().join("console/tests/e2e.cjs"))
                .env("NODE_PATH", node_modules())
                .env("BASE", base)
                .env("ANN_TOKEN", ann_token)
                .env("BOB_TOKEN", bob_token)
                .env("SUP_TOKEN", sup_token)
                .env("ADMIN_TOKEN", admin_token)
                .env("TICKET", ticket)
                .env("TICKET_NUMBER", number)
                .env("ORDER", "5005")
                .env("WORD", "lampshade")
                .env("AXE", axe)
                .env("ARTIFACTS", &dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "console test failed (screenshots in {}):\n{log}\n{}",
        dir.display(),
        node.log_tail()
    );
    // What the browser did, as the store has it.
    let (assignee, bob_replies): (Option<uuid::Uuid>, i64) = sqlx::query_as(
        "SELECT assigned_agent_id, (SELECT count(*) FROM messages WHERE ticket_id = $1 AND direction = 'outbound' AND author = $2)
         FROM tickets WHERE id = $1",
    )
    .bind(ticket)
    .bind(&bob)
    .fetch_one(&pool)
    .await
    .unwrap();
    // Bob took it over to reply, then handed it to Ann by name from the agent picker.
    assert_eq!(
        (assignee.map(|a| a.to_string()), bob_replies),
        (Some(ann.clone()), 1)
    );
    // The admin renamed Dee, deactivated her and brought her back: four versions.
    let dee: (String, i32, i32, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT name, max_concurrent, version, deactivated_at FROM agents WHERE email = 'dee@example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dee, ("Dee Åberg".to_string(), 4, 4, None));
    // The third message went to a ticket of its own, split from this one.
    let moved: Vec<String> = sqlx::query_scalar(
        "SELECT m.text FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE t.split_from = $1",
    )
    .bind(ticket)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved,
        vec!["Third: the lampshades arrived cracked".to_string()]
    );
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM tickets WHERE 'refund' = ANY(tags)"
        )
        .await,
        5
    );
    // Ann's note reached Bob as a mention and never the customer.
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM note_mentions").await,
        1
    );
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM messages WHERE starts_with(text, '@bob@example.com') AND direction <> 'note'"
        )
        .await,
        0
    );
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM views WHERE name = 'Refunds' AND owner_agent_id IS NULL AND team_id IS NULL").await,
        1
    );
    for shot in [
        "signin",
        "search",
        "collision-ann",
        "takeover-bob",
        "bulk-macro",
        "shared-view-bob",
    ] {
        assert!(dir.join(format!("{shot}.png")).exists(), "{shot} missing");
    }
}
