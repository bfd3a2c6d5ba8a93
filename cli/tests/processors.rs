//! The processors against real services: scored routing with its hard constraints and decision
//! records, accept timeouts, reassignment when an agent leaves, two routers at once, SLA clocks
//! with warnings, breaches, pauses and escalation, the knowledge-base bot, and articles edited
//! through the API reaching the bot's index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, strs, Harness, Node, CORE};

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

async fn message(h: &Harness, node: &Node, body: Value) -> String {
    let (s, v) = h.post(node, "/v1/messages", body).await;
    assert_eq!(s, 202, "{v}");
    v["message_id"].as_str().unwrap().to_string()
}

/// The ticket holding a message, once stored.
async fn ticket_of(h: &Harness, message_id: &str) -> Uuid {
    common::ticket_of_message(&h.pg().await, Uuid::parse_str(message_id).unwrap()).await
}

async fn ticket(h: &Harness, node: &Node, id: Uuid) -> Value {
    h.ticket_view(node, id).await
}

/// Asks to merge ticket `from` into `into`.
async fn merge(h: &Harness, node: &Node, from: Uuid, into: Uuid) -> (u16, Value) {
    let path = format!("/v1/tickets/{from}/merge");
    h.post(node, &path, json!({ "into_ticket_id": into })).await
}

/// An agent's tickets in hand: in all, and per channel.
async fn load(pool: &sqlx::PgPool, agent: &str) -> (i32, Value) {
    sqlx::query_as("SELECT active_count, channel_active FROM agents WHERE id = $1::uuid")
        .bind(agent)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the ticket is assigned to someone other than `not` and returns the agent.
async fn assigned(h: &Harness, node: &Node, ticket_id: Uuid, not: Option<&str>) -> String {
    eventually(
        "the ticket to be assigned",
        Duration::from_secs(60),
        || async {
            let t = ticket(h, node, ticket_id).await;
            let a = t["assigned_agent_id"].as_str()?.to_string();
            (Some(a.as_str()) != not).then_some(a)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_scores_agents_keeps_constraints_and_reassigns() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__ROUTING__ACCEPT_TIMEOUT_SECS", "4")]).await;
    let expert = h.agent_with(&node, json!({"name": "Exp", "email": "exp@example.com", "skills": ["billing"], "languages": ["en"],
        "max_concurrent": 3, "skill_levels": {"billing": 5}}), true).await;
    let senior = h.agent_with(&node, json!({"name": "Sen", "email": "sen@example.com", "skills": ["billing"], "languages": ["en"],
        "max_concurrent": 3, "skill_levels": {"billing": 2}, "level": "senior"}), true).await;
    // Off shift all day long: never a candidate.
    let night = h.agent_with(&node, json!({"name": "Night", "email": "night@example.com", "skills": ["billing"], "languages": ["en"],
        "max_concurrent": 3, "level": "senior", "timezone": "UTC", "shift_start": "00:00", "shift_end": "00:01"}), true).await;

    // A VIP goes to the senior agent even though the expert scores higher on skill.
    let vip_msg = message(&h, &node, json!({"channel": "api", "customer": {"email": "vip@example.com"},
        "text": "Could you please help me get a refund for my last order? Thank you", "customer_context": {"tier": "vip"}})).await;
    let vip = ticket_of(&h, &vip_msg).await;
    assert_eq!(assigned(&h, &node, vip, None).await, senior);
    let t = ticket(&h, &node, vip).await;
    let decision = &t["assignments"][0];
    let candidates = decision["candidates"].as_array().unwrap();
    let reason_of = |id: &str| {
        candidates
            .iter()
            .find(|c| c["agent_id"] == id)
            .and_then(|c| c["excluded"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        reason_of(&expert).as_deref(),
        Some("not senior enough"),
        "{decision}"
    );
    assert_eq!(
        reason_of(&night).as_deref(),
        Some("outside shift"),
        "{decision}"
    );
    assert!(
        decision["reason"].as_str().unwrap().contains("vip"),
        "{decision}"
    );
    // The VIP's priority went up a step for the tier (refund is high: urgent).
    assert_eq!(t["priority"], "urgent", "{t}");
    let (s, v) = h
        .post(
            &node,
            &format!(
                "/v1/assignments/{}/accept",
                decision["id"].as_str().unwrap()
            ),
            json!({"agent_id": senior}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    // A standard customer gets the expert: higher skill level and less loaded.
    let std_msg = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "std@example.com"},
        "text": "Could you please help me get a refund for my last order? Thank you"}),
    )
    .await;
    let std_ticket = ticket_of(&h, &std_msg).await;
    assert_eq!(assigned(&h, &node, std_ticket, None).await, expert);
    let t = ticket(&h, &node, std_ticket).await;
    let c = t["assignments"][0]["candidates"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(c[0]["agent_id"], expert.as_str());
    assert!(
        c[0]["score"].as_f64().unwrap() > c[1]["score"].as_f64().unwrap(),
        "{c:?}"
    );

    // The expert never accepts: after the timeout the ticket goes to the senior agent, and the
    // expert is excluded from it for good.
    assert_eq!(assigned(&h, &node, std_ticket, Some(&expert)).await, senior);
    let t = ticket(&h, &node, std_ticket).await;
    assert!(
        t["assignments"][0]["release_reason"]
            .as_str()
            .unwrap()
            .starts_with("not accepted"),
        "{t}"
    );
    let second = &t["assignments"][1]["candidates"];
    assert!(
        second
            .to_string()
            .contains("did not accept this ticket in time"),
        "{second}"
    );

    // The senior agent goes offline: the standard ticket cannot go back to the expert (timed
    // out) and waits; the VIP waits for a senior. A new senior agent comes online and takes both.
    let (s, _) = h.agent_status(&node, &senior, "offline").await;
    assert_eq!(s, 200);
    eventually("both tickets released", Duration::from_secs(30), || async {
        let a = ticket(&h, &node, vip).await;
        let b = ticket(&h, &node, std_ticket).await;
        (a["assigned_agent_id"].is_null() && b["assigned_agent_id"].is_null()).then_some(())
    })
    .await;
    let pool = h.pg().await;
    assert_eq!(load(&pool, &senior).await.0, 0);
    let relief = h.agent_with(&node, json!({"name": "Rel", "email": "rel@example.com", "skills": ["billing"], "languages": ["en"],
        "max_concurrent": 3, "level": "senior"}), true).await;
    assert_eq!(assigned(&h, &node, vip, None).await, relief);
    assert_eq!(assigned(&h, &node, std_ticket, None).await, relief);

    // Resolving frees the slot at once (the agent's counter and the channel's).
    let (s, v) = h.ticket_status(&node, &vip, "resolved").await;
    assert_eq!(s, 200, "{v}");
    let (active, channel) = load(&pool, &relief).await;
    assert_eq!(active, 1);
    assert_eq!(channel["api"], 1);
    // A stale version is refused.
    let (s, v) = h
        .put(
            &node,
            &format!("/v1/tickets/{vip}/status"),
            json!({"status": "open", "version": 1}),
        )
        .await;
    assert_refused(s, &v, 409, "version");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_routers_never_exceed_capacity_or_assign_twice() {
    let h = Harness::new().await;
    let front = h.spawn(&["ingest", "serving"], &[]).await;
    let env = [
        ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ("SWITCHBOARD__KB__ENABLED", "false"),
    ];
    let _a = h.spawn(&["processors"], &env).await;
    let _b = h.spawn(&["processors"], &env).await;
    let mut agents = Vec::new();
    for i in 0..8 {
        agents.push(
            h.agent(&front, &format!("a{i}@example.com"), &["accounts"], 3, true)
                .await,
        );
    }
    const TICKETS: usize = 96;
    let posts = (0..TICKETS).map(|i| {
        let (h, front) = (&h, &front);
        async move {
            message(
                h,
                front,
                json!({"channel": "api", "customer": {"email": format!("c{i}@example.com")},
                "text": "I cannot login to my account", "external_id": format!("m{i}")}),
            )
            .await
        }
    });
    futures::future::join_all(posts).await;
    let pool = h.pg().await;
    // Rounds: the 24 slots fill, every assigned ticket is resolved at once, the waiting ones
    // move up, until all are done.
    let mut resolved = 0;
    while resolved < TICKETS {
        let open: Vec<(Uuid, Option<Uuid>)> = eventually(
            "a full round of assignments",
            Duration::from_secs(60),
            || {
                let pool = pool.clone();
                async move {
                    let rows: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
                        "SELECT id, assigned_agent_id FROM tickets WHERE status = 'open'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    let waiting_total = TICKETS - resolved;
                    let assigned = rows.iter().filter(|r| r.1.is_some()).count();
                    (rows.len() == waiting_total && assigned == waiting_total.min(24))
                        .then_some(rows)
                }
            },
        )
        .await;
        // Never above capacity, counters equal to the active assignments.
        let bad = count(&pool, "SELECT count(*) FROM agents a WHERE a.active_count > a.max_concurrent
               OR a.active_count <> (SELECT count(*) FROM assignments s WHERE s.agent_id = a.id AND s.released_at IS NULL)").await;
        assert_eq!(bad, 0);
        let resolves = open.iter().filter(|r| r.1.is_some()).map(|(id, _)| {
            let (h, front) = (&h, &front);
            async move {
                h.put(
                    front,
                    &format!("/v1/tickets/{id}/status"),
                    json!({"status": "resolved"}),
                )
                .await
                .0
            }
        });
        let codes = futures::future::join_all(resolves).await;
        assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
        resolved += codes.len();
    }
    // Each ticket was assigned exactly once, and every slot is free again.
    let (assignments, tickets): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT ticket_id) FROM assignments")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((assignments, tickets), (TICKETS as i64, TICKETS as i64));
    let busy: i64 = sqlx::query_scalar("SELECT coalesce(sum(active_count), 0) FROM agents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(busy, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sla_clocks_warn_breach_pause_and_escalate_on_time() {
    let mut h = Harness::new().await;
    h.edit_config(&[
        ("warn_share: 0.75", "warn_share: 0.5"),
        (
            "first_response: 4h, next_response: 8h, resolution: 3d",
            "first_response: 4s, next_response: 6s, resolution: 60s",
        ),
    ]);
    let node = h
        .spawn(&["ingest", "processors", "serving", "sink"], &[])
        .await;
    let pool = h.pg().await;
    let send = |email: &str| json!({"channel": "api", "customer": {"email": email}, "text": "I cannot login to my account"});

    // No agent: the first-response clock warns at 2 s, breaches at 4 s, and the breach
    // escalates (priority up, senior queue, supervisor told).
    let a = ticket_of(&h, &message(&h, &node, send("a@example.com")).await).await;
    // A second ticket waits on the customer for 3 s after 1 s: its clock stops meanwhile.
    let b = ticket_of(&h, &message(&h, &node, send("b@example.com")).await).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (s, v) = h.ticket_status(&node, &b, "pending").await;
    assert_eq!(s, 200, "{v}");
    // A third gets an answer in time: met, no warning.
    let agent = h
        .agent(&node, "ag@example.com", &["accounts"], 5, false)
        .await;
    let c = ticket_of(&h, &message(&h, &node, send("c@example.com")).await).await;
    h.reply(&node, c, &agent, "Let me look.").await;

    let fired = |t: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>, Option<chrono::DateTime<chrono::Utc>>)>(
                "SELECT warn_at, warned_at, due_at, breached_at FROM sla_clocks WHERE ticket_id = $1 AND metric = 'first_response'",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (warn_at, warned_at, due_at, breached_at) =
        eventually("ticket a to breach", Duration::from_secs(20), || async {
            let r = fired(a).await;
            r.3.is_some().then_some(r)
        })
        .await;
    let late = |planned: Option<chrono::DateTime<chrono::Utc>>,
                fired: Option<chrono::DateTime<chrono::Utc>>| {
        (fired.unwrap() - planned.unwrap()).num_milliseconds()
    };
    assert!(
        (0..1000).contains(&late(warn_at, warned_at)),
        "warning {} ms late",
        late(warn_at, warned_at)
    );
    assert!(
        (0..1000).contains(&late(due_at, breached_at)),
        "breach {} ms late",
        late(due_at, breached_at)
    );
    let t = ticket(&h, &node, a).await;
    assert_eq!(t["queue"], "senior", "{t}");
    assert_eq!(t["priority"], "high", "{t}"); // medium, one step up
    assert!(
        t["escalation_reason"]
            .as_str()
            .unwrap()
            .contains("first_response breached"),
        "{t}"
    );

    // b: paused after ~0.8 s for 3 s; resumed, it breaches ~3.2 s later, not at 4 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fired(b).await.3.is_none(), "a paused clock breached");
    let resumed = chrono::Utc::now();
    let (s, _) = h.ticket_status(&node, &b, "open").await;
    assert_eq!(s, 200);
    let (_, _, due_b, breached_b) =
        eventually("ticket b to breach", Duration::from_secs(20), || async {
            let r = fired(b).await;
            r.3.is_some().then_some(r)
        })
        .await;
    let after_resume = (due_b.unwrap() - resumed).num_milliseconds();
    assert!(
        (2500..4200).contains(&after_resume),
        "due {after_resume} ms after resume"
    );
    assert!((0..1000).contains(&late(due_b, breached_b)));

    // c: met, never warned.
    let (_, warned_c, _, breached_c) = fired(c).await;
    assert!(warned_c.is_none() && breached_c.is_none());

    // The tickets carry their clocks' state (the "SLA at risk" view's): a breached, c not; a
    // reply stops a's breached clock and its other clocks have not warned, so a is clear again.
    let flags = |t: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (bool, bool)>(
                "SELECT sla_warned, sla_breached FROM tickets WHERE id = $1",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(flags(a).await, (true, true));
    assert_eq!(flags(c).await, (false, false));
    h.reply(&node, a, &agent, "Sorry for the wait.").await;
    eventually(
        "ticket a's clock to stop",
        Duration::from_secs(20),
        || async { (flags(a).await == (false, false)).then_some(()) },
    )
    .await;

    // ClickHouse has each event once: a warned+breached, b warned+breached, c met.
    let counts = eventually("sla events in clickhouse", Duration::from_secs(30), || async {
        let out = h
            .ch("SELECT kind, count() FROM events FINAL WHERE schema = 'sla_event' AND payload LIKE '%first_response%' GROUP BY kind ORDER BY kind FORMAT CSV")
            .await;
        (out.contains("\"breached\",2") && out.contains("\"met\",1") && out.contains("\"warning\",2")).then_some(out)
    })
    .await;
    assert!(!counts.contains("\"met\",2"), "{counts}");
    // Warnings notify the supervisor, breaches escalate: two each for a and b. They travel on
    // ticket.events, which the sink may write after the SLA events: wait for them, then check
    // that none came twice.
    let q = "SELECT count() FROM events FINAL WHERE schema = 'ticket_event' AND kind = 'escalated'";
    eventually(
        "the escalations in clickhouse",
        Duration::from_secs(30),
        || async { (h.ch(q).await.parse::<u64>().ok()? >= 4).then_some(()) },
    )
    .await;
    let escalated = h.ch(q).await;
    assert_eq!(escalated, "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_answers_from_the_knowledge_base_and_hands_over() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__KB__BOT_CHANNELS", "api"),
            ("SWITCHBOARD__KB__BOT_RESOLVE_AFTER_SECS", "2"),
        ],
    )
    .await;
    let agent = h
        .agent(&node, "orders@example.com", &["orders"], 5, true)
        .await;

    // A question the knowledge base answers: the bot replies, the ticket waits on the customer.
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "q@example.com"},
        "text": "how can I cancel the order I placed yesterday?"}),
    )
    .await;
    let t_id = ticket_of(&h, &m).await;
    let t = eventually("the bot to answer", Duration::from_secs(30), || async {
        let t = ticket(&h, &node, t_id).await;
        (t["bot_state"] == "answered").then_some(t)
    })
    .await;
    assert_eq!(t["status"], "pending");
    assert!(t["assigned_agent_id"].is_null());
    let suggestions = t["kb_suggestions"].as_array().unwrap();
    assert_eq!(suggestions.len(), 3, "{t}");
    // The bot sends the closest article in meaning (the suggestions' order also weighs keywords).
    let closest = suggestions
        .iter()
        .max_by(|a, b| {
            a["similarity"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["similarity"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(closest["title"], "Cancelling an order", "{t}");
    assert!(closest["similarity"].as_f64().unwrap() >= 0.8);
    let bot = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"] == "bot")
        .expect("a bot message")
        .clone();
    assert!(
        bot["text"].as_str().unwrap().contains("reply \"agent\""),
        "{bot}"
    );
    assert!(
        !bot["text"].as_str().unwrap().contains("{{"),
        "placeholders left: {bot}"
    );

    // "agent": handed to a person at once.
    message(&h, &node, json!({"channel": "api", "customer": {"email": "q@example.com"}, "text": "agent please", "ticket_id": t_id})).await;
    assert_eq!(assigned(&h, &node, t_id, None).await, agent);
    assert_eq!(ticket(&h, &node, t_id).await["bot_state"], "handed_over");

    // Nobody replies to the next answer: resolved by the bot (deflected); writing again
    // reopens it as reopened-after-bot.
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "r@example.com"},
        "text": "I need to cancel my order, how do I do that?"}),
    )
    .await;
    let r_id = ticket_of(&h, &m).await;
    eventually(
        "the bot to resolve the quiet ticket",
        Duration::from_secs(40),
        || async {
            let t = ticket(&h, &node, r_id).await;
            (t["bot_state"] == "resolved" && t["status"] == "resolved").then_some(())
        },
    )
    .await;
    message(&h, &node, json!({"channel": "api", "customer": {"email": "r@example.com"}, "text": "it did not work", "ticket_id": r_id})).await;
    eventually("the ticket to reopen", Duration::from_secs(30), || async {
        let t = ticket(&h, &node, r_id).await;
        (t["bot_state"] == "reopened" && t["status"] == "open").then_some(())
    })
    .await;

    // Off-topic text: suggestions, but no bot answer; an agent gets it.
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "o@example.com"},
        "text": "The quarterly synergy review with the board of directors moved to Thursday."}),
    )
    .await;
    let o_id = ticket_of(&h, &m).await;
    let t = eventually(
        "the off-topic ticket to be handled",
        Duration::from_secs(30),
        || async {
            let t = ticket(&h, &node, o_id).await;
            (t["kb_suggestions"].as_array()?.len() == 3).then_some(t)
        },
    )
    .await;
    assert!(t["bot_state"].is_null(), "{t}");
    assert_eq!(t["status"], "open");
}

/// Sends `text` as a new customer until the ticket's first suggestion passes `want` (the
/// index follows Postgres every 2 s), and returns that ticket.
async fn suggested_until(
    h: &Harness,
    node: &Node,
    text: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let mut n = 0;
    let want = &want;
    eventually(
        "the index to follow the articles",
        Duration::from_secs(60),
        || {
            n += 1;
            let email = format!("kb{n}-{}@example.com", Uuid::now_v7().simple());
            async move {
                let m = message(
                    h,
                    node,
                    json!({"channel": "api", "customer": {"email": email}, "text": text}),
                )
                .await;
                let id = ticket_of(h, &m).await;
                let t = eventually("suggestions", Duration::from_secs(30), || async {
                    let t = ticket(h, node, id).await;
                    (!t["kb_suggestions"].as_array()?.is_empty()).then_some(t)
                })
                .await;
                want(&t["kb_suggestions"][0]).then_some(t)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn articles_written_through_the_api_reach_the_bot_and_the_help_centre() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__KB__BOT_CHANNELS", "api")]).await;
    let agent = h
        .agent(&node, "kb@example.com", &["orders"], 5, false)
        .await;
    let sup_token = h.issue_token(&node, "supervisor", None, "supervisor").await;
    let ann_token = h.issue_token(&node, "agent", Some(&agent), "agent").await;
    let (sup, ann) = (h.caller(&node, &sup_token), h.caller(&node, &ann_token));

    // The seed is in Postgres: listed page by page, searched by keywords.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = ann.get(&format!("/v1/kb/articles?limit=50{cursor}")).await;
        assert_eq!(s, 200, "{v}");
        for a in v["items"].as_array().unwrap() {
            assert!(
                seen.insert(a["id"].as_str().unwrap().to_string()),
                "listed twice: {a}"
            );
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    let (s, v) = ann.get("/v1/kb/articles?q=cancel%20order").await;
    assert_eq!(s, 200);
    // The article on cancelling and the one on its fee both match; cancelling is among the two.
    let top: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .filter_map(|a| a["title"].as_str())
        .collect();
    assert!(top.contains(&"Cancelling an order"), "{v}");

    // Writing needs a supervisor; bad fields are named.
    let article = json!({"title": "Gift wrapping", "category": "ORDER",
        "question": "can you gift wrap my parcel for a birthday?",
        "body": "Yes: choose gift wrapping at checkout and we wrap the parcel in recycled paper for 3 EUR."});
    let (s, _) = ann.post("/v1/kb/articles", article.clone()).await;
    assert_eq!(s, 403);
    let (s, v) = sup
        .post("/v1/kb/articles", json!({"title": "", "body": "x"}))
        .await;
    assert_refused(s, &v, 400, "title");
    let (s, v) = sup
        .post(
            "/v1/kb/articles",
            json!({"title": "t", "body": "x", "category": "a b"}),
        )
        .await;
    assert_refused(s, &v, 400, "category");
    let (s, v) = sup.post("/v1/kb/articles", article).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["version"], 1);
    let (s, draft) = sup.post("/v1/kb/articles", json!({"title": "Gift cards (draft)", "body": "gift wrapping vouchers soon", "published": false})).await;
    assert_eq!(s, 201, "{draft}");

    // Customers find the published one (not the draft) without a token.
    let (s, r) = h.get_anon(&node, "/help/search?q=gift%20wrapping").await;
    assert_eq!(s, 200, "{r}");
    let ids = strs(&r, "id");
    assert_eq!(ids, vec![id.as_str()], "{r}");
    let r = h
        .fetch(
            &node,
            &format!("/help/articles/{}", draft["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = h.fetch(&node, "/help/search", None).await;
    assert_eq!(r.status(), 400);

    // The processors' index follows: a customer asking it gets the bot's answer from it.
    let t = suggested_until(
        &h,
        &node,
        "can you gift wrap my parcel for a birthday?",
        |s| s["title"] == "Gift wrapping",
    )
    .await;
    let bot = eventually("the bot's answer", Duration::from_secs(30), || async {
        let t = ticket(&h, &node, Uuid::parse_str(t["id"].as_str()?).ok()?).await;
        t["messages"]
            .as_array()?
            .iter()
            .find(|m| m["author"] == "bot")
            .cloned()
    })
    .await;
    assert!(
        bot["text"].as_str().unwrap().contains("recycled paper"),
        "{bot}"
    );

    // Optimistic concurrency: a stale version is refused; the current one changes the answer.
    let change = |version: i64| {
        json!({"version": version, "title": "Gift wrapping", "question": "can you gift wrap my parcel for a birthday?",
        "body": "Yes: pick gift wrapping at checkout; we use linen wrap, free over 50 EUR."})
    };
    let (s, _) = sup
        .put(
            &format!("/v1/kb/articles/{id}"),
            json!({"title": "t", "body": "b"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = sup.put(&format!("/v1/kb/articles/{id}"), change(1)).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = sup.put(&format!("/v1/kb/articles/{id}"), change(1)).await;
    assert_refused(s, &v, 409, "version");
    let (_, v) = ann.get(&format!("/v1/kb/articles/{id}")).await;
    assert!(v["body"].as_str().unwrap().contains("linen"), "{v}");

    // Deleted: gone for customers and agents, and the index forgets it.
    let (s, _) = ann.delete(&format!("/v1/kb/articles/{id}")).await;
    assert_eq!(s, 403);
    let (s, _) = sup.delete(&format!("/v1/kb/articles/{id}")).await;
    assert_eq!(s, 204);
    let (s, _) = sup.delete(&format!("/v1/kb/articles/{id}")).await;
    assert_eq!(s, 404);
    let r = h.fetch(&node, &format!("/help/articles/{id}"), None).await;
    assert_eq!(r.status(), 404);
    suggested_until(
        &h,
        &node,
        "can you gift wrap my parcel for a birthday?",
        |s| s["title"] != "Gift wrapping",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_language_nobody_speaks_goes_to_anyone_a_spoken_one_to_its_speakers() {
    let (h, node) = start(CORE, &[]).await;
    let skills = json!(["billing", "shipping", "orders", "accounts"]);
    let en = h.agent_with(&node, json!({"name": "En", "email": "en@example.com", "skills": skills, "languages": ["en"], "max_concurrent": 10}), true).await;
    // German: nobody speaks it, so the English speaker gets it rather than nobody ever.
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "de@example.com"},
        "text": "Wo ist meine Bestellung? Ich warte seit zwei Wochen auf das Paket."}),
    )
    .await;
    let t = ticket_of(&h, &m).await;
    assert_eq!(assigned(&h, &node, t, None).await, en);
    assert_eq!(ticket(&h, &node, t).await["language"], "de");
    // Once a German speaker works here, German goes to her, and short English never reads as
    // another language (it stays with the English speaker).
    let de = h.agent_with(&node, json!({"name": "De", "email": "de-agent@example.com", "skills": skills, "languages": ["de"], "max_concurrent": 10}), true).await;
    tokio::time::sleep(Duration::from_secs(11)).await; // the router's view of spoken languages
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "de2@example.com"},
        "text": "Guten Tag, meine Rechnung ist falsch und ich möchte mein Geld zurück."}),
    )
    .await;
    let t = ticket_of(&h, &m).await;
    assert_eq!(assigned(&h, &node, t, None).await, de);
    let m = message(
        &h,
        &node,
        json!({"channel": "api", "customer": {"email": "en2@example.com"},
        "text": "help me check my bills"}),
    )
    .await;
    let t = ticket_of(&h, &m).await;
    assert_eq!(assigned(&h, &node, t, None).await, en);
}

#[tokio::test(flavor = "multi_thread")]
async fn merging_moves_messages_and_forwards_later_ones() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let a = ticket_of(&h, &message(&h, &node, json!({"channel": "api", "customer": {"email": "m@example.com"}, "text": "my package is late"})).await).await;
    let b = ticket_of(&h, &message(&h, &node, json!({"channel": "api", "customer": {"email": "m@example.com"}, "text": "still no package"})).await).await;
    let other = ticket_of(
        &h,
        &message(
            &h,
            &node,
            json!({"channel": "api", "customer": {"email": "x@example.com"}, "text": "hello"}),
        )
        .await,
    )
    .await;
    assert_ne!(a, b);
    let (s, v) = merge(&h, &node, b, other).await;
    assert_refused(s, &v, 400, "into_ticket_id");
    let (s, v) = merge(&h, &node, b, a).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["messages_moved"], 1);
    let (s, _) = merge(&h, &node, b, a).await;
    assert_eq!(s, 409);
    assert_eq!(ticket(&h, &node, b).await["status"], "closed");
    // A reply naming the merged ticket lands on the surviving one.
    message(&h, &node, json!({"channel": "api", "customer": {"email": "m@example.com"}, "text": "any news?", "ticket_id": b})).await;
    eventually(
        "the reply on the surviving ticket",
        Duration::from_secs(30),
        || async { (ticket(&h, &node, a).await["messages"].as_array()?.len() == 3).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_qdrant_server_that_cannot_be_reached_stops_the_start() {
    let h = Harness::new().await;
    let [dead, listen] = common::free_ports();
    let out = tokio::task::spawn_blocking({
        let (config, pg, kafka, prefix) = (
            h.config.clone(),
            h.pg_url.clone(),
            h.services.kafka.clone(),
            h.prefix.clone(),
        );
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .current_dir(common::repo())
                .arg("--config")
                .arg(config)
                .args(["run", "--role", "processors"])
                .env("SWITCHBOARD__SERVICES__KAFKA__BROKERS", kafka)
                .env("SWITCHBOARD__SERVICES__KAFKA__TOPIC_PREFIX", prefix)
                .env("SWITCHBOARD__SERVICES__POSTGRES__URL", pg)
                .env(
                    "SWITCHBOARD__SERVICES__QDRANT__URL",
                    format!("http://127.0.0.1:{dead}"),
                )
                .env("SWITCHBOARD__HTTP__LISTEN", format!("127.0.0.1:{listen}"))
                .env("SWITCHBOARD__HTTP__ADMIN_TOKEN", "t")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot use the qdrant server at http://127.0.0.1:{dead}"
        )),
        "{err}"
    );
}

/// A rebalance can hand one message to two ticketing consumers at once: whichever commits
/// first stores it, the other finds it stored (a duplicate, never a dead letter over the
/// ticket's or customer's duplicate key), and each message makes one ticket.
#[tokio::test(flavor = "multi_thread")]
async fn one_message_handled_twice_at_once_is_stored_once_and_never_dead_lettered() {
    use switchboard_contracts::{Channel, CustomerRef, Envelope, InboundMessage};
    use switchboard_processors::ticketing::{Outcome, Ticketing};

    let h = Harness::new().await;
    let pool = h.pg().await;
    switchboard_core::db::migrate(&pool).await.unwrap();
    let kafka = switchboard_core::config::KafkaConfig {
        brokers: h.services.kafka.clone(),
        topic_prefix: h.prefix.clone(),
        // As the repository's pipelines.yaml: the embedded broker takes no idempotent producer.
        idempotent: false,
        ..Default::default()
    };
    switchboard_core::kafka::ensure_topics(&kafka)
        .await
        .unwrap();
    let outbox = switchboard_core::db::Outbox::new(
        pool.clone(),
        switchboard_core::kafka::Publisher::new(&kafka).unwrap(),
    );
    let ticketing = Ticketing::new(pool.clone(), outbox, Default::default(), None, None);
    let n = 30;
    for i in 0..n {
        let m = InboundMessage {
            message_id: Uuid::now_v7(),
            channel: Channel::Email,
            external_id: Some(format!("twice-{i}")),
            conversation_key: format!("customer:twice{}@example.com", i % 3),
            ticket_id: None,
            customer: CustomerRef {
                email: Some(format!("twice{}@example.com", i % 3)),
                phone: None,
                name: Some("Zoë Twice".into()),
                handle: None,
            },
            subject: Some(format!("Order {i}")),
            text: "Where is my parcel? It has not moved for a week.".into(),
            truncated: false,
            attachments: Vec::new(),
            metadata: Default::default(),
            received_at: chrono::Utc::now(),
            verified: true,
        };
        let env = Envelope::new(m.message_id, m.received_at, m);
        let (a, b) = tokio::join!(ticketing.process(&env), ticketing.process(&env));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            (a == Outcome::Duplicate) != (b == Outcome::Duplicate),
            "one stores it, the other finds it stored: {a:?} {b:?}"
        );
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(messages, n);
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(customers, 3);
}
