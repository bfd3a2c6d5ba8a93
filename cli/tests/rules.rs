//! The team's own rules over real services: `/v1/rules` (checks naming the bad part, loops
//! refused, versions, the audit log), triggers in the stream (the issue's example rules end to
//! end, chains of rules, once per event, the fire budget cutting a chain no check could see), and
//! automations on time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, ticket_by_external_id, Sse, CORE};

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const NO_MODELS: (&str, &str) = ("SWITCHBOARD__MODELS__ENABLED", "false");

/// The ticket's tags once `pred` holds for them.
async fn tags_when(pool: &PgPool, ticket: Uuid, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    eventually("the tags", Duration::from_secs(60), || {
        let pool = pool.clone();
        let pred = &pred;
        async move {
            let tags: Vec<String> = sqlx::query_scalar("SELECT tags FROM tickets WHERE id = $1")
                .bind(ticket)
                .fetch_one(&pool)
                .await
                .unwrap();
            pred(&tags).then_some(tags)
        }
    })
    .await
}

fn rule(name: &str, body: Value) -> Value {
    let mut b = body;
    b["name"] = json!(name);
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_are_checked_versioned_audited_and_loops_are_refused() {
    let (h, node) = start(&["serving"], &[NO_MODELS]).await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, true).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let (ann_c, sue) = (h.caller(&node, &ann_token), h.caller(&node, &sue_token));

    let tag_vip = rule(
        "VIP tag → urgent",
        json!({"kind": "trigger", "on": ["tags_changed", "priority_changed"],
               "conditions": {"all": [{"field": "tags", "op": "contains", "value": "vip"}]},
               "actions": [{"type": "priority", "priority": "urgent"}], "enabled": true}),
    );
    // Agents read rules, supervisors write them.
    let (s, v) = ann_c.post("/v1/rules", tag_vip.clone()).await;
    assert_eq!(s, 403, "{v}");
    // Each bad part is named: an unknown field, a pattern that is no regex, an action the
    // trigger may not take, a team that does not exist, unknown keys, hostile text.
    let bad = [
        (
            json!({"name": "x", "kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "colour", "op": "is", "value": "red"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
            "conditions.all[0].field",
        ),
        (
            json!({"name": "x", "kind": "trigger", "on": ["message_received"], "conditions": {"any": [{"field": "message.text", "op": "matches", "value": "(refund"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
            "conditions.any[0].value",
        ),
        (
            json!({"name": "x", "kind": "trigger", "on": ["message_sent"], "actions": [{"type": "reply", "text": "Thanks!"}]}),
            "actions[0].type",
        ),
        (
            json!({"name": "x", "kind": "trigger", "on": ["created"], "actions": [{"type": "team", "team_id": Uuid::now_v7()}]}),
            "actions[0].team_id",
        ),
        (
            json!({"name": "x", "kind": "automation", "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"}]}, "actions": [{"type": "status", "status": "closed"}]}),
            "conditions.all",
        ),
        (
            json!({"name": "x", "kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "fields.nope", "op": "is", "value": 1}]}, "actions": [{"type": "priority", "priority": "high"}]}),
            "conditions.all[0].field",
        ),
        (
            json!({"name": "bad\u{0}name", "kind": "trigger", "on": ["created"], "actions": [{"type": "priority", "priority": "high"}]}),
            "name",
        ),
    ];
    for (body, field) in bad {
        let (s, v) = sue.post("/v1/rules", body.clone()).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = sue
        .post(
            "/v1/rules",
            json!({"name": "x", "kind": "trigger", "on": ["created"], "actions": [], "colour": 1}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("colour"), "{v}");
    // A pattern nested deep or huge is refused before it is compiled, not run.
    let deep = "(".repeat(5000) + &")".repeat(5000);
    let (s, v) = sue
        .post("/v1/rules", json!({"name": "deep", "kind": "trigger", "on": ["message_received"], "conditions": {"all": [{"field": "message.text", "op": "matches", "value": deep}]}, "actions": [{"type": "priority", "priority": "high"}]}))
        .await;
    assert_refused(s, &v, 400, "conditions.all[0].value");

    // A good rule: stored, version 1, in the audit log.
    let (s, v) = sue.post("/v1/rules", tag_vip).await;
    assert_eq!(s, 201, "{v}");
    let first = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (v["version"].as_i64(), v["enabled"].as_bool()),
        (Some(1), Some(true))
    );
    // A rule undoing it would set it off again, for ever: refused while the first is enabled,
    // naming it.
    let undo = rule(
        "urgent → low",
        json!({"kind": "trigger", "on": ["priority_changed"],
               "conditions": {"all": [{"field": "priority", "op": "is", "value": "urgent"}]},
               "actions": [{"type": "priority", "priority": "low"}], "enabled": true}),
    );
    let (s, v) = sue.post("/v1/rules", undo.clone()).await;
    assert_refused(s, &v, 400, "actions");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("VIP tag"),
        "{v}"
    );
    // Disabled it may be saved (and dry-run later); enabling it is refused.
    let mut disabled = undo.clone();
    disabled["enabled"] = json!(false);
    let (s, v) = sue.post("/v1/rules", disabled.clone()).await;
    assert_eq!(s, 201, "{v}");
    let second = v["id"].as_str().unwrap().to_string();
    let mut enable = undo;
    enable["version"] = json!(1);
    let (s, v) = sue.put(&format!("/v1/rules/{second}"), enable).await;
    assert_refused(s, &v, 400, "actions");
    // A stale version is refused; a current one moves it on, and every version is kept.
    disabled["name"] = json!("urgent → note");
    disabled["actions"] = json!([{"type": "note", "text": "Urgent now, {{customer.first_name}}'s ticket {{ticket.number}}"}]);
    disabled["version"] = json!(7);
    let (s, v) = sue
        .put(&format!("/v1/rules/{second}"), disabled.clone())
        .await;
    assert_refused(s, &v, 409, "version");
    disabled["version"] = json!(1);
    disabled["enabled"] = json!(true);
    let (s, v) = sue.put(&format!("/v1/rules/{second}"), disabled).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = ann_c.get(&format!("/v1/rules/{second}/versions")).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["urgent → note", "urgent → low"]);
    // An automation and a trigger undoing its end (it nudges, the other un-nudges) would nudge
    // the customer every pass: refused.
    let nudge = json!({"name": "nudge", "kind": "automation", "enabled": true,
        "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                               {"field": "hours_since_pending", "op": "gte", "value": 48},
                               {"field": "tags", "op": "not_contains", "value": "nudged"}]},
        "actions": [{"type": "reply", "text": "Still there?"}, {"type": "tags", "add": ["nudged"]}]});
    let (s, v) = sue.post("/v1/rules", nudge).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = sue
        .post(
            "/v1/rules",
            json!({"name": "un-nudge", "kind": "trigger", "on": ["message_sent"], "enabled": true,
            "actions": [{"type": "tags", "remove": ["nudged"]}]}),
        )
        .await;
    assert_refused(s, &v, 400, "actions");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nudge"),
        "{v}"
    );
    let nudge_id: String = sqlx::query_scalar("SELECT id::text FROM rules WHERE name = 'nudge'")
        .fetch_one(&h.pg().await)
        .await
        .unwrap();
    let (s, _) = sue.delete(&format!("/v1/rules/{nudge_id}")).await;
    assert_eq!(s, 204);
    // Listed in order; fields listed for the editor.
    let (s, v) = ann_c.get("/v1/rules").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, v) = ann_c.get("/v1/rules/fields").await;
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|f| f["field"] == "message.text"),
        "{v}"
    );
    // The audit log has who changed what, before and after.
    let (s, v) = h
        .get(&node, &format!("/v1/audit?subject=rule:{second}"))
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rule.updated", "rule.created"], "{v}");
    assert_eq!(entries[0]["before"]["name"], "urgent → low");
    assert_eq!(entries[0]["after"]["name"], "urgent → note");
    assert_eq!(entries[0]["role"], "supervisor");
    // Deleted: gone, and the log says so.
    let (s, _) = ann_c.delete(&format!("/v1/rules/{first}")).await;
    assert_eq!(s, 403);
    let (s, _) = sue.delete(&format!("/v1/rules/{first}")).await;
    assert_eq!(s, 204);
    let (s, _) = sue.get(&format!("/v1/rules/{first}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_act_in_the_stream_in_order_once_and_within_the_budget() {
    let (mut h, _) = (common::Harness::new().await, ());
    // A VIP's first response is due in 2 s, so the breach rule can be seen firing.
    h.edit_config(&[(
        "{ name: vip, tiers: [vip], calendar: 24x7, first_response: 15m,",
        "{ name: vip, tiers: [vip], calendar: 24x7, first_response: 2s,",
    )]);
    let node = h
        .spawn(
            CORE,
            &[
                NO_MODELS,
                ("SWITCHBOARD__RULES__FIRE_BUDGET", "4"),
                // A short window, so the test can see the halt outlast it.
                ("SWITCHBOARD__RULES__BUDGET_WINDOW_SECS", "3"),
            ],
        )
        .await;
    let pool = h.pg().await;
    // Nobody online: tickets wait in the queue, so no assignment races the rules.
    let lead = h.agent(&node, "lead@example.com", &[], 5, false).await;
    let lead_token = h.issue_token(&node, "agent", Some(&lead), "lead").await;
    let finance = h
        .created(
            &node,
            "/v1/teams",
            json!({"name": "Finance", "supervisor_id": lead}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // "Refunds over $500 go to the finance team", then a second rule chained on the first's
    // tag, then a VIP breach told to the on-call lead.
    let rules = [
        json!({"name": "Big refunds to finance", "kind": "trigger", "on": ["created"], "enabled": true,
               "conditions": {"all": [{"field": "message.text", "op": "contains", "value": ["refund", "money back"]},
                                      {"field": "order_value", "op": "gt", "value": 500}]},
               "actions": [{"type": "team", "team_id": finance}, {"type": "tags", "add": ["refund_review"]}]}),
        json!({"name": "Refund reviews are high", "kind": "trigger", "on": ["tags_changed"], "enabled": true, "position": 5,
               "conditions": {"all": [{"field": "tags", "op": "contains", "value": "refund_review"},
                                      {"field": "actor", "op": "is", "value": "rule"}]},
               "actions": [{"type": "priority", "priority": "high"},
                           {"type": "note", "text": "Refund of {{customer.name}} under review"}]}),
        json!({"name": "VIP breach to the lead", "kind": "trigger", "on": ["sla_breached"], "enabled": true,
               "conditions": {"all": [{"field": "tier", "op": "is", "value": "vip"}]},
               "actions": [{"type": "notify", "to": [format!("agent:{lead}")], "text": "VIP {{ticket.number}} breached"}]}),
    ];
    for r in rules {
        h.created(&node, "/v1/rules", r).await;
    }
    // Five independent rules on one customer message: all fire (the budget of 4 counts chains).
    for i in 1..=5 {
        h.created(
            &node,
            "/v1/rules",
            json!({"name": format!("stamp {i}"), "kind": "trigger", "on": ["created"], "enabled": true, "position": 10 + i,
                   "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "stamp me"}]},
                   "actions": [{"type": "tags", "add": [format!("stamp_{i}")]}]}),
        )
        .await;
    }
    // A pair that sets each other off for ever, stored the way no check sees (rules kept from
    // before a check, or written by hand), and a rule that starts it: the budget cuts the chain.
    for (name, on_tag, off_tag) in [("ping", "ping", "pong"), ("pong", "pong", "ping")] {
        let def = json!({"kind": "trigger", "on": ["tags_changed"],
            "conditions": {"all": [{"field": "tags", "op": "contains", "value": on_tag}]},
            "actions": [{"type": "tags", "add": [off_tag], "remove": [on_tag]}]});
        sqlx::query(
            "INSERT INTO rules (id, name, kind, definition, enabled, position, created_by, updated_by, created_at, updated_at)
             VALUES ($1, $2, 'trigger', $3, true, 50, 'hand', 'hand', now(), now())",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(&def)
        .execute(&pool)
        .await
        .unwrap();
    }
    h.created(
        &node,
        "/v1/rules",
        json!({"name": "start the loop", "kind": "trigger", "on": ["created"], "enabled": true, "position": 40,
               "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "loop me"}]},
               "actions": [{"type": "tags", "add": ["ping"]}]}),
    )
    .await;
    let stream = h
        .fetch(
            &node,
            &format!("/v1/agents/{lead}/stream"),
            Some(&lead_token),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let mut sse = Sse::new(stream);
    sse.until("snapshot", 10).await;

    let send = |ext: &str, email: &str, text: &str, ctx: Value| {
        let body = json!({"channel": "api", "customer": {"email": email, "name": "Zoë Ünal"},
                          "text": text, "external_id": ext, "customer_context": ctx});
        let h = &h;
        let node = &node;
        async move {
            let (s, v) = h.post(node, "/v1/messages", body).await;
            assert_eq!(s, 202, "{v}");
        }
    };
    send(
        "big",
        "big@example.com",
        "I want my MONEY BACK for the blender\u{7}",
        json!({"order_value": 750.0}),
    )
    .await;
    send(
        "small",
        "small@example.com",
        "refund please",
        json!({"order_value": 20.0}),
    )
    .await;
    send("stamp", "stamp@example.com", "stamp me ✓ 🙂", json!({})).await;
    send("loop", "loop@example.com", "loop me", json!({})).await;
    send(
        "vip",
        "vip@example.com",
        "Where is my parcel?",
        json!({"tier": "vip"}),
    )
    .await;
    let big = ticket_by_external_id(&pool, "big").await;
    let small = ticket_by_external_id(&pool, "small").await;
    let stamped = ticket_by_external_id(&pool, "stamp").await;
    let looped = ticket_by_external_id(&pool, "loop").await;
    let vip = ticket_by_external_id(&pool, "vip").await;

    // The big refund: team, tag, then (set off by the tag, by a rule) high with a note.
    tags_when(&pool, big, |t| t.contains(&"refund_review".to_string())).await;
    let (team, priority): (Option<Uuid>, String) =
        eventually("the chain", Duration::from_secs(60), || {
            let pool = pool.clone();
            async move {
                let row: (Option<Uuid>, String) =
                    sqlx::query_as("SELECT team_id, priority FROM tickets WHERE id = $1")
                        .bind(big)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (row.1 == "high").then_some(row)
            }
        })
        .await;
    assert_eq!(
        (team.map(|t| t.to_string()), priority.as_str()),
        (Some(finance.clone()), "high")
    );
    let note: String = eventually("the note", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar(
                "SELECT text FROM messages WHERE ticket_id = $1 AND direction = 'note'",
            )
            .bind(big)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(note, "Refund of Zoë Ünal under review");
    // The events say which rule did each change.
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT actor FROM audit_log WHERE ticket_id = $1")
            .bind(big)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        actors.is_empty(),
        "rules are no people: their trail is the event stream, not the audit log: {actors:?}"
    );

    // The small refund and the stamped ticket were left alone by the refund rules.
    let small_row: (Option<Uuid>, Vec<String>) =
        sqlx::query_as("SELECT team_id, tags FROM tickets WHERE id = $1")
            .bind(small)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(small_row, (None, vec![]));

    // Five stamp rules on what a customer did: every one fires, in order.
    let tags = tags_when(&pool, stamped, |t| t.len() >= 5).await;
    assert_eq!(
        tags,
        ["stamp_1", "stamp_2", "stamp_3", "stamp_4", "stamp_5"]
    );

    // The ping-pong chain: four chained fires (the budget), then one rules_halted record and
    // nothing more, however long it is left.
    let chained = |pool: PgPool| async move {
        count(
            &pool,
            &format!("SELECT count(*) FROM rule_fires WHERE ticket_id = '{looped}' AND chained"),
        )
        .await
    };
    eventually("the chain cut", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let halts = count(&pool, &format!("SELECT count(*) FROM rule_fires WHERE ticket_id = '{looped}' AND rule_id = '00000000-0000-0000-0000-000000000000'")).await;
            (halts == 1).then_some(())
        }
    })
    .await;
    assert_eq!(chained(pool.clone()).await, 4);
    // The halt outlasts the window (3 s): the old fires leaving it do not restart the loop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(chained(pool.clone()).await, 4);
    let halts = |pool: PgPool| async move {
        count(&pool, &format!("SELECT count(*) FROM rule_fires WHERE ticket_id = '{looped}' AND rule_id = '00000000-0000-0000-0000-000000000000'")).await
    };
    assert_eq!(halts(pool.clone()).await, 1, "one halt, however long");
    // A person acting on the ticket (a tag while it carries `ping`) lifts it: the chain that
    // sets off runs, within the budget, and is cut again.
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/tickets/{looped}/tags"),
            json!({"tags": ["seen_by_a_person"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("the chain cut again", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move { (halts(pool).await == 2).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(chained(pool.clone()).await, 8);

    // The VIP ticket breaches its 2 s first response: the lead is told on its stream.
    let mut notified = None;
    for _ in 0..100 {
        let ev = sse.until("notification", 60).await;
        if ev["ticket_id"] == vip.to_string() {
            notified = Some(ev);
            break;
        }
    }
    let ev = notified.expect("the lead notified");
    assert_eq!(ev["kind"], "notified");
    assert!(ev["text"].as_str().unwrap().starts_with("VIP T-"), "{ev}");
    assert!(ev["actor"].as_str().unwrap().starts_with("rule:"), "{ev}");

    // Each rule fired once per event, however the stream delivered them: no (rule, cause) twice
    // (the key), and the big ticket's two rules fired exactly once each.
    let fires: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT rule_id, count(*) FROM rule_fires WHERE ticket_id = $1 GROUP BY rule_id",
    )
    .bind(big)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(fires.len(), 2, "{fires:?}");
    assert!(fires.iter().all(|(_, n)| *n == 1), "{fires:?}");
    let (s, v) = h
        .get(&node, &format!("/v1/rules/{}/fires", fires[0].0))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["ticket_id"], big.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn automations_remind_then_close_a_quiet_pending_ticket() {
    let (h, node) = start(
        CORE,
        &[
            NO_MODELS,
            ("SWITCHBOARD__RULES__AUTOMATION_EVERY_MS", "300"),
        ],
    )
    .await;
    let pool = h.pg().await;
    // "A pending ticket with no answer for 48 hours gets a reminder, then closes."
    h.created(
        &node,
        "/v1/rules",
        json!({"name": "Remind after 48h", "kind": "automation", "enabled": true,
               "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                      {"field": "hours_since_pending", "op": "gte", "value": 48},
                                      {"field": "tags", "op": "not_contains", "value": "reminded"}]},
               "actions": [{"type": "reply", "text": "Hi {{customer.first_name}}, is {{ticket.number}} solved?"},
                           {"type": "tags", "add": ["reminded"]}]}),
    )
    .await;
    h.created(
        &node,
        "/v1/rules",
        json!({"name": "Close after 96h", "kind": "automation", "enabled": true,
               "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                      {"field": "hours_since_pending", "op": "gte", "value": 96},
                                      {"field": "tags", "op": "contains", "value": "reminded"}]},
               "actions": [{"type": "status", "status": "closed"}]}),
    )
    .await;
    for (ext, email) in [
        ("quiet", "quiet@example.com"),
        ("fresh", "fresh@example.com"),
    ] {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": email}, "text": "Help", "external_id": ext}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let quiet = ticket_by_external_id(&pool, "quiet").await;
    let fresh = ticket_by_external_id(&pool, "fresh").await;
    for t in [quiet, fresh] {
        let (s, v) = h
            .put(
                &node,
                &format!("/v1/tickets/{t}/status"),
                json!({"status": "pending"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    // Two days pass for the quiet ticket (its status changed 49 hours ago).
    sqlx::query("UPDATE tickets SET status_changed_at = now() - interval '49 hours' WHERE id = $1")
        .bind(quiet)
        .execute(&pool)
        .await
        .unwrap();
    tags_when(&pool, quiet, |t| t == ["reminded"]).await;
    // Once: the reminder does not fire again on later passes, and the fresh ticket is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = count(
        &pool,
        &format!("SELECT count(*) FROM rule_fires WHERE ticket_id = '{quiet}'"),
    )
    .await;
    assert_eq!(n, 1);
    let fresh_tags: Vec<String> = sqlx::query_scalar("SELECT tags FROM tickets WHERE id = $1")
        .bind(fresh)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(fresh_tags.is_empty());
    // Two more days: closed.
    sqlx::query("UPDATE tickets SET status_changed_at = now() - interval '97 hours' WHERE id = $1")
        .bind(quiet)
        .execute(&pool)
        .await
        .unwrap();
    eventually("closed", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let s: String = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
                .bind(quiet)
                .fetch_one(&pool)
                .await
                .unwrap();
            (s == "closed").then_some(())
        }
    })
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
        .bind(fresh)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_replays_history_and_changes_nothing() {
    let (h, node) = start(&["ingest", "processors", "serving", "sink"], &[NO_MODELS]).await;
    let pool = h.pg().await;
    let texts = [
        ("d1", "Please refund my order, it broke"),
        ("d2", "Where is my parcel?"),
        ("d3", "REFUND NOW \u{1F621}"),
        ("d4", "Ünïcödé question about sizes"),
    ];
    for (ext, text) in texts {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("{ext}@example.com")}, "text": text, "external_id": ext}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let mut refunds = Vec::new();
    for ext in ["d1", "d3"] {
        refunds.push(ticket_by_external_id(&pool, ext).await);
    }
    ticket_by_external_id(&pool, "d4").await;
    // The sink has the history once every ticket's message_added is in ClickHouse.
    eventually("the history in clickhouse", Duration::from_secs(60), || async {
        let n: i64 = h
            .ch("SELECT count() FROM events WHERE schema = 'ticket_event' AND kind = 'message_added'")
            .await
            .trim()
            .parse()
            .unwrap_or(0);
        (n >= 4).then_some(())
    })
    .await;
    let snapshot = || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (Uuid, String, Vec<String>, i32)>(
                "SELECT id, priority, tags, version FROM tickets ORDER BY id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let before = snapshot().await;
    let draft = json!({"kind": "trigger", "on": ["created"],
        "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "refund"}]},
        "actions": [{"type": "tags", "add": ["refund"]}, {"type": "priority", "priority": "high"}]});
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let mut body = draft.clone();
    body["days"] = json!(1);
    let (s, _) = h
        .caller(&node, &ann_token)
        .post("/v1/rules/dry-run", body.clone())
        .await;
    assert_eq!(s, 403);
    let (s, v) = h
        .caller(&node, &sue_token)
        .post("/v1/rules/dry-run", body.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["tickets"].as_u64(),
            v["fires"].as_u64(),
            v["tickets_touched"].as_u64()
        ),
        (Some(4), Some(2), Some(2)),
        "{v}"
    );
    let mut touched: Vec<String> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ticket_id"].as_str().unwrap().to_string())
        .collect();
    touched.sort();
    let mut want: Vec<String> = refunds.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(touched, want);
    assert_eq!(v["by_action"]["priority: high"], 2);
    assert_eq!(v["samples"][0]["on"], "created");
    // The broker still holds the whole window: replayed from the topics. ClickHouse, asked,
    // finds the same.
    assert_eq!(v["source"], "kafka", "{v}");
    let mut from_ch = body.clone();
    from_ch["source"] = json!("clickhouse");
    // The sink writes ClickHouse in batches: asked once the last events are in.
    let want_events = v["events"].clone();
    let w = eventually(
        "clickhouse holds the window",
        Duration::from_secs(60),
        || {
            let (h, node, token, from_ch) = (&h, &node, &sue_token, from_ch.clone());
            let want_events = want_events.clone();
            async move {
                let (s, w) = h
                    .caller(node, token)
                    .post("/v1/rules/dry-run", from_ch)
                    .await;
                assert_eq!(s, 200, "{w}");
                (w["events"] == want_events).then_some(w)
            }
        },
    )
    .await;
    assert_eq!(w["source"], "clickhouse");
    for k in [
        "events",
        "tickets",
        "fires",
        "tickets_touched",
        "by_action",
        "samples",
    ] {
        assert_eq!(v[k], w[k], "{k}: kafka {v} clickhouse {w}");
    }
    let mut bad = body.clone();
    bad["source"] = json!("s3");
    let (s, w) = h
        .caller(&node, &sue_token)
        .post("/v1/rules/dry-run", bad)
        .await;
    assert_refused(s, &w, 400, "source");
    // Bad drafts are named like saved ones.
    let mut bad = body.clone();
    bad["days"] = json!(0);
    let (s, v) = h
        .caller(&node, &sue_token)
        .post("/v1/rules/dry-run", bad)
        .await;
    assert_refused(s, &v, 400, "days");
    let mut bad = body;
    bad["conditions"]["all"][0]["op"] = json!("matches");
    bad["conditions"]["all"][0]["value"] = json!("[");
    let (s, v) = h
        .caller(&node, &sue_token)
        .post("/v1/rules/dry-run", bad)
        .await;
    assert_refused(s, &v, 400, "conditions.all[0].value");
    // Nothing changed: no fire recorded, every ticket as it was.
    assert_eq!(count(&pool, "SELECT count(*) FROM rule_fires").await, 0);
    assert_eq!(snapshot().await, before);

    // The same from the command line, from each source.
    let file = std::env::temp_dir().join(format!("{}-draft.json", h.name));
    std::fs::write(&file, draft.to_string()).unwrap();
    for source in ["clickhouse", "kafka"] {
        let out = std::process::Command::new(common::switchboard_bin())
            .current_dir(common::repo())
            .args(["--config", "pipelines.yaml", "rules", "dry-run"])
            .arg(&file)
            .args(["--days", "1", "--source", source])
            .env(
                "SWITCHBOARD__SERVICES__CLICKHOUSE__URL",
                &h.services.clickhouse,
            )
            .env("SWITCHBOARD__SERVICES__CLICKHOUSE__DATABASE", &h.name)
            .env(
                "SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD",
                &h.services.clickhouse_password,
            )
            .env("SWITCHBOARD__SERVICES__KAFKA__BROKERS", &h.services.kafka)
            .env("SWITCHBOARD__SERVICES__KAFKA__TOPIC_PREFIX", &h.prefix)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{source}: {err}");
        assert!(err.contains(&format!("from {source}")), "{err}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["fires"].as_u64(), v["tickets_touched"].as_u64()),
            (Some(2), Some(2)),
            "{source}: {v}"
        );
    }
}

/// The two triggers that come from outside the desk: the customer's survey answer
/// (`csat_received`, `csat.rating`) and the shop's order update (`order_updated`,
/// `order.status`), each through its real front door (`POST /csat/{token}`, the signed orders
/// webhook); an unchanged answer or a redelivered update fires nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn survey_answers_and_order_updates_trigger_rules() {
    use common::shop::{order, stored_orders};
    let (h, node) = start(
        CORE,
        &[
            NO_MODELS,
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "shop-secret"),
        ],
    )
    .await;
    let pool = h.pg().await;
    // The rating is refused on other triggers than csat_received.
    for (body, field) in [
        (
            json!({"name": "x", "kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "csat.rating", "op": "lte", "value": 2}]}, "actions": [{"type": "priority", "priority": "high"}]}),
            "conditions.all[0].field",
        ),
        (
            json!({"name": "x", "kind": "trigger", "on": ["order_updated", "csat_received"], "conditions": {"any": [{"field": "csat.rating", "op": "is", "value": 1}]}, "actions": [{"type": "priority", "priority": "high"}]}),
            "conditions.any[0].field",
        ),
    ] {
        let (s, v) = h.post(&node, "/v1/rules", body).await;
        assert_refused(s, &v, 400, field);
    }
    let detractor = h
        .created(
            &node,
            "/v1/rules",
            json!({"name": "Unhappy answers about a shipped order reopen", "kind": "trigger", "on": ["csat_received"], "enabled": true,
                   "conditions": {"all": [{"field": "csat.rating", "op": "lte", "value": 2},
                                          {"field": "order.status", "op": "is", "value": "fulfilled"}]},
                   "actions": [{"type": "status", "status": "open"}, {"type": "priority", "priority": "high"},
                               {"type": "tags", "add": ["detractor"]}]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.created(
        &node,
        "/v1/rules",
        json!({"name": "Happy answers", "kind": "trigger", "on": ["csat_received"], "enabled": true,
               "conditions": {"all": [{"field": "csat.rating", "op": "gte", "value": 5}]},
               "actions": [{"type": "tags", "add": ["promoter"], "remove": ["detractor"]}]}),
    )
    .await;
    let shipped = h
        .created(
            &node,
            "/v1/rules",
            json!({"name": "Tell the ticket it shipped", "kind": "trigger", "on": ["order_updated"], "enabled": true,
                   "conditions": {"all": [{"field": "order.status", "op": "is", "value": "fulfilled"}]},
                   "actions": [{"type": "tags", "add": ["shipped"]},
                               {"type": "note", "text": "{{order.name}} shipped"}]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The shop's order, unfulfilled; then Zoë asks about it (non-ASCII name, a control
    // character in the text), and writes again about something else.
    let created = json!({"id": 5150, "name": "#5150", "email": "zoe@example.com",
        "customer": {"first_name": "Zoë", "last_name": "Ørsted"}, "total_price": "80.00", "currency": "EUR",
        "financial_status": "paid", "fulfillment_status": null,
        "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z"});
    assert_eq!(order(&h, &node.base, &created, "shop-secret").await.0, 202);
    stored_orders(&node, "applied", 1).await;
    let (s, _) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "zoe@example.com"},
            "text": "Wo ist Bestellung #5150?\u{7} 📦", "external_id": "zoe-1"}),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "zoe@example.com"},
            "text": "Another question about sizes", "external_id": "zoe-2"}),
        )
        .await;
    assert_eq!(s, 202);
    let asked = ticket_by_external_id(&pool, "zoe-1").await;
    let other = ticket_by_external_id(&pool, "zoe-2").await;
    assert_ne!(asked, other);
    eventually("the order number field", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: Option<String> =
                sqlx::query_scalar("SELECT fields->>'order_number' FROM tickets WHERE id = $1")
                    .bind(asked)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (n.as_deref() == Some("#5150")).then_some(())
        }
    })
    .await;

    // Shipped: the ticket naming the order hears of it, the other does not; the update sent
    // again (a redelivery) fires nothing more.
    let mut fulfilled = created.clone();
    fulfilled["fulfillment_status"] = json!("fulfilled");
    fulfilled["updated_at"] = json!("2026-11-21T08:00:00Z");
    assert_eq!(
        order(&h, &node.base, &fulfilled, "shop-secret").await.0,
        202
    );
    tags_when(&pool, asked, |t| t.iter().any(|t| t == "shipped")).await;
    assert_eq!(
        order(&h, &node.base, &fulfilled, "shop-secret").await.0,
        202
    );
    stored_orders(&node, "unchanged", 1).await;
    let note: String = eventually("the rule's note", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar(
                "SELECT text FROM messages WHERE ticket_id = $1 AND direction = 'note'",
            )
            .bind(asked)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(note, "#5150 shipped");
    let fires = |rule: String| {
        let pool = pool.clone();
        async move {
            count(
                &pool,
                &format!("SELECT count(*) FROM rule_fires WHERE rule_id = '{rule}'"),
            )
            .await
        }
    };
    assert_eq!(fires(shipped.clone()).await, 1);
    let other_tags: Vec<String> = sqlx::query_scalar("SELECT tags FROM tickets WHERE id = $1")
        .bind(other)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!other_tags.iter().any(|t| t == "shipped"), "{other_tags:?}");

    // Solved, surveyed (the survey row as the resolve writes it), answered with one star: the
    // ticket reopens at high priority. The same answer again is no new event; five stars is.
    sqlx::query("UPDATE tickets SET status = 'resolved', resolved_at = now() WHERE id = $1")
        .bind(asked)
        .execute(&pool)
        .await
        .unwrap();
    let token = "a1".repeat(32);
    sqlx::query("INSERT INTO csat (ticket_id, token) VALUES ($1, $2)")
        .bind(asked)
        .bind(&token)
        .execute(&pool)
        .await
        .unwrap();
    let answer = |rating: i64, comment: &str| {
        let (h, url) = (&h, format!("{}/csat/{token}", node.base));
        let comment = comment.to_string();
        async move {
            h.http
                .post(url)
                .json(&json!({"rating": rating, "comment": comment}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(answer(1, "Nicht gut \u{0} 😞").await, 204);
    let tags = tags_when(&pool, asked, |t| t.iter().any(|t| t == "detractor")).await;
    assert!(tags.contains(&"shipped".to_string()), "{tags:?}");
    let (status, priority): (String, String) =
        sqlx::query_as("SELECT status, priority FROM tickets WHERE id = $1")
            .bind(asked)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), priority.as_str()), ("open", "high"));
    assert_eq!(answer(1, "still").await, 204);
    assert_eq!(answer(5, "").await, 204);
    let tags = tags_when(&pool, asked, |t| t.iter().any(|t| t == "promoter")).await;
    assert!(!tags.contains(&"detractor".to_string()), "{tags:?}");
    assert_eq!(
        fires(detractor).await,
        1,
        "the repeated one-star answer fired nothing"
    );
}
