//! Order actions and returns in the console (`console/tests/orders.cjs` in headless Chromium,
//! axe-core on every screen) against real services and the stand-in shop: an agent refunds from
//! the ticket within its limit (done at the shop) and above it (waits), sends a replacement,
//! starts a return the
//! policy leaves to a person; a supervisor approves the refund and rejects the return from the
//! Approvals screen. Screenshots under `$CARGO_TARGET_DIR/browser-artifacts/console-orders/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::shop::{held_ticket, shop_env, stored_orders, Shop};
use common::{free_port, node_modules, repo, start, CORE};

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refunds_and_starts_a_return_and_a_supervisor_decides_in_the_console() {
    let axe = repo().join("console/node_modules/axe-core/axe.min.js");
    assert!(
        node_modules().join("playwright-core").exists()
            && axe.exists()
            && repo().join("console/dist/index.html").exists(),
        "playwright-core, axe-core or the console build missing: run scripts/setup.sh"
    );
    let shop_port = free_port();
    let mut extra = shop_env(shop_port, 5000);
    extra.push(("SWITCHBOARD__MODELS__ENABLED", "false".into()));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (h, node) = start(CORE, &extra).await;
    let shop = Shop::start(shop_port, &node);
    let delivered = chrono::Utc::now() - chrono::Duration::days(2);
    shop.put(json!({
        "id": 701, "name": "#7001", "email": "zoe@example.com", "total_price": "120.00", "currency": "EUR",
        "financial_status": "paid", "fulfillment_status": "fulfilled",
        "created_at": delivered - chrono::Duration::days(3),
        "customer": {"first_name": "Zoë", "last_name": "Núñez", "email": "zoe@example.com"},
        "line_items": [
            {"id": 7011, "title": "Linen shirt", "sku": "SHIRT-M", "quantity": 2, "price": "20.00"},
            {"id": 7012, "title": "Rain jacket", "sku": "JACKET-L", "quantity": 1, "price": "80.00"}
        ],
        "shipping_address": {"name": "Zoë Núñez", "address1": "Calle Mayor 1", "city": "Sevilla", "zip": "41001", "country": "ES"},
        "fulfillments": [{"status": "success", "shipment_status": "delivered", "tracking_company": "DHL",
                          "tracking_number": "JD7001", "delivered_at": delivered}]
    }))
    .await;
    stored_orders(&node, "applied", 1).await;
    let (ticket, agent_token) =
        held_ticket(&h, &node, "zoe@example.com", "the jacket arrived torn").await;
    let sup_token = h.issue_token(&node, "supervisor", None, "sue").await;

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("browser-artifacts/console-orders");
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, dir) = (node.base.clone(), dir.clone());
        move || {
            Command::new("node")
                .arg(repo().join("console/tests/orders.cjs"))
                .env("NODE_PATH", node_modules())
                .env("BASE", base)
                .env("AGENT_TOKEN", agent_token)
                .env("SUP_TOKEN", sup_token)
                .env("TICKET", ticket.to_string())
                .env("ORDER_NAME", "#7001")
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
        "console orders test failed (screenshots in {}):\n{log}\n{}",
        dir.display(),
        node.log_tail()
    );
    // What the browser did, as the shop and the store have it: two refunds at the shop (20.00,
    // then 80.00 once approved), the return rejected with the supervisor's reason.
    assert_eq!(shop.applied("refund").await, 2, "{log}");
    let refunded: i64 = shop.order(701).await["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64)
        .sum();
    assert_eq!(refunded, 10_000, "{log}");
    let pool = h.pg().await;
    let states: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT state, requested_by, decided_by FROM order_actions WHERE ticket_id = $1 ORDER BY created_at",
    )
    .bind(ticket)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.iter().all(|(s, _, _)| s == "done"), "{states:?}");
    assert!(
        states[1].2.is_some(),
        "the approval is recorded: {states:?}"
    );
    // The replacement: one new order at the shop, for one shirt, at no charge.
    assert_eq!(shop.applied("create").await, 1, "{log}");
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM order_actions WHERE ticket_id = $1 ORDER BY created_at",
    )
    .bind(ticket)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["refund", "refund", "resend"]);
    let (status, why): (String, Option<String>) =
        sqlx::query_as("SELECT status, reject_reason FROM returns WHERE ticket_id = $1")
            .bind(ticket)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "rejected");
    assert!(why.unwrap().contains("more photos"));
}
