//! Erasure and retention that finish, over real services: erasing a customer after a chain of
//! merges erases the whole person (Postgres, ClickHouse, raw dead-lettered mail), matching
//! addresses exactly; retention removes orphaned customers, expired chat sessions and old raw
//! mail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{count, eventually, start, Harness, Node, ALL};

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use common::mail::{smtp_accepted, DOMAIN};

async fn customer_of(pool: &PgPool, kind: &str, value: &str) -> Option<Uuid> {
    sqlx::query_scalar("SELECT customer_id FROM customer_identities WHERE kind = $1 AND value = $2")
        .bind(kind)
        .bind(value)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Posts an API message and waits until its message is stored.
async fn message(h: &Harness, node: &Node, pool: &PgPool, customer: Value, id: &str) {
    let (s, v) = h
        .post(
            node,
            "/v1/messages",
            json!({"channel": "api", "customer": customer, "text": format!("About my order ({id})"), "external_id": id}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let text = format!("About my order ({id})");
    eventually("the message stored", Duration::from_secs(60), || {
        let (pool, text) = (pool.clone(), text.clone());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE text = $1")
                .bind(text)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    })
    .await;
}

/// What a `SELECT count(*) ...` with `$1` = `id` says.
async fn count_for(pool: &PgPool, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn ch_count(h: &Harness, cond: &str) -> u64 {
    h.ch(&format!("SELECT count() FROM events WHERE {cond}"))
        .await
        .parse()
        .unwrap()
}

fn raw_mails(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(node.data.join("deadletter").join("email"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_after_chained_merges_is_whole_and_exact() {
    let (h, node) = start(
        ALL,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__EMAIL__DOMAIN", DOMAIN),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
                &format!("help@{DOMAIN}"),
            ),
        ],
    )
    .await;
    let pool = h.pg().await;

    // Three customers, oldest first: C (bo.work@x.com), B (bo.home@x.com), A (bo@x.com). The
    // API takes an email and a phone on one message; a phone first added to A then named with
    // B's email merges A into B (the oldest survives), then with C's email B into C.
    for (email, id) in [
        ("bo.work@x.com", "c-1"),
        ("bo.home@x.com", "b-1"),
        ("bo@x.com", "a-1"),
    ] {
        message(&h, &node, &pool, json!({"email": email, "name": "Bo"}), id).await;
    }
    let a = customer_of(&pool, "email", "bo@x.com").await.unwrap();
    let b = customer_of(&pool, "email", "bo.home@x.com").await.unwrap();
    let c = customer_of(&pool, "email", "bo.work@x.com").await.unwrap();
    for (email, id) in [
        ("bo@x.com", "ap"),
        ("bo.home@x.com", "bp"),
        ("bo.work@x.com", "cp"),
    ] {
        message(
            &h,
            &node,
            &pool,
            json!({"email": email, "phone": "+15550100001"}),
            id,
        )
        .await;
    }
    let chain: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT id, merged_into FROM customers WHERE id = ANY($1) ORDER BY id")
            .bind([a, b, c].as_slice())
            .fetch_all(&pool)
            .await
            .unwrap();
    let merged: std::collections::HashMap<Uuid, Option<Uuid>> = chain.into_iter().collect();
    assert_eq!(merged[&a], Some(b), "A merged into B");
    assert_eq!(merged[&b], Some(c), "B merged into C");
    assert_eq!(merged[&c], None);

    // Someone else whose address ends like hers, with a ticket, and raw mail from both that
    // could not become a ticket (no From); jumbo's mail mentions bo@x.com in its body only.
    message(&h, &node, &pool, json!({"email": "jumbo@x.com"}), "j-1").await;
    let jumbo = customer_of(&pool, "email", "jumbo@x.com").await.unwrap();
    smtp_accepted(&node.smtp, "bo@x.com", b"Return-Path: <bo@x.com>\r\nSender: Bo <BO@x.com>\r\nSubject: \xd0\x97\xd0\xb0\xd0\xba\xd0\xb0\xd0\xb7\r\n\r\nmy order, attached\r\n").await;
    smtp_accepted(
        &node.smtp,
        "jumbo@x.com",
        b"Return-Path: <jumbo@x.com>\r\nSubject: also broken\r\n\r\nmy friend bo@x.com says hi\r\n",
    )
    .await;
    assert_eq!(raw_mails(&node).len(), 2);

    // Everything has reached ClickHouse before the erasure (events still on their way would
    // land after it).
    let her = format!(
        "position(payload, '\"bo@x.com\"') > 0 OR position(payload, '\"bo.work@x.com\"') > 0 \
         OR position(payload, '\"bo.home@x.com\"') > 0 \
         OR position(payload, '\"+15550100001\"') > 0 OR position(payload, '\"{a}\"') > 0 \
         OR position(payload, '\"{b}\"') > 0 OR position(payload, '\"{c}\"') > 0"
    );
    let his =
        format!("position(payload, '\"jumbo@x.com\"') > 0 OR position(payload, '\"{jumbo}\"') > 0");
    let (her_before, his_before) = eventually(
        "the events of both in clickhouse",
        Duration::from_secs(60),
        || async {
            let her = ch_count(&h, &her).await;
            let his = ch_count(&h, &his).await;
            let dl = ch_count(&h, "topic = 'deadletter'").await;
            (her >= 5 && his >= 1 && dl == 2).then_some((her, his))
        },
    )
    .await;
    assert!(her_before > 0 && his_before > 0);

    // Erasing A by its old id erases the whole person: A, B and C.
    let (s, erased) = h.delete(&node, &format!("/v1/customers/{a}")).await;
    assert_eq!(s, 200, "{erased}");
    assert_eq!(erased["customers"], 3, "{erased}");
    assert_eq!(erased["raw_mails"], 1, "{erased}");
    assert_eq!(erased["analytics"], true, "{erased}");
    assert!(erased["tickets"].as_u64().unwrap() >= 1, "{erased}");
    for id in [a, b, c] {
        let (s, _) = h.delete(&node, &format!("/v1/customers/{id}")).await;
        assert_eq!(s, 404, "{id} is gone");
    }
    // The erasure is in the audit log, by the admin, with ids and counts and nothing of her.
    let (s, log) = h.get(&node, "/v1/audit?action=customer.erased").await;
    assert_eq!(s, 200, "{log}");
    let entry = &log["entries"][0];
    assert_eq!(
        (entry["actor"].as_str(), entry["subject"].as_str()),
        (Some("admin"), Some(format!("customer:{a}").as_str())),
        "{log}"
    );
    assert_eq!(
        entry["after"]["customers"].as_array().map(Vec::len),
        Some(3),
        "{log}"
    );
    assert!(!log.to_string().contains("bo@x.com"), "{log}");
    let left: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM customers WHERE id = ANY($1)),
                (SELECT count(*) FROM customer_identities WHERE value IN ('bo@x.com', 'bo.home@x.com', 'bo.work@x.com', '+15550100001')),
                (SELECT count(*) FROM tickets WHERE customer_id <> $2),
                (SELECT count(*) FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE t.customer_id <> $2)",
    )
    .bind([a, b, c].as_slice())
    .bind(jumbo)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0, 0));
    // Exact: jumbo keeps his customer, identity, ticket and message.
    assert_eq!(
        customer_of(&pool, "email", "jumbo@x.com").await,
        Some(jumbo)
    );
    let his_messages = count_for(&pool, "SELECT count(*) FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE t.customer_id = $1", jumbo).await;
    assert_eq!(his_messages, 1);
    // Her raw mail is gone from disk, his (which only mentions her) stays.
    let files = raw_mails(&node);
    assert_eq!(files.len(), 1, "{files:?}");
    let kept = std::fs::read(node.data.join("deadletter").join("email").join(&files[0])).unwrap();
    assert!(String::from_utf8_lossy(&kept).contains("Return-Path: <jumbo@x.com>"));
    // ClickHouse: none of her events (dead letter included), all of his.
    eventually(
        "her events gone from clickhouse",
        Duration::from_secs(60),
        || async { (ch_count(&h, &her).await == 0).then_some(()) },
    )
    .await;
    // (More of his may still arrive; none of his are deleted.)
    assert!(ch_count(&h, &his).await >= his_before);
    assert_eq!(
        ch_count(
            &h,
            "topic = 'deadletter' AND position(payload, 'jumbo@x.com') > 0"
        )
        .await,
        1
    );
    assert_eq!(
        ch_count(
            &h,
            "topic = 'deadletter' AND position(payload, 'BO@x.com') > 0"
        )
        .await,
        0
    );
    let erasures = count(
        &pool,
        "SELECT count(*) FROM erasures WHERE reason = 'request'",
    )
    .await;
    assert_eq!(erasures, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_orphans_expired_chat_sessions_and_old_raw_mail() {
    let (h, node) = start(
        ALL,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__RETENTION__INTERVAL_SECS", "1"),
            ("SWITCHBOARD__RETENTION__CLOSED_TICKETS_DAYS", "1"),
            ("SWITCHBOARD__RETENTION__CHAT_SESSION_DAYS", "1"),
            ("SWITCHBOARD__RETENTION__DEADLETTER_DAYS", "1"),
            ("SWITCHBOARD__RETENTION__AUDIT_DAYS", "1"),
            // Small batches: the job loops over several.
            ("SWITCHBOARD__RETENTION__BATCH_SIZE", "2"),
        ],
    )
    .await;
    let pool = h.pg().await;
    // Five customers with a ticket each: orphan-N will have nothing left; kept@ has an order.
    for i in 0..4 {
        message(
            &h,
            &node,
            &pool,
            json!({"email": format!("orphan-{i}@x.com")}),
            &format!("o-{i}"),
        )
        .await;
    }
    message(&h, &node, &pool, json!({"email": "kept@x.com"}), "k-1").await;
    let kept = customer_of(&pool, "email", "kept@x.com").await.unwrap();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, external_id, total_cents) VALUES ($1, $2, 'shop-1', 100)",
    )
    .bind(Uuid::now_v7())
    .bind(kept)
    .execute(&pool)
    .await
    .unwrap();
    // Chat sessions: one idle for three days, one fresh.
    let mut sessions = Vec::new();
    for email in ["idle@x.com", "fresh@x.com"] {
        let (s, v) = h.open_chat(&node, json!({"email": email})).await;
        assert_eq!(s, 201, "{v}");
        sessions.push(Uuid::parse_str(v["conversation_id"].as_str().unwrap()).unwrap());
    }
    // Old raw mail (a file as the email front door keeps it), and a new one.
    let dir = node.data.join("deadletter").join("email");
    std::fs::create_dir_all(&dir).unwrap();
    // Named by their SHA-256 as the store names them (any 64 hex digits will do here).
    for (name, age_days) in [("0a", 3u64), ("0b", 0)] {
        let path = dir.join(format!("{}.eml", name.repeat(32)));
        std::fs::write(&path, b"Subject: x\r\n\r\nno sender\r\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400 + 60))
            .unwrap();
    }
    // The audit log: three entries from three days ago, one from now.
    for (action, age) in [("old.a", 3), ("old.b", 3), ("old.c", 3), ("new.d", 0)] {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, subject) VALUES ($1, now() - make_interval(days => $2), 'test', $3, 'x')",
        )
        .bind(Uuid::now_v7())
        .bind(age)
        .bind(action)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Three days later, as far as the store knows: every ticket resolved long ago, the idle
    // session untouched since.
    sqlx::query(
        "UPDATE tickets SET status = 'resolved', resolved_at = now() - interval '3 days', updated_at = now() - interval '3 days'",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE chat_conversations SET created_at = now() - interval '3 days' WHERE id = $1",
    )
    .bind(sessions[0])
    .execute(&pool)
    .await
    .unwrap();
    eventually(
        "retention to erase the tickets",
        Duration::from_secs(60),
        || async {
            let n = count(&pool, "SELECT count(*) FROM tickets").await;
            let c = count(&pool, "SELECT count(*) FROM chat_conversations").await;
            (n == 0 && c == 1 && raw_mails(&node).len() == 1).then_some(())
        },
    )
    .await;
    // The orphans went with their identities; the customer with an order stays.
    let orphans = count(
        &pool,
        "SELECT count(*) FROM customer_identities WHERE left(value, 7) = 'orphan-'",
    )
    .await;
    assert_eq!(orphans, 0);
    let customers = count_for(
        &pool,
        "SELECT count(*) FROM customers WHERE left(email, 7) = 'orphan-' OR id = $1",
        kept,
    )
    .await;
    assert_eq!(customers, 1, "only kept@ is left");
    assert_eq!(customer_of(&pool, "email", "kept@x.com").await, Some(kept));
    let (messages, conversation): (i64, Uuid) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT id FROM chat_conversations)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((messages, conversation), (0, sessions[1]));
    assert_eq!(raw_mails(&node), vec![format!("{}.eml", "0b".repeat(32))]);
    // Several batches of two, one erasure record each.
    let batches = count(
        &pool,
        "SELECT count(*) FROM erasures WHERE reason = 'retention'",
    )
    .await;
    assert!(batches >= 3, "{batches} batches");
    // The old audit entries go (once ClickHouse has the log up to a later one); the new stays.
    eventually(
        "retention to prune the audit log",
        Duration::from_secs(60),
        || async {
            (count(
                &pool,
                "SELECT count(*) FROM audit_log WHERE left(action, 4) = 'old.'",
            )
            .await
                == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'new.d'"
        )
        .await,
        1
    );
}
