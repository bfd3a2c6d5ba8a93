//! The shop's side of the orders webhook: signed order updates, and waiting for the orders
//! stage to store them.

use std::time::Duration;

use serde_json::Value;

use super::{eventually, Harness, Node};

/// Posts `body` to `/webhooks/orders` signed with `secret` as Shopify signs: the status and
/// the answer.
pub async fn order(h: &Harness, base: &str, body: &Value, secret: &str) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let r = h
        .http
        .post(format!("{base}/webhooks/orders"))
        .header("content-type", "application/json")
        .header(
            "x-shopify-hmac-sha256",
            switchboard_ingest::orders::sign(secret, &raw),
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the orders stage has stored `n` updates with `outcome` (`applied`, or
/// `unchanged`: a redelivered or older version), as its counter on `/metrics` says.
pub async fn stored_orders(node: &Node, outcome: &str, n: u64) {
    let label = format!("outcome=\"{outcome}\"");
    eventually(
        &format!("{n} order updates {outcome}"),
        Duration::from_secs(60),
        || async {
            let text = reqwest::get(format!("{}/metrics", node.base))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let seen: u64 = text
                .lines()
                .filter(|l| l.starts_with("switchboard_orders_total{") && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            (seen >= n).then_some(())
        },
    )
    .await;
}
