//! Churn risk against real services: a customer served badly (a furious follow-up reopening
//! their ticket, a rating of 1, SLA breaches) scores high with those factors named, on the ticket
//! and in the supervisors' list, and their next ticket with a valuable order is one step above a
//! calm customer's identical one; a calm customer scores low. Bad parameters are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, start, Harness, Node, CORE};

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

async fn message(h: &Harness, node: &Node, body: Value) -> Uuid {
    h.message_ticket(node, body).await
}

async fn ticket(h: &Harness, node: &Node, id: Uuid) -> Value {
    h.ticket_view(node, id).await
}

const FIRST: &str = "Hello, can you tell me how long delivery to Canada usually takes?";

#[tokio::test(flavor = "multi_thread")]
async fn a_badly_served_customer_scores_high_with_the_reasons_and_moves_up_when_valuable() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__KB__BOT_CHANNELS", "sms")]).await;
    let pool = h.pg().await;
    let agent = h
        .agent(&node, "churn-agent@example.com", &[], 5, false)
        .await;

    // Two customers ask the same; both are answered and resolved.
    let mut first = Vec::new();
    for email in ["risky@example.com", "calm@example.com"] {
        let t = message(
            &h,
            &node,
            json!({"channel": "api", "customer": {"email": email}, "text": FIRST}),
        )
        .await;
        h.reply(&node, t, &agent, "Three to five working days.")
            .await;
        let (s, v) = h.ticket_status(&node, t, "resolved").await;
        assert_eq!(s, 200, "{v}");
        first.push(t);
    }
    let (risky_ticket, calm_ticket) = (first[0], first[1]);

    // The risky one writes back furious (the ticket reopens), rates 1 and saw two SLA breaches.
    message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "risky@example.com"}, "ticket_id": risky_ticket,
               "text": "This is terrible. Nobody answered my real question, I am furious and fed up with this awful service!"}),
    )
    .await;
    eventually("the ticket to reopen", Duration::from_secs(30), || async {
        (ticket(&h, &node, risky_ticket).await["status"] == "open").then_some(())
    })
    .await;
    let (s, v) = h.ticket_status(&node, risky_ticket, "resolved").await;
    assert_eq!(s, 200, "{v}");
    // The API channel sends no survey: the rating of 1 is stored as an answered survey is.
    sqlx::query(
        "INSERT INTO csat (ticket_id, token, agent_id, rating, answered_at)
         VALUES ($1, md5(random()::text) || md5(random()::text), $2::uuid, 1, now())",
    )
    .bind(risky_ticket)
    .bind(&agent)
    .execute(&pool)
    .await
    .unwrap();
    // Two SLA breaches on their ticket, as the SLA stage records them (stopped, in the past).
    sqlx::query(
        "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by,
                                 started_at, breached_at, stopped_at)
         SELECT $1, m, 99, 'test', 'default', 60, gen_random_uuid(), now() - interval '2 hours',
                now() - interval '90 minutes', now() - interval '1 hour'
         FROM unnest(ARRAY['first_response', 'resolution']) m",
    )
    .bind(risky_ticket)
    .execute(&pool)
    .await
    .unwrap();

    let risk = ticket(&h, &node, risky_ticket).await["churn_risk"].clone();
    assert_eq!(risk["level"], "high", "{risk}");
    let names: Vec<&str> = risk["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for want in [
        "reopened",
        "poor_ratings",
        "sla_breaches",
        "negative_sentiment",
    ] {
        assert!(names.contains(&want), "{want} missing: {risk}");
    }
    let calm = ticket(&h, &node, calm_ticket).await["churn_risk"].clone();
    assert_eq!(calm["level"], "low", "{calm}");
    assert!(calm["score"].as_f64().unwrap() < risk["score"].as_f64().unwrap());

    // The supervisors' list: the risky customer, with the reasons; the calm one only when asked
    // for every score.
    let (s, list) = h.get(&node, "/v1/customers/at-risk").await;
    assert_eq!(s, 200, "{list}");
    let emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["email"].as_str())
        .collect();
    assert_eq!(emails, vec!["risky@example.com"], "{list}");
    assert!(!list[0]["factors"].as_array().unwrap().is_empty());
    let (s, all) = h.get(&node, "/v1/customers/at-risk?min_score=0").await;
    assert_eq!(s, 200);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(
        all[0]["email"], "risky@example.com",
        "riskiest first: {all}"
    );
    for (q, field) in [
        ("min_score=2", "min_score"),
        ("limit=0", "limit"),
        ("days=9999", "days"),
        ("nope=1", "nope"),
    ] {
        let (s, v) = h.get(&node, &format!("/v1/customers/at-risk?{q}")).await;
        assert_refused(s, &v, 400, field);
    }
    let token = h
        .issue_token(&node, "agent", Some(&agent), "churn agent")
        .await;
    let (s, _) = h.caller(&node, &token).get("/v1/customers/at-risk").await;
    assert_eq!(s, 403);

    // Each writes again about a valuable order: the one at risk is one step higher.
    let mut ranks = Vec::new();
    for email in ["risky@example.com", "calm@example.com"] {
        let t = message(
            &h,
            &node,
            json!({"channel": "api", "customer": {"email": email},
                   "customer_context": {"order_value": 1200.0}, "text": FIRST}),
        )
        .await;
        let rank: i16 = sqlx::query_scalar("SELECT priority_rank FROM tickets WHERE id = $1")
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap();
        ranks.push(rank);
    }
    assert_eq!(ranks[0], ranks[1] + 1, "risky {ranks:?}");
}

/// Outcomes from the shop's order webhooks fit the weights: here the customers who left were
/// the ones whose tickets reopened, while those who ordered again saw SLA breaches, the opposite
/// of what the hand-set weights rank first. `switchboard models fit-churn` judges both on the
/// held-out customers, activates the fit because it is better, and customers are scored with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fit_on_order_outcomes_is_judged_on_held_out_customers_and_then_scores() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__KB__BOT_CHANNELS", "sms"),
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "shop-secret"),
        ],
    )
    .await;
    let pool = h.pg().await;
    let agent = h.agent(&node, "fit-agent@example.com", &[], 5, false).await;
    let n = 240;
    for i in 0..n {
        let (s, v) = h
            .post(
                &node,
                "/v1/messages",
                json!({"channel": "api", "customer": {"email": format!("fit{i}@example.com")}, "text": FIRST}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    eventually("every ticket", Duration::from_secs(120), || async {
        let k: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets")
            .fetch_one(&pool)
            .await
            .ok()?;
        (k == n).then_some(())
    })
    .await;
    // The history is 40 days old, so the 30 days after it are over (a fit on a horizon still
    // open is never activated): the tickets and their messages move back.
    sqlx::query("UPDATE tickets SET created_at = created_at - interval '40 days'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET received_at = received_at - interval '40 days'")
        .execute(&pool)
        .await
        .unwrap();
    // Odd customers: their tickets reopened twice, and they never order again. Even ones: two
    // SLA breaches back then, and an order two days after.
    let later = (chrono::Utc::now() - chrono::Duration::days(38)).to_rfc3339();
    let now = chrono::Utc::now().to_rfc3339();
    for i in 0..n {
        let email = format!("fit{i}@example.com");
        if i % 2 == 1 {
            sqlx::query(
                "UPDATE tickets SET reopen_count = 2 WHERE customer_id =
                   (SELECT id FROM customers WHERE email = $1)",
            )
            .bind(&email)
            .execute(&pool)
            .await
            .unwrap();
            continue;
        }
        sqlx::query(
            "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by,
                                     started_at, breached_at, stopped_at)
             SELECT t.id, m, 99, 'test', 'default', 60, gen_random_uuid(), now() - interval '40 days',
                    now() - interval '40 days' + interval '30 minutes', now() - interval '40 days' + interval '1 hour'
             FROM tickets t JOIN customers c ON c.id = t.customer_id,
                  unnest(ARRAY['first_response', 'resolution']) m
             WHERE c.email = $1",
        )
        .bind(&email)
        .execute(&pool)
        .await
        .unwrap();
        let (s, v) = common::shop::order(
            &h,
            &node.base,
            &json!({"id": 50_000 + i, "name": format!("#{}", 50_000 + i), "email": email,
                    "total_price": "20.00", "created_at": later, "updated_at": now}),
            "shop-secret",
        )
        .await;
        assert_eq!(s, 202, "{v}");
    }
    eventually("the orders stored", Duration::from_secs(60), || async {
        let k: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id IS NOT NULL")
                .fetch_one(&pool)
                .await
                .ok()?;
        (k == n / 2).then_some(())
    })
    .await;

    let (s, before) = h.get(&node, "/v1/customers/churn-model").await;
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["weights_from"], "hand-set", "{before}");
    let as_of = (chrono::Utc::now() - chrono::Duration::days(39)).to_rfc3339();
    let out = std::process::Command::new(common::switchboard_bin())
        .current_dir(common::repo())
        .arg("--config")
        .arg(&h.config)
        .args([
            "models",
            "fit-churn",
            "--as-of",
            &as_of,
            "--horizon-days",
            "30",
            "--activate",
        ])
        .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &h.pg_url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stored and active"), "{text}");
    let (s, model) = h.get(&node, "/v1/customers/churn-model").await;
    assert_eq!(s, 200, "{model}");
    assert_eq!(model["weights_from"], "fitted", "{model}");
    let fit = &model["fit"];
    let held = fit["held_out_customers"].as_u64().unwrap();
    assert_eq!(
        held + fit["train_customers"].as_u64().unwrap(),
        n as u64,
        "{fit}"
    );
    assert!((50..=100).contains(&held), "about 3 in 10 held out: {fit}");
    let (hand, fitted) = (
        fit["auc_hand_set"].as_f64().unwrap(),
        fit["auc_fitted"].as_f64().unwrap(),
    );
    assert!(
        hand < 0.5 && fitted > 0.9,
        "hand-set {hand}, fitted {fitted}"
    );
    assert!(
        model["weights"]["reopened"].as_f64().unwrap()
            > model["hand_set"]["reopened"].as_f64().unwrap()
            && model["weights"]["sla_breaches"].as_f64().unwrap()
                < model["hand_set"]["sla_breaches"].as_f64().unwrap(),
        "{model}"
    );
    // Customers are scored with it: a reopened customer now ranks above a breached one.
    let (s, list) = h
        .get(
            &node,
            "/v1/customers/at-risk?days=60&min_score=0&limit=5000",
        )
        .await;
    assert_eq!(s, 200);
    let score_of = |email: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["email"] == email)
            .and_then(|c| c["score"].as_f64())
            .unwrap()
    };
    assert!(
        score_of("fit1@example.com") > score_of("fit0@example.com"),
        "{list}"
    );
    let (s, _) = h
        .caller(
            &node,
            &h.issue_token(&node, "agent", Some(&agent), "fit agent")
                .await,
        )
        .get("/v1/customers/churn-model")
        .await;
    assert_eq!(s, 403);
}
