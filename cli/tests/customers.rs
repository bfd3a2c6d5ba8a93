//! Orders from the shop's signed webhooks, the customer profile across channels, self-service
//! order tracking, and the satisfaction survey after resolution, over real services; mail whose
//! `From` is not the ticket's customer never joins that ticket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, strs, ALL, CORE};

use std::time::Duration;

use common::mail::smtp_send;
use common::shop::{order, stored_orders};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn orders_profile_tracking_and_the_survey_after_resolution() {
    let (h, node) = start(
        ALL,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "shop-secret"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret"),
            (
                "SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET",
                "shop-identity",
            ),
            ("SWITCHBOARD__HTTP__PUBLIC_URL", "https://help.example.com"),
            // Retention every second, keeping resolved tickets a day: nothing here is old enough.
            ("SWITCHBOARD__RETENTION__INTERVAL_SECS", "1"),
            ("SWITCHBOARD__RETENTION__CLOSED_TICKETS_DAYS", "1"),
        ],
    )
    .await;
    let created = json!({"id": 820982911946154508u64, "name": "#1001", "email": "Eve@Example.com",
        "customer": {"first_name": "Eve", "last_name": "Ng"}, "total_price": "129.90", "currency": "EUR",
        "financial_status": "paid", "fulfillment_status": null, "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z",
        "line_items": [{"title": "Trail shoes", "quantity": 1, "price": "129.90"}]});
    // Signatures: wrong secret or none: 401, nothing published.
    assert_eq!(order(&h, &node.base, &created, "guess").await.0, 401);
    let (s, v) = order(&h, &node.base, &created, "shop-secret").await;
    assert_eq!(
        (s, v["order"].as_str()),
        (202, Some("820982911946154508")),
        "{v}"
    );
    // The orders stage stores it; a redelivery changes nothing.
    stored_orders(&node, "applied", 1).await;
    assert_eq!(order(&h, &node.base, &created, "shop-secret").await.0, 202);
    stored_orders(&node, "unchanged", 1).await;
    let mut shipped = created.clone();
    shipped["fulfillment_status"] = json!("fulfilled");
    shipped["updated_at"] = json!("2026-11-21T08:00:00Z");
    shipped["fulfillments"] = json!([{"status": "success", "shipment_status": "in_transit", "tracking_company": "DHL",
        "tracking_number": "JD014600006281", "tracking_url": "https://track.example/JD014600006281"}]);
    assert_eq!(order(&h, &node.base, &shipped, "shop-secret").await.0, 202);
    stored_orders(&node, "applied", 2).await;
    // An older update arriving late changes nothing.
    assert_eq!(order(&h, &node.base, &created, "shop-secret").await.0, 202);
    stored_orders(&node, "unchanged", 2).await;
    let mut bad = created.clone();
    bad["email"] = Value::Null;
    let (s, v) = order(&h, &node.base, &bad, "shop-secret").await;
    assert_refused(s, &v, 400, "email");

    // The profile: her orders beside her tickets on every channel.
    let (s, _) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "eve@example.com"}, "text": "Where are my shoes?", "external_id": "eve-1"}))
        .await;
    assert_eq!(s, 202);
    let profile = eventually(
        "her ticket in the profile",
        Duration::from_secs(60),
        || async {
            let (s, v) = h.get(&node, "/v1/customers?email=eve@example.com").await;
            (s == 200 && v["tickets"].as_array().is_some_and(|t| !t.is_empty())).then_some(v)
        },
    )
    .await;
    assert_eq!(profile["name"], "Eve Ng");
    assert_eq!(profile["orders"][0]["number"], "#1001");
    assert_eq!(profile["orders"][0]["total_cents"], 12990);
    assert_eq!(
        profile["orders"][0]["fulfillments"][0]["tracking_number"],
        "JD014600006281"
    );
    assert_eq!(profile["identities"][0]["value"], "eve@example.com");
    assert_eq!(
        h.get(&node, "/v1/customers?email=nobody@example.com")
            .await
            .0,
        404
    );

    // Self-service tracking: her order with her email; anyone else's is the same 404.
    let track = |number: &str, email: &str| {
        let (h, base) = (&h, node.base.clone());
        let body = json!({"order_number": number, "email": email});
        async move {
            let r = h
                .http
                .post(format!("{base}/track"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = track("1001", "eve@example.com").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["fulfillments"][0]["shipment_status"], "in_transit");
    assert_eq!(track("#1001", "mallory@example.com").await.0, 404);
    assert_eq!(track("#9999", "eve@example.com").await.0, 404);
    assert_eq!(
        track("#1001", "not-an-email").await.1["error"]["field"],
        "email"
    );
    // Customers type the order as they see it: its name (#1001) or its number (1001), with
    // stray spaces; the same whether the shop's names carry the `#` or not.
    for typed in ["#1001", " 1001 ", "# 1001", "1001\u{a0}"] {
        let (s, v) = track(typed, "EVE@example.com").await;
        assert_eq!(
            (s, v["number"].as_str()),
            (200, Some("#1001")),
            "{typed:?}: {v}"
        );
    }
    let mut plain = created.clone();
    plain["id"] = json!("shop-2002");
    plain["name"] = json!("2002");
    assert_eq!(order(&h, &node.base, &plain, "shop-secret").await.0, 202);
    stored_orders(&node, "applied", 3).await;
    for typed in ["2002", "#2002"] {
        let (s, v) = track(typed, "eve@example.com").await;
        assert_eq!(
            (s, v["number"].as_str()),
            (200, Some("2002")),
            "{typed:?}: {v}"
        );
    }
    assert_eq!(track("#100", "eve@example.com").await.0, 404);
    assert_eq!(track("2002", "mallory@example.com").await.0, 404);
    // Hostile input is named, never a server error.
    let long = "9".repeat(65);
    for (number, email, field) in [
        ("10\u{0}01", "eve@example.com", "order_number"),
        ("#1001\u{1b}[2J", "eve@example.com", "order_number"),
        ("#", "eve@example.com", "order_number"),
        ("", "eve@example.com", "order_number"),
        (long.as_str(), "eve@example.com", "order_number"),
        ("#1001", "eve\u{0}@example.com", "email"),
        ("#1001", "ева@пример.рф\u{0}", "email"),
    ] {
        let (s, v) = track(number, email).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{number:?} {email:?}: {v}"
        );
    }
    for odd in [
        "#１００１",
        "٠١٠٠١",
        "#1001\u{301}",
        "😀",
        "#1001' OR '1'='1",
    ] {
        assert_eq!(track(odd, "eve@example.com").await.0, 404, "{odd:?}");
    }

    // A chat ticket (the shop signed Eve's identity: the chat is hers), resolved by its agent:
    // the survey goes out on the chat.
    let agent = h
        .agent(&node, "sam@example.com", &["shipping"], 3, true)
        .await;
    let sig = switchboard_ingest::chat::identity_hmac("shop-identity", "eve@example.com");
    let r = h
        .http
        .post(format!("{}/chat/sessions", node.base))
        .json(&json!({"identity": {"email": "eve@example.com"}, "identity_hmac": sig}))
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    let url = format!(
        "{}/chat/ws?token={}",
        node.base.replace("http://", "ws://"),
        session["token"].as_str().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "message", "client_id": "c1", "text": "The parcel tracking has not moved"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let pool = h.pg().await;
    let ticket: uuid::Uuid = eventually("the chat ticket assigned", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar("SELECT id FROM tickets WHERE channel = 'chat' AND assigned_agent_id IS NOT NULL")
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await;
    let (s, v) = h.ticket_status(&node, &ticket, "resolved").await;
    assert_eq!(s, 200, "{v}");
    let survey = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let f: Value = serde_json::from_str(t.as_str()).unwrap();
            if f["type"] == "message" {
                break f["text"].as_str().unwrap().to_string();
            }
        }
    };
    assert!(
        survey.contains("https://help.example.com/csat/"),
        "{survey}"
    );
    let token = survey.rsplit('/').next().unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{survey}");
    // The customer has the link; the ticket does not: whoever reads it (its agent, a
    // supervisor) sees the survey with its token redacted, and the store keeps no copy of it.
    let ann_token = h.issue_token(&node, "agent", Some(&agent), "t").await;
    let (s, t) = h
        .caller(&node, &ann_token)
        .get(&format!("/v1/tickets/{ticket}"))
        .await;
    assert_eq!(s, 200, "{t}");
    let shown = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"] == "survey")
        .map(|m| m["text"].as_str().unwrap().to_string())
        .expect("the survey among the ticket's messages");
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("/csat/[sent-to-the-customer]"), "{shown}");
    assert!(!t.to_string().contains(&token));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE strpos(text, $1) > 0")
            .bind(&token)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    let page = h.fetch(&node, &format!("/csat/{token}"), None).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("How did we do?"));
    let answer = |rating: i64| {
        let (h, url) = (&h, format!("{}/csat/{token}", node.base));
        async move {
            let r = h
                .http
                .post(url)
                .json(&json!({"rating": rating, "comment": "Quick and kind"}))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = answer(6).await;
    assert_refused(s, &v, 400, "rating");
    assert_eq!(answer(3).await.0, 204);
    // Changing the answer replaces it (the agent's sums count it once).
    assert_eq!(answer(4).await.0, 204);
    let (sum, answers): (f64, i32) =
        sqlx::query_as("SELECT csat_sum, csat_count FROM agents WHERE id = $1::uuid")
            .bind(&agent)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((sum, answers), (4.0, 1));
    let (s, report) = h.get(&node, "/v1/reports/csat").await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            report["sent"].as_i64(),
            report["answered"].as_i64(),
            report["mean"].as_f64()
        ),
        (Some(1), Some(1), Some(4.0))
    );
    assert_eq!(report["distribution"], json!([0, 0, 0, 1, 0]));
    assert_eq!(report["agents"][0]["answered"], 1);
    // Resolving again sends no second survey.
    let n = count(&pool, "SELECT count(*) FROM csat").await;
    assert_eq!(n, 1);
    assert_eq!(
        h.http
            .get(format!("{}/csat/nope", node.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Retention ran (every second) and kept the fresh resolved ticket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets WHERE id = $1")
        .bind(ticket)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    // Three days later (as far as the store knows) the job erases it with its messages and survey.
    sqlx::query("UPDATE tickets SET resolved_at = now() - interval '3 days' WHERE id = $1")
        .bind(ticket)
        .execute(&pool)
        .await
        .unwrap();
    eventually(
        "retention to erase the old ticket",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            async move {
                let n = count(
                    &pool,
                    "SELECT count(*) FROM erasures WHERE reason = 'retention'",
                )
                .await;
                (n == 1).then_some(())
            }
        },
    )
    .await;
    let left: (i64, i64) = sqlx::query_as("SELECT (SELECT count(*) FROM tickets WHERE id = $1), (SELECT count(*) FROM messages WHERE ticket_id = $1)")
        .bind(ticket)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, (0, 0));

    // Erasure: admins only; afterwards nothing of her is left in Postgres or ClickHouse.
    let customer = profile["id"].as_str().unwrap().to_string();
    let (s, _) = h
        .caller(
            &node,
            &h.issue_token(&node, "agent", Some(&agent), "t").await,
        )
        .delete(&format!("/v1/customers/{customer}"))
        .await;
    assert_eq!(s, 403);
    eventually(
        "her events in clickhouse",
        Duration::from_secs(30),
        || async {
            let n: u64 = h
                .ch("SELECT count() FROM events WHERE position(payload, 'eve@example.com') > 0")
                .await
                .parse()
                .unwrap();
            (n > 0).then_some(())
        },
    )
    .await;
    let (s, erased) = h.delete(&node, &format!("/v1/customers/{customer}")).await;
    assert_eq!(s, 200, "{erased}");
    assert_eq!(
        (
            erased["tickets"].as_u64(),
            erased["orders"].as_u64(),
            erased["analytics"].as_bool()
        ),
        (Some(1), Some(2), Some(true)),
        "{erased}"
    );
    assert_eq!(
        h.get(&node, &format!("/v1/customers/{customer}")).await.0,
        404
    );
    for table in [
        "customers",
        "tickets",
        "messages",
        "orders",
        "customer_identities",
        "csat",
        "chat_conversations",
        "chat_log",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} still has rows");
    }
    assert_eq!(track("#1001", "eve@example.com").await.0, 404);
    eventually("her events gone from clickhouse", Duration::from_secs(60), || async {
        let n: u64 = h
            .ch(&format!("SELECT count() FROM events WHERE position(payload, 'eve@example.com') > 0 OR ticket_id = '{ticket}'"))
            .await
            .parse()
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    let erasures = count(
        &pool,
        "SELECT count(*) FROM erasures WHERE reason = 'request'",
    )
    .await;
    assert_eq!(erasures, 1);
}

fn mail(from: &str, subject: &str, in_reply_to: Option<String>, body: &str) -> lettre::Message {
    let mut b = lettre::Message::builder()
        .from(from.parse().unwrap())
        .to("help@switchboard.localhost".parse().unwrap())
        .subject(subject)
        .message_id(Some(format!("<{}@mail.example.org>", uuid::Uuid::now_v7())));
    if let Some(r) = in_reply_to {
        b = b.in_reply_to(r);
    }
    b.body(body.to_string()).unwrap()
}

/// Mail is not authenticated (no SPF/DKIM/DMARC check yet): a stranger's `From` with the
/// victim's ticket number in the subject, or our own reply's Message-ID in `In-Reply-To`,
/// starts the stranger's own ticket and never joins the victim's. The victim's own reply does
/// join. Every mail is marked for the agent as not authenticated.
#[tokio::test(flavor = "multi_thread")]
async fn mail_from_someone_else_never_joins_a_customers_ticket() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    smtp_send(
        &node.smtp,
        mail(
            "Vera <vera@example.com>",
            "Refund for order 1001",
            None,
            "Please refund to my card ending 4242.",
        ),
    )
    .await
    .unwrap();
    let pool = h.pg().await;
    let (ticket, number): (uuid::Uuid, String) =
        eventually("the victim's ticket", Duration::from_secs(60), || {
            let pool = pool.clone();
            async move {
                sqlx::query_as(
                    "SELECT t.id, t.number FROM tickets t JOIN customer_identities i ON i.customer_id = t.customer_id
                     WHERE i.kind = 'email' AND i.value = 'vera@example.com'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        })
        .await;
    // Forged: the stranger's own address, the victim's ticket number, our reply's Message-ID.
    let ours = format!("<{ticket}.{}@switchboard.localhost>", uuid::Uuid::now_v7());
    smtp_send(
        &node.smtp,
        mail(
            "Mallory <mallory@evil.example>",
            &format!("Re: Refund for order 1001 [{number}]"),
            None,
            "Actually refund to IBAN XX00 0000, thanks. Пожалуйста 🙏",
        ),
    )
    .await
    .unwrap();
    smtp_send(
        &node.smtp,
        mail(
            "mallory@evil.example",
            "Re: your ticket",
            Some(ours.clone()),
            "Change my delivery address to 1 Evil Road.",
        ),
    )
    .await
    .unwrap();
    // The victim replying to our reply with the number: her ticket.
    smtp_send(
        &node.smtp,
        mail(
            "vera@example.com",
            &format!("Re: Refund for order 1001 [{number}]"),
            Some(ours),
            "Any news?",
        ),
    )
    .await
    .unwrap();
    let (_, view) = eventually(
        "the victim's reply threaded",
        Duration::from_secs(60),
        || async {
            let (s, v) = h.get(&node, &format!("/v1/tickets/{ticket}")).await;
            (s == 200 && v["messages"].as_array().is_some_and(|m| m.len() >= 2)).then_some((s, v))
        },
    )
    .await;
    let texts = strs(&view["messages"], "text");
    assert_eq!(
        texts,
        ["Please refund to my card ending 4242.", "Any news?"],
        "{view}"
    );
    // Both forgeries are the stranger's, each its own ticket (nothing to thread them to).
    let forged: Value = eventually(
        "the stranger's tickets",
        Duration::from_secs(60),
        || async {
            let (s, v) = h
                .get(&node, "/v1/tickets?customer_email=mallory@evil.example")
                .await;
            (s == 200 && v["tickets"].as_array().is_some_and(|t| t.len() == 2)).then_some(v)
        },
    )
    .await;
    for t in forged["tickets"].as_array().unwrap() {
        assert_ne!(t["id"].as_str(), Some(ticket.to_string().as_str()));
        assert_eq!(t["customer_email"], "mallory@evil.example");
    }
    // Every mail says, for the agent, that its sender is not authenticated.
    let flags: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT text, metadata->>'sender_verified' FROM messages WHERE direction = 'inbound' ORDER BY received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(flags.len(), 4, "{flags:?}");
    assert!(
        flags.iter().all(|(_, f)| f.as_deref() == Some("false")),
        "{flags:?}"
    );
}
