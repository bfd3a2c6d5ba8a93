//! Post-purchase workflows against real services and the stand-in shop (`switchboard-sim shop`,
//! a separate process speaking Shopify's Admin API shapes): order actions (idempotent through
//! their ledger, refund limits and approval, the shop's refusals, 429s and timeouts), returns
//! (the policy per line, auto-approval, people's decisions told to the customer, the refund that
//! settles one), and the bot answering where-is-my-order from the shop's data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::mail::{smtp_accepted, DOMAIN};
use common::shop::{held_ticket, shop_env, stored_orders, Shop};
use common::{assert_refused, count, eventually, free_port, start, Harness, Node, ALL, CORE};

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

fn env(shop_port: u16) -> Vec<(&'static str, String)> {
    let mut env = shop_env(shop_port, 5000);
    env.extend([
        (
            "SWITCHBOARD__HTTP__PUBLIC_URL",
            "https://help.example.com".into(),
        ),
        ("SWITCHBOARD__CHANNELS__EMAIL__DOMAIN", DOMAIN.into()),
        (
            "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
            format!("help@{DOMAIN}"),
        ),
    ]);
    env
}

/// A date as the bot writes it.
fn day(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%-d %B %Y").to_string()
}

fn order(id: u64, name: &str, email: &str, total: &str) -> Value {
    json!({
        "id": id, "name": name, "email": email, "total_price": total, "currency": "USD",
        "financial_status": "paid", "created_at": chrono::Utc::now() - chrono::Duration::days(3),
        "customer": {"first_name": "Zoë", "last_name": "Núñez", "email": email},
        "line_items": [
            {"id": id * 10 + 1, "title": "Linen shirt", "sku": "SHIRT-M", "quantity": 2, "price": "20.00"},
            {"id": id * 10 + 2, "title": "Gift card", "sku": "GIFT", "quantity": 1, "price": "50.00"}
        ],
    })
}

async fn order_id(h: &Harness, external: u64) -> Uuid {
    let pool = h.pg().await;
    sqlx::query_scalar("SELECT id FROM orders WHERE external_id = $1")
        .bind(external.to_string())
        .fetch_one(&pool)
        .await
        .unwrap()
}

/// A ticket `email` wrote by mail (a channel replies go back on), held by a fresh online agent:
/// (ticket, agent token).
async fn mailed_ticket(h: &Harness, node: &Node, email: &str, text: &str) -> (Uuid, String) {
    let agent = h
        .agent(
            node,
            &format!("agent-{}@example.com", Uuid::now_v7().simple()),
            &[],
            20,
            false,
        )
        .await;
    let raw = format!(
        "From: <{email}>\r\nTo: help@{DOMAIN}\r\nSubject: my order\r\nMessage-ID: <m-{}@example.com>\r\n\r\n{text}\r\n",
        Uuid::now_v7().simple()
    );
    smtp_accepted(&node.smtp, email, raw.as_bytes()).await;
    let pool = h.pg().await;
    let ticket: Uuid = eventually("the mailed ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT t.id FROM tickets t JOIN customer_identities i ON i.customer_id = t.customer_id
                  WHERE t.channel = 'email' AND i.kind = 'email' AND i.value = $1",
            )
            .bind(email)
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

#[tokio::test(flavor = "multi_thread")]
async fn order_actions_run_once_at_the_shop_and_wait_for_a_supervisor_above_the_limit() {
    let shop_port = free_port();
    let mut extra = env(shop_port);
    extra.push(("SWITCHBOARD__MODELS__ENABLED", "false".into()));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (h, node) = start(CORE, &extra).await;
    let shop = Shop::start(shop_port, &node);
    shop.put(order(501, "#1001", "buyer@example.com", "120.00"))
        .await;
    let mut shipped = order(502, "#1002", "buyer@example.com", "40.00");
    shipped["fulfillment_status"] = json!("fulfilled");
    shipped["fulfillments"] =
        json!([{"status": "success", "tracking_company": "UPS", "tracking_number": "1Z1"}]);
    shipped["shipping_address"] = json!({"name": "Zoë Núñez", "address1": "Hauptstraße 5",
        "city": "Köln", "zip": "50667", "country": "DE"});
    shop.put(shipped).await;
    stored_orders(&node, "applied", 2).await;
    let (o1, o2) = (order_id(&h, 501).await, order_id(&h, 502).await);
    let (ticket, ann_token) = held_ticket(
        &h,
        &node,
        "buyer@example.com",
        "please refund part of #1001",
    )
    .await;
    let ann = h.caller(&node, &ann_token);
    let sup_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sup = h.caller(&node, &sup_token);

    // An agent acts through the ticket it holds, on its customer's orders only.
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"amount_cents": 3000}),
        )
        .await;
    assert_refused(s, &v, 400, "ticket_id");
    let (other, _) = held_ticket(&h, &node, "someone-else@example.com", "hello").await;
    let (s, v) = sup
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": other, "amount_cents": 100}),
        )
        .await;
    assert_refused(s, &v, 400, "ticket_id");
    // Hostile fields are named.
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "note": "a\u{0}b"}),
        )
        .await;
    assert_refused(s, &v, 400, "note");
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "amount_cents": 1_000_000}),
        )
        .await;
    assert_refused(s, &v, 400, "amount_cents");
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "request_key": "ключ"}),
        )
        .await;
    assert_refused(s, &v, 400, "request_key");

    // Within the limit: done at the shop at once; the same request_key again is the same action.
    let body = json!({"ticket_id": ticket, "amount_cents": 3000, "note": "sorry — late", "request_key": "r-1"});
    let (s, first) = ann
        .post(&format!("/v1/orders/{o1}/refund"), body.clone())
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["state"], "done");
    let (s, again) = ann.post(&format!("/v1/orders/{o1}/refund"), body).await;
    assert_eq!((s, &again["id"]), (200, &first["id"]));
    assert_eq!(shop.applied("refund").await, 1);

    // Splitting does not dodge the limit: another 30.00 by the same agent on the order makes
    // 60.00, above its 50.00; a supervisor rejects it, with a reason on the ticket.
    let (s, split) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "amount_cents": 3000}),
        )
        .await;
    assert_eq!(
        (s, split["state"].as_str()),
        (202, Some("awaiting_approval")),
        "{split}"
    );
    let (s, v) = sup
        .post(
            &format!("/v1/order-actions/{}/reject", split["id"].as_str().unwrap()),
            json!({"reason": "one refund per order, please"}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("rejected")), "{v}");
    assert_eq!(shop.applied("refund").await, 1);

    // Above the agent's 50.00: waits for a supervisor, who approves; the shop refunds then.
    let (s, waiting) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "amount_cents": 8000}),
        )
        .await;
    assert_eq!(s, 202, "{waiting}");
    assert_eq!(waiting["state"], "awaiting_approval");
    assert_eq!(shop.applied("refund").await, 1);
    let (s, list) = sup.get("/v1/order-actions?state=awaiting_approval").await;
    assert_eq!(s, 200);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == waiting["id"]),
        "{list}"
    );
    let (s, v) = ann
        .post(
            &format!(
                "/v1/order-actions/{}/approve",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, done) = sup
        .post(
            &format!(
                "/v1/order-actions/{}/approve",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["state"], "done");
    assert!(
        done["decided_by"].as_str().unwrap().starts_with("token:"),
        "{done}"
    );
    assert_eq!(shop.applied("refund").await, 2);
    // 10.00 left: more is refused before the shop is asked.
    let (s, v) = sup
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"amount_cents": 1001}),
        )
        .await;
    assert_refused(s, &v, 400, "amount_cents");

    // The shop rate-limits: 503 with Retry-After, nothing refunded; the same key later: done.
    shop.fail(json!({"status": 429, "retry_after": 2})).await;
    let body = json!({"ticket_id": ticket, "amount_cents": 300, "request_key": "r-429"});
    let r = h
        .http
        .post(format!("{}/v1/orders/{o1}/refund", node.base))
        .bearer_auth(&sup_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(common::header(&r, "retry-after"), "2");
    assert_eq!(shop.applied("refund").await, 2);
    let (s, v) = sup.post(&format!("/v1/orders/{o1}/refund"), body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["attempts"].as_i64()),
        (Some("done"), Some(2))
    );
    assert_eq!(shop.applied("refund").await, 3);

    // The shop applies it but answers too late: pending. The shop here ignores the
    // Idempotency-Key (a REST Admin API may), so the retry finds the refund among the order's
    // by the action's id in its note and refunds nothing more.
    shop.mode(json!({"idempotency": false})).await;
    shop.fail(json!({"status": 0, "delay_ms": 3000})).await;
    let body = json!({"ticket_id": ticket, "amount_cents": 200, "request_key": "r-slow"});
    let (s, v) = sup
        .post(&format!("/v1/orders/{o1}/refund"), body.clone())
        .await;
    assert_eq!(s, 503, "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(shop.applied("refund").await, 4);
    // Meanwhile nothing more can be refunded than is left with this one under way.
    let (s, v) = sup
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"amount_cents": 600}),
        )
        .await;
    assert_refused(s, &v, 400, "amount_cents");
    let (s, v) = sup.post(&format!("/v1/orders/{o1}/refund"), body).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(v["result"]["reconciled"], true, "{v}");
    assert_eq!(shop.applied("refund").await, 4);
    let paid_back: i64 = shop.order(501).await["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64)
        .sum();
    assert_eq!(paid_back, 3000 + 8000 + 300 + 200);

    // The shop refuses: no cancel after fulfilment (422 with its reason, the action failed).
    let (s, v) = sup
        .post(
            &format!("/v1/orders/{o2}/cancel"),
            json!({"reason": "customer"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fulfilled"),
        "{v}"
    );
    // The address changes before shipping; the shop tells Switchboard, which stores it.
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/address"),
            json!({"ticket_id": ticket, "shipping_address": {"address1": "Calle Mayor 1", "city": "Sevilla", "zip": "41001", "country": "ES", "name": "José"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(shop.order(501).await["shipping_address"]["city"], "Sevilla");
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/address"),
            json!({"ticket_id": ticket, "shipping_address": {"address1": "x".repeat(10_000), "city": "S", "zip": "1", "country": "ES"}}),
        )
        .await;
    assert_refused(s, &v, 400, "shipping_address.address1");
    let pool = h.pg().await;
    eventually(
        "the shop's change stored",
        Duration::from_secs(30),
        || async {
            let city: Option<String> =
                sqlx::query_scalar("SELECT shipping_address->>'city' FROM orders WHERE id = $1")
                    .bind(o1)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (city.as_deref() == Some("Sevilla")).then_some(())
        },
    )
    .await;
    // A supervisor cancels; Switchboard hears the cancellation back from the shop.
    let (s, v) = sup
        .post(&format!("/v1/orders/{o1}/cancel"), json!({"refund": false}))
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    eventually(
        "the cancellation stored",
        Duration::from_secs(30),
        || async {
            let (s, v) = sup.get(&format!("/v1/orders/{o1}")).await;
            (s == 200 && v["cancelled_at"].is_string()).then_some(v)
        },
    )
    .await;

    // The shipped order's parcel was lost: a replacement (a new order at the shop, at no
    // charge) for one shirt. Lines it does not have, too many, a hostile reason: named.
    for (body, field) in [
        (
            json!({"ticket_id": ticket, "items": [{"line_item_id": "9999", "quantity": 1}]}),
            "items",
        ),
        (
            json!({"ticket_id": ticket, "items": [{"line_item_id": "5021", "quantity": 3}]}),
            "items",
        ),
        (
            json!({"ticket_id": ticket, "items": [{"line_item_id": "5021", "quantity": 1}, {"line_item_id": "5021", "quantity": 1}]}),
            "items",
        ),
        (json!({"ticket_id": ticket, "items": []}), "items"),
        (
            json!({"ticket_id": ticket, "reason": "lost\u{0}\u{1b}[31m"}),
            "reason",
        ),
    ] {
        let (s, v) = ann.post(&format!("/v1/orders/{o2}/resend"), body).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/resend"),
            json!({"ticket_id": ticket}),
        )
        .await;
    assert_eq!(s, 409, "a cancelled order is not sent again: {v}");
    // The shop creates it but answers too late (and ignores the key, as set above): pending;
    // the retry finds the replacement by the action's id in its note and creates nothing more.
    let body = json!({"ticket_id": ticket, "items": [{"line_item_id": "5021", "quantity": 1}],
        "reason": "lost in transit — DHL confirmed", "request_key": "resend-1"});
    shop.fail(json!({"status": 0, "delay_ms": 3000})).await;
    let (s, v) = ann
        .post(&format!("/v1/orders/{o2}/resend"), body.clone())
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(shop.applied("create").await, 1);
    let (s, v) = ann
        .post(&format!("/v1/orders/{o2}/resend"), body.clone())
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(v["result"]["reconciled"], true, "{v}");
    let replacement = v["result"]["order"]["name"].as_str().unwrap().to_string();
    assert_eq!(v["result"]["order"]["line_items"][0]["quantity"], 1, "{v}");
    assert_eq!(
        v["result"]["order"]["line_items"][0]["price"], "0.00",
        "{v}"
    );
    assert_eq!(shop.applied("create").await, 1);
    let (s, again) = ann.post(&format!("/v1/orders/{o2}/resend"), body).await;
    assert_eq!((s, &again["id"]), (200, &v["id"]), "{again}");
    assert_eq!(shop.applied("create").await, 1);
    // What was sent again counts: one shirt of two is left to send, the address is the order's.
    let (s, v2) = ann
        .post(
            &format!("/v1/orders/{o2}/resend"),
            json!({"ticket_id": ticket, "items": [{"line_item_id": "5021", "quantity": 2}]}),
        )
        .await;
    assert_refused(s, &v2, 400, "items");
    assert_eq!(
        shop.order(v["result"]["order"]["id"].as_u64().unwrap())
            .await["shipping_address"]["city"],
        "Köln"
    );
    // A replacement's goods count against the agent's limit as a refund does: the gift card
    // (50.00) on top of the shirt sent before (20.00) is above Ann's 50.00, so it waits for a
    // supervisor, and nothing reaches the shop until one approves.
    let (s, waiting) = ann
        .post(
            &format!("/v1/orders/{o2}/resend"),
            json!({"ticket_id": ticket, "items": [{"line_item_id": "5022", "quantity": 1}]}),
        )
        .await;
    assert_eq!(
        (s, waiting["state"].as_str()),
        (202, Some("awaiting_approval")),
        "{waiting}"
    );
    assert_eq!(waiting["params"]["value_cents"], 5000, "{waiting}");
    assert_eq!(shop.applied("create").await, 1);
    let (s, v3) = ann
        .post(
            &format!(
                "/v1/order-actions/{}/approve",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, 403, "an agent does not approve: {v3}");
    let (s, v3) = sup
        .post(
            &format!(
                "/v1/order-actions/{}/approve",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!((s, v3["state"].as_str()), (200, Some("done")), "{v3}");
    assert_eq!(shop.applied("create").await, 2);
    // The shop tells Switchboard about the new order: the customer's, beside the ticket.
    eventually("the replacement stored", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE number = $1 AND customer_id = (SELECT customer_id FROM orders WHERE id = $2)",
        )
        .bind(&replacement)
        .bind(o2)
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let sent = count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{ticket}' AND direction = 'note' AND text = 'Sent a replacement for order #1002: order {replacement} (1 × Linen shirt).'")).await;
    assert_eq!(sent, 1);

    // Recorded on the ticket (internal notes) and in the audit trail.
    let notes = count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{ticket}' AND direction = 'note' AND text LIKE 'Refunded %'")).await;
    assert_eq!(notes, 4);
    let rejected = count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{ticket}' AND direction = 'note' AND text LIKE '%rejected by a supervisor: one refund per order%'")).await;
    assert_eq!(rejected, 1);
    let audited = count(
        &pool,
        "SELECT count(*) FROM audit_log WHERE action LIKE 'order%'",
    )
    .await;
    assert!(audited >= 8, "{audited}");
}

/// The order action a rule asked for on `order`, once it is in `state`.
async fn rule_action(pool: &sqlx::PgPool, order: Uuid, kind: &str, state: &str) -> Value {
    let (pool, kind, state) = (pool.clone(), kind.to_string(), state.to_string());
    eventually(
        &format!("a rule's {kind} {state}"),
        Duration::from_secs(60),
        || {
            let (pool, kind, state) = (pool.clone(), kind.clone(), state.clone());
            async move {
                sqlx::query_scalar::<_, Value>(
                    "SELECT jsonb_build_object('id', id, 'amount_cents', amount_cents, 'requested_by', requested_by)
                       FROM order_actions WHERE order_id = $1 AND kind = $2 AND state = $3 AND requested_by LIKE 'rule:%'",
                )
                .bind(order)
                .bind(&kind)
                .bind(&state)
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_cancel_and_refund_orders_within_the_rules_own_limit() {
    let shop_port = free_port();
    let mut extra = env(shop_port);
    extra.push(("SWITCHBOARD__MODELS__ENABLED", "false".into()));
    extra.push((
        "SWITCHBOARD__SHOP__REFUND_LIMITS__RULES_CENTS",
        "1000".into(),
    ));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (h, node) = start(CORE, &extra).await;
    let shop = Shop::start(shop_port, &node);
    shop.put(order(601, "#1101", "early@example.com", "90.00"))
        .await;
    shop.put(order(602, "#1102", "changed-mind@example.com", "90.00"))
        .await;
    stored_orders(&node, "applied", 2).await;
    let (o1, o2) = (order_id(&h, 601).await, order_id(&h, 602).await);
    let pool = h.pg().await;
    for (name, words, action) in [
        (
            "late delivery credit",
            "late delivery credit",
            json!({"type": "order", "action": "refund", "amount_cents": 500}),
        ),
        (
            "cancel on request",
            "cancel it please",
            json!({"type": "order", "action": "cancel"}),
        ),
    ] {
        let (s, v) = h
            .post(
                &node,
                "/v1/rules",
                json!({"name": name, "enabled": true, "kind": "trigger", "on": ["message_received"],
                       "conditions": {"all": [{"field": "message.text", "op": "contains", "value": words}]},
                       "actions": [action]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // A bad order action is named when the rule is saved.
    let (s, v) = h
        .post(
            &node,
            "/v1/rules",
            json!({"name": "bad", "kind": "trigger", "on": ["created"],
                   "actions": [{"type": "order", "action": "refund", "amount_cents": -5}]}),
        )
        .await;
    assert_refused(s, &v, 400, "actions[0].amount_cents");

    // 5.00 is within the rules' 10.00: refunded at the shop at once, noted on the ticket.
    let (t1, _) = held_ticket(
        &h,
        &node,
        "early@example.com",
        "a late delivery credit for #1101 would be nice — merci",
    )
    .await;
    let refund = rule_action(&pool, o1, "refund", "done").await;
    assert_eq!(refund["amount_cents"], 500, "{refund}");
    assert_eq!(shop.applied("refund").await, 1);
    let noted = count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{t1}' AND direction = 'note' AND text LIKE 'Refunded 5.00 USD%'")).await;
    assert_eq!(noted, 1);

    // A cancel refunds the 90.00 paid: above the rules' limit, so it waits for a supervisor,
    // and the shop hears nothing until one approves.
    held_ticket(
        &h,
        &node,
        "changed-mind@example.com",
        "Order #1102: cancel it please, I ordered twice",
    )
    .await;
    let waiting = rule_action(&pool, o2, "cancel", "awaiting_approval").await;
    assert_eq!(waiting["amount_cents"], 9000, "{waiting}");
    assert_eq!(shop.applied("cancel").await, 0);
    let sup_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sup = h.caller(&node, &sup_token);
    let (s, v) = sup
        .post(
            &format!(
                "/v1/order-actions/{}/approve",
                waiting["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(shop.applied("cancel").await, 1);
    eventually(
        "the cancellation stored",
        Duration::from_secs(30),
        || async {
            let (s, v) = sup.get(&format!("/v1/orders/{o2}")).await;
            (s == 200 && v["cancelled_at"].is_string()).then_some(v)
        },
    )
    .await;

    // Asked again on the cancelled order: the rule's request is refused, and its people read why.
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "changed-mind@example.com"},
                   "text": "hello?? #1102 cancel it please \u{202e}"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    eventually("the refusal noted", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n = count(&pool, "SELECT count(*) FROM messages WHERE direction = 'note' AND text = 'Rule «cancel on request» could not cancel the order: the order is already cancelled'").await;
            (n == 1).then_some(())
        }
    })
    .await;
    assert_eq!(shop.applied("cancel").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn returns_follow_the_policy_line_by_line_and_the_customer_hears_each_decision() {
    let shop_port = free_port();
    let mut extra = env(shop_port);
    extra.push(("SWITCHBOARD__MODELS__ENABLED", "false".into()));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (h, node) = start(ALL, &extra).await;
    let shop = Shop::start(shop_port, &node);
    let mut delivered = order(601, "#2001", "ret@example.com", "90.00");
    delivered["fulfillment_status"] = json!("fulfilled");
    delivered["fulfillments"] = json!([{"status": "success", "shipment_status": "delivered",
        "tracking_company": "DPD", "delivered_at": chrono::Utc::now() - chrono::Duration::days(2)}]);
    shop.put(delivered).await;
    let mut sale = order(602, "#2002", "ret@example.com", "90.00");
    sale["tags"] = json!("final-sale, summer");
    shop.put(sale).await;
    stored_orders(&node, "applied", 2).await;
    let o1 = order_id(&h, 601).await;

    // The help centre: lines and why not, by order number and email.
    let (s, v) = h
        .post(
            &node,
            "/returns/lookup",
            json!({"order_number": "2001", "email": "RET@example.com"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lines"].as_array().unwrap().len(), 2);
    assert!(
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["eligible"] == true),
        "{v}"
    );
    let (s, _) = h
        .post(
            &node,
            "/returns/lookup",
            json!({"order_number": "2001", "email": "other@example.com"}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = h
        .post(
            &node,
            "/returns/lookup",
            json!({"order_number": "#2002", "email": "ret@example.com"}),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        v["lines"][0]["why_not"]
            .as_str()
            .unwrap()
            .contains("final-sale"),
        "{v}"
    );
    let (s, v) = h
        .post(&node, "/returns", json!({"order_number": "#2002", "email": "ret@example.com", "reason": "did_not_fit", "items": [{"line_item_id": "6021", "quantity": 1}]}))
        .await;
    assert_refused(s, &v, 400, "items[0]");
    // Hostile input: unknown reasons and fields, huge notes, control characters.
    let (s, v) = h
        .post(&node, "/returns", json!({"order_number": "2001", "email": "ret@example.com", "reason": "bored", "items": []}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h
        .post(&node, "/returns", json!({"order_number": "2001", "email": "ret@example.com", "reason": "other", "note": "n".repeat(5000), "items": [{"line_item_id": "6011", "quantity": 1}]}))
        .await;
    assert_refused(s, &v, 400, "note");

    // Simple and cheap: the policy approves it itself.
    let (s, auto) = h
        .post(&node, "/returns", json!({"order_number": "2001", "email": "ret@example.com", "reason": "did_not_fit", "resolution": "exchange", "note": "too small \u{1b}[31m", "items": [{"line_item_id": "6011", "quantity": 1}]}))
        .await;
    assert_eq!(s, 201, "{auto}");
    assert_eq!(
        (auto["status"].as_str(), auto["automatic"].as_bool()),
        (Some("approved"), Some(true))
    );
    assert!(auto["number"].as_str().unwrap().starts_with("RMA-"));
    assert_eq!(auto["value_cents"], 2000);
    assert_eq!(auto["customer_pays_shipping"], true);
    // The same form sent again (a double click, a replayed request): the return it made.
    let (s, again) = h
        .post(&node, "/returns", json!({"order_number": "2001", "email": "ret@example.com", "reason": "did_not_fit", "resolution": "exchange", "note": "too small \u{1b}[31m", "items": [{"line_item_id": "6011", "quantity": 1}]}))
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], auto["id"]);
    // One shirt left to return.
    let (s, v) = h
        .post(&node, "/returns", json!({"order_number": "2001", "email": "ret@example.com", "reason": "did_not_fit", "items": [{"line_item_id": "6011", "quantity": 2}]}))
        .await;
    assert_refused(s, &v, 400, "items[0].quantity");

    // Damaged, from a ticket: a person decides; the customer hears it on the ticket.
    let (ticket, ann) =
        mailed_ticket(&h, &node, "ret@example.com", "the gift card arrived torn").await;
    let ann = h.caller(&node, &ann);
    let (s, damaged) = ann
        .post("/v1/returns", json!({"order_id": o1, "ticket_id": ticket, "reason": "damaged", "items": [{"line_item_id": "6012", "quantity": 1}]}))
        .await;
    assert_eq!(s, 201, "{damaged}");
    assert_eq!(damaged["status"], "requested");
    let rid = damaged["id"].as_str().unwrap().to_string();
    let (s, v) = ann
        .post(
            &format!("/v1/returns/{rid}/status"),
            json!({"status": "received"}),
        )
        .await;
    assert_refused(s, &v, 409, "status");
    let (s, v) = ann
        .post(&format!("/v1/returns/{rid}/reject"), json!({"reason": ""}))
        .await;
    assert_refused(s, &v, 400, "reason");
    let (s, v) = ann
        .post(&format!("/v1/returns/{rid}/approve"), json!({"version": 1}))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    let (s, v) = ann
        .post(
            &format!("/v1/returns/{rid}/reject"),
            json!({"reason": "too late"}),
        )
        .await;
    assert_refused(s, &v, 409, "status");
    let (s, v) = ann
        .post(
            &format!("/v1/returns/{rid}/status"),
            json!({"status": "received"}),
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("received")), "{v}");
    // The refund that settles it moves it to refunded.
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "amount_cents": 5000, "return_id": rid}),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    let (_, v) = ann.get(&format!("/v1/returns/{rid}")).await;
    assert_eq!(v["status"], "refunded", "{v}");
    assert!(v["refunded_at"].is_string());

    // A second request, rejected with a reason the customer reads.
    let (s, second) = ann
        .post("/v1/returns", json!({"order_id": o1, "ticket_id": ticket, "reason": "damaged", "items": [{"line_item_id": "6011", "quantity": 1}]}))
        .await;
    assert_eq!(s, 201, "{second}");
    let (s, v) = ann
        .post(
            &format!("/v1/returns/{}/reject", second["id"].as_str().unwrap()),
            json!({"reason": "the photos show it was worn"}),
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("rejected")), "{v}");
    // A rejected return is not refunded.
    let (s, v) = ann
        .post(
            &format!("/v1/orders/{o1}/refund"),
            json!({"ticket_id": ticket, "amount_cents": 100, "return_id": second["id"]}),
        )
        .await;
    assert_refused(s, &v, 400, "return_id");
    let (_, t) = ann.get(&format!("/v1/tickets/{ticket}")).await;
    let told: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(told.iter().any(|m| m.contains("is approved")), "{told:?}");
    assert!(
        told.iter()
            .any(|m| m.contains("the photos show it was worn")),
        "{told:?}"
    );

    // The supervisor's figures; each step in ClickHouse.
    let sup = h.issue_token(&node, "supervisor", None, "sue").await;
    let (s, stats) = h.caller(&node, &sup).get("/v1/returns/stats").await;
    assert_eq!(s, 200, "{stats}");
    let reasons: Vec<(&str, i64)> = stats["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["key"].as_str().unwrap(), c["returns"].as_i64().unwrap()))
        .collect();
    assert!(
        reasons.contains(&("damaged", 2)) && reasons.contains(&("did_not_fit", 1)),
        "{reasons:?}"
    );
    assert!(
        (stats["auto_approved_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-6,
        "{stats}"
    );
    assert!(stats["hours_to_refund_p50"].is_number(), "{stats}");
    let steps = eventually("the return steps in ClickHouse", Duration::from_secs(60), || async {
        let n: i64 = h
            .ch("SELECT uniqExact(event_id) FROM events WHERE schema = 'commerce_event' AND kind = 'return'")
            .await
            .trim()
            .parse()
            .unwrap_or(0);
        // auto: requested, approved; damaged: requested, approved, received, refunded;
        // second: requested, rejected.
        (n >= 8).then_some(n)
    })
    .await;
    assert_eq!(steps, 8);

    // A return from the help centre that waits for a person opens a ticket (by email, the
    // address the customer gave): it reaches the agents' queue, and the return is the ticket's.
    // One the policy approved itself opened none.
    let pool = h.pg().await;
    let mut desk = order(604, "#2004", "desk@example.com", "60.00");
    desk["fulfillment_status"] = json!("fulfilled");
    desk["fulfillments"] = json!([{"status": "success", "shipment_status": "delivered",
        "tracking_company": "DPD", "delivered_at": chrono::Utc::now() - chrono::Duration::days(2)}]);
    shop.put(desk).await;
    eventually(
        "the order in the help centre",
        Duration::from_secs(60),
        || async {
            let (s, _) = h
                .post(
                    &node,
                    "/returns/lookup",
                    json!({"order_number": "2004", "email": "desk@example.com"}),
                )
                .await;
            (s == 200).then_some(())
        },
    )
    .await;
    // Sent twice at once (a double click): one return, both answers name it.
    let form = json!({"order_number": "2004", "email": "Desk@Example.com", "reason": "damaged",
        "note": "the seam split — фото по запросу", "items": [{"line_item_id": "6041", "quantity": 1}]});
    let ((s1, r1), (s2, r2)) = tokio::join!(
        h.post(&node, "/returns", form.clone()),
        h.post(&node, "/returns", form.clone())
    );
    let mut statuses = [s1, s2];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{r1} {r2}");
    assert_eq!(r1["id"], r2["id"]);
    let r = r1;
    assert_eq!(r["status"].as_str(), Some("requested"), "{r}");
    let rid: Uuid = r["id"].as_str().unwrap().parse().unwrap();
    let (desk_ticket, channel): (Uuid, String) =
        eventually("the return's ticket", Duration::from_secs(60), || async {
            sqlx::query_as(
                "SELECT t.id, t.channel FROM returns r JOIN tickets t ON t.id = r.ticket_id WHERE r.id = $1",
            )
            .bind(rid)
            .fetch_optional(&pool)
            .await
            .unwrap()
        })
        .await;
    assert_eq!(channel, "email");
    let text: String = sqlx::query_scalar(
        "SELECT text FROM messages WHERE ticket_id = $1 AND direction = 'inbound'",
    )
    .bind(desk_ticket)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        text.contains(r["number"].as_str().unwrap())
            && text.contains("1 × Linen shirt")
            && text.contains("фото по запросу"),
        "{text}"
    );
    let linked = count(
        &pool,
        &format!(
            "SELECT count(*) FROM returns WHERE id = '{}' AND ticket_id IS NOT NULL",
            auto["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(linked, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_answers_where_is_my_order_from_the_shops_data_and_hands_over_late_parcels() {
    let shop_port = free_port();
    let mut extra = env(shop_port);
    extra.push(("SWITCHBOARD__KB__BOT_CHANNELS", "api,email".into()));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (h, node) = start(CORE, &extra).await;
    let shop = Shop::start(shop_port, &node);
    let now = chrono::Utc::now();
    let mut on_way = order(701, "#3001", "wismo@example.com", "35.00");
    on_way["fulfillment_status"] = json!("fulfilled");
    on_way["fulfillments"] = json!([{"status": "success", "shipment_status": "in_transit",
        "tracking_company": "Royal Mail", "tracking_number": "RM123456GB",
        "tracking_url": "https://track.example/RM123456GB", "created_at": now - chrono::Duration::days(1),
        "estimated_delivery_at": now + chrono::Duration::days(2),
        "last_event": {"status": "in_transit", "message": "Arrived at sorting centre", "location": "Leeds", "at": now - chrono::Duration::hours(5)}}]);
    shop.put(on_way).await;
    let mut late = order(702, "#3002", "late@example.com", "35.00");
    late["fulfillment_status"] = json!("fulfilled");
    late["fulfillments"] = json!([{"status": "success", "shipment_status": "in_transit",
        "tracking_company": "DHL", "tracking_number": "JD0001", "created_at": now - chrono::Duration::days(9),
        "estimated_delivery_at": now - chrono::Duration::days(3),
        "last_event": {"message": "Held at customs", "at": now - chrono::Duration::days(6)}}]);
    shop.put(late).await;
    let mut delivered = order(703, "#3003", "ret@example.com", "40.00");
    delivered["fulfillment_status"] = json!("fulfilled");
    delivered["fulfillments"] = json!([{"status": "success", "shipment_status": "delivered",
        "tracking_company": "DPD", "delivered_at": now - chrono::Duration::days(4)}]);
    shop.put(delivered).await;
    stored_orders(&node, "applied", 3).await;

    let ask = |email: &'static str, text: &'static str| {
        let h = &h;
        let node = &node;
        async move {
            let (s, v) = h
                .post(
                    node,
                    "/v1/messages",
                    json!({"channel": "api", "customer": {"email": email}, "text": text}),
                )
                .await;
            assert_eq!(s, 202, "{v}");
            let pool = h.pg().await;
            let m: Uuid = v["message_id"].as_str().unwrap().parse().unwrap();
            eventually("the bot", Duration::from_secs(60), || {
                let pool = pool.clone();
                async move {
                    let t: Option<Uuid> =
                        sqlx::query_scalar("SELECT ticket_id FROM messages WHERE id = $1")
                            .bind(m)
                            .fetch_optional(&pool)
                            .await
                            .unwrap();
                    let t = t?;
                    let (_, v) = h.get(node, &format!("/v1/tickets/{t}")).await;
                    v["messages"]
                        .as_array()?
                        .iter()
                        .any(|m| m["author"] == "bot")
                        .then_some(v)
                }
            })
            .await
        }
    };
    let bot = |t: &Value| -> String {
        t["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["author"] == "bot")
            .unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // On its way: told, and the ticket waits on the customer.
    let t = ask(
        "wismo@example.com",
        "where is my order #3001? it still hasn't arrived",
    )
    .await;
    let text = bot(&t);
    for part in [
        "#3001",
        "Royal Mail",
        "RM123456GB",
        "https://track.example/RM123456GB",
        "Arrived at sorting centre, Leeds",
        "Expected delivery",
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }
    assert_eq!(
        (t["status"].as_str(), t["bot_state"].as_str()),
        (Some("pending"), Some("answered")),
        "{t}"
    );

    // The only order on its way, not named: the same; late against the estimate: told and
    // handed to a person at high priority.
    let t = ask(
        "late@example.com",
        "hi, where is my order? the tracking hasn't moved in days",
    )
    .await;
    let text = bot(&t);
    assert!(
        text.contains("#3002")
            && text.contains("Held at customs")
            && text.contains("taking longer"),
        "{text}"
    );
    assert_eq!(
        (t["status"].as_str(), t["bot_state"].as_str()),
        (Some("open"), Some("handed_over")),
        "{t}"
    );
    assert!(
        matches!(t["priority"].as_str(), Some("high" | "urgent")),
        "{t}"
    );

    // "I want to return it": the return link for the delivered order, with its number and the
    // last day it can go back; the ticket waits on the customer.
    let t = ask(
        "ret@example.com",
        "hi, i want to return the linen shirt from my last order, it doesn't fit",
    )
    .await;
    let text = bot(&t);
    let until = day(now - chrono::Duration::days(4) + chrono::Duration::days(30));
    for part in [
        "#3003",
        "https://help.example.com/returns?order=3003",
        until.as_str(),
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }
    assert_eq!(t["bot_state"].as_str(), Some("answered"), "{t}");

    // An email is not proof of who sent it: the bot tells nothing about any order, it points
    // to the tracking page.
    let raw = format!(
        "From: Wismo <wismo@example.com>\r\nTo: help@{DOMAIN}\r\nSubject: where is my order\r\nMessage-ID: <w-{}@example.com>\r\n\r\nWhere is my order #3001? Has it shipped yet?\r\n",
        Uuid::now_v7().simple()
    );
    smtp_accepted(&node.smtp, "wismo@example.com", raw.as_bytes()).await;
    let pool = h.pg().await;
    let text: String = eventually(
        "the bot's answer by email",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT m.text FROM messages m JOIN tickets t ON t.id = m.ticket_id
              WHERE t.channel = 'email' AND m.author = 'bot'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert!(text.contains("https://help.example.com/track"), "{text}");
    assert!(
        !text.contains("RM123456GB") && !text.contains("Royal Mail"),
        "{text}"
    );
}
