//! No loss, no duplicates: thousands of messages flow while the processors are killed with
//! SIGKILL twice and restarted. Every accepted message ends up in exactly one ticket, once; every
//! ticket is assigned once; a team rule acts on every ticket once; ClickHouse counts every event
//! once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{count, eventually, Harness};

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

const MESSAGES: usize = 3000;
const CUSTOMERS: usize = 300;

/// Waits up to `secs` until the count `sql` reaches `total` (a failed query counts as not yet).
async fn until_count(pool: &sqlx::PgPool, what: &str, secs: u64, sql: &str, total: usize) {
    eventually(what, Duration::from_secs(secs), || async {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.ok()?;
        (n as usize >= total).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_the_processors_loses_and_duplicates_nothing() {
    let mut h = Harness::new().await;
    // Every ticket's first-response clock warns at 10 s and breaches at 20 s, many of them while
    // the processors are down; escalation only notifies, so assignments stay put.
    let short = "first_response: 20s, next_response: 1h, resolution: 1h";
    h.edit_config(&[
        ("warn_share: 0.75", "warn_share: 0.5"),
        (
            "first_response: 15m, next_response: 30m, resolution: 8h",
            short,
        ),
        (
            "first_response: 30m, next_response: 1h, resolution: 8h",
            short,
        ),
        (
            "first_response: 1h, next_response: 2h, resolution: 24h",
            short,
        ),
        (
            "first_response: 4h, next_response: 8h, resolution: 3d",
            short,
        ),
        (
            "on_breach: [raise_priority, move_to_senior, notify_supervisor]",
            "on_breach: [notify_supervisor]",
        ),
    ]);
    let h = Arc::new(h);
    let front = h.spawn(&["ingest", "serving", "sink"], &[]).await;
    // Nobody accepts in this test: no accept timeout, or tickets would move between agents.
    let processors_env = [("SWITCHBOARD__ROUTING__ACCEPT_TIMEOUT_SECS", "0")];
    let mut processors = h.spawn(&["processors"], &processors_env).await;
    for i in 0..4 {
        // Every skill the categories ask for, and every queue: this test is about delivery.
        h.agent_with(&front, json!({"name": format!("a{i}"), "email": format!("agent{i}@example.com"),
                "skills": ["billing", "shipping", "orders", "accounts"], "max_concurrent": 1000, "level": "supervisor"}), true).await;
    }
    let pool = h.pg().await;
    // A team rule on every new ticket: its tag and its note land once each, however often the
    // processors die between its transaction and the offset.
    let (s, v) = h
        .post(&front, "/v1/rules", json!({"name": "Seen", "kind": "trigger", "on": ["created"], "enabled": true,
            "actions": [{"type": "tags", "add": ["seen"]}, {"type": "note", "text": "Seen by the rules ✓ {{ticket.number}}"}]}))
        .await;
    assert_eq!(s, 201, "{v}");

    // Post everything with 32 clients while the processors get killed below.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::with_capacity(MESSAGES)));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (h, next, accepted, base) = (
            h.clone(),
            next.clone(),
            accepted.clone(),
            front.base.clone(),
        );
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= MESSAGES {
                    return;
                }
                let body = json!({"channel": "api", "customer": {"email": format!("c{}@example.com", i % CUSTOMERS)},
                    "text": format!("hello, this is message {i}"), "external_id": format!("k-{i}")});
                loop {
                    let r = h.http.post(format!("{base}/v1/messages")).bearer_auth(&h.token).json(&body).send().await.unwrap();
                    if r.status() == 202 {
                        let v: serde_json::Value = r.json().await.unwrap();
                        accepted.lock().unwrap().push(v["message_id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        break;
                    }
                    assert_eq!(r.status(), 503, "only a broker outage may refuse");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }

    let restart_wait = Duration::from_millis(
        std::env::var("SWITCHBOARD_KILL9_RESTART_WAIT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    for threshold in [MESSAGES as i64 / 5, MESSAGES as i64 / 2] {
        eventually("processing progress", Duration::from_secs(120), || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM messages WHERE direction = 'inbound'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n >= threshold).then_some(())
        })
        .await;
        processors.kill9();
        let n = count(
            &pool,
            "SELECT count(*) FROM messages WHERE direction = 'inbound'",
        )
        .await;
        eprintln!("killed the processors with SIGKILL at {n} stored messages");
        // Restart at once, as a supervisor would (SWITCHBOARD_KILL9_RESTART_WAIT_MS waits first,
        // to measure a restart after the dead member's session ran out).
        let killed = std::time::Instant::now();
        tokio::time::sleep(restart_wait).await;
        processors = h.spawn(&["processors"], &processors_env).await;
        let ready = killed.elapsed();
        // What the kill cost: from SIGKILL to messages being stored again (the recovery time a
        // rolling restart or a crash costs this role; printed for the capacity notes).
        eventually(
            "storing again after the restart",
            Duration::from_secs(240),
            || async {
                let now: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM messages WHERE direction = 'inbound'")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (now > n).then_some(())
            },
        )
        .await;
        eprintln!(
            "processors killed at {n} stored messages: restarted and ready {:.1} s after the kill ({:.1} s of it waiting before the restart), storing again after {:.1} s",
            ready.as_secs_f64(),
            restart_wait.as_secs_f64(),
            killed.elapsed().as_secs_f64()
        );
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    let accepted: HashSet<Uuid> = accepted.lock().unwrap().iter().copied().collect();
    assert_eq!(accepted.len(), MESSAGES);

    // Client retries of already-accepted messages, then one marker per customer: per-partition
    // order means once every marker is stored, every duplicate before it was processed.
    for i in (0..MESSAGES).step_by(15) {
        let (s, v) = h
            .post(&front, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("c{}@example.com", i % CUSTOMERS)},
                "text": format!("hello, this is message {i}"), "external_id": format!("k-{i}")}))
            .await;
        assert_eq!(s, 202);
        assert!(accepted.contains(&v["message_id"].as_str().unwrap().parse::<Uuid>().unwrap()));
    }
    for c in 0..CUSTOMERS {
        let (s, _) = h
            .post(&front, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("c{c}@example.com")}, "text": "marker", "external_id": format!("marker-{c}")}))
            .await;
        assert_eq!(s, 202);
    }
    let total = MESSAGES + CUSTOMERS;
    // A restarted consumer may wait out the killed member's session (up to a minute on the
    // embedded broker) before its partitions come back, twice here, on a 2-core CI machine
    // busy with the other kill tests: generous, as it only bounds a failure.
    until_count(
        &pool,
        "every message stored",
        480,
        "SELECT count(*) FROM messages WHERE direction = 'inbound'",
        total,
    )
    .await;

    let stored: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM messages WHERE text <> 'marker' AND direction = 'inbound'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let stored_set: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), MESSAGES, "no duplicate message rows");
    assert_eq!(
        stored_set, accepted,
        "every accepted message stored, nothing else"
    );
    let tickets = count(&pool, "SELECT count(*) FROM tickets").await;
    assert_eq!(
        tickets as usize, total,
        "one ticket per message (api messages without a conversation)"
    );
    let orphans = count(&pool, "SELECT count(*) FROM tickets t WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.ticket_id = t.id)").await;
    assert_eq!(orphans, 0);
    let per_ticket = count(&pool, "SELECT count(*) FROM (SELECT ticket_id FROM messages WHERE direction = 'inbound' GROUP BY ticket_id HAVING count(*) <> 1) x").await;
    assert_eq!(
        per_ticket, 0,
        "each message in exactly one ticket, each ticket with its one message"
    );

    // Every ticket assigned exactly once, and the agents' counters agree.
    until_count(
        &pool,
        "every ticket assigned",
        240,
        "SELECT count(*) FROM assignments",
        total,
    )
    .await;
    let twice = count(&pool, "SELECT count(*) FROM (SELECT ticket_id FROM assignments GROUP BY ticket_id HAVING count(*) > 1) x").await;
    assert_eq!(twice, 0);
    let load: i64 = sqlx::query_scalar("SELECT sum(active_count)::bigint FROM agents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(load as usize, total);

    // ClickHouse: replays collapse, so each fact counts once.
    let expect = total.to_string();
    let created = eventually("clickhouse to catch up", Duration::from_secs(240), || async {
        let n = h.ch("SELECT count() FROM events FINAL WHERE schema = 'ticket_event' AND kind = 'created'").await;
        (n == expect).then_some(n)
    })
    .await;
    assert_eq!(created, expect);
    let added = h.ch("SELECT uniqExact(event_id) FROM events WHERE schema = 'ticket_event' AND kind = 'message_added' AND visitParamExtractString(payload, 'direction') = 'inbound'").await;
    assert_eq!(added, expect);
    let added_final = h.ch("SELECT count() FROM events FINAL WHERE schema = 'ticket_event' AND kind = 'message_added' AND visitParamExtractString(payload, 'direction') = 'inbound'").await;
    assert_eq!(added_final, expect);

    // SLA: every ticket warned and breached exactly once, none met, whatever was killed when.
    until_count(&pool, "every first-response clock breached", 120, "SELECT count(*) FROM sla_clocks WHERE metric = 'first_response' AND breached_at IS NOT NULL", total).await;
    for kind in ["warning", "breached"] {
        let q = format!(
            "SELECT count(), uniqExact(ticket_id) FROM events FINAL WHERE schema = 'sla_event' AND kind = '{kind}' FORMAT CSV"
        );
        let got = eventually(
            "sla events in clickhouse",
            Duration::from_secs(120),
            || async {
                let out = h.ch(&q).await;
                (out == format!("{total},{total}")).then_some(out)
            },
        )
        .await;
        assert_eq!(got, format!("{total},{total}"), "{kind}");
    }
    let met = h
        .ch("SELECT count() FROM events FINAL WHERE schema = 'sla_event' AND kind = 'met'")
        .await;
    assert_eq!(met, "0");

    // The rule: once per ticket, its tag and its one note on every ticket.
    until_count(
        &pool,
        "the rule on every ticket",
        240,
        "SELECT count(*) FROM rule_fires",
        total,
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rule_fires").await as usize,
        total
    );
    let notes = count(&pool, "SELECT count(*) FROM messages WHERE direction = 'note' AND text LIKE 'Seen by the rules ✓ T-%'").await;
    assert_eq!(notes as usize, total, "one note per ticket");
    let noted_twice = count(&pool, "SELECT count(*) FROM (SELECT ticket_id FROM messages WHERE direction = 'note' GROUP BY ticket_id HAVING count(*) <> 1) x").await;
    assert_eq!(noted_twice, 0);
    let untagged = count(&pool, "SELECT count(*) FROM tickets WHERE tags <> '{seen}'").await;
    assert_eq!(untagged, 0);
    drop(processors);
}
