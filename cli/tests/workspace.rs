//! The agent workspace over real services: teams, tags, built-in and saved views with their
//! pages and counts, and who may see and change what.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, start, strs, Sse, CORE};

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The tickets `agent` holds, once it holds `n`.
async fn held(pool: &PgPool, agent: &str, n: usize) -> Vec<String> {
    eventually("the assignments", Duration::from_secs(90), || {
        let pool = pool.clone();
        let agent = agent.to_string();
        async move {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM tickets WHERE assigned_agent_id = $1::uuid ORDER BY id",
            )
            .bind(agent)
            .fetch_all(&pool)
            .await
            .unwrap();
            (ids.len() == n).then(|| ids.iter().map(ToString::to_string).collect())
        }
    })
    .await
}

/// Every ticket id of a view, page by page (`limit` a page), asserting no ticket twice.
async fn all_pages(c: common::Caller<'_>, view: &str, limit: u32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            None => format!("/v1/views/{view}/tickets?limit={limit}"),
            Some(c) => format!("/v1/views/{view}/tickets?limit={limit}&cursor={c}"),
        };
        let (s, v) = c.get(&path).await;
        assert_eq!(s, 200, "{v}");
        for id in strs(&v["tickets"], "id") {
            assert!(!seen.contains(&id.to_string()), "{id} twice in {view}");
            seen.push(id.to_string());
        }
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return seen,
        }
    }
    panic!("{view} never ended");
}

/// The stream's next `tags_changed` ticket event (other ticket events skipped).
async fn tags_changed(sse: &mut Sse) -> Value {
    for _ in 0..50 {
        let ev = sse.until("ticket", 20).await;
        if ev["kind"] == "tags_changed" {
            return ev;
        }
    }
    panic!("no tags_changed event");
}

fn count_of(counts: &Value, view: &str) -> i64 {
    counts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == view)
        .unwrap_or_else(|| panic!("{view} not in {counts}"))["count"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_tags_and_views_give_a_team_its_lists() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, true).await;
    let bob = h.agent(&node, "bob@example.com", &[], 1, true).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let (ann_c, bob_c, sue) = (
        h.caller(&node, &ann_token),
        h.caller(&node, &bob_token),
        h.caller(&node, &sue_token),
    );

    // Teams: supervisors manage them; bad input names the field.
    let (s, v) = ann_c.post("/v1/teams", json!({"name": "Returns"})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = sue
        .post(
            "/v1/teams",
            json!({"name": "Returns", "members": [ann, "0190a0a0-0000-7000-8000-000000000000"]}),
        )
        .await;
    assert_refused(s, &v, 400, "members[1]");
    let (s, v) = sue.post("/v1/teams", json!({"name": "Ret\u{0}urns"})).await;
    assert_refused(s, &v, 400, "name");
    let (s, v) = sue
        .post("/v1/teams", json!({"name": "Returns", "members": [ann], "skills": ["returns"], "supervisor_id": bob}))
        .await;
    assert_eq!(s, 201, "{v}");
    let team = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["members"], json!([ann]));
    let (s, v) = sue.post("/v1/teams", json!({"name": "Returns"})).await;
    assert_refused(s, &v, 409, "name");
    let (s, v) = sue
        .post(
            "/v1/teams",
            json!({"name": "Служба поддержки ✉", "members": [bob]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let other_team = v["id"].as_str().unwrap().to_string();
    let (s, v) = ann_c.get("/v1/teams").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(strs(&v, "name"), vec!["Returns", "Служба поддержки ✉"]);
    // A stale version is refused; a current one moves the version on.
    let (s, v) = sue
        .put(
            &format!("/v1/teams/{other_team}"),
            json!({"name": "Support", "members": [bob], "version": 7}),
        )
        .await;
    assert_refused(s, &v, 409, "version");
    let (s, v) = sue
        .put(
            &format!("/v1/teams/{other_team}"),
            json!({"name": "Support", "members": [bob], "version": 1}),
        )
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    // Each change is in the audit log, by the supervisor's token, with the team before and after;
    // the refused ones left nothing.
    let (s, v) = h
        .get(&node, &format!("/v1/audit?subject=team:{other_team}"))
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["team.updated", "team.created"],
        "{v}"
    );
    assert_eq!(
        (
            entries[0]["before"]["name"].as_str(),
            entries[0]["after"]["name"].as_str()
        ),
        (Some("Служба поддержки ✉"), Some("Support")),
        "{v}"
    );
    assert!(
        entries[0]["actor"].as_str().unwrap().starts_with("token:"),
        "{v}"
    );
    assert_eq!(entries[0]["role"], "supervisor");

    // Three tickets that need no skill: two for Ann, one for Bob.
    for (i, text) in ["Hello, a question", "Good morning", "One more thing"]
        .iter()
        .enumerate()
    {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("c{i}@example.com")}, "text": text, "external_id": format!("ws-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let ann_tickets = held(&pool, &ann, 2).await;
    let bob_tickets = held(&pool, &bob, 1).await;

    // Tags: normalised, on the tickets an agent holds, each change one event on the stream.
    let stream = h
        .fetch(&node, &format!("/v1/agents/{ann}/stream"), Some(&ann_token))
        .await;
    assert_eq!(stream.status(), 200);
    let mut sse = Sse::new(stream);
    sse.until("snapshot", 10).await;
    let tag_path = format!("/v1/tickets/{}/tags", ann_tickets[0]);
    let (s, v) = ann_c
        .post(
            &tag_path,
            json!({"tags": ["  VIP ", "Wholesale Order", "Возврат"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tags"], json!(["vip", "wholesale_order", "возврат"]));
    // (Her assignments' events may still be arriving: the next tags change is the one.)
    let ev = tags_changed(&mut sse).await;
    assert_eq!(ev["added"], json!(["vip", "wholesale_order", "возврат"]));
    let (s, v) = ann_c
        .post(
            &format!("/v1/tickets/{}/tags", bob_tickets[0]),
            json!({"tags": ["vip"]}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    for (bad, field) in [
        (json!({"tags": ["ok", "<script>"]}), "tags[1]"),
        (json!({"tags": ["x".repeat(100_000)]}), "tags[0]"),
        (json!({"tags": ["a\u{0}b"]}), "tags[0]"),
        (json!({"tags": []}), "tags"),
        (
            json!({"tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags[50]",
        ),
    ] {
        let (s, v) = ann_c.post(&tag_path, bad).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = h
        .call_as(
            &node,
            Some(&ann_token),
            Method::DELETE,
            &tag_path,
            Some(json!({"tags": ["VIP"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["tags"].clone(), v["removed"].clone()),
        (json!(["wholesale_order", "возврат"]), json!(["vip"]))
    );
    let ev = tags_changed(&mut sse).await;
    assert_eq!(
        (ev["kind"].as_str(), ev["removed"].clone()),
        (Some("tags_changed"), json!(["vip"])),
        "{ev}"
    );
    let (s, v) = sue
        .post(
            &format!("/v1/tickets/{}/tags", bob_tickets[0]),
            json!({"tags": ["vip"]}),
        )
        .await;
    assert_eq!((s, v["tags"].clone()), (200, json!(["vip"])), "{v}");

    // Built-in views, as each agent sees them, with counts.
    let (s, v) = ann_c.get("/v1/views").await;
    assert_eq!(s, 200, "{v}");
    let ids = strs(&v, "id");
    for builtin in [
        "my-open",
        "unassigned",
        "all-open",
        "sla-at-risk",
        "escalated",
        "pending",
        "recently-solved",
    ] {
        assert!(ids.contains(&builtin), "{builtin} missing from {ids:?}");
    }
    let mine: BTreeSet<_> = all_pages(ann_c, "my-open", 50).await.into_iter().collect();
    assert_eq!(mine, ann_tickets.iter().cloned().collect());
    assert_eq!(all_pages(bob_c, "my-open", 50).await, bob_tickets);
    let (s, counts) = ann_c.get("/v1/views/counts").await;
    assert_eq!(s, 200, "{counts}");
    assert_eq!(count_of(&counts, "my-open"), 2);
    assert_eq!(count_of(&counts, "all-open"), 3);
    assert_eq!(count_of(&counts, "unassigned"), 0);
    // Pending on the customer: Ann moves one ticket there.
    let (s, v) = ann_c
        .put(
            &format!("/v1/tickets/{}/status", ann_tickets[1]),
            json!({"status": "pending"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        all_pages(ann_c, "pending", 50).await,
        vec![ann_tickets[1].clone()]
    );
    // Ann's stream carries her counts, live: the move to pending shows without asking.
    let mut live = None;
    for _ in 0..20 {
        let c = sse.until("counts", 20).await;
        if count_of(&c, "pending") == 1 {
            live = Some(c);
            break;
        }
    }
    let live = live.expect("a counts event with the pending ticket");
    assert_eq!(
        (count_of(&live, "my-open"), count_of(&live, "all-open")),
        (2, 3),
        "{live}"
    );

    // Saved views: personal, team, everyone; typed filters.
    let (s, v) = ann_c
        .post(
            "/v1/views",
            json!({"name": "Wholesale", "filter": {"tags_any": ["WHOLESALE order"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let personal = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (v["scope"].as_str(), v["filter"]["tags_any"].clone()),
        (Some("personal"), json!(["wholesale_order"]))
    );
    assert_eq!(
        all_pages(ann_c, &personal, 10).await,
        vec![ann_tickets[0].clone()]
    );
    let (s, v) = bob_c.get(&format!("/v1/views/{personal}/tickets")).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        all_pages(sue, &personal, 10).await,
        vec![ann_tickets[0].clone()]
    );
    for (bad, field) in [
        (
            json!({"name": "x", "filter": {"status": ["open", "nope"]}}),
            "filter.status[1]",
        ),
        (
            json!({"name": "x", "filter": {"tags_all": ["a b <"]}}),
            "filter.tags_all[0]",
        ),
        (
            json!({"name": "x", "filter": {"sentiment_below": -7}}),
            "filter.sentiment_below",
        ),
        (json!({"name": "\u{7}", "filter": {}}), "name"),
        (
            json!({"name": "x", "filter": {}, "scope": "team"}),
            "team_id",
        ),
    ] {
        let (s, v) = ann_c.post("/v1/views", bad).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = ann_c
        .post(
            "/v1/views",
            json!({"name": "x", "filter": {"colour": "red"}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let (s, v) = ann_c
        .post("/v1/views", json!({"name": "Team open", "scope": "team", "team_id": team, "filter": {"team_id": team, "status": ["open", "pending"]}}))
        .await;
    assert_eq!(s, 201, "{v}");
    let team_view = v["id"].as_str().unwrap().to_string();
    let team_tickets: BTreeSet<_> = all_pages(ann_c, &team_view, 1).await.into_iter().collect();
    assert_eq!(team_tickets, ann_tickets.iter().cloned().collect());
    let (s, v) = bob_c.get(&format!("/v1/views/{team_view}/tickets")).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = bob_c
        .post(
            "/v1/views",
            json!({"name": "Not mine", "scope": "team", "team_id": team, "filter": {}}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = ann_c
        .post(
            "/v1/views",
            json!({"name": "All", "scope": "everyone", "filter": {}}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = sue
        .post("/v1/views", json!({"name": "VIP", "scope": "everyone", "filter": {"tags_all": ["vip"]}, "sort": {"by": "priority"}}))
        .await;
    assert_eq!(s, 201, "{v}");
    let everyone = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        all_pages(bob_c, &everyone, 10).await,
        vec![bob_tickets[0].clone()]
    );
    // Who sees which saved view, and their counts.
    let (_, v) = bob_c.get("/v1/views").await;
    let bob_sees = strs(&v, "id");
    assert!(
        bob_sees.contains(&everyone.as_str())
            && !bob_sees.contains(&personal.as_str())
            && !bob_sees.contains(&team_view.as_str())
    );
    let (_, counts) = ann_c.get("/v1/views/counts").await;
    assert_eq!(
        (
            count_of(&counts, &personal),
            count_of(&counts, &team_view),
            count_of(&counts, &everyone)
        ),
        (1, 2, 1)
    );
    // Changing and deleting: versions, owners, built-ins.
    let (s, v) = ann_c
        .put(
            &format!("/v1/views/{personal}"),
            json!({"name": "Wholesale!", "filter": {}, "version": 9}),
        )
        .await;
    assert_refused(s, &v, 409, "version");
    let (s, v) = ann_c
        .put(&format!("/v1/views/{personal}"), json!({"name": "Wholesale!", "filter": {"tags_any": ["wholesale_order"]}, "version": 1}))
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = bob_c
        .put(
            &format!("/v1/views/{personal}"),
            json!({"name": "Mine now", "filter": {}}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = sue
        .put(
            &format!("/v1/views/{personal}"),
            json!({"name": "Tidied", "filter": {}}),
        )
        .await;
    assert_eq!(
        (s, v["owner_agent_id"].as_str()),
        (200, Some(ann.as_str())),
        "{v}"
    );
    let (s, v) = ann_c
        .put("/v1/views/my-open", json!({"name": "x", "filter": {}}))
        .await;
    assert_refused(s, &v, 400, "id");
    let (s, v) = ann_c.get("/v1/views/all-open/tickets?cursor=bm9wZQ").await;
    assert_refused(s, &v, 400, "cursor");
    let (s, v) = ann_c.get("/v1/views/all-open/tickets?limit=0").await;
    assert_refused(s, &v, 400, "limit");
    let (s, _) = ann_c.delete(&format!("/v1/views/{personal}")).await;
    assert_eq!(s, 204);
    let (s, _) = ann_c.get(&format!("/v1/views/{personal}/tickets")).await;
    assert_eq!(s, 404);
    // Deleting a team takes its views with it.
    let (s, _) = sue.delete(&format!("/v1/teams/{team}")).await;
    assert_eq!(s, 204);
    let (s, _) = ann_c.get(&format!("/v1/views/{team_view}/tickets")).await;
    assert_eq!(s, 404);
}

/// How many rows `ticket_tags` holds that the tickets do not say (a tag of an unmerged ticket,
/// with its status), and how many it lacks.
async fn tag_rows_astray(pool: &PgPool) -> i64 {
    common::count(
        pool,
        "SELECT count(*) FROM (
             (SELECT tag, ticket_id, status FROM ticket_tags
              EXCEPT ALL SELECT g, t.id, t.status FROM tickets t, unnest(t.tags) g WHERE t.merged_into IS NULL)
             UNION ALL
             (SELECT g, t.id, t.status FROM tickets t, unnest(t.tags) g WHERE t.merged_into IS NULL
              EXCEPT ALL SELECT tag, ticket_id, status FROM ticket_tags)) x",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_views_count_comes_from_a_table_the_tickets_keep_true() {
    // With the sink: an erasure needs the analytics store it erases from.
    let (h, node) = start(common::ALL, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 10, true).await;
    for i in 0..3 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "mo@example.com", "name": "Mø"}, "text": format!("Question {i}"), "external_id": format!("tt-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let t = held(&pool, &ann, 3).await;
    let admin = h.caller(&node, &h.token);
    // Two shared views a tag count answers alone: open VIPs, and VIP wholesale of any status.
    let mut views = Vec::new();
    for filter in [
        json!({"tags_all": ["vip"], "status": ["open"]}),
        json!({"tags_all": ["vip", "wholesale"]}),
    ] {
        let (s, v) = admin
            .post(
                "/v1/views",
                json!({"name": format!("{filter}"), "scope": "everyone", "filter": filter}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        views.push(v["id"].as_str().unwrap().to_string());
    }
    let counts = || async {
        let (s, c) = admin.get("/v1/views/counts").await;
        assert_eq!(s, 200, "{c}");
        (count_of(&c, &views[0]), count_of(&c, &views[1]))
    };
    let tag = |id: &str, method: Method, tags: Value| {
        let path = format!("/v1/tickets/{id}/tags");
        let h = &h;
        let node = &node;
        async move {
            let (s, v) = h
                .call_as(
                    node,
                    Some(&h.token),
                    method,
                    &path,
                    Some(json!({ "tags": tags })),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    assert_eq!(counts().await, (0, 0));
    tag(&t[0], Method::POST, json!(["vip", "wholesale"])).await;
    tag(&t[1], Method::POST, json!(["VIP"])).await;
    tag(&t[2], Method::POST, json!(["wholesale", "Ärger"])).await;
    assert_eq!(counts().await, (2, 1));
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM ticket_tags").await,
        5
    );
    assert_eq!(tag_rows_astray(&pool).await, 0);
    // A tag taken off, a status changed: the counts follow.
    tag(&t[0], Method::DELETE, json!(["vip"])).await;
    assert_eq!(counts().await, (1, 0));
    let (s, v) = admin
        .put(
            &format!("/v1/tickets/{}/status", t[1]),
            json!({"status": "pending"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(counts().await, (0, 0));
    tag(&t[0], Method::POST, json!(["vip"])).await;
    assert_eq!(counts().await, (1, 1));
    assert_eq!(tag_rows_astray(&pool).await, 0);
    // A merged ticket is in no view.
    let (s, v) = admin
        .post(
            &format!("/v1/tickets/{}/merge", t[0]),
            json!({"into_ticket_id": t[2]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(counts().await, (0, 0));
    assert_eq!(
        common::count(
            &pool,
            &format!(
                "SELECT count(*) FROM ticket_tags WHERE ticket_id = '{}'",
                t[0]
            )
        )
        .await,
        0
    );
    assert_eq!(tag_rows_astray(&pool).await, 0);
    // An erased customer's tickets leave nothing behind.
    let customer: uuid::Uuid =
        sqlx::query_scalar("SELECT customer_id FROM tickets WHERE id = $1::uuid")
            .bind(&t[2])
            .fetch_one(&pool)
            .await
            .unwrap();
    let (s, v) = admin.delete(&format!("/v1/customers/{customer}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM tickets").await,
        0
    );
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM ticket_tags").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_a_view_never_repeats_a_ticket_while_tickets_arrive() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let post = |i: usize| {
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h
                .post(node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("p{i}@example.com")}, "text": format!("Order {i} is late"), "external_id": format!("page-{i}")}))
                .await;
            assert_eq!(s, 202, "{v}");
        }
    };
    futures::future::join_all((0..30).map(post)).await;
    eventually("30 tickets", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move { (common::count(&pool, "SELECT count(*) FROM tickets").await == 30).then_some(()) }
    })
    .await;
    let admin = h.caller(&node, &h.token);
    // Newest first by creation, 4 a page, with 20 more arriving during the walk.
    let (s, v) = admin
        .post("/v1/views", json!({"name": "Newest", "scope": "everyone", "filter": {"status": ["open"]}, "sort": {"by": "created_at"}}))
        .await;
    assert_eq!(s, 201, "{v}");
    let view = v["id"].as_str().unwrap().to_string();
    let arrivals = tokio::spawn({
        let (http, base, token) = (h.http.clone(), node.base.clone(), h.token.clone());
        async move {
            for i in 30..50 {
                let r = http
                    .post(format!("{base}/v1/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"channel": "api", "customer": {"email": format!("p{i}@example.com")}, "text": "Where is it?", "external_id": format!("page-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let walked = all_pages(admin, &view, 4).await;
    arrivals.await.unwrap();
    let first_30: BTreeSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT id FROM tickets ORDER BY created_at, id LIMIT 30",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(ToString::to_string)
    .collect();
    let walked: BTreeSet<String> = walked.into_iter().collect();
    // Every ticket there before the walk began is in it (no duplicates: all_pages asserts that).
    assert!(
        first_30.is_subset(&walked),
        "missing {:?}",
        first_30.difference(&walked)
    );
    eventually("50 tickets", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move { (common::count(&pool, "SELECT count(*) FROM tickets").await == 50).then_some(()) }
    })
    .await;
    // Ascending by priority then id, 7 a page: the same set, in the same order as one big page.
    let (s, v) = admin
        .post("/v1/views", json!({"name": "By priority", "scope": "everyone", "filter": {}, "sort": {"by": "priority", "order": "asc"}}))
        .await;
    assert_eq!(s, 201, "{v}");
    let by_priority = v["id"].as_str().unwrap().to_string();
    let small = all_pages(admin, &by_priority, 7).await;
    let big = all_pages(admin, &by_priority, 200).await;
    assert_eq!(small, big);
    assert_eq!(big.len(), 50);
}

/// One search, as the caller sees it: (status, hits' ticket ids, the body).
async fn search(c: common::Caller<'_>, query: &str) -> (u16, Vec<String>, Value) {
    let (s, v) = c.get(&format!("/v1/search?{query}")).await;
    let ids = if s == 200 {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["ticket"]["id"].as_str().unwrap().to_string())
            .collect()
    } else {
        Vec::new()
    };
    (s, ids, v)
}

fn encode(q: &str) -> String {
    form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_tickets_by_words_numbers_orders_and_customers() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    // Three conversations; the word that matters is in the third message of the first.
    let conversations: [(&str, &str, &[&str]); 3] = [
        (
            "ana@example.com",
            "Ana Lima",
            &[
                "Hello there",
                "I ordered a lamp",
                "The lampshade arrived cracked <b>badly</b>",
            ],
        ),
        (
            "bo@example.com",
            "Bo Jensen",
            &["Где мой заказ? Номер посылки потерялся"],
        ),
        (
            "cy@example.com",
            "Cy Twombly",
            &[
                "Refund for my refunds please",
                "still waiting on the refund",
            ],
        ),
    ];
    for (email, name, texts) in conversations {
        for (i, text) in texts.iter().enumerate() {
            let (s, v) = h
                .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": email, "name": name}, "text": text,
                    "subject": (email == "ana@example.com").then_some("Cracked lampshade"),
                    "external_id": format!("{email}-{i}"), "conversation_id": email}))
                .await;
            assert_eq!(s, 202, "{v}");
            // One ticket per customer: the first message opens it, the rest thread into it.
            eventually("the message stored", Duration::from_secs(60), || {
                let pool = pool.clone();
                let text = text.to_string();
                async move {
                    (common::count(
                        &pool,
                        &format!(
                            "SELECT count(*) FROM messages WHERE text = '{}'",
                            text.replace('\'', "''")
                        ),
                    )
                    .await
                        == 1)
                        .then_some(())
                }
            })
            .await;
        }
    }
    let ticket_of = |email: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (uuid::Uuid, String, uuid::Uuid)>(
                "SELECT t.id, t.number, t.customer_id FROM tickets t JOIN customer_identities ci ON ci.customer_id = t.customer_id
                 WHERE ci.kind = 'email' AND ci.value = $1",
            )
            .bind(email)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (ana, ana_number, ana_customer) = ticket_of("ana@example.com").await;
    let (bo, _, _) = ticket_of("bo@example.com").await;
    let (cy, _, _) = ticket_of("cy@example.com").await;
    let (ana, bo, cy) = (ana.to_string(), bo.to_string(), cy.to_string());
    // An order the shop knows for Ana (as the order store writes it).
    sqlx::query(
        "INSERT INTO orders (id, customer_id, external_id, number, total_cents, created_at, updated_at)
         VALUES ($1, $2, 'gid-77', '#1001', 4200, now(), now())",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(ana_customer)
    .execute(&pool)
    .await
    .unwrap();
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue_token);

    // A word from the third message, stemmed, with its snippet marked and unrendered.
    let (s, ids, v) = search(sue, "q=lampshades").await;
    assert_eq!((s, ids), (200, vec![ana.clone()]), "{v}");
    let hit = &v["hits"][0];
    assert_eq!(hit["matched"], json!(["message", "subject"]), "{hit}");
    let subject_hits: Vec<&str> = hit["subject"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hit"] == true)
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(subject_hits, vec!["lampshade"], "{hit}");
    let parts = hit["snippet"].as_array().unwrap();
    let marked: Vec<&str> = parts
        .iter()
        .filter(|p| p["hit"] == true)
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(marked, vec!["lampshade"], "{hit}");
    // An excerpt of words (the parser drops what looks like markup), never a marker or HTML.
    let whole: String = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert!(
        whole.contains("arrived cracked") && whole.contains("badly"),
        "{whole}"
    );
    assert!(!whole.contains(['\u{E000}', '\u{E001}', '<']), "{whole}");
    // A ticket number, an order number (either way it is typed), an email, a name, non-Latin text.
    for (query, want) in [
        (format!("q={}", ana_number.to_lowercase()), &ana),
        ("q=%231001".to_string(), &ana),
        ("q=1001".to_string(), &ana),
        ("q=gid-77".to_string(), &ana),
        ("q=BO%40example.com".to_string(), &bo),
        (format!("q={}", encode("Jensen")), &bo),
        (format!("q={}", encode("заказ")), &bo),
    ] {
        let (s, ids, v) = search(sue, &query).await;
        assert_eq!((s, ids.first()), (200, Some(want)), "{query}: {v}");
    }
    // Ranked: the ticket that says refund three times comes before one that names it once.
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "di@example.com"}, "text": "one refund question", "external_id": "di-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let di = eventually("di's ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT ticket_id FROM messages WHERE text = 'one refund question'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await
    .to_string();
    let (s, ids, v) = search(sue, "q=refund").await;
    assert_eq!((s, ids), (200, vec![cy.clone(), di.clone()]), "{v}");
    // Filters as views have them, and a view to search within.
    let (_, v) = sue
        .post(
            &format!("/v1/tickets/{cy}/tags"),
            json!({"tags": ["urgent-refund"]}),
        )
        .await;
    assert_eq!(v["tags"], json!(["urgent-refund"]), "{v}");
    let (_, ids, _) = search(sue, "q=refund&tags=URGENT-refund").await;
    assert_eq!(ids, vec![cy.clone()]);
    let (_, ids, _) = search(sue, "q=urgent-refund").await;
    assert_eq!(ids.first(), Some(&cy), "a tag is found by its name");
    let (_, ids, _) = search(sue, "q=refund&status=pending").await;
    assert!(ids.is_empty());
    let (_, ids, _) = search(sue, "q=refund&view=all-open&limit=1").await;
    assert_eq!(ids.len(), 1);
    let (_, _, v) = search(sue, "q=refund&limit=1").await;
    assert_eq!(v["next_offset"], 1, "{v}");
    let (_, ids, _) = search(sue, "q=refund&limit=1&offset=1").await;
    assert_eq!(ids, vec![di.clone()]);
    // Websearch syntax: a phrase, an exclusion; and nothing for nonsense.
    let (_, ids, _) = search(sue, &format!("q={}", encode("refund -question"))).await;
    assert_eq!(ids, vec![cy.clone()]);
    let (_, ids, _) = search(sue, &format!("q={}", encode("\"arrived cracked\""))).await;
    assert_eq!(ids, vec![ana.clone()]);
    let (s, ids, _) = search(sue, "q=zzyzx").await;
    assert_eq!((s, ids.len()), (200, 0));
    // Hostile input: named 400s, and odd-but-valid text that finds nothing without failing.
    for (query, field) in [
        ("q=".to_string(), "q"),
        (format!("q={}", "a".repeat(501)), "q"),
        ("q=a%00b".to_string(), "q"),
        ("q=x&status=open,nope".to_string(), "status"),
        ("q=x&assignee=someone".to_string(), "assignee"),
        ("q=x&limit=1000".to_string(), "limit"),
        ("q=x&offset=5000".to_string(), "offset"),
    ] {
        let (s, _, v) = search(sue, &query).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, _, v) = search(sue, "q=x&view=no-such-view").await;
    assert_refused(s, &v, 400, "view");
    for odd in [
        "((((",
        "\"",
        "!!! & | <->",
        "😀 🙃",
        "' OR 1=1 --",
        &"(".repeat(400),
        "\u{E000}x\u{E001}",
    ] {
        let (s, _, v) = search(sue, &format!("q={}", encode(odd))).await;
        assert!(
            s == 200 || (s == 400 && v["error"]["field"] == "q"),
            "{odd:?}: {s} {v}"
        );
    }
    // Every role may search; no credential may not.
    let (s, _) = h.get_anon(&node, "/v1/search?q=refund").await;
    assert_eq!(s, 401);
}

/// `switchboard search build-window`: search's recent window is a partial index over the
/// newest messages (valid, recorded, its cutoff between the old and the new messages), a search
/// finds the old matches through the whole-table index as before, a later window replaces an
/// earlier one, whose index is dropped, and a window larger than the desk is not built.
#[tokio::test(flavor = "multi_thread")]
async fn search_reads_the_recent_window_first_and_still_finds_older_messages() {
    // The serving role's job finds too few messages for a window (and later one not due): the
    // test builds the windows.
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let texts = [
        "my parcel never came (old one)",
        "the parcel came open (old two)",
        "where is my parcel now",
        "parcel arrived wet, ünïcödé ✓",
    ];
    for (i, text) in texts.iter().enumerate() {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("win{i}@example.com")}, "text": text, "external_id": format!("win-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    eventually("the messages stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            (common::count(
                &pool,
                "SELECT count(*) FROM messages WHERE text LIKE '%parcel%'",
            )
            .await
                == 4)
                .then_some(())
        }
    })
    .await;
    // The first two are from ten days ago.
    sqlx::query("UPDATE messages SET received_at = received_at - interval '10 days' WHERE text LIKE '%(old %'")
        .execute(&pool)
        .await
        .unwrap();
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue_token);
    let (s, mut before, v) = search(sue, "q=parcel").await;
    assert_eq!((s, before.len()), (200, 4), "{v}");
    before.sort();

    let build_window = |rows: &str| {
        std::process::Command::new(common::switchboard_bin())
            .current_dir(common::repo())
            .arg("--config")
            .arg(&h.config)
            .args(["search", "build-window", "--rows", rows])
            .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &h.pg_url)
            .output()
            .unwrap()
    };
    let build = |rows: &str| {
        let out = build_window(rows);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let windows = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>, i64)>(
            "SELECT w.index_name, w.since, w.rows FROM search_windows w
             JOIN pg_class c ON c.relname = w.index_name JOIN pg_index i ON i.indexrelid = c.oid
             WHERE i.indisvalid",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let window_indexes = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT indexname::text FROM pg_indexes WHERE indexname LIKE $1",
        )
        .bind(switchboard_serving::search_window::INDEX_LIKE)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    // A window of every message but the newest few: its cutoff is ten days back.
    let all: i64 = common::count(&pool, "SELECT count(*) FROM messages").await;
    let text = build(&(all - 1).to_string());
    assert!(
        text.contains("search window messages_search_window_"),
        "{text}"
    );
    let first = windows(pool.clone()).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].1 < chrono::Utc::now() - chrono::Duration::days(9),
        "{first:?}"
    );
    let (_, mut ids, _) = search(sue, "q=parcel").await;
    ids.sort();
    assert_eq!(ids, before);

    // One instance builds at a time: while another holds the job's lock, the command is refused
    // and builds nothing; once it lets go, the build goes ahead.
    let held = switchboard_core::db::JobLock::try_acquire(&pool, "switchboard:search-window")
        .await
        .unwrap()
        .expect("nobody holds the window job");
    assert!(
        switchboard_core::db::JobLock::try_acquire(&pool, "switchboard:search-window")
            .await
            .unwrap()
            .is_none(),
        "a second holder of the same job"
    );
    let out = build_window("1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another instance is building"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(windows(pool.clone()).await, first);
    held.release().await;

    // A window of the newest message only: the old ones are outside it, found all the same.
    let text = build("1");
    assert!(text.contains("search window"), "{text}");
    let second = windows(pool.clone()).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0].0, first[0].0);
    let (since, rows) = (second[0].1, second[0].2);
    assert!(
        since > chrono::Utc::now() - chrono::Duration::days(1),
        "{second:?}"
    );
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE received_at >= $1")
        .bind(since)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, inside);
    let old_inside: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE received_at >= $1 AND text LIKE '%(old %'",
    )
    .bind(since)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old_inside, 0);
    // The earlier window's index is gone with its row.
    assert_eq!(
        window_indexes(pool.clone()).await,
        vec![second[0].0.clone()]
    );
    for q in [
        "q=parcel",
        "q=parcel%20never",
        "q=%C3%BCn%C3%AFc%C3%B6d%C3%A9",
    ] {
        let (s, mut ids, v) = search(sue, q).await;
        assert_eq!(s, 200, "{v}");
        ids.sort();
        let want = match q {
            "q=parcel" => before.len(),
            _ => 1,
        };
        assert_eq!(ids.len(), want, "{q}: {v}");
    }
    let (_, mut ids, _) = search(sue, "q=parcel").await;
    ids.sort();
    assert_eq!(ids, before);
    // A size the command refuses, and a window larger than the desk: none, and none left.
    let out = build_window("0");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("window_rows"));
    let text = build("100000000");
    assert!(text.contains("no search window"), "{text}");
    assert_eq!(windows(pool.clone()).await, second);
    assert_eq!(
        window_indexes(pool.clone()).await,
        vec![second[0].0.clone()]
    );
    let (_, mut ids, _) = search(sue, "q=parcel").await;
    ids.sort();
    assert_eq!(ids, before);
}

/// The ticket's assignee, once `pred` holds for it.
async fn assignee_when(
    pool: &PgPool,
    ticket: &str,
    what: &str,
    pred: impl Fn(Option<String>) -> bool,
) -> Option<String> {
    eventually(what, Duration::from_secs(60), || {
        let pool = pool.clone();
        let ticket = ticket.to_string();
        let pred = &pred;
        async move {
            let a: Option<uuid::Uuid> =
                sqlx::query_scalar("SELECT assigned_agent_id FROM tickets WHERE id = $1::uuid")
                    .bind(ticket)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let a = a.map(|a| a.to_string());
            pred(a.clone()).then_some(a)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_move_between_agents_teams_and_the_queue_with_their_reasons() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, true).await;
    let bob = h.agent(&node, "bob@example.com", &[], 2, true).await;
    let cy = h.agent(&node, "cy@example.com", &[], 2, false).await;
    let tokens = [
        h.issue_token(&node, "agent", Some(&ann), "ann").await,
        h.issue_token(&node, "agent", Some(&bob), "bob").await,
    ];
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue_token);
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "dana@example.com"}, "text": "Hej, min pakke er væk", "external_id": "assign-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let ticket = eventually("the ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM tickets")
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await
    .to_string();
    let x = assignee_when(&pool, &ticket, "routed", |a| a.is_some())
        .await
        .unwrap();
    let (y, x_token, y_token) = if x == ann {
        (bob.clone(), &tokens[0], &tokens[1])
    } else {
        (ann.clone(), &tokens[1], &tokens[0])
    };
    let (xc, yc) = (h.caller(&node, x_token), h.caller(&node, y_token));
    let path = format!("/v1/tickets/{ticket}/assign");

    // The holder transfers it, with a reason; the reason is what routing explains.
    let (s, v) = xc
        .post(&path, json!({"agent_id": y, "reason": "speaks Danish"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["agent_id"].as_str(), v["released_agent_id"].as_str()),
        (Some(y.as_str()), Some(x.as_str())),
        "{v}"
    );
    let reasons: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT reason, release_reason FROM assignments WHERE ticket_id = $1::uuid ORDER BY assigned_at",
    )
    .bind(&ticket)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].1.as_deref().unwrap().starts_with("transferred"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0.contains("assigned by hand") && reasons[1].0.contains("speaks Danish"),
        "{reasons:?}"
    );
    let x_active: i32 = sqlx::query_scalar("SELECT active_count FROM agents WHERE id = $1::uuid")
        .bind(&x)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(x_active, 0);
    // The one who let go cannot move it again; an agent cannot override; an offline agent is
    // refused, naming why.
    let (s, v) = xc.post(&path, json!({"agent_id": x})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = yc
        .post(&path, json!({"agent_id": cy, "override": true}))
        .await;
    assert_refused(s, &v, 403, "override");
    let (s, v) = yc.post(&path, json!({"agent_id": cy})).await;
    assert_refused(s, &v, 409, "agent_id");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent is offline"),
        "{v}"
    );
    // A supervisor overrides, and the reason says so.
    let (s, v) = sue
        .post(
            &path,
            json!({"agent_id": cy, "override": true, "reason": "VIP owner"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["overridden"], json!(["agent is offline"]), "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("overrode: agent is offline"),
        "{v}"
    );

    // To a team's queue: the router picks among its members only.
    let (s, team) = sue
        .post(
            "/v1/teams",
            json!({"name": "Nordic", "members": [ann, bob]}),
        )
        .await;
    assert_eq!(s, 201, "{team}");
    let team = team["id"].as_str().unwrap().to_string();
    let (s, v) = sue
        .post(&path, json!({"team_id": team, "reason": "Nordic desk"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["team_id"].as_str(), v["released_agent_id"].as_str()),
        (Some(team.as_str()), Some(cy.as_str())),
        "{v}"
    );
    let z = assignee_when(&pool, &ticket, "routed within the team", |a| {
        a.as_deref() == Some(&ann) || a.as_deref() == Some(&bob)
    })
    .await
    .unwrap();
    // Handed back: the router gives it to the other member, not back to the one who let go.
    let z_token = if z == ann { &tokens[0] } else { &tokens[1] };
    let (s, v) = h
        .caller(&node, z_token)
        .post(&path, json!({"reason": "going on break"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["agent_id"], Value::Null, "{v}");
    let w = assignee_when(&pool, &ticket, "routed to the other member", |a| {
        a.is_some()
    })
    .await
    .unwrap();
    assert_ne!(w, z);
    let handed: Option<String> = sqlx::query_scalar(
        "SELECT release_reason FROM assignments WHERE ticket_id = $1::uuid AND agent_id = $2::uuid ORDER BY assigned_at DESC LIMIT 1",
    )
    .bind(&ticket)
    .bind(&z)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(handed.unwrap().starts_with("handed back"));
    let team_view: (i64,) = sqlx::query_as("SELECT count(*) FROM tickets WHERE team_id = $1::uuid")
        .bind(&team)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(team_view.0, 1);
    // Routed to the team and held by a member: once in the team's view, counted once.
    let (s, v) = sue
        .post(
            "/v1/views",
            json!({"name": "Team's", "scope": "everyone", "filter": {"team_id": team}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let view = v["id"].as_str().unwrap().to_string();
    let (_, counts) = sue.get("/v1/views/counts").await;
    assert_eq!(count_of(&counts, &view), 1, "{counts}");
    assert_eq!(all_pages(sue, &view, 10).await, vec![ticket.clone()]);

    // Bad input is named; a waiting ticket can be taken; a solved one cannot be moved.
    for (bad, status, field) in [
        (json!({"agent_id": ann, "team_id": team}), 400, "team_id"),
        (
            json!({"agent_id": "0190a0a0-0000-7000-8000-000000000000"}),
            400,
            "agent_id",
        ),
        (
            json!({"team_id": "0190a0a0-0000-7000-8000-000000000000"}),
            400,
            "team_id",
        ),
        (json!({"agent_id": "not-a-uuid"}), 400, "agent_id"),
        (json!({"reason": "a\u{0}b"}), 400, "reason"),
        (json!({"reason": "x".repeat(501)}), 400, "reason"),
    ] {
        let (s, v) = sue.post(&path, bad).await;
        assert_refused(s, &v, status, field);
    }
    let (s, v) = sue.post(&path, json!({"colour": "red"})).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = sue
        .post(
            "/v1/tickets/0190a0a0-0000-7000-8000-000000000000/assign",
            json!({}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = sue
        .put(
            &format!("/v1/tickets/{ticket}/status"),
            json!({"status": "resolved"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sue.post(&path, json!({"agent_id": ann})).await;
    assert_eq!(s, 409, "{v}");

    // The audit log has what people did to the ticket, each by its caller; the router's own
    // assignment is on its event (`actor: router`, cli/tests/e2e.rs), not in the log.
    let (s, log) = h
        .get(&node, &format!("/v1/audit?ticket={ticket}&limit=200"))
        .await;
    assert_eq!(s, 200, "{log}");
    let entries = log["entries"]
        .as_array()
        .unwrap_or_else(|| log.as_array().unwrap());
    let by = |action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        by("ticket.unassigned").contains(&format!("agent:{x}")),
        "{log}"
    );
    assert!(
        by("ticket.assigned").contains(&format!("agent:{x}")),
        "the holder's transfer: {log}"
    );
    assert!(by("ticket.assigned").iter().all(|a| a != "router"), "{log}");
    let resolved = entries
        .iter()
        .find(|e| e["action"] == "ticket.status_changed" && e["after"]["status"] == "resolved")
        .expect("the supervisor's resolve");
    assert!(
        resolved["actor"].as_str().unwrap().starts_with("token:"),
        "{resolved}"
    );
    assert_eq!(resolved["role"], "supervisor");
}

#[tokio::test(flavor = "multi_thread")]
async fn notes_mention_colleagues_on_their_streams_and_stay_internal() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, false).await;
    let bob = h.agent(&node, "Bob@Example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let (ann_c, bob_c) = (h.caller(&node, &ann_token), h.caller(&node, &bob_token));
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "erin@example.com"}, "text": "Hello, a question", "external_id": "note-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let ticket = eventually("the ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM tickets")
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await
    .to_string();
    // Bob finds Ann in the directory the console's @-autocomplete and agent picker use: by
    // a name's start, an email's, with or without the `@`; wildcards are literal; hostile
    // queries are refused by name.
    h.created(
        &node,
        "/v1/agents",
        json!({"name": "Zoë Ångström", "email": "zoe@example.com", "max_concurrent": 1}),
    )
    .await;
    for (q, want) in [
        ("an", "ann@example.com"),
        ("@ANN", "ann@example.com"),
        ("ann@ex", "ann@example.com"),
        ("ångs", "Zoë Ångström"),
        ("ZOË", "Zoë Ångström"),
    ] {
        let (s, v) = bob_c
            .get(&format!("/v1/agents?q={}&limit=5", encode(q)))
            .await;
        assert_eq!(s, 200, "{q}: {v}");
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&want), "{q}: {v}");
        assert!(!names.contains(&"Bob@Example.com"), "{q}: {v}");
    }
    let (s, v) = bob_c.get("/v1/agents?q=%25").await;
    assert_eq!(
        (s, v.as_array().map(Vec::len)),
        (200, Some(0)),
        "a literal %: {v}"
    );
    let (s, v) = bob_c.get("/v1/agents?q=a%00b").await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("q")), "{v}");
    let long = "a".repeat(101);
    let (s, v) = bob_c.get(&format!("/v1/agents?q={long}")).await;
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("q")), "{v}");
    for bad in ["limit=0", "limit=101", "status=busy", "colour=red"] {
        let (s, v) = bob_c.get(&format!("/v1/agents?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (s, v) = bob_c.get("/v1/agents?limit=100").await;
    assert_eq!(s, 200, "{v}");
    assert!(v.as_array().unwrap().len() >= 3, "{v}");

    // Ann listens; she holds no ticket.
    let stream = h
        .fetch(&node, &format!("/v1/agents/{ann}/stream"), Some(&ann_token))
        .await;
    let mut sse = Sse::new(stream);
    sse.until("snapshot", 10).await;

    // Bob, who does not hold the ticket either, brings Ann in. The customer's address in the
    // note mentions nobody.
    let path = format!("/v1/tickets/{ticket}/notes");
    let (s, v) = bob_c
        .post(&path, json!({"text": "@ANN@example.com can you check? She wrote from erin@example.com first.", "request_id": "n1"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let note = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["mentioned"], json!([ann]), "{v}");
    let m = sse.until("mention", 20).await;
    assert_eq!(
        (
            m["kind"].as_str(),
            m["message_id"].as_str(),
            m["by"].as_str()
        ),
        (Some("mentioned"), Some(note.as_str()), Some(bob.as_str())),
        "{m}"
    );
    // A retry stores and tells nothing twice.
    let (s, v) = bob_c
        .post(&path, json!({"text": "@ANN@example.com can you check? She wrote from erin@example.com first.", "request_id": "n1"}))
        .await;
    assert_eq!(
        (s, v["id"].as_str(), v["duplicate"].as_bool()),
        (200, Some(note.as_str()), Some(true)),
        "{v}"
    );
    assert_eq!(
        common::count(&pool, "SELECT count(*) FROM note_mentions").await,
        1
    );
    // Her mentions, hers alone to read.
    let (s, v) = ann_c.get(&format!("/v1/agents/{ann}/mentions")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v[0]["message_id"].as_str(), v[0]["author"].as_str()),
        (Some(note.as_str()), Some(bob.as_str())),
        "{v}"
    );
    let (s, _) = bob_c.get(&format!("/v1/agents/{ann}/mentions")).await;
    assert_eq!(s, 403);
    // Explicit mentions (the console's autocomplete) and by id; Bob's own stream hears his.
    let (s, v) = ann_c
        .post(
            &path,
            json!({"text": format!("thanks @{bob}"), "mentions": [bob]}),
        )
        .await;
    assert_eq!((s, v["mentioned"].clone()), (201, json!([bob])), "{v}");
    // The note is internal: stored as a note, no outbound reply for it, the ticket's first
    // response untouched.
    let (direction, responded): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT m.direction, t.first_response_at FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE m.id = $1::uuid",
    )
    .bind(&note)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((direction.as_str(), responded), ("note", None));
    // The conversation names the agent who wrote it, not only its id.
    let (_, t) = ann_c.get(&format!("/v1/tickets/{ticket}")).await;
    let shown = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == note.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (shown["author"].as_str(), shown["author_name"].as_str()),
        (Some(bob.as_str()), Some("Bob@Example.com")),
        "{shown}"
    );
    // Bad input is named; hostile text is refused or stored as text.
    for (bad, field) in [
        (json!({"text": "  "}), "text"),
        (json!({"text": "a\u{0}b"}), "text"),
        (json!({"text": "x".repeat(70_000)}), "text"),
        (
            json!({"text": "hi", "mentions": [ann, "0190a0a0-0000-7000-8000-000000000000"]}),
            "mentions[1]",
        ),
        (json!({"text": "hi", "mentions": ["nope"]}), "mentions[0]"),
        (json!({"text": "hi", "request_id": ""}), "request_id"),
    ] {
        let (s, v) = bob_c.post(&path, bad).await;
        assert_refused(s, &v, 400, field);
    }
    let flood: String = (0..5_000).map(|i| format!("@a{i}@x.io ")).collect();
    let (s, v) = bob_c
        .post(&path, json!({"text": format!("Привет ✉ {flood}")}))
        .await;
    assert_eq!((s, v["mentioned"].clone()), (201, json!([])), "{v}");
    let (s, _) = bob_c
        .post(
            "/v1/tickets/0190a0a0-0000-7000-8000-000000000000/notes",
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_notes_sit_beside_every_ticket_and_follow_the_customer() {
    let (h, node) = start(common::ALL, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, false).await;
    let bob = h.agent(&node, "bob@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let (ann_c, bob_c) = (h.caller(&node, &ann_token), h.caller(&node, &bob_token));
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue_token);
    for i in 0..2 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "fay@example.com", "name": "Fay"}, "text": format!("Question {i}"), "external_id": format!("cn-{i}"), "conversation_id": format!("c{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let tickets: Vec<(uuid::Uuid, uuid::Uuid)> =
        eventually("two tickets", Duration::from_secs(60), || {
            let pool = pool.clone();
            async move {
                let t: Vec<(uuid::Uuid, uuid::Uuid)> =
                    sqlx::query_as("SELECT id, customer_id FROM tickets ORDER BY id")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                (t.len() == 2).then_some(t)
            }
        })
        .await;
    let customer = tickets[0].1;
    let path = format!("/v1/customers/{customer}/notes");
    let (s, note) = ann_c
        .post(&path, json!({"text": "Prefers email; VIP since 2019 ✉"}))
        .await;
    assert_eq!(s, 201, "{note}");
    assert_eq!(
        (note["author"].as_str(), note["author_name"].as_str()),
        (Some(ann.as_str()), Some("ann@example.com")),
        "{note}"
    );
    // Beside every ticket of the customer, and on the profile.
    for (t, _) in &tickets {
        let (s, v) = bob_c.get(&format!("/v1/tickets/{t}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["customer_notes"][0]["text"], "Prefers email; VIP since 2019 ✉",
            "{v}"
        );
    }
    let (_, profile) = bob_c.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(profile["notes"][0]["id"], note["id"]);
    // Bad input named; only its author or a supervisor deletes it.
    for bad in [
        json!({"text": ""}),
        json!({"text": "a\u{0}b"}),
        json!({"text": "x".repeat(4_001)}),
    ] {
        let (s, v) = ann_c.post(&path, bad).await;
        assert_refused(s, &v, 400, "text");
    }
    let (s, _) = ann_c
        .post(
            "/v1/customers/0190a0a0-0000-7000-8000-000000000000/notes",
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(s, 404);
    let note_path = format!("{path}/{}", note["id"].as_str().unwrap());
    let (s, _) = bob_c.delete(&note_path).await;
    assert_eq!(s, 403);
    let (s, second) = bob_c
        .post(&path, json!({"text": "Asked for a callback"}))
        .await;
    assert_eq!(s, 201);
    let (s, _) = sue.delete(&note_path).await;
    assert_eq!(s, 204);
    let (_, v) = ann_c.get(&format!("/v1/tickets/{}", tickets[0].0)).await;
    assert_eq!(
        strs(&v["customer_notes"], "id"),
        vec![second["id"].as_str().unwrap()]
    );
    // Erasing the customer erases its notes.
    let (s, v) = h.delete(&node, &format!("/v1/customers/{customer}")).await;
    assert!(s == 200 || s == 202 || s == 204, "{s} {v}");
    eventually("the notes erased", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            (common::count(&pool, "SELECT count(*) FROM customer_notes").await == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_actions_apply_per_ticket_and_report_each() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 3, true).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let ann_c = h.caller(&node, &ann_token);
    for i in 0..5 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("b{i}@example.com")}, "text": "Hello, a question", "external_id": format!("bulk-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let mine = held(&pool, &ann, 3).await;
    let all: Vec<String> = eventually("five tickets", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tickets ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
            (ids.len() == 5).then(|| ids.iter().map(ToString::to_string).collect())
        }
    })
    .await;
    let mut sse = Sse::new(
        h.fetch(&node, &format!("/v1/agents/{ann}/stream"), Some(&ann_token))
            .await,
    );
    sse.until("snapshot", 10).await;
    // Ann tags all five: her three go through, the two she does not hold fail alone (403).
    let (s, v) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": all, "action": {"type": "tags", "add": ["Follow Up"]}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["succeeded"].as_i64(),
            v["failed"].as_i64(),
            v["events_delayed"].as_bool()
        ),
        (Some(3), Some(2), Some(false)),
        "{v}"
    );
    // The three changes' events, published together at the end, reach her stream (at least
    // once: the outbox sweep may publish one again before the flush deletes it).
    let mut heard = BTreeSet::new();
    for _ in 0..10 {
        let ev = tags_changed(&mut sse).await;
        heard.insert(ev["ticket_id"].as_str().unwrap().to_string());
        if heard.len() == mine.len() {
            break;
        }
    }
    assert_eq!(heard, mine.iter().cloned().collect());
    for (i, r) in v["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["ticket_id"], all[i].as_str(), "in the order given");
        let held = mine.contains(&all[i]);
        assert_eq!(r["status"], if held { 200 } else { 403 }, "{r}");
        if held {
            assert_eq!(r["result"]["tags"], json!(["follow_up"]), "{r}");
        }
    }
    let tagged = common::count(
        &pool,
        "SELECT count(*) FROM tickets WHERE tags @> ARRAY['follow_up']",
    )
    .await;
    assert_eq!(tagged, 3);
    // Status for her three, as the single route would: resolved, her slots free.
    let (s, v) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": mine, "action": {"type": "status", "status": "resolved"}}),
        )
        .await;
    assert_eq!((s, v["succeeded"].as_i64()), (200, Some(3)), "{v}");
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM tickets WHERE status = 'resolved'"
        )
        .await,
        3
    );
    // A bad action is refused before any ticket is touched.
    for (bad, field) in [
        (
            json!({"ticket_ids": all, "action": {"type": "tags", "add": ["ok", "<b>"]}}),
            "action.add[1]",
        ),
        (
            json!({"ticket_ids": all, "action": {"type": "status", "status": "done"}}),
            "action.status",
        ),
        (
            json!({"ticket_ids": [], "action": {"type": "status", "status": "open"}}),
            "ticket_ids",
        ),
        (
            json!({"ticket_ids": [all[0], all[0]], "action": {"type": "status", "status": "open"}}),
            "ticket_ids[1]",
        ),
        (
            json!({"ticket_ids": (0..101).map(|_| uuid::Uuid::now_v7()).collect::<Vec<_>>(), "action": {"type": "status", "status": "open"}}),
            "ticket_ids",
        ),
    ] {
        let (s, v) = ann_c.post("/v1/tickets/bulk", bad).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = ann_c
        .post("/v1/tickets/bulk", json!({"ticket_ids": all, "action": {"type": "assign", "agent_id": ann, "override": true}}))
        .await;
    assert_refused(s, &v, 403, "action.override");
    let (s, v) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": all, "action": {"type": "explode"}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM tickets WHERE status = 'open' AND tags = '{}'"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_fields_are_defined_validated_filtered_and_required_to_resolve() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, true).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let ann_c = h.caller(&node, &ann_token);
    let admin = h.caller(&node, &h.token);
    // Admins define; agents read.
    let (s, v) = ann_c
        .post(
            "/v1/fields",
            json!({"key": "reason", "name": "Reason", "kind": "dropdown", "options": ["damaged"]}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    for (bad, field) in [
        (
            json!({"key": "Reason!", "name": "R", "kind": "text"}),
            "key",
        ),
        (json!({"key": "r", "name": "R", "kind": "colour"}), "kind"),
        (
            json!({"key": "r", "name": "R", "kind": "dropdown", "options": ["a", "a"]}),
            "options[1]",
        ),
        (
            json!({"key": "r", "name": "R", "kind": "dropdown"}),
            "options",
        ),
        (
            json!({"key": "r", "name": "R", "kind": "text", "options": ["a"]}),
            "options",
        ),
        (json!({"key": "r", "name": "\u{7}", "kind": "text"}), "name"),
    ] {
        let (s, v) = admin.post("/v1/fields", bad).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, reason) = admin
        .post("/v1/fields", json!({"key": "reason", "name": "Return reason", "kind": "dropdown", "options": ["damaged", "wrong_item", "late"], "required_to_resolve": true}))
        .await;
    assert_eq!(s, 201, "{reason}");
    let (s, v) = admin
        .post(
            "/v1/fields",
            json!({"key": "reason", "name": "Again", "kind": "text"}),
        )
        .await;
    assert_refused(s, &v, 409, "key");
    for body in [
        json!({"key": "items", "name": "Items", "kind": "multi_select", "options": ["lamp", "shade", "bulb"]}),
        json!({"key": "refund", "name": "Refund", "kind": "number"}),
        json!({"key": "due", "name": "Due", "kind": "date"}),
        json!({"key": "gift", "name": "Gift", "kind": "checkbox"}),
    ] {
        let (s, v) = admin.post("/v1/fields", body).await;
        assert_eq!(s, 201, "{v}");
    }
    let (_, list) = ann_c.get("/v1/fields").await;
    assert_eq!(list.as_array().unwrap().len(), 6);

    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "gus@example.com"}, "text": "Hello, a question", "external_id": "f-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let ticket = held(&pool, &ann, 1).await.remove(0);
    let path = format!("/v1/tickets/{ticket}/fields");
    // Each kind checked and normalised; a bad value names its key.
    for (bad, field) in [
        (json!({"values": {"reason": "broken"}}), "values.reason"),
        (
            json!({"values": {"items": ["lamp", "sofa"]}}),
            "values.items",
        ),
        (json!({"values": {"refund": "12"}}), "values.refund"),
        (json!({"values": {"due": "2026-02-30"}}), "values.due"),
        (json!({"values": {"gift": "yes"}}), "values.gift"),
        (json!({"values": {"colour": "red"}}), "values.colour"),
        (
            json!({"values": {"order_number": "x".repeat(1_001)}}),
            "values.order_number",
        ),
        (json!({"values": {}}), "values"),
    ] {
        let (s, v) = h.put(&node, &path, bad).await;
        assert_refused(s, &v, 400, field);
    }
    // Resolving waits for the required field.
    let (s, v) = ann_c
        .put(
            &format!("/v1/tickets/{ticket}/status"),
            json!({"status": "resolved"}),
        )
        .await;
    assert_refused(s, &v, 409, "fields.reason");
    let (s, v) = ann_c
        .put(&path, json!({"values": {"reason": "damaged", "items": ["shade", "lamp", "shade"], "refund": 12.5, "due": "2026-12-24", "gift": true, "order_number": " #1001 "}}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["fields"],
        json!({"reason": "damaged", "items": ["lamp", "shade"], "refund": 12.5, "due": "2026-12-24", "gift": true, "order_number": "#1001"}),
        "{v}"
    );
    assert_eq!(v["changed"].as_array().unwrap().len(), 6);
    // Setting the same values changes nothing; null clears.
    let (_, again) = ann_c
        .put(&path, json!({"values": {"reason": "damaged"}}))
        .await;
    assert_eq!(
        (again["changed"].clone(), again["version"].clone()),
        (json!([]), v["version"].clone())
    );
    let (_, cleared) = ann_c.put(&path, json!({"values": {"gift": null}})).await;
    assert_eq!(cleared["fields"].get("gift"), None, "{cleared}");
    // Views filter on field values.
    let (s, view) = ann_c
        .post("/v1/views", json!({"name": "Damaged lamps", "filter": {"fields": {"reason": "damaged", "items": ["lamp"]}}}))
        .await;
    assert_eq!(s, 201, "{view}");
    let (_, page) = ann_c
        .get(&format!(
            "/v1/views/{}/tickets",
            view["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(strs(&page["tickets"], "id"), vec![ticket.as_str()]);
    assert_eq!(page["tickets"][0]["fields"]["reason"], "damaged");
    let (s, v) = ann_c
        .post(
            "/v1/views",
            json!({"name": "x", "filter": {"fields": {"Bad Key": 1}}}),
        )
        .await;
    assert_refused(s, &v, 400, "filter.fields.Bad Key");
    // Now it resolves; a deactivated field stays on the ticket but is set no more.
    let (s, v) = ann_c
        .put(
            &format!("/v1/tickets/{ticket}/status"),
            json!({"status": "resolved"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = admin
        .delete(&format!("/v1/fields/{}", reason["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 204);
    let (s, v) = h
        .put(&node, &path, json!({"values": {"reason": "late"}}))
        .await;
    assert_refused(s, &v, 400, "values.reason");
    let (_, t) = ann_c.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(t["fields"]["reason"], "damaged");
    // Renaming keeps key and kind; a stale version is refused.
    let items_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "items")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = admin.put(&format!("/v1/fields/{items_id}"), json!({"name": "Items returned", "options": ["lamp", "shade", "bulb", "cord"], "version": 1})).await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)), "{v}");
    let (s, v) = admin
        .put(
            &format!("/v1/fields/{items_id}"),
            json!({"name": "x", "options": ["lamp"], "version": 1}),
        )
        .await;
    assert_refused(s, &v, 409, "version");
    let (s, v) = admin
        .put(
            &format!("/v1/fields/{items_id}"),
            json!({"name": "x", "kind": "text"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
}

/// The stream's next `presence` event for `ticket` (others skipped) whose viewers are `want`
/// (agent id and state, in arrival order).
async fn presence_is(sse: &mut Sse, ticket: &str, want: &[(&str, &str)]) {
    for _ in 0..50 {
        let p = sse.until("presence", 20).await;
        if p["ticket_id"] != ticket {
            continue;
        }
        let got: Vec<(String, String)> = p["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["agent_id"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
        if got == want {
            return;
        }
    }
    panic!("no presence {want:?} on {ticket}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_on_one_ticket_see_each_other_and_a_reply_needs_a_take_over() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, true).await;
    let bob = h.agent(&node, "bob@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let (ann_c, bob_c) = (h.caller(&node, &ann_token), h.caller(&node, &bob_token));
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "flo@example.com"}, "text": "Hello, a question", "external_id": "col-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let ticket = held(&pool, &ann, 1).await.remove(0);
    let mut ann_sse = Sse::new(
        h.fetch(&node, &format!("/v1/agents/{ann}/stream"), Some(&ann_token))
            .await,
    );
    ann_sse.until("snapshot", 10).await;
    let mut bob_sse = Sse::new(
        h.fetch(&node, &format!("/v1/agents/{bob}/stream"), Some(&bob_token))
            .await,
    );
    bob_sse.until("snapshot", 10).await;
    let presence = format!("/v1/tickets/{ticket}/presence");

    // Ann opens her ticket; Bob opens it too and starts typing: each sees the other.
    let (s, v) = ann_c.put(&presence, json!({"state": "viewing"})).await;
    assert_eq!(
        (s, v["viewers"][0]["name"].as_str()),
        (200, Some("ann@example.com")),
        "{v}"
    );
    presence_is(&mut ann_sse, &ticket, &[(&ann, "viewing")]).await;
    let (s, _) = bob_c.put(&presence, json!({"state": "viewing"})).await;
    assert_eq!(s, 200);
    presence_is(
        &mut ann_sse,
        &ticket,
        &[(&ann, "viewing"), (&bob, "viewing")],
    )
    .await;
    presence_is(
        &mut bob_sse,
        &ticket,
        &[(&ann, "viewing"), (&bob, "viewing")],
    )
    .await;
    let (s, _) = bob_c.put(&presence, json!({"state": "typing"})).await;
    assert_eq!(s, 200);
    presence_is(
        &mut ann_sse,
        &ticket,
        &[(&ann, "viewing"), (&bob, "typing")],
    )
    .await;
    // A heartbeat that changes nothing announces nothing (no pg_notify): the next event Ann
    // sees is Bob's stopping.
    let (s, _) = bob_c.put(&presence, json!({"state": "typing"})).await;
    assert_eq!(s, 200);
    let (s, _) = bob_c.put(&presence, json!({"state": "viewing"})).await;
    assert_eq!(s, 200);
    let p = ann_sse.until("presence", 20).await;
    assert_eq!(p["viewers"][1]["state"], "viewing", "{p}");
    let (s, v) = ann_c.get(&presence).await;
    assert_eq!(
        (s, v["viewers"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );

    // Bob's reply collides with Ann's ticket: refused, naming her, and nothing is stored.
    let replies = format!("/v1/tickets/{ticket}/replies");
    let (s, v) = bob_c
        .post(
            &replies,
            json!({"agent_id": bob, "text": "It left the depot today."}),
        )
        .await;
    assert_refused(s, &v, 409, "take_over");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ann@example.com"),
        "{v}"
    );
    // A note does not collide.
    let (s, v) = bob_c
        .post(
            &replies,
            json!({"agent_id": bob, "text": "I know this carrier.", "internal": true}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Taking over within Bob's constraints: he is offline, so refused, and Ann keeps it.
    let (s, v) = bob_c
        .post(
            &replies,
            json!({"agent_id": bob, "text": "It left the depot today.", "take_over": true}),
        )
        .await;
    assert_refused(s, &v, 409, "agent_id");
    assert_eq!(
        common::count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{ticket}' AND direction = 'outbound'")).await,
        0
    );
    let (s, _) = h.agent_status(&node, &bob, "online").await;
    assert_eq!(s, 200);
    // Ann answers her own ticket freely.
    let (s, v) = ann_c
        .post(&replies, json!({"agent_id": ann, "text": "Let me check."}))
        .await;
    assert_eq!(s, 201, "{v}");
    // Bob takes it over explicitly: the ticket is his, recorded as an assignment with its
    // reason, and Ann's stream hears she lost it.
    let (s, v) = bob_c
        .post(&replies, json!({"agent_id": bob, "text": "It left the depot today.", "take_over": true, "request_id": "bob-1"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let a = ann_sse.until("assignment", 20).await;
    assert_eq!(
        (a["agent_id"].as_str(), a["action"].as_str()),
        (Some(ann.as_str()), Some("released")),
        "{a}"
    );
    let (assignee, reason): (uuid::Uuid, String) = sqlx::query_as(
        "SELECT t.assigned_agent_id, a.reason FROM tickets t JOIN assignments a ON a.ticket_id = t.id AND a.released_at IS NULL WHERE t.id = $1::uuid",
    )
    .bind(&ticket)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(assignee.to_string(), bob);
    assert!(
        reason.contains("took it over to reply") && reason.contains(&bob),
        "{reason}"
    );
    // Now Ann's reply is the colliding one.
    let (s, v) = ann_c
        .post(&replies, json!({"agent_id": ann, "text": "Me again."}))
        .await;
    assert_refused(s, &v, 409, "take_over");
    // Bob leaves: Ann's stream shows her alone.
    let (s, _) = bob_c.put(&presence, json!({"state": "left"})).await;
    assert_eq!(s, 200);
    presence_is(&mut ann_sse, &ticket, &[(&ann, "viewing")]).await;

    // A ticket waiting in a queue: an agent takes it to answer, a supervisor need not. The
    // queue is a team's with nobody in it, so the router cannot give the ticket to Ann or Bob
    // before Ann's reply arrives (as it may from the shared queue, both being online).
    let (s, v) = h
        .post(&node, "/v1/teams", json!({"name": "Night shift"}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = h
        .post(
            &node,
            &format!("/v1/tickets/{ticket}/assign"),
            json!({"team_id": v["id"], "reason": "for the night shift"}),
        )
        .await;
    assert_eq!((s, v["agent_id"].as_str()), (200, None), "{v}");
    let (s, v) = ann_c
        .post(
            &replies,
            json!({"agent_id": ann, "text": "Picking this up."}),
        )
        .await;
    assert_refused(s, &v, 409, "take_over");
    let (s, v) = h
        .post(
            &node,
            &replies,
            json!({"agent_id": ann, "text": "Answered by the lead."}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // Bad input is named; presence is an agent's; unknown tickets are 404.
    for bad in [
        json!({"state": "dancing"}),
        json!({"state": "viewing", "extra": 1}),
        json!({}),
        json!({"state": "vïewing\u{0}"}),
    ] {
        let (s, v) = ann_c.put(&presence, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let deep = format!("{{\"state\": {}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let r = reqwest::Client::new()
        .put(format!("{}{presence}", node.base))
        .bearer_auth(&ann_token)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, _) = h.put(&node, &presence, json!({"state": "viewing"})).await;
    assert_eq!(s, 403);
    let (s, _) = ann_c
        .put(
            "/v1/tickets/0190a0a0-0000-7000-8000-000000000000/presence",
            json!({"state": "viewing"}),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn macros_fill_their_placeholders_apply_all_or_nothing_and_in_bulk() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h
        .agent_with(&node, json!({"name": "Ann Lee", "email": "ann@example.com", "skills": [], "languages": ["en"], "max_concurrent": 10}), true)
        .await;
    let bob = h.agent(&node, "bob@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let (ann_c, bob_c) = (h.caller(&node, &ann_token), h.caller(&node, &bob_token));
    let admin = h.caller(&node, &h.token);
    for i in 0..6 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("zoe{i}@example.com"), "name": "Zoë Dupont"}, "text": "Hello, a question", "external_id": format!("mac-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let tickets = held(&pool, &ann, 6).await;
    let first = &tickets[0];

    // Bad macros are named; agents do not share; titles are unique where shared.
    for (bad, field) in [
        (json!({"title": "x", "actions": []}), "actions"),
        (
            json!({"title": "x", "actions": [{"type": "reply", "text": "Hi {{custmer.name}}"}]}),
            "actions[0].text",
        ),
        (
            json!({"title": "x", "actions": [{"type": "reply", "text": "a"}, {"type": "reply", "text": "b"}]}),
            "actions[1].type",
        ),
        (
            json!({"title": "x", "actions": [{"type": "status", "status": "done"}]}),
            "actions[0].status",
        ),
        (
            json!({"title": "x", "actions": [{"type": "tags", "add": ["ok", "\u{0}"]}]}),
            "actions[0].add[1]",
        ),
        (
            json!({"title": "\u{7}", "actions": [{"type": "note", "text": "a"}]}),
            "title",
        ),
        (
            json!({"title": "x", "actions": [{"type": "team", "team_id": "0190a0a0-0000-7000-8000-000000000000"}], "personal": true, "team_id": "0190a0a0-0000-7000-8000-000000000000"}),
            "team_id",
        ),
    ] {
        let (s, v) = admin.post("/v1/macros", bad).await;
        assert_refused(s, &v, 400, field);
    }
    let (s, v) = admin
        .post(
            "/v1/macros",
            json!({"title": "x", "actions": [{"type": "launch"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let refund = json!({"title": "Refund issued", "actions": [
        {"type": "reply", "text": "Hi {{customer.first_name}}, the refund for {{ticket.number}} is on its way. {{agent.name}}"},
        {"type": "tags", "add": ["refund"]},
        {"type": "priority", "priority": "high"},
        {"type": "status", "status": "pending"}
    ]});
    let (s, v) = ann_c.post("/v1/macros", refund.clone()).await;
    assert_refused(s, &v, 403, "personal");
    let (s, m) = admin.post("/v1/macros", refund.clone()).await;
    assert_eq!(s, 201, "{m}");
    let refund_id = m["id"].as_str().unwrap().to_string();
    let (s, v) = admin.post("/v1/macros", refund.clone()).await;
    assert_refused(s, &v, 409, "title");
    // Ann's own macro: hers alone to see and change.
    let (s, mine) = ann_c
        .post("/v1/macros", json!({"title": "Refund issued", "personal": true, "actions": [{"type": "note", "text": "Checked the refund for {{customer.name}}"}]}))
        .await;
    assert_eq!(s, 201, "{mine}");
    let mine_id = mine["id"].as_str().unwrap().to_string();
    let (_, list) = bob_c.get("/v1/macros").await;
    let ids = strs(&list, "id");
    assert!(
        ids.contains(&refund_id.as_str()) && !ids.contains(&mine_id.as_str()),
        "{list}"
    );
    let (s, _) = bob_c.put(&format!("/v1/macros/{mine_id}"), json!({"title": "mine now", "personal": true, "actions": [{"type": "note", "text": "x"}]})).await;
    assert_eq!(s, 404);
    let (s, _) = bob_c
        .put(&format!("/v1/macros/{refund_id}"), refund.clone())
        .await;
    assert_eq!(s, 403);
    let (s, v) = admin.put(&format!("/v1/macros/{refund_id}"), json!({"title": "Refund issued", "version": 7, "actions": [{"type": "note", "text": "x"}]})).await;
    assert_refused(s, &v, 409, "version");

    // A preview fills the texts and changes nothing.
    let apply = format!("/v1/tickets/{first}/macros/{refund_id}");
    let (s, p) = ann_c.post(&apply, json!({"preview": true})).await;
    assert_eq!(s, 200, "{p}");
    let number: String = sqlx::query_scalar("SELECT number FROM tickets WHERE id = $1::uuid")
        .bind(first)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        p["reply"].as_str().unwrap(),
        format!("Hi Zoë, the refund for {number} is on its way. Ann Lee")
    );
    assert_eq!(
        (p["applied"].as_bool(), p["changes"][1].as_str()),
        (Some(false), Some("tags: +refund")),
        "{p}"
    );
    let outbound = |t: String| {
        let pool = pool.clone();
        async move {
            common::count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{t}' AND direction = 'outbound'")).await
        }
    };
    assert_eq!(outbound(first.clone()).await, 0);
    // Bob's preview says what applying would meet.
    let (s, p) = bob_c.post(&apply, json!({"preview": true})).await;
    assert_eq!(s, 200, "{p}");
    assert!(
        p["refusal"]
            .as_str()
            .unwrap_or_default()
            .contains("take_over"),
        "{p}"
    );
    for (bad, field) in [
        (
            json!({"agent_id": "0190a0a0-0000-7000-8000-000000000000"}),
            "agent_id",
        ),
        (json!({"agent_id": ann, "request_id": ""}), "request_id"),
    ] {
        let (s, v) = admin.post(&apply, bad).await;
        assert_refused(s, &v, 400, field);
    }
    // Applied: every action, in one go; a retry with the same request id does nothing again.
    let (s, v) = ann_c.post(&apply, json!({"request_id": "click-1"})).await;
    assert_eq!((s, v["applied"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = ann_c.post(&apply, json!({"request_id": "click-1"})).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    let (status, priority, tags): (String, String, Vec<String>) =
        sqlx::query_as("SELECT status, priority, tags FROM tickets WHERE id = $1::uuid")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), priority.as_str(), tags),
        ("pending", "high", vec!["refund".to_string()])
    );
    assert_eq!(outbound(first.clone()).await, 1);
    // Bob's reply through a macro collides like any reply.
    let (s, v) = bob_c.post(&apply, json!({})).await;
    assert_refused(s, &v, 409, "take_over");

    // All or nothing: resolving needs a field the ticket lacks, so the reply is not sent either.
    let (s, v) = admin.post("/v1/fields", json!({"key": "refund_reason", "name": "Refund reason", "kind": "text", "required_to_resolve": true})).await;
    assert_eq!(s, 201, "{v}");
    let (s, close) = admin
        .post("/v1/macros", json!({"title": "Close", "actions": [{"type": "reply", "text": "Closing {{ticket}}."}, {"type": "status", "status": "resolved"}]}))
        .await;
    assert_eq!(s, 201, "{close}");
    let second = &tickets[1];
    let (s, v) = ann_c
        .post(
            &format!(
                "/v1/tickets/{second}/macros/{}",
                close["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_refused(s, &v, 409, "fields.refund_reason");
    assert_eq!(outbound(second.clone()).await, 0);

    // In bulk over five tickets: each applied alone, each reported; a canned reply is a macro.
    let (s, v) = admin
        .post(
            "/v1/canned-replies",
            json!({"title": "Oops", "body": "Hi {{nmae}}"}),
        )
        .await;
    assert_refused(s, &v, 400, "body");
    let (s, canned) = admin
        .post(
            "/v1/canned-replies",
            json!({"title": "Thanks", "body": "Thanks {{name}}!"}),
        )
        .await;
    assert_eq!(s, 201, "{canned}");
    let (_, list) = ann_c.get("/v1/macros").await;
    assert!(
        strs(&list, "id").contains(&canned["id"].as_str().unwrap()),
        "{list}"
    );
    let five: Vec<&String> = tickets[1..6].iter().collect();
    let (s, v) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": five, "action": {"type": "macro", "macro_id": refund_id}}),
        )
        .await;
    assert_eq!(
        (s, v["succeeded"].as_u64(), v["failed"].as_u64()),
        (200, Some(5), Some(0)),
        "{v}"
    );
    assert_eq!(
        common::count(
            &pool,
            "SELECT count(*) FROM tickets WHERE 'refund' = ANY(tags) AND status = 'pending'"
        )
        .await,
        6
    );
    let (s, v) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": [first], "action": {"type": "macro", "macro_id": mine_id}}),
        )
        .await;
    assert_eq!((s, v["succeeded"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = bob_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": [first], "action": {"type": "macro", "macro_id": mine_id}}),
        )
        .await;
    assert_refused(s, &v, 404, "action.macro_id");
    // Merging in bulk is a supervisor's.
    let (s, _) = ann_c
        .post(
            "/v1/tickets/bulk",
            json!({"ticket_ids": [second], "action": {"type": "merge", "into_ticket_id": first}}),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_moves_messages_into_a_new_ticket_with_its_own_clocks() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 5, true).await;
    let bob = h.agent(&node, "bob@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let (ann_c, bob_c) = (h.caller(&node, &ann_token), h.caller(&node, &bob_token));
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "gil@example.com"}, "text": "Hello, a question", "external_id": "split-0"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let ticket = held(&pool, &ann, 1).await.remove(0);
    let (s, _) = ann_c
        .post(
            &format!("/v1/tickets/{ticket}/replies"),
            json!({"agent_id": ann, "text": "Sure, go ahead."}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "gil@example.com"}, "text": "Also: Ünrelated, my invoice is wrong", "ticket_id": ticket, "external_id": "split-1"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let messages = |t: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (uuid::Uuid, String)>(
                "SELECT id, direction FROM messages WHERE ticket_id = $1::uuid ORDER BY received_at, id",
            )
            .bind(t)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let all = eventually("three messages", Duration::from_secs(60), || {
        let m = messages(ticket.clone());
        async move {
            let m = m.await;
            (m.len() == 3).then_some(m)
        }
    })
    .await;
    let (first, reply, second) = (all[0].0, all[1].0, all[2].0);
    assert_eq!(all[2].1, "inbound");
    let path = format!("/v1/tickets/{ticket}/split");
    // Bad input is named; every message, or no customer message, is refused.
    for (bad, field) in [
        (json!({"message_ids": []}), "message_ids".to_string()),
        (
            json!({"message_ids": [second, second]}),
            "message_ids[1]".to_string(),
        ),
        (
            json!({"message_ids": ["0190a0a0-0000-7000-8000-000000000000"]}),
            "message_ids[0]".to_string(),
        ),
        (
            json!({"message_ids": [first, reply, second]}),
            "message_ids".to_string(),
        ),
        (json!({"message_ids": [reply]}), "message_ids".to_string()),
        (json!({"message_ids": ["nope"]}), "message_ids".to_string()),
    ] {
        let (s, v) = ann_c.post(&path, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
        // A malformed id is the body's own error; the rest name the field.
        if bad["message_ids"][0] != "nope" {
            assert_eq!(v["error"]["field"].as_str(), Some(field.as_str()), "{v}");
        }
    }
    // Only the holder (or a supervisor) splits.
    let (s, _) = bob_c.post(&path, json!({"message_ids": [second]})).await;
    assert_eq!(s, 403);
    let asked: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT received_at FROM messages WHERE id = $1")
            .bind(second)
            .fetch_one(&pool)
            .await
            .unwrap();
    // The reply written before the question goes along as history.
    let (s, v) = ann_c
        .post(&path, json!({"message_ids": [second, reply]}))
        .await;
    assert_eq!(s, 201, "{v}");
    let new = v["ticket_id"].as_str().unwrap().to_string();
    assert_eq!(
        (v["split_from"].as_str(), v["messages_moved"].as_u64()),
        (Some(ticket.as_str()), Some(2))
    );
    // A retry (in any order) moves nothing twice and answers with the same ticket.
    let (s, again) = ann_c
        .post(&path, json!({"message_ids": [reply, second]}))
        .await;
    assert_eq!(
        (s, again["ticket_id"].as_str(), again["duplicate"].as_bool()),
        (200, Some(new.as_str()), Some(true)),
        "{again}"
    );
    assert_eq!(messages(ticket.clone()).await.len(), 1);
    assert_eq!(
        messages(new.clone()).await,
        vec![
            (reply, "outbound".to_string()),
            (second, "inbound".to_string())
        ]
    );
    // The new ticket points back, began when the customer asked, and is searchable and routed.
    let (s, t) = ann_c.get(&format!("/v1/tickets/{new}")).await;
    assert_eq!(
        (s, t["split_from"].as_str()),
        (200, Some(ticket.as_str())),
        "{t}"
    );
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM tickets WHERE id = $1::uuid")
            .bind(&new)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(created, asked);
    // Its first-response clock started at the question, not at the split.
    let started = eventually("the new ticket's clock", Duration::from_secs(60), || {
        let pool = pool.clone();
        let new = new.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT started_at FROM sla_clocks WHERE ticket_id = $1::uuid AND metric = 'first_response'",
            )
            .bind(new)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(started, asked);
    // The older reply did not answer the new question: its first response is still to come.
    type Times = (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let (stopped, first_response): Times = sqlx::query_as(
        "SELECT c.stopped_at, t.first_response_at FROM sla_clocks c JOIN tickets t ON t.id = c.ticket_id
         WHERE c.ticket_id = $1::uuid AND c.metric = 'first_response'",
    )
    .bind(&new)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((stopped, first_response), (None, None));
    eventually("the new ticket routed", Duration::from_secs(60), || {
        let pool = pool.clone();
        let new = new.clone();
        async move {
            sqlx::query_scalar::<_, Option<uuid::Uuid>>(
                "SELECT assigned_agent_id FROM tickets WHERE id = $1::uuid",
            )
            .bind(new)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    let (s, ids, v) = search(ann_c, "q=invoice").await;
    assert!(
        s == 200 && ids.contains(&new) && !ids.contains(&ticket),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_order_number_field_fills_when_a_message_names_a_known_order() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h.agent(&node, "ann@example.com", &[], 5, true).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let ann_c = h.caller(&node, &ann_token);
    let send = |text: &str, external: &str, ticket: Option<&str>| {
        let mut body = json!({"channel": "api", "customer": {"email": "hal@example.com"}, "text": text, "external_id": external});
        if let Some(t) = ticket {
            body["ticket_id"] = json!(t);
        }
        body
    };
    let (s, _) = h
        .post(
            &node,
            "/v1/messages",
            send("Hello, a question", "ord-0", None),
        )
        .await;
    assert_eq!(s, 202);
    let ticket = held(&pool, &ann, 1).await.remove(0);
    let customer: uuid::Uuid =
        sqlx::query_scalar("SELECT customer_id FROM tickets WHERE id = $1::uuid")
            .bind(&ticket)
            .fetch_one(&pool)
            .await
            .unwrap();
    // Hal's order, and someone else's (as the order store writes them).
    let (s, other) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "ivy@example.com"}, "text": "Hi", "external_id": "ord-ivy"}))
        .await;
    assert_eq!(s, 202, "{other}");
    let ivy: uuid::Uuid = eventually("ivy", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar(
                "SELECT customer_id FROM customer_identities WHERE value = 'ivy@example.com'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    for (customer, number, external) in
        [(customer, "#2002", "gid-2002"), (ivy, "#3003", "gid-3003")]
    {
        sqlx::query(
            "INSERT INTO orders (id, customer_id, external_id, number, total_cents, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 4200, now(), now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(customer)
        .bind(external)
        .bind(number)
        .execute(&pool)
        .await
        .unwrap();
    }
    let field = |t: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT fields->>'order_number' FROM tickets WHERE id = $1::uuid",
            )
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // Another customer's order is never linked; Hal's is, whatever the spelling.
    let (s, _) = h
        .post(
            &node,
            "/v1/messages",
            send(
                "Ünïcode \u{200b} it's order 3003, sorry: I mean ORDER #2002!",
                "ord-1",
                Some(&ticket),
            ),
        )
        .await;
    assert_eq!(s, 202);
    let got = eventually("the order number", Duration::from_secs(60), || {
        field(ticket.clone())
    })
    .await;
    assert_eq!(got, "#2002");
    let (_, t) = ann_c.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(t["fields"]["order_number"], "#2002", "{t}");
    // An agent's value is never replaced by a later message.
    let (s, v) = ann_c
        .put(
            &format!("/v1/tickets/{ticket}/fields"),
            json!({"values": {"order_number": "#2002-B"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = h
        .post(
            &node,
            "/v1/messages",
            send("Any news on #2002?", "ord-2", Some(&ticket)),
        )
        .await;
    assert_eq!(s, 202);
    eventually("the third message", Duration::from_secs(60), || {
        let pool = pool.clone();
        let t = ticket.clone();
        async move {
            (common::count(&pool, &format!("SELECT count(*) FROM messages WHERE ticket_id = '{t}' AND direction = 'inbound'")).await == 3).then_some(())
        }
    })
    .await;
    assert_eq!(field(ticket.clone()).await.as_deref(), Some("#2002-B"));
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_changes_are_in_the_audit_log_with_before_and_after() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let ann = h.agent(&node, "ann@example.com", &[], 2, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let ann_c = h.caller(&node, &ann_token);
    // A view (an agent's own), a field and a macro (the admin's), each created, changed, removed.
    let (s, view) = ann_c
        .post(
            "/v1/views",
            json!({"name": "Mine \u{e9}", "filter": {"status": ["open"]}}),
        )
        .await;
    assert_eq!(s, 201, "{view}");
    let vid = view["id"].as_str().unwrap();
    let (s, v) = ann_c
        .put(&format!("/v1/views/{vid}"), json!({"name": "Renamed", "filter": {"status": ["pending"]}, "version": view["version"]}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = ann_c.delete(&format!("/v1/views/{vid}")).await;
    assert_eq!(s, 204);
    let field = h
        .created(
            &node,
            "/v1/fields",
            json!({"key": "reason", "name": "Reason", "kind": "dropdown", "options": ["damaged"]}),
        )
        .await;
    let fid = field["id"].as_str().unwrap();
    let (s, v) = h
        .put(&node, &format!("/v1/fields/{fid}"), json!({"name": "Return reason", "options": ["damaged", "late"], "version": field["version"]}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = h.delete(&node, &format!("/v1/fields/{fid}")).await;
    assert_eq!(s, 204);
    let m = h
        .created(
            &node,
            "/v1/macros",
            json!({"title": "Thanks", "actions": [{"type": "tags", "add": ["thanked"]}]}),
        )
        .await;
    let mid = m["id"].as_str().unwrap();
    // A refused change records nothing.
    let (s, _) = h
        .put(
            &node,
            &format!("/v1/macros/{mid}"),
            json!({"title": "Thanks", "actions": [{"type": "tags", "add": ["x"]}], "version": 99}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = h.delete(&node, &format!("/v1/macros/{mid}")).await;
    assert_eq!(s, 204);

    // A canned reply and a knowledge-base article, the supervisors' content.
    let canned = h
        .created(
            &node,
            "/v1/canned-replies",
            json!({"title": "Delayed", "body": "Sorry about the delay.", "tags": []}),
        )
        .await;
    let (s, _) = h
        .delete(
            &node,
            &format!("/v1/canned-replies/{}", canned["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 204);
    let article = h
        .created(
            &node,
            "/v1/kb/articles",
            json!({"title": "Returns", "body": "Send it back within 30 days.", "published": true}),
        )
        .await;
    let (s, _) = h
        .delete(
            &node,
            &format!("/v1/kb/articles/{}", article["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 204);

    let (s, log) = h.get(&node, "/v1/audit?limit=200").await;
    assert_eq!(s, 200, "{log}");
    let entries: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            ["view.", "field.", "macro.", "canned_reply.", "kb_article."]
                .iter()
                .any(|p| e["action"].as_str().unwrap().starts_with(p))
        })
        .collect();
    let mut actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    actions.reverse();
    let ann_name = format!("agent:{ann}");
    assert_eq!(
        actions,
        vec![
            ("view.created", ann_name.as_str()),
            ("view.updated", ann_name.as_str()),
            ("view.deleted", ann_name.as_str()),
            ("field.created", "admin"),
            ("field.updated", "admin"),
            ("field.deactivated", "admin"),
            ("macro.created", "admin"),
            ("macro.deleted", "admin"),
            ("canned_reply.created", "admin"),
            ("canned_reply.deleted", "admin"),
            ("kb_article.created", "admin"),
            ("kb_article.deleted", "admin"),
        ]
    );
    let updated = entries
        .iter()
        .find(|e| e["action"] == "field.updated")
        .unwrap();
    assert_eq!(
        (
            updated["before"]["name"].as_str(),
            updated["after"]["name"].as_str()
        ),
        (Some("Reason"), Some("Return reason"))
    );
    let view_updated = entries
        .iter()
        .find(|e| e["action"] == "view.updated")
        .unwrap();
    assert_eq!(view_updated["before"]["name"], "Mine \u{e9}");
    assert_eq!(view_updated["after"]["name"], "Renamed");
}
