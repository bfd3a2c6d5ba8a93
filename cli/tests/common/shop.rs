//! The shop's side of the orders webhook: signed order updates, and waiting for the orders
//! stage to store them.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{eventually, Harness, Node};

/// The stand-in shop's webhook secret and Admin API token in tests.
pub const SECRET: &str = "shop-secret";
pub const TOKEN: &str = "shpat_test";

/// What a test's Switchboard needs to talk to the stand-in shop on `port` (and to take its
/// webhooks), with an agent's refund limit of `agent_limit_cents`.
pub fn shop_env(port: u16, agent_limit_cents: i64) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", SECRET.into()),
        (
            "SWITCHBOARD__SHOP__ADMIN_API__URL",
            format!("http://127.0.0.1:{port}/admin/api/2024-10"),
        ),
        ("SWITCHBOARD__SHOP__ADMIN_API__ACCESS_TOKEN", TOKEN.into()),
        ("SWITCHBOARD__SHOP__ADMIN_API__TIMEOUT_MS", "1500".into()),
        (
            "SWITCHBOARD__SHOP__REFUND_LIMITS__AGENT_CENTS",
            agent_limit_cents.to_string(),
        ),
    ]
}

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

/// The stand-in shop: its process (killed on drop) and its base URL.
pub struct Shop {
    child: Child,
    base: String,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Shop {
    /// Starts `switchboard-sim shop` on `port`, telling `node` about every change.
    pub fn start(port: u16, node: &Node) -> Shop {
        let sim = super::switchboard_bin().with_file_name("switchboard-sim");
        assert!(
            sim.is_file(),
            "build switchboard-sim first: {}",
            sim.display()
        );
        let mut child = Command::new(sim)
            .args([
                "shop",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--token",
                TOKEN,
            ])
            .args(["--webhook", &format!("{}/webhooks/orders", node.base)])
            .args(["--secret", SECRET])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        Shop {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn put(&self, order: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_control/orders", self.base))
            .json(&order)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    pub async fn mode(&self, m: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_control/mode", self.base))
            .json(&m)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    pub async fn fail(&self, f: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/_control/fail", self.base))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    /// Changes the shop applied of `kind` (refund, cancel, address).
    pub async fn applied(&self, kind: &str) -> u64 {
        let v: Value = reqwest::get(format!("{}/_control/stats", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["applied"][kind].as_u64().unwrap_or(0)
    }

    pub async fn order(&self, id: u64) -> Value {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/admin/api/2024-10/orders/{id}.json", self.base))
            .header("x-shopify-access-token", TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["order"].clone()
    }
}

/// A ticket of `email`'s, held by a fresh online agent: (ticket, agent token).
pub async fn held_ticket(h: &Harness, node: &Node, email: &str, text: &str) -> (Uuid, String) {
    let agent = h
        .agent(
            node,
            &format!("agent-{}@example.com", Uuid::now_v7().simple()),
            &[],
            20,
            false,
        )
        .await;
    let (s, v) = h
        .post(
            node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": email}, "text": text}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let message: Uuid = v["message_id"].as_str().unwrap().parse().unwrap();
    let pool = h.pg().await;
    let ticket: Uuid = eventually("the ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT ticket_id FROM messages WHERE id = $1")
                .bind(message)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await;
    let (s, v) = h
        .post(
            node,
            &format!("/v1/tickets/{ticket}/assign"),
            json!({"agent_id": agent, "reason": "test", "override": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let token = h.issue_token(node, "agent", Some(&agent), "ann").await;
    (ticket, token)
}
