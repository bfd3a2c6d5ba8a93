//! Reply drafts from solved tickets against real services (Postgres, the broker, ONNX Runtime
//! with the shipped encoder, the embedded Qdrant): a resolved ticket's reply, scrubbed of its
//! customer's data, is offered to the next customer who asks the same, filled from their
//! ticket; sending it unchanged, editing it or passing it over is recorded and reported per
//! category; a bad `draft_id` is refused by name; erasing the first customer takes the reply out
//! of the index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, start, Harness, Node, ALL, CORE};

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

async fn message(h: &Harness, node: &Node, name: &str, email: &str, text: &str) -> Uuid {
    h.message_ticket(
        node,
        json!({"channel": "api", "customer": {"email": email, "name": name}, "text": text}),
    )
    .await
}

async fn ticket(h: &Harness, node: &Node, id: Uuid) -> Value {
    h.ticket_view(node, id).await
}

/// Waits for the processors' drafts index to have synced `key` = `n` (`embedded`, `removed`).
async fn synced(node: &Node, key: &str, n: u32) {
    let (text, json) = (format!("{key}={n}"), format!("\"{key}\":{n}"));
    eventually(
        "the drafts index to sync",
        Duration::from_secs(60),
        || async {
            let raw = std::fs::read_to_string(&node.log).unwrap_or_default();
            // The log is coloured: drop the escape sequences.
            let mut log = String::with_capacity(raw.len());
            let mut escape = false;
            for c in raw.chars() {
                match (escape, c) {
                    (false, '\u{1b}') => escape = true,
                    (false, c) => log.push(c),
                    (true, 'm') => escape = false,
                    (true, _) => {}
                }
            }
            log.lines()
                .any(|l| {
                    l.contains("drafts index synced") && (l.contains(&text) || l.contains(&json))
                })
                .then_some(())
        },
    )
    .await;
}

const QUESTION: &str = "I need to change the shipping address on my order #1042, I moved last week";
const ANSWER: &str = "Hi Anna, I have updated the shipping address on order #1042 to 221B Baker Street. \
                      A confirmation goes to anna.k@example.org and the parcel arrives by November 25. \
                      Call us on +44 20 7946 0958 if anything looks wrong. Best, Drafts Agent";

#[tokio::test(flavor = "multi_thread")]
async fn a_solved_reply_becomes_a_scrubbed_draft_its_use_is_judged_and_erasure_removes_it() {
    // The bot answers on SMS only here, so every API ticket waits for a person. The sink makes
    // the analytics database the dashboard and the erasure use.
    let (h, node) = start(ALL, &[("SWITCHBOARD__KB__BOT_CHANNELS", "sms")]).await;
    let pool = h.pg().await;
    // Offline: tickets wait unassigned, and the admin replies as this agent.
    let agent = h
        .agent_with(
            &node,
            json!({"name": "Drafts Agent", "email": "drafts-agent@example.com", "skills": [],
                   "languages": ["en"], "max_concurrent": 5}),
            false,
        )
        .await;

    // Anna asks; the agent answers with everything personal in it; the ticket is resolved.
    let first = message(&h, &node, "Anna Kowalski", "anna.k@example.org", QUESTION).await;
    h.reply(&node, first, &agent, ANSWER).await;
    let (s, v) = h.ticket_status(&node, first, "resolved").await;
    assert_eq!(s, 200, "{v}");
    let (question, reply): (String, String) =
        sqlx::query_as("SELECT question, reply FROM reply_examples WHERE ticket_id = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
    for personal in [
        "Anna",
        "Kowalski",
        "1042",
        "Baker",
        "anna.k@",
        "November 25",
        "7946",
        "Drafts Agent",
    ] {
        assert!(!reply.contains(personal), "{personal} kept in {reply}");
        assert!(
            !question.contains(personal),
            "{personal} kept in {question}"
        );
    }
    // What Switchboard knows of Anna becomes fillable; what only a pattern found (the shop's
    // phone, a street, a date) becomes a blank no ticket fills.
    for placeholder in [
        "{{customer.first_name}}",
        "{{customer.email}}",
        "{{redacted.address}}",
        "{{redacted.phone}}",
        "{{redacted.date}}",
    ] {
        assert!(
            reply.contains(placeholder),
            "{placeholder} missing in {reply}"
        );
    }
    synced(&node, "embedded", 1).await;

    // Zoë asks the same: the draft is offered, filled from her ticket, with nothing of Anna's.
    let second = message(
        &h,
        &node,
        "Zoë Quinn",
        "zoe@example.net",
        "I need to change the shipping address on my order #2077, I have moved",
    )
    .await;
    let t = ticket(&h, &node, second).await;
    let drafts = t["drafts"].as_array().unwrap();
    assert_eq!(drafts.len(), 1, "{t}");
    let draft = &drafts[0];
    assert_eq!(draft["id"], first.to_string());
    assert!(draft["similarity"].as_f64().unwrap() >= 0.75, "{draft}");
    let text = draft["text"].as_str().unwrap();
    assert!(text.starts_with("Hi Zoë, "), "{text}");
    assert!(
        text.contains("zoe@example.net"),
        "her address filled in: {text}"
    );
    for personal in ["Anna", "1042", "Baker", "anna.k@", "7946"] {
        assert!(
            !text.contains(personal),
            "{personal} offered to another customer: {text}"
        );
    }
    let unfilled: Vec<&str> = draft["unfilled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        unfilled.contains(&"redacted.address") && unfilled.contains(&"redacted.phone"),
        "{draft}"
    );
    assert!(!text.contains("zoe@example.net +") && text.contains("{{redacted.phone}}"));

    // A draft that is not offered is refused by name, and nothing is stored.
    let path = format!("/v1/tickets/{second}/replies");
    for bad in ["not-a-uuid", &Uuid::new_v4().to_string(), "\u{0}\u{202e}"] {
        let (s, v) = h
            .post(
                &node,
                &path,
                json!({"agent_id": agent, "text": "hello", "draft_id": bad}),
            )
            .await;
        assert_refused(s, &v, 400, "draft_id");
    }
    // Sent as offered.
    let (s, v) = h
        .post(
            &node,
            &path,
            json!({"agent_id": agent, "text": format!("  {text}\n"), "draft_id": first}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["draft"], "sent");
    // Used up: the next reply on the same message is judged no more.
    assert!(ticket(&h, &node, second).await["drafts"]
        .as_array()
        .unwrap()
        .is_empty());
    let v = h.reply(&node, second, &agent, "One more thing.").await;
    assert!(v["draft"].is_null(), "{v}");

    // Edited, and passed over.
    let third = message(&h, &node, "Sam Lee", "sam@example.net", QUESTION).await;
    let offered = ticket(&h, &node, third).await["drafts"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/tickets/{third}/replies"),
            json!({"agent_id": agent, "text": format!("{offered} Sorry for the trouble."), "draft_id": first}),
        )
        .await;
    assert_eq!((s, &v["draft"]), (201, &json!("edited")), "{v}");
    let fourth = message(&h, &node, "Kim Park", "kim@example.net", QUESTION).await;
    assert_eq!(
        ticket(&h, &node, fourth).await["drafts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let v = h
        .reply(&node, fourth, &agent, "Let me look into it myself.")
        .await;
    assert_eq!(v["draft"], "discarded");

    // Reported per category, the total first; supervisors only.
    let (s, v) = h.get(&node, "/v1/drafts/acceptance?hours=1").await;
    assert_eq!(s, 200, "{v}");
    let all = &v[0];
    assert_eq!(all["category"], "all", "{v}");
    assert_eq!(
        (
            &all["offered"],
            &all["sent"],
            &all["edited"],
            &all["discarded"]
        ),
        (&json!(3), &json!(1), &json!(1), &json!(1)),
        "{v}"
    );
    assert!((all["acceptance"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!(v.as_array().unwrap().len() >= 2, "a category row: {v}");
    let (s, d) = h.get(&node, "/v1/dashboard?hours=1").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["drafts"][0], v[0]);
    let (s, v) = h.get(&node, "/v1/drafts/acceptance?hours=0").await;
    assert_refused(s, &v, 400, "hours");
    let token = h
        .issue_token(&node, "agent", Some(&agent), "drafts agent")
        .await;
    let (s, _) = h.caller(&node, &token).get("/v1/drafts/acceptance").await;
    assert_eq!(s, 403);

    // Mia is offered Anna's reply before Anna is erased.
    let sixth = message(&h, &node, "Mia Chen", "mia@example.net", QUESTION).await;
    assert_eq!(
        ticket(&h, &node, sixth).await["drafts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Anna is erased: her ticket's reply leaves the index, and no one is offered it again.
    let anna: Uuid =
        sqlx::query_scalar("SELECT customer_id FROM reply_examples WHERE ticket_id = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
    let (s, v) = h.delete(&node, &format!("/v1/customers/{anna}")).await;
    assert_eq!(s, 200, "{v}");
    let (question, reply, deleted): (String, String, bool) = sqlx::query_as(
        "SELECT question, reply, deleted_at IS NOT NULL FROM reply_examples WHERE ticket_id = $1",
    )
    .bind(first)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(deleted && question.is_empty() && reply.is_empty());
    synced(&node, "removed", 1).await;
    let fifth = message(&h, &node, "Lee Fox", "lee@example.net", QUESTION).await;
    assert!(
        ticket(&h, &node, fifth).await["drafts"]
            .as_array()
            .unwrap()
            .is_empty(),
        "an erased customer's reply was offered"
    );
    // Nor is it shown any more where it was offered before; a reply the agent started from it
    // is still taken, just not judged.
    assert!(ticket(&h, &node, sixth).await["drafts"]
        .as_array()
        .unwrap()
        .is_empty());
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/tickets/{sixth}/replies"),
            json!({"agent_id": agent, "text": "Done, see your email.", "draft_id": first}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v["draft"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_ticket_withdraws_its_reply_and_hostile_text_is_stored_scrubbed() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__KB__BOT_CHANNELS", "sms")]).await;
    let pool = h.pg().await;
    let agent = h
        .agent(&node, "hostile-drafts@example.com", &[], 5, false)
        .await;
    // Control characters, right-to-left marks, a huge body and an address in another script.
    let hostile = format!(
        "Hi Ölçü\u{0}\u{202e}, your refund for #88123 is on its way to ölçü@example.com.tr; {}",
        "ß\u{7}".repeat(10_000)
    );
    let t = message(
        &h,
        &node,
        "Ölçü Şahin",
        "olcu@example.com",
        "Where is my refund for order #88123?",
    )
    .await;
    h.reply(&node, t, &agent, &hostile).await;
    // The reply is stored without the control characters Postgres and clients refuse.
    let stored: String = sqlx::query_scalar(
        "SELECT text FROM messages WHERE ticket_id = $1 AND direction = 'outbound'",
    )
    .bind(t)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!stored.contains('\u{0}') && !stored.contains('\u{7}') && stored.contains('\u{202e}'));
    let (s, v) = h.ticket_status(&node, t, "resolved").await;
    assert_eq!(s, 200, "{v}");
    let reply: String = sqlx::query_scalar("SELECT reply FROM reply_examples WHERE ticket_id = $1")
        .bind(t)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reply.len() <= 8 * 1024, "cut to the example's limit");
    for personal in ["Ölçü", "88123", "ölçü@"] {
        assert!(!reply.contains(personal), "{personal} kept in {reply:.200}");
    }
    // The customer writes again: the ticket reopens and its reply is no example any more.
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "olcu@example.com"},
                   "text": "still nothing", "ticket_id": t}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    eventually("the reply to be withdrawn", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let gone: bool = sqlx::query_scalar(
                "SELECT deleted_at IS NOT NULL FROM reply_examples WHERE ticket_id = $1",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap();
            gone.then_some(())
        }
    })
    .await;
}
