//! Roles and tokens on the agent API, and the agent's live stream (SSE) over real services.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, header, start, strs, Sse, CORE};

use std::time::Duration;

use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn roles_limit_what_a_token_may_do_and_agents_get_their_assignments_live() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let admin = h.token.as_str();
    let ann = h
        .agent(&node, "ann@example.com", &["shipping"], 3, false)
        .await;
    let bob = h
        .agent(&node, "bob@example.com", &["billing"], 3, false)
        .await;

    // Tokens: issued by the admin, shown once; bad requests name the field.
    let (s, v) = h
        .call_as(
            &node,
            Some(admin),
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "name": "ann"})),
        )
        .await;
    assert_refused(s, &v, 400, "agent_id");
    let (s, v) = h
        .call_as(
            &node,
            Some(admin),
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "owner", "name": "x"})),
        )
        .await;
    assert_refused(s, &v, 400, "role");
    let (s, v) = h
        .call_as(
            &node,
            Some(admin),
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "agent_id": ann, "name": "ann's console"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ann_token = v["token"].as_str().unwrap().to_string();
    let (s, v) = h
        .call_as(
            &node,
            Some(admin),
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "supervisor", "name": "sue"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let sup_token = v["token"].as_str().unwrap().to_string();

    // The API documents itself (no token needed).
    let (s, doc) = h.get_anon(&node, "/openapi.json").await;
    assert_eq!(s, 200, "{doc}");
    assert!(
        doc["paths"]["/v1/tickets/{id}/replies"]["post"].is_object(),
        "{doc}"
    );

    // No token, a wrong one: 401.
    assert_eq!(
        h.call_as(&node, None, reqwest::Method::GET, "/v1/tickets", None)
            .await
            .0,
        401
    );
    assert_eq!(
        h.call_as(
            &node,
            Some("sbt_nope"),
            reqwest::Method::GET,
            "/v1/tickets",
            None
        )
        .await
        .0,
        401
    );
    // An agent reads tickets and sets its own status, nothing more: 403.
    let ann_t = Some(ann_token.as_str());
    assert_eq!(
        h.call_as(&node, ann_t, reqwest::Method::GET, "/v1/tickets", None)
            .await
            .0,
        200
    );
    let (s, v) = h
        .call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({"name": "x", "email": "x@example.com", "max_concurrent": 1})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::PUT,
            &format!("/v1/agents/{bob}/status"),
            Some(json!({"status": "online"}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "admin", "name": "me"}))
        )
        .await
        .0,
        403
    );
    let sup_t = Some(sup_token.as_str());
    assert_eq!(
        h.call_as(
            &node,
            sup_t,
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "admin", "name": "me"}))
        )
        .await
        .0,
        403
    );
    // A supervisor may merge (the ticket does not exist: past the role check, 404).
    let nobody = uuid::Uuid::now_v7();
    let (s, _) = h
        .call_as(
            &node,
            sup_t,
            reqwest::Method::POST,
            &format!("/v1/tickets/{nobody}/merge"),
            Some(json!({"into_ticket_id": uuid::Uuid::now_v7()})),
        )
        .await;
    assert_ne!(s, 403);
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            &format!("/v1/tickets/{nobody}/merge"),
            Some(json!({"into_ticket_id": uuid::Uuid::now_v7()}))
        )
        .await
        .0,
        403
    );
    // Canned replies: supervisors write them, agents read them.
    let (s, v) = h.call_as(&node, sup_t, reqwest::Method::POST, "/v1/canned-replies", Some(json!({"title": "Delayed parcel", "body": "Hi {{name}}, sorry about {{ticket}}.", "tags": ["shipping"]}))).await;
    assert_eq!(s, 201, "{v}");
    let canned = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call_as(
            &node,
            sup_t,
            reqwest::Method::POST,
            "/v1/canned-replies",
            Some(json!({"title": "Delayed parcel", "body": "again"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            "/v1/canned-replies",
            Some(json!({"title": "Mine", "body": "x"}))
        )
        .await
        .0,
        403
    );
    let (s, v) = h
        .call_as(
            &node,
            sup_t,
            reqwest::Method::POST,
            "/v1/canned-replies",
            Some(json!({"title": "", "body": "x"})),
        )
        .await;
    assert_refused(s, &v, 400, "title");
    let (s, v) = h
        .call_as(
            &node,
            ann_t,
            reqwest::Method::GET,
            "/v1/canned-replies?q=shipping",
            None,
        )
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let (s, v) = h
        .call_as(
            &node,
            sup_t,
            reqwest::Method::PUT,
            &format!("/v1/canned-replies/{canned}"),
            Some(json!({"title": "Late parcel", "body": "Hi {{name}}."})),
        )
        .await;
    assert_eq!((s, v["title"].as_str()), (200, Some("Late parcel")));
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::GET,
            "/v1/canned-replies?q=delayed",
            None
        )
        .await
        .1,
        json!([])
    );

    // Another agent's stream: 403.
    assert_eq!(
        h.call_as(
            &node,
            ann_t,
            reqwest::Method::GET,
            &format!("/v1/agents/{bob}/stream"),
            None
        )
        .await
        .0,
        403
    );

    // Ann's console opens her stream (EventSource style: the token in the query).
    let r = h
        .fetch(
            &node,
            &format!("/v1/agents/{ann}/stream?access_token={ann_token}"),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/event-stream"));
    let mut sse = Sse::new(r);
    let snap = sse.until("snapshot", 10).await;
    assert_eq!(snap["assignments"].as_array().unwrap().len(), 0);

    // She goes online; a customer writes about a parcel: the assignment arrives live.
    let (s, _) = h
        .call_as(
            &node,
            ann_t,
            reqwest::Method::PUT,
            &format!("/v1/agents/{ann}/status"),
            Some(json!({"status": "online"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "cy@example.com"}, "text": "My parcel tracking has not moved", "external_id": "live-1"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let a = sse.until("assignment", 60).await;
    assert_eq!(a["agent_id"], ann.as_str());
    assert_eq!(a["action"], "assigned");
    let ticket = a["ticket_id"].as_str().unwrap().to_string();

    // She answers as herself (not as Bob), and the customer's next message reaches her stream.
    let (s, _) = h
        .call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            &format!("/v1/tickets/{ticket}/replies"),
            Some(json!({"agent_id": bob, "text": "hi"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = h
        .call_as(
            &node,
            ann_t,
            reqwest::Method::POST,
            &format!("/v1/tickets/{ticket}/replies"),
            Some(json!({"agent_id": ann, "text": "Let me check the carrier."})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "cy@example.com"}, "text": "Thanks, waiting.", "ticket_id": ticket, "external_id": "live-2"}))
        .await;
    assert_eq!(s, 202);
    loop {
        let t = sse.until("ticket", 60).await;
        assert_eq!(t["ticket_id"], ticket.as_str());
        if t["kind"] == "message_added" && t["direction"] == "inbound" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_can_be_revoked_and_travel_in_the_query_string_only_to_the_stream() {
    let (h, node) = start(&["serving"], &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let admin = Some(h.token.as_str());
    let ann = h
        .agent(&node, "ann@example.com", &["shipping"], 3, false)
        .await;
    let issue = |body: Value| {
        let (h, node) = (&h, &node);
        async move {
            h.call_as(
                node,
                Some(h.token.as_str()),
                reqwest::Method::POST,
                "/v1/tokens",
                Some(body),
            )
            .await
        }
    };

    // Scopes: a read-only token reads and nothing else; a bad scope is named.
    let (s, v) = issue(json!({"role": "supervisor", "name": "reports", "scope": "read"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["scope"], "read");
    let reader_id = v["id"].as_str().unwrap().to_string();
    let reader = h.caller(&node, v["token"].as_str().unwrap());
    let (s, v) = reader.get("/v1/tickets?limit=1").await;
    assert_eq!(s, 200, "{v}");
    for (method, path) in [
        ("post", "/v1/views"),
        (
            "put",
            "/v1/agents/00000000-0000-7000-8000-000000000000/status",
        ),
        ("delete", "/v1/tokens/00000000-0000-7000-8000-000000000000"),
    ] {
        let (s, v) = match method {
            "post" => reader.post(path, json!({"name": "x", "filter": {}})).await,
            "put" => reader.put(path, json!({"status": "online"})).await,
            _ => reader.delete(path).await,
        };
        assert_refused(s, &v, 403, "scope");
    }
    for scope in [
        json!("write"),
        json!(""),
        json!("READ\u{0}"),
        json!(["read"]),
    ] {
        let (s, v) = issue(json!({"role": "supervisor", "name": "x", "scope": scope})).await;
        assert_eq!(s, 400, "{scope}: {v}");
    }
    let (_, v) = h
        .call_as(&node, admin, reqwest::Method::GET, "/v1/tokens", None)
        .await;
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "reports" && t["scope"] == "read"),
        "{v}"
    );
    let (s, _) = h
        .call_as(
            &node,
            admin,
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{reader_id}"),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "{s}");
    assert_eq!(reader.get("/v1/tickets?limit=1").await.0, 401);

    // Lifetimes: 90 days unless asked, a minute to a year; a bad one is named.
    let (s, v) = issue(json!({"role": "agent", "agent_id": ann, "name": "ann's console"})).await;
    assert_eq!(s, 201, "{v}");
    let ann_token = v["token"].as_str().unwrap().to_string();
    let ann_token_id = v["id"].as_str().unwrap().to_string();
    let expires: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((89.9..=90.1).contains(&days), "{days} days");
    for (secs, field) in [
        (json!(0), "expires_in_secs"),
        (json!(59), "expires_in_secs"),
        (json!(365 * 24 * 3600 + 1), "expires_in_secs"),
        (json!(-5), "expires_in_secs"),
    ] {
        let (s, v) =
            issue(json!({"role": "supervisor", "name": "x", "expires_in_secs": secs})).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{secs}: {v}"
        );
    }
    // Hostile names: control characters, a NUL, too long.
    for name in ["a\u{0}b", "line\nbreak", "я".repeat(101).as_str()] {
        let (s, v) = issue(json!({"role": "supervisor", "name": name})).await;
        assert_refused(s, &v, 400, "name");
    }
    let (s, v) =
        issue(json!({"role": "supervisor", "name": "Сью 👩‍💼", "expires_in_secs": 3600})).await;
    assert_eq!(s, 201, "{v}");
    let sup_token = v["token"].as_str().unwrap().to_string();
    let sup_token_id = v["id"].as_str().unwrap().to_string();
    let hour: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    assert!((hour - chrono::Utc::now()).num_minutes() <= 60);

    // Admins list tokens, never their secrets; no one else lists them.
    let (s, list) = h
        .call_as(&node, admin, reqwest::Method::GET, "/v1/tokens", None)
        .await;
    assert_eq!(s, 200, "{list}");
    let text = list.to_string();
    assert!(
        !text.contains(&ann_token) && !text.contains(&sup_token),
        "{text}"
    );
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
    let names = strs(&list, "name");
    assert_eq!(names, ["Сью 👩‍💼", "ann's console"]);
    for t in [&ann_token, &sup_token] {
        let (s, _) = h
            .call_as(&node, Some(t), reqwest::Method::GET, "/v1/tokens", None)
            .await;
        assert_eq!(s, 403);
    }
    let (s, v) = h
        .call_as(
            &node,
            admin,
            reqwest::Method::GET,
            "/v1/tokens?limit=0",
            None,
        )
        .await;
    assert_refused(s, &v, 400, "limit");
    let (s, v) = h
        .call_as(
            &node,
            admin,
            reqwest::Method::GET,
            &format!("/v1/tokens?agent_id={ann}"),
            None,
        )
        .await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");

    // The query string carries a token to the live stream only; anywhere else it is ignored.
    for path in [
        "/v1/me".to_string(),
        "/v1/tickets".into(),
        format!("/v1/agents/{ann}"),
    ] {
        let url = format!("{}{path}?access_token={ann_token}", node.base);
        let r = h.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let (s, me) = h
        .call_as(
            &node,
            Some(&ann_token),
            reqwest::Method::GET,
            "/v1/me",
            None,
        )
        .await;
    assert_eq!(
        (s, me["token_id"].as_str()),
        (200, Some(ann_token_id.as_str())),
        "{me}"
    );
    let r = h
        .fetch(
            &node,
            &format!("/v1/agents/{ann}/stream?access_token={ann_token}"),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut sse = Sse::new(r);
    sse.until("snapshot", 10).await;

    // Revoked: refused at once, and the open stream ends; revoking again changes nothing.
    let revoke = |id: String| {
        let (h, node) = (&h, &node);
        async move {
            h.call_as(
                node,
                Some(h.token.as_str()),
                reqwest::Method::DELETE,
                &format!("/v1/tokens/{id}"),
                None,
            )
            .await
            .0
        }
    };
    let (s, _) = h
        .call_as(
            &node,
            Some(&ann_token),
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{ann_token_id}"),
            None,
        )
        .await;
    assert_eq!(s, 403, "an agent revokes nothing, not even its own token");
    assert_eq!(revoke(ann_token_id.clone()).await, 204);
    assert_eq!(revoke(ann_token_id.clone()).await, 204);
    assert_eq!(revoke(uuid::Uuid::now_v7().to_string()).await, 404);
    assert_eq!(revoke("not-an-id".into()).await, 400);
    let (s, v) = h
        .call_as(
            &node,
            Some(&ann_token),
            reqwest::Method::GET,
            "/v1/me",
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        sse.drain().await;
    })
    .await;
    assert!(ended.is_ok(), "the revoked token's stream is still open");
    let r = h
        .fetch(
            &node,
            &format!("/v1/agents/{ann}/stream?access_token={ann_token}"),
            None,
        )
        .await;
    assert_eq!(r.status(), 401);

    // Expired (as far as the store knows): refused like a revoked one; the listing says so.
    let pool = h.pg().await;
    assert_eq!(
        h.call_as(
            &node,
            Some(&sup_token),
            reqwest::Method::GET,
            "/v1/dashboard/agents.csv",
            None
        )
        .await
        .0,
        200
    );
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&sup_token_id)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        h.call_as(
            &node,
            Some(&sup_token),
            reqwest::Method::GET,
            "/v1/me",
            None
        )
        .await
        .0,
        401
    );
    let (_, active) = h
        .call_as(&node, admin, reqwest::Method::GET, "/v1/tokens", None)
        .await;
    assert_eq!(active, json!([]));
    let (_, all) = h
        .call_as(
            &node,
            admin,
            reqwest::Method::GET,
            "/v1/tokens?all=true",
            None,
        )
        .await;
    let states: Vec<(bool, bool)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["active"].as_bool().unwrap(), t["revoked_at"].is_null()))
        .collect();
    assert_eq!(
        states,
        [(false, true), (false, false), (false, false)],
        "{all}"
    );
    // The configured admin token neither expires nor is listed.
    let (s, me) = h
        .call_as(&node, admin, reqwest::Method::GET, "/v1/me", None)
        .await;
    assert_eq!(
        (s, me["role"].as_str(), me["token_id"].is_null()),
        (200, Some("admin"), true)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_edits_an_agent_and_deactivation_signs_it_out_and_frees_its_tickets() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let ann = h
        .agent(&node, "ann@example.com", &["shipping"], 3, true)
        .await;
    let bob = h.agent(&node, "bob@example.com", &[], 3, false).await;
    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let annc = h.caller(&node, &ann_token);
    let sue_token = h.issue_token(&node, "supervisor", None, "sue").await;
    let sue = h.caller(&node, &sue_token);
    let path = format!("/v1/agents/{ann}");
    let (s, v) = h.get(&node, &path).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["deactivated_at"].is_null()),
        (Some(1), true),
        "{v}"
    );

    // Two tickets reach Ann.
    for i in 0..2 {
        let (s, v) = h
            .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": format!("c{i}@example.com")}, "text": "Wo ist mein Paket? 📦", "external_id": format!("life-{i}")}))
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let held = eventually("both tickets with ann", Duration::from_secs(60), || {
        let pool = pool.clone();
        let ann = ann.clone();
        async move {
            let held: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM tickets WHERE assigned_agent_id = $1::uuid ORDER BY id",
            )
            .bind(&ann)
            .fetch_all(&pool)
            .await
            .unwrap();
            (held.len() == 2).then_some(held)
        }
    })
    .await;
    let running = |pool: sqlx::PgPool, held: Vec<uuid::Uuid>| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sla_clocks WHERE ticket_id = ANY($1) AND stopped_at IS NULL",
        )
        .bind(held)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // The SLA stage starts each ticket's first-response and resolution clocks from the ticket's
    // events, a moment after the assignment: counted once all four run.
    eventually("the tickets' clocks", Duration::from_secs(60), || {
        let (pool, held) = (pool.clone(), held.clone());
        async move {
            let started: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT (ticket_id, metric)) FROM sla_clocks
                 WHERE ticket_id = ANY($1) AND metric IN ('first_response', 'resolution')",
            )
            .bind(&held)
            .fetch_one(&pool)
            .await
            .unwrap();
            (started == 4).then_some(())
        }
    })
    .await;
    let clocks = running(pool.clone(), held.clone()).await;

    // Edits: the admin's alone, every field checked, under the version read.
    let body = |version: i64, name: &str, email: &str, max: i32| {
        json!({"version": version, "name": name, "email": email, "skills": ["shipping", "Billing"],
               "skill_levels": {"billing": 4}, "languages": ["de", "en"], "max_concurrent": max})
    };
    let (s, _) = annc.put(&path, body(1, "Ann", "ann@example.com", 3)).await;
    assert_eq!(s, 403);
    let (s, _) = sue.put(&path, body(1, "Ann", "ann@example.com", 3)).await;
    assert_eq!(s, 403);
    let (s, v) = h.put(&node, &path, body(1, "", "ann@example.com", 3)).await;
    assert_refused(s, &v, 400, "name");
    let (s, v) = h
        .put(
            &node,
            &path,
            body(1, "Ann\u{0}\u{1b}[2J", "ann@example.com", 3),
        )
        .await;
    assert_refused(s, &v, 400, "name");
    let (s, v) = h
        .put(
            &node,
            &path,
            body(1, &"Å".repeat(300), "ann@example.com", 3),
        )
        .await;
    assert_refused(s, &v, 400, "name");
    let (s, v) = h.put(&node, &path, body(1, "Ann", "not an email", 3)).await;
    assert_refused(s, &v, 400, "email");
    let mut bad = body(1, "Ann", "ann@example.com", 3);
    bad["skill_levels"] = json!({"billing": 9});
    let (s, v) = h.put(&node, &path, bad).await;
    assert_refused(s, &v, 400, "skill_levels.billing");
    let mut unknown = body(1, "Ann", "ann@example.com", 3);
    unknown["role"] = json!("admin");
    let (s, _) = h.put(&node, &path, unknown).await;
    assert_eq!(s, 400);
    let deep = format!(
        "{{\"version\": 1, \"name\": \"Ann\", \"email\": \"ann@example.com\", \"max_concurrent\": 3, \"skills\": {}{}}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let r = reqwest::Client::new()
        .put(format!("{}{path}", node.base))
        .bearer_auth(&h.token)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (s, v) = h
        .put(&node, &path, body(1, "Ann", "bob@example.com", 3))
        .await;
    assert_refused(s, &v, 409, "email");
    let (s, v) = h
        .put(&node, &path, body(1, "Ann", "ann@example.com", 1))
        .await;
    assert_refused(s, &v, 409, "max_concurrent");
    let (s, v) = h
        .put(&node, &path, body(1, "Ann Åström 安", "ann@example.com", 4))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["name"], "Ann Åström 安");
    assert_eq!(v["skills"], json!(["shipping", "billing"]), "{v}");
    assert_eq!(v["skill_levels"]["billing"], 4, "{v}");
    assert_eq!(v["max_concurrent"], 4, "{v}");
    // A second edit from the same read is refused: it would undo the first unseen.
    let (s, v) = h
        .put(&node, &path, body(1, "Ann", "ann@example.com", 3))
        .await;
    assert_refused(s, &v, 409, "version");
    let (s, _) = h
        .put(
            &node,
            "/v1/agents/not-a-uuid",
            body(2, "Ann", "ann@example.com", 3),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = h
        .put(
            &node,
            &format!("/v1/agents/{}", uuid::Uuid::now_v7()),
            body(1, "X", "x@example.com", 3),
        )
        .await;
    assert_eq!(s, 404);

    // Deactivation: the admin's alone; the agent is offline for good, its token stops working,
    // its tickets go back to the queue with their clocks running, its history stays.
    let deactivate = format!("/v1/agents/{ann}/deactivate");
    let (s, _) = sue.post(&deactivate, json!({})).await;
    assert_eq!(s, 403);
    let (s, v) = h.post(&node, &deactivate, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tokens_revoked"], 1, "{v}");
    let mut released: Vec<String> = v["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    released.sort();
    let mut want: Vec<String> = held.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(released, want, "{v}");
    assert!(v["failed"].as_array().unwrap().is_empty(), "{v}");
    let (s, _) = annc.get("/v1/me").await;
    assert_eq!(s, 401);
    let queued = common::count(
        &pool,
        &format!(
            "SELECT count(*) FROM tickets WHERE assigned_agent_id IS NULL AND id IN ('{}', '{}')",
            held[0], held[1]
        ),
    )
    .await;
    assert_eq!(queued, 2);
    assert_eq!(running(pool.clone(), held.clone()).await, clocks);
    let history: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
        "SELECT ticket_id, release_reason FROM assignments WHERE agent_id = $1::uuid ORDER BY assigned_at",
    )
    .bind(&ann)
    .fetch_all(&pool)
    .await
    .unwrap();
    // Released by the deactivation, or by the router as the agent went offline (whichever
    // came first; the other found nothing to do).
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history.iter().all(|(_, r)| r
            .as_deref()
            .is_some_and(|r| r.contains("deactivated") || r.contains("went offline"))),
        "{history:?}"
    );
    let (status, active): (String, i32) =
        sqlx::query_as("SELECT status, active_count FROM agents WHERE id = $1::uuid")
            .bind(&ann)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), active), ("offline", 0));
    // Never online again, no new token, out of the directory, and nobody assigns it a ticket,
    // not even a supervisor overriding constraints.
    let (s, v) = h.agent_status(&node, &ann, "online").await;
    assert_refused(s, &v, 409, "status");
    let (s, v) = h
        .post(
            &node,
            "/v1/tokens",
            json!({"role": "agent", "agent_id": ann, "name": "again"}),
        )
        .await;
    assert_refused(s, &v, 409, "agent_id");
    let (s, v) = sue.get("/v1/agents?q=ann").await;
    assert_eq!(s, 200);
    assert!(v.as_array().unwrap().is_empty(), "{v}");
    let (s, v) = sue.get("/v1/agents?q=ann&deactivated=true").await;
    assert_eq!(s, 200);
    assert_eq!(strs(&v, "id"), [ann.as_str()], "{v}");
    assert!(v[0]["deactivated_at"].is_string(), "{v}");
    let (s, v) = h
        .caller(
            &node,
            &h.issue_token(&node, "agent", Some(&bob), "bob").await,
        )
        .get("/v1/agents?deactivated=true")
        .await;
    assert_refused(s, &v, 403, "deactivated");
    let (s, v) = sue
        .post(
            &format!("/v1/tickets/{}/assign", held[0]),
            json!({"agent_id": ann, "override": true, "reason": "she knows it"}),
        )
        .await;
    assert_refused(s, &v, 400, "agent_id");
    // Again: nothing left to do, and it says so.
    let (s, v) = h.post(&node, &deactivate, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["tokens_revoked"].as_i64(),
            v["released"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "{v}"
    );

    // Reactivated: offline until she says otherwise, with a new token.
    let (s, v) = h
        .post(&node, &format!("/v1/agents/{ann}/reactivate"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["deactivated_at"].is_null(), "{v}");
    assert_eq!(v["status"], "offline");
    // Every change to Ann is in the audit log, newest first, by whom and from where, with the
    // edit's before and after; admins alone read it, as JSON pages or CSV.
    let subject = format!("agent:{ann}");
    let (s, v) = h.get(&node, &format!("/v1/audit?subject={subject}")).await;
    assert_eq!(s, 200, "{v}");
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "agent.reactivated",
            "agent.deactivated",
            "agent.updated",
            "agent.created"
        ],
        "{v}"
    );
    let updated = &v["entries"][2];
    assert_eq!(
        (
            updated["before"]["name"].as_str(),
            updated["after"]["name"].as_str()
        ),
        (Some("ann@example.com"), Some("Ann Åström 安")),
        "{updated}"
    );
    assert_eq!(
        (updated["actor"].as_str(), updated["ip"].as_str()),
        (Some("admin"), Some("127.0.0.1"))
    );
    assert_eq!(v["entries"][1]["after"]["tokens_revoked"], 1);
    let (s, v) = sue.get("/v1/audit").await;
    assert_eq!(s, 403, "{v}");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=garbage", "cursor"),
        ("actor=a%00b", "actor"),
        ("format=xml", "format"),
    ] {
        let (s, v) = h.get(&node, &format!("/v1/audit?{query}")).await;
        assert_refused(s, &v, 400, field);
    }
    // Pages of two: the same four, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/audit?subject={subject}&limit=2"),
            Some(c) => format!("/v1/audit?subject={subject}&limit=2&cursor={c}"),
        };
        let (_, v) = h.get(&node, &path).await;
        seen.extend(strs(&v["entries"], "id").into_iter().map(str::to_string));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen.iter().collect::<std::collections::BTreeSet<_>>().len(),
        4
    );
    let r = h
        .fetch(
            &node,
            &format!("/v1/audit?subject={subject}&format=csv"),
            Some(&h.token),
        )
        .await;
    assert_eq!(header(&r, "content-type"), "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("at,actor,role,action,subject"),
        "{text}"
    );
    assert_eq!(lines.count(), 4, "{text}");
    let (_, v) = h.get(&node, "/v1/audit?action=token").await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.revoked" || e["action"] == "token.issued"),
        "{v}"
    );

    let token = h.issue_token(&node, "agent", Some(&ann), "ann again").await;
    let (s, v) = h
        .caller(&node, &token)
        .put(
            &format!("/v1/agents/{ann}/status"),
            json!({"status": "online"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_import_from_csv_reports_every_row_and_can_run_again() {
    let (h, node) = start(CORE, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let (s, v) = h.post(&node, "/v1/teams", json!({"name": "Returns"})).await;
    assert_eq!(s, 201, "{v}");
    let team = v["id"].as_str().unwrap().to_string();
    h.agent(&node, "old@example.com", &[], 2, false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agents.csv");
    let mut csv = String::from("Name,EMAIL,max_concurrent,skills,languages,shift,timezone,team\n");
    csv.push_str("Zoë Ångström,zoe@example.com,4,shipping:4; billing,en;de,09:00-17:00,Europe/Berlin,returns\n");
    csv.push_str("\"Ola, Nordmann\",ola@example.com,2,,,,,\n");
    csv.push_str("Old,OLD@example.com,2,,,,,\n");
    csv.push_str("Bad,not-an-email,2,,,,,\n");
    csv.push_str("Nobody,n@example.com,2,,,,,Moon base\n");
    csv.push_str("Short,row@example.com\n");
    csv.push_str("Bell\u{7},bell@example.com,2,,,,,\n");
    csv.push_str(&format!(
        "{},huge@example.com,2,,,,,\n",
        "x".repeat(100_000)
    ));
    csv.push_str("田中 花子,hanako@example.com,three,,,,,\n");
    let mut bytes = csv.into_bytes();
    bytes.extend_from_slice(b"Bytes\xff\xfe,bytes@example.com,2,,,,,\n");
    std::fs::write(&file, bytes).unwrap();
    let import = |dry: bool| {
        let (file, pg) = (file.clone(), h.pg_url.clone());
        let config = h.config.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
            cmd.current_dir(common::repo())
                .arg("--config")
                .arg(config)
                .args(["agents", "import"])
                .arg(&file)
                .env("SWITCHBOARD__SERVICES__POSTGRES__URL", pg);
            if dry {
                cmd.arg("--dry-run");
            }
            cmd.output().unwrap()
        })
    };
    let rows = |out: &std::process::Output| -> Vec<(String, String, String, String)> {
        let mut r = ::csv::Reader::from_reader(out.stdout.as_slice());
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                (
                    rec[1].to_string(),
                    rec[2].to_string(),
                    rec[3].to_string(),
                    rec[0].to_string(),
                )
            })
            .collect()
    };
    let agents = || async { common::count(&pool, "SELECT count(*) FROM agents").await };
    let before = agents().await;

    // A dry run checks every row and changes nothing.
    let out = import(true).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry = rows(&out);
    assert_eq!(agents().await, before);
    assert_eq!(dry.iter().filter(|r| r.1 == "valid").count(), 2, "{dry:?}");

    let out = import(false).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = rows(&out);
    let outcome = |email: &str| {
        report
            .iter()
            .find(|r| r.0 == email)
            .map(|r| (r.1.as_str(), r.2.as_str()))
            .unwrap_or_else(|| panic!("no row for {email}: {report:?}"))
    };
    assert_eq!(outcome("zoe@example.com").0, "created");
    assert_eq!(outcome("ola@example.com").0, "created");
    assert_eq!(outcome("OLD@example.com"), ("exists", "email"));
    assert_eq!(outcome("not-an-email"), ("refused", "email"));
    assert_eq!(outcome("n@example.com"), ("refused", "team"));
    assert_eq!(outcome("bell@example.com"), ("refused", "name"));
    assert_eq!(outcome("huge@example.com"), ("refused", "name"));
    assert_eq!(outcome("hanako@example.com"), ("refused", "max_concurrent"));
    assert_eq!(outcome("bytes@example.com"), ("refused", "name"));
    assert!(
        report.iter().any(|r| r.1 == "refused" && r.2 == "row"),
        "{report:?}"
    );
    assert_eq!(report.len(), 10, "{report:?}");
    // Line numbers point into the file (the header is line 1).
    assert!(
        report
            .iter()
            .any(|r| r.0 == "zoe@example.com" && r.3 == "2"),
        "{report:?}"
    );
    assert_eq!(agents().await, before + 2);
    let (_, v) = h
        .get(&node, "/v1/audit?actor=cli&action=agent.created")
        .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let (name, skills, languages, start, level): (String, Vec<String>, Vec<String>, Option<chrono::NaiveTime>, serde_json::Value) =
        sqlx::query_as("SELECT name, skills, languages, shift_start, skill_levels FROM agents WHERE email = 'zoe@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(name, "Zoë Ångström");
    assert_eq!(skills, ["shipping", "billing"]);
    assert_eq!(languages, ["en", "de"]);
    assert_eq!(start, chrono::NaiveTime::from_hms_opt(9, 0, 0));
    assert_eq!(level["shipping"], 4);
    let in_team = common::count(
        &pool,
        &format!("SELECT count(*) FROM team_members m JOIN agents a ON a.id = m.agent_id WHERE m.team_id = '{team}' AND a.email = 'zoe@example.com'"),
    )
    .await;
    assert_eq!(in_team, 1);

    // Again: everything that was created exists; nothing is created twice.
    let out = import(false).await.unwrap();
    let again = rows(&out);
    assert_eq!(agents().await, before + 2);
    assert_eq!(
        again.iter().filter(|r| r.1 == "exists").count(),
        3,
        "{again:?}"
    );
    // A file with a column nobody knows is refused whole.
    std::fs::write(
        &file,
        "name,email,max_concurrent,password\nA,a@example.com,2,hunter2\n",
    )
    .unwrap();
    let out = import(false).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown column \"password\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(agents().await, before + 2);
}
