//! The pages in a real browser: headless Chromium driven by playwright-core (installed by
//! scripts/setup.sh) runs `console/tests/agent_chat.cjs` (the console as the agent, the chat widget, the survey, tracking,
//! the help centre and the supervisor dashboard) against a running Switchboard. Screenshots are kept
//! under `$CARGO_TARGET_DIR/browser-artifacts/` (or the system temp dir).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{node_modules, repo, start, ALL};

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

fn artifacts(test: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("browser-artifacts").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_gets_a_chat_live_the_customer_sees_the_reply_and_the_dashboard_charts_it() {
    assert!(
        node_modules().join("playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run scripts/setup.sh"
    );
    let (h, node) = start(
        ALL,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "browser-chat"),
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "shop"),
        ],
    )
    .await;
    let agent = h
        .agent(&node, "rita@example.com", &["shipping"], 3, false)
        .await;
    let agent_token = h
        .issue_token(&node, "agent", Some(&agent), "rita's browser")
        .await;
    let sup = h
        .issue_token(&node, "supervisor", None, "sue's browser")
        .await;
    // The dashboard is for supervisors.
    let r = h.fetch(&node, "/v1/dashboard", Some(&agent_token)).await;
    assert_eq!(r.status(), 403);
    // Her order, from the shop's signed webhook.
    let (s, v) = common::shop::order(
        &h,
        &node.base,
        &json!({"id": 1001, "name": "#1001", "email": "rosa@example.com", "total_price": "59.00",
            "fulfillment_status": "fulfilled", "fulfillments": [{"tracking_company": "DHL", "tracking_number": "JD0001", "shipment_status": "in_transit"}],
            "line_items": [{"id": 9001, "title": "Wool scarf", "quantity": 1, "price": "59.00"}]}),
        "shop",
    )
    .await;
    assert_eq!(s, 202, "{v}");
    // Accepted onto inbound.orders; the orders stage stores it.
    let pool = h.pg().await;
    common::eventually("her order stored", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE external_id = '1001'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    let dir = artifacts("agent_chat");
    let out = tokio::task::spawn_blocking({
        let (base, token, dir) = (node.base.clone(), agent_token.clone(), dir.clone());
        move || {
            Command::new("node")
                .arg(repo().join("console/tests/agent_chat.cjs"))
                .env("NODE_PATH", node_modules())
                .env("BASE", base)
                .env("TOKEN", token)
                .env("SUP_TOKEN", sup)
                .env(
                    "AXE",
                    repo().join("console/node_modules/axe-core/axe.min.js"),
                )
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
        "browser test failed (screenshots in {}):\n{log}\n{}",
        dir.display(),
        node.log_tail()
    );
    // The same conversation, as the store has it: one chat ticket, handled by her, her reply sent,
    // resolved, the survey answered.
    let (assigned, replies): (Option<uuid::Uuid>, i64) = sqlx::query_as(
        "SELECT (SELECT a.agent_id FROM assignments a WHERE a.ticket_id = t.id ORDER BY a.assigned_at LIMIT 1),
                (SELECT count(*) FROM messages m WHERE m.ticket_id = t.id AND m.direction = 'outbound' AND m.author IS DISTINCT FROM 'survey')
         FROM tickets t WHERE t.channel = 'chat' AND t.status = 'resolved'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(assigned.map(|a| a.to_string()), Some(agent));
    assert_eq!(replies, 1);
    for shot in [
        "agent-console.png",
        "customer-chat.png",
        "supervisor-dashboard.png",
    ] {
        assert!(dir.join(shot).exists(), "{shot} missing");
    }
}
