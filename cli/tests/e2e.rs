//! End to end against real tansu, Postgres and ClickHouse: a message posted to the API goes
//! through Kafka, becomes a ticket in Postgres, is assigned, and its events land in ClickHouse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, Harness, ALL, CORE};

use std::time::Duration;

use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

async fn tickets_of(h: &Harness, node: &common::Node, email: &str) -> Vec<Value> {
    let (s, v) = h
        .get(node, &format!("/v1/tickets?customer_email={email}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["tickets"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_becomes_an_assigned_ticket_in_postgres_and_clickhouse() {
    let (h, node) = start(ALL, &[]).await;
    let billing = h
        .agent(&node, "bo@example.com", &["billing"], 5, true)
        .await;
    // A shipping agent, online too: the billing ticket must pass her over.
    h.agent(&node, "cy@example.com", &["shipping"], 5, true)
        .await;

    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "Ana@Example.com", "name": "Ana"},
            "subject": "Refund", "text": "I want my money back for order 1234", "external_id": "ext-1"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let message_id = v["message_id"].as_str().unwrap().to_string();

    let ticket = eventually("the ticket to be assigned", WAIT, || async {
        tickets_of(&h, &node, "ana@example.com")
            .await
            .into_iter()
            .find(|t| !t["assigned_agent_id"].is_null())
    })
    .await;
    assert_eq!(
        ticket["assigned_agent_id"],
        billing.as_str(),
        "routed to the agent with the billing skill"
    );
    let id = ticket["id"].as_str().unwrap();
    let (s, full) = h.get(&node, &format!("/v1/tickets/{id}")).await;
    assert_eq!(s, 200);
    let number = full["number"].as_str().unwrap();
    assert!(
        number.len() == 13
            && number.starts_with("T-20")
            && number[7..].chars().all(|c| c.is_ascii_digit()),
        "{number}"
    );
    assert_eq!(full["status"], "open");
    assert_eq!(full["category"], "refund");
    assert_eq!(full["priority"], "high");
    assert_eq!(full["messages"].as_array().unwrap().len(), 1);
    assert_eq!(full["messages"][0]["id"], message_id.as_str());
    assert_eq!(
        full["messages"][0]["text"],
        "I want my money back for order 1234"
    );
    let (s, by_number) = h.get(&node, &format!("/v1/tickets/{number}")).await;
    assert_eq!(s, 200);
    assert_eq!(by_number["id"], id);
    let (s, a) = h
        .get(&node, &format!("/v1/agents/{billing}/assignments"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(a["assignments"][0]["ticket_id"], id);

    // The same external id again is the same message: no second message, no second ticket.
    let (s, v2) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "ana@example.com"},
            "text": "I want my money back for order 1234", "external_id": "ext-1"}),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(v2["message_id"], message_id.as_str());
    // A later message of the same customer (same partition) proves the duplicate was processed.
    let (s, _) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "ana@example.com"}, "text": "also, hello", "external_id": "ext-2"}))
        .await;
    assert_eq!(s, 202);
    eventually("the marker message", WAIT, || async {
        (tickets_of(&h, &node, "ana@example.com").await.len() == 2).then_some(())
    })
    .await;
    let (_, full) = h.get(&node, &format!("/v1/tickets/{id}")).await;
    assert_eq!(
        full["messages"].as_array().unwrap().len(),
        1,
        "duplicate must not add a message"
    );

    // Messages of one conversation thread into one ticket; a reply naming the ticket joins it.
    for text in [
        "where is my order? I placed it last week",
        "any news on the package?",
    ] {
        let (s, _) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "dee@example.com"}, "text": text, "conversation_id": "chat-9"}))
            .await;
        assert_eq!(s, 202);
    }
    let conv = eventually(
        "the conversation ticket with both messages",
        WAIT,
        || async {
            let t = tickets_of(&h, &node, "dee@example.com").await;
            let id = t.first()?["id"].as_str()?.to_string();
            let (_, full) = h.get(&node, &format!("/v1/tickets/{id}")).await;
            (full["messages"].as_array()?.len() == 2).then_some(full)
        },
    )
    .await;
    assert_eq!(tickets_of(&h, &node, "dee@example.com").await.len(), 1);
    // The classifier reads the first message of the conversation.
    assert_eq!(conv["category"], "order");
    let (s, _) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "dee@example.com"}, "text": "thanks", "ticket_id": conv["id"]}))
        .await;
    assert_eq!(s, 202);
    eventually("the reply on the ticket", WAIT, || async {
        let (_, full) = h
            .get(
                &node,
                &format!("/v1/tickets/{}", conv["id"].as_str().unwrap()),
            )
            .await;
        (full["messages"].as_array()?.len() == 3).then_some(())
    })
    .await;

    // Its events are in ClickHouse, once each.
    let kinds = eventually("ticket events in clickhouse", WAIT, || async {
        let out = h.ch(&format!("SELECT kind, count() FROM events FINAL WHERE schema = 'ticket_event' AND ticket_id = '{id}' GROUP BY kind ORDER BY kind FORMAT TSV")).await;
        (out.contains("assigned") && out.contains("created") && out.contains("message_added")).then_some(out)
    })
    .await;
    assert_eq!(
        kinds, "assigned\t1\ncreated\t1\nmessage_added\t1",
        "{kinds}"
    );
    // Each names who made it: the router assigned, the ticketing stage created.
    let actors = h.ch(&format!("SELECT kind, visitParamExtractString(payload, 'actor') FROM events FINAL WHERE schema = 'ticket_event' AND ticket_id = '{id}' ORDER BY kind FORMAT TSV")).await;
    assert_eq!(
        actors, "assigned\trouter\ncreated\tsystem\nmessage_added\tsystem",
        "{actors}"
    );
    // The audit log follows into ClickHouse (the serving role's export, every 10 s), once each.
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'agent.created'")
            .fetch_one(&h.pg().await)
            .await
            .unwrap();
    assert!(created > 0);
    eventually("the audit log in clickhouse", WAIT, || async {
        let n = h
            .ch("SELECT count() FROM audit_log FINAL WHERE action = 'agent.created'")
            .await;
        (n == created.to_string()).then_some(())
    })
    .await;
    let inbound = h.ch(&format!("SELECT count() FROM events FINAL WHERE schema = 'inbound_message' AND event_id = '{message_id}'")).await;
    assert_eq!(inbound, "1", "the re-posted message is one row after FINAL");
    let assignment = h
        .ch(&format!(
            "SELECT count() FROM events FINAL WHERE schema = 'assignment' AND ticket_id = '{id}'"
        ))
        .await;
    assert_eq!(assignment, "1");

    // The models read every message: stored on the message and published as an enrichment.
    let m = &full["messages"][0];
    assert_eq!(m["category"], "REFUND", "{m}");
    assert!(
        m["intent"].as_str().is_some_and(|i| i.contains("refund")),
        "{m}"
    );
    assert!(
        m["sentiment"]
            .as_f64()
            .is_some_and(|s| (-1.0..=1.0).contains(&s)),
        "{m}"
    );
    assert_eq!(m["model_versions"]["encoder"], "minilm-l6-ft-2026.12.02b");
    assert_eq!(full["intent"], m["intent"]);
    eventually("the enrichment event in clickhouse", WAIT, || async {
        let n = h
            .ch(&format!("SELECT count() FROM events FINAL WHERE schema = 'enrichment_result' AND ticket_id = '{id}'"))
            .await;
        (n == "1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tickets_are_assigned_when_capacity_appears_and_never_beyond_it() {
    let (h, node) = start(CORE, &[]).await;
    for i in 0..3 {
        let (s, _) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("u{i}@example.com")}, "text": "I cannot login to my account"}))
            .await;
        assert_eq!(s, 202);
    }
    let pool = h.pg().await;
    eventually("three waiting tickets", WAIT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tickets WHERE assigned_agent_id IS NULL")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n == 3).then_some(())
    })
    .await;
    // An agent with the wrong skill changes nothing; one with the right skill and capacity 2 takes two.
    h.agent(&node, "wrong@example.com", &["billing"], 5, true)
        .await;
    let agent = h
        .agent(&node, "acc@example.com", &["accounts"], 2, false)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = count(
        &pool,
        "SELECT count(*) FROM tickets WHERE assigned_agent_id IS NULL",
    )
    .await;
    assert_eq!(n, 3, "offline or unskilled agents take nothing");
    let (s, _) = h.agent_status(&node, &agent, "online").await;
    assert_eq!(s, 200);
    eventually("two assignments", WAIT, || async {
        let (_, a) = h
            .get(&node, &format!("/v1/agents/{agent}/assignments"))
            .await;
        (a["assignments"].as_array()?.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, a) = h
        .get(&node, &format!("/v1/agents/{agent}/assignments"))
        .await;
    assert_eq!(
        a["assignments"].as_array().unwrap().len(),
        2,
        "capacity 2 is never exceeded"
    );
    let (_, ag) = h.get(&node, &format!("/v1/agents/{agent}")).await;
    assert_eq!(ag["active_count"], 2);
    let waiting = count(
        &pool,
        "SELECT count(*) FROM tickets WHERE assigned_agent_id IS NULL",
    )
    .await;
    assert_eq!(waiting, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_naming_the_field() {
    let h = Harness::new().await;
    let extra = [
        ("SWITCHBOARD__HTTP__MAX_BODY_BYTES", "4096"),
        ("SWITCHBOARD__INGEST__MAX_TEXT_BYTES", "100"),
    ];
    let node = h.spawn(&["ingest", "serving"], &extra).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"channel": "api", "customer": {"email": "a@b.co"}}),
            "text",
        ),
        (
            json!({"channel": "api", "customer": {}, "text": "x"}),
            "customer.email",
        ),
        (
            json!({"channel": "api", "customer": {"email": "nope"}, "text": "x"}),
            "customer.email",
        ),
        (
            json!({"channel": "sms", "customer": {"email": "a@b.co"}, "text": "x"}),
            "channel",
        ),
        (
            json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": "   "}),
            "text",
        ),
        (
            json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": 5}),
            "text",
        ),
        (
            json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": "x", "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = h.post(&node, "/v1/messages", body.clone()).await;
        assert_eq!(s, 400, "{body} -> {v}");
        let named = v["error"]["field"].as_str().unwrap_or_default();
        assert!(
            named == field
                || v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(field),
            "{body} -> {v}"
        );
    }
    let url = format!("{}/v1/messages", node.base);
    let r = h
        .http
        .post(&url)
        .bearer_auth(&h.token)
        .header("content-type", "application/json")
        .body("{\"channel\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );
    let r = h
        .http
        .post(&url)
        .bearer_auth(&h.token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = "x".repeat(10_000);
    let r = h
        .http
        .post(&url)
        .bearer_auth(&h.token)
        .json(&json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    let r = h.http.post(&url).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h.fetch(&node, "/v1/nothing-here", Some(&h.token)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    // Long text is cut and the answer says so.
    let long = "é".repeat(80);
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": long}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["truncated"], true);

    let (s, v) = h.get(&node, "/v1/tickets/not-an-id").await;
    assert_refused(s, &v, 400, "id");
    let (s, v) = h.get(&node, "/v1/tickets?limit=abc").await;
    assert_refused(s, &v, 400, "limit");
    let (s, v) = h.get(&node, "/v1/tickets?status=sleeping").await;
    assert_refused(s, &v, 400, "status");
    let (s, v) = h
        .post(
            &node,
            "/v1/agents",
            json!({"name": "x", "email": "x@y.co", "max_concurrent": 0}),
        )
        .await;
    assert_refused(s, &v, 400, "max_concurrent");
    let (s, v) = h
        .post(
            &node,
            "/v1/agents",
            json!({"name": "x", "email": "x@y.co", "skills": [""], "max_concurrent": 1}),
        )
        .await;
    assert_refused(s, &v, 400, "skills[0]");
    let id = h.agent(&node, "z@y.co", &[], 1, false).await;
    let (s, v) = h.agent_status(&node, &id, "busy").await;
    assert_refused(s, &v, 400, "status");
    let (s, _) = h
        .post(
            &node,
            "/v1/agents",
            json!({"name": "x", "email": "z@y.co", "max_concurrent": 1}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = h
        .get(&node, &format!("/v1/agents/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_dead_lettered_and_the_consumer_keeps_going() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    let (h, node) = start(CORE, &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.services.kafka)
        .create()
        .unwrap();
    let topic = format!("{}inbound.messages", h.prefix);
    let newer = json!({"schema": "inbound_message", "version": 99, "event_id": uuid::Uuid::now_v7(),
        "occurred_at": "2026-01-01T00:00:00Z", "payload": {"whatever": true}});
    for (key, value) in [
        ("k1", b"not json at all".to_vec()),
        ("k2", serde_json::to_vec(&newer).unwrap()),
    ] {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let (s, _) = h.post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "after@example.com"}, "text": "still working?"})).await;
    assert_eq!(s, 202);
    eventually("the valid message after the bad ones", WAIT, || async {
        (!tickets_of(&h, &node, "after@example.com").await.is_empty()).then_some(())
    })
    .await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &h.services.kafka)
        .set("group.id", format!("{}dlq-reader", h.prefix))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{}deadletter", h.prefix)])
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters in time")
            .unwrap();
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(v["schema"], "dead_letter");
        assert_eq!(v["payload"]["source_topic"], topic.as_str());
        reasons.push((
            v["payload"]["key"].as_str().unwrap().to_string(),
            v["payload"]["reason"].as_str().unwrap().to_string(),
        ));
    }
    reasons.sort();
    assert_eq!(reasons[0].0, "k1");
    assert!(reasons[0].1.contains("not a valid envelope"), "{reasons:?}");
    assert_eq!(reasons[1].0, "k2");
    assert!(reasons[1].1.contains("version 99 is newer"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_answers_503_with_retry_after_never_202() {
    let h = Harness::new().await;
    let port = common::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = std::process::Command::new(common::tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tansu (run scripts/setup.sh)");
    let brokers = format!("127.0.0.1:{port}");
    let extra = [
        ("SWITCHBOARD__SERVICES__KAFKA__BROKERS", brokers.as_str()),
        ("SWITCHBOARD__SERVICES__KAFKA__PRODUCE_TIMEOUT_MS", "1500"),
    ];
    let node = h.spawn(&["ingest"], &extra).await;
    let body = json!({"channel": "api", "customer": {"email": "a@b.co"}, "text": "hello"});
    let (s, _) = h.post(&node, "/v1/messages", body.clone()).await;
    assert_eq!(s, 202);
    broker.kill().unwrap();
    broker.wait().unwrap();
    let r = h
        .http
        .post(format!("{}/v1/messages", node.base))
        .bearer_auth(&h.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    let r = h.fetch(&node, "/readyz", None).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["kafka"]["ok"], false);
}
