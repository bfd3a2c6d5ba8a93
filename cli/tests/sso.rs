//! Single sign-on against a real OpenID Provider: `oidc-provider` (npm, certified) started on a
//! loopback port by this test (`cli/tests/idp/idp.mjs`), driven through headless Chromium by
//! `console/tests/sso.cjs` (sign-in with the mapped role, provisioning, refusals of an unmapped
//! person, a tampered token and a wrong nonce, key rotation, CSRF, sign-out at the IdP, a
//! revoked session's stream, a group removed at the IdP). Then the sessions themselves over
//! plain HTTP: idle and absolute expiry, deactivation, expiry ending an open stream, hostile
//! cookies, the callback's refusals, and what the audit log and `GET /v1/sessions` say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{free_port, node_modules, repo, Harness, Node, Sse, CORE};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The IdP process, killed when dropped.
struct Idp(Child);

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SECRET: &str = "idp-test-client-secret-0123456789";

fn start_idp(port: u16, base: &str) -> Idp {
    let mut child = Command::new("node")
        .arg(repo().join("cli/tests/idp/idp.mjs"))
        .env("TOOLS", node_modules())
        .env("IDP_PORT", port.to_string())
        .env("CLIENT_ID", "switchboard")
        .env("CLIENT_SECRET", SECRET)
        .env("REDIRECT_URI", format!("{base}/auth/sso/callback"))
        .env("POST_LOGOUT_URI", format!("{base}/console/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("ready "),
        "the IdP did not start: {line:?}"
    );
    Idp(child)
}

/// A request to `node` with `cookie` as the session (and `csrf` when given).
async fn with_session(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", node.base))
        .header("cookie", format!("sb_session={cookie}"));
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A session for `agent` written straight into the store (secret `secret`, CSRF `csrf`): the
/// sessions' own rules tested without a browser.
async fn insert_session(
    pool: &sqlx::PgPool,
    agent: uuid::Uuid,
    secret: &str,
    csrf: &str,
) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sessions (id, secret_sha256, csrf_sha256, agent_id, role, issuer, subject, created_at, last_seen_at,
                               idle_secs, expires_at, refreshed_at)
         VALUES ($1, sha256(convert_to($2, 'UTF8')), sha256(convert_to($3, 'UTF8')), $4, 'supervisor', 'test', 'sue',
                 now(), now(), 3600, now() + interval '1 hour', now())",
    )
    .bind(id)
    .bind(secret)
    .bind(csrf)
    .bind(agent)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_at_a_real_identity_provider_and_their_sessions_end_as_they_should() {
    let axe = repo().join("console/node_modules/axe-core/axe.min.js");
    assert!(
        node_modules().join("playwright-core").exists()
            && node_modules().join("oidc-provider").exists()
            && axe.exists()
            && repo().join("console/dist/index.html").exists(),
        "playwright-core, oidc-provider, axe-core or the console build missing: run scripts/setup.sh"
    );
    let mut h = Harness::new().await;
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let issuer_line = format!("  issuer: {issuer}");
    h.edit_config(&[
        (
            "  issuer: \"\"                     # e.g. https://login.example.com/realms/support",
            &issuer_line,
        ),
        ("  client_id: \"\"\n", "  client_id: switchboard\n"),
        ("  scopes: [email, profile]  ", "  scopes: [email, profile, groups]  "),
        ("  refresh_secs: 300  ", "  refresh_secs: 2  "),
        (
            "  mappings: []\n",
            "  mappings:\n    - {group: support, role: agent, team: Tier 1, skills: [returns], languages: [en], max_concurrent: 4}\n    - {group: support-leads, role: supervisor}\n    - {group: it, role: admin}\n",
        ),
    ]);
    let node = h
        .spawn(
            CORE,
            &[
                ("SWITCHBOARD__MODELS__ENABLED", "false"),
                ("SWITCHBOARD__SSO__CLIENT_SECRET", SECRET),
            ],
        )
        .await;
    let _idp = start_idp(idp_port, &node.base);
    let pool = h.pg().await;

    // The console learns single sign-on is on.
    let (s, cfg) = h.get(&node, "/auth/config").await;
    assert_eq!((s, cfg["sso"].as_bool()), (200, Some(true)), "{cfg}");
    // Sue exists already: her verified email links her; Ann is provisioned into Tier 1.
    let team = h
        .created(&node, "/v1/teams", json!({"name": "Tier 1"}))
        .await;
    let sue_agent = h.agent(&node, "sue@idp.example.com", &[], 5, false).await;

    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("browser-artifacts/sso");
    std::fs::create_dir_all(&dir).unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, dir) = (node.base.clone(), dir.clone());
        let idp = issuer.clone();
        move || {
            Command::new("node")
                .arg(repo().join("console/tests/sso.cjs"))
                .env("NODE_PATH", node_modules())
                .env("BASE", base)
                .env("IDP", idp)
                .env("AXE", axe)
                .env("ARTIFACTS", &dir)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "sso browser test failed (screenshots in {}):\n{log}\n{}",
        dir.display(),
        node.log_tail()
    );
    let cookie = |who: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("SESSION {who} ")))
            .unwrap()
            .trim()
            .to_string()
    };

    // Ann was provisioned from the mapping; Sue was linked, not duplicated.
    let (ann, skills, max): (uuid::Uuid, Vec<String>, i32) = sqlx::query_as(
        "SELECT id, skills, max_concurrent FROM agents WHERE email = 'ann@idp.example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((skills, max), (vec!["returns".to_string()], 4));
    let in_team: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM team_members WHERE agent_id = $1 AND team_id = $2::uuid",
    )
    .bind(ann)
    .bind(team["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_team, 1);
    let linked: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "SELECT subject, agent_id FROM agent_identities WHERE issuer = $1 ORDER BY subject",
    )
    .bind(&issuer)
    .fetch_all(&pool)
    .await
    .unwrap();
    let ivy: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM agents WHERE email = 'ivy@idp.example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        linked,
        vec![
            ("ann".to_string(), ann),
            ("ivy".to_string(), ivy),
            ("sue".to_string(), sue_agent.parse().unwrap())
        ],
        "mal (no role) and the tampered sign-ins left no identity"
    );
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(agents, 3);

    // What the browser did, as the audit log and the sessions list have it.
    let audit: Vec<(String, String, Option<Value>)> =
        sqlx::query_as("SELECT action, actor, after FROM audit_log ORDER BY at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let refusals: Vec<&str> = audit
        .iter()
        .filter(|(a, _, _)| a == "sso.refused")
        .filter_map(|(_, _, after)| after.as_ref()?["reason"].as_str())
        .collect();
    assert_eq!(
        refusals,
        vec!["no_role", "invalid_token", "invalid_token"],
        "{audit:?}"
    );
    assert!(audit
        .iter()
        .any(|(a, actor, _)| a == "agent.created" && actor == "sso:ann"));
    assert_eq!(
        audit
            .iter()
            .filter(|(a, _, _)| a == "session.created")
            .count(),
        4,
        "ann, sue, ivy, and sue again after the key rotation: {audit:?}"
    );
    let (s, sessions) = h.get(&node, "/v1/sessions?all=true").await;
    assert_eq!(s, 200, "{sessions}");
    let reasons: std::collections::BTreeSet<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["revoked_reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["no_role", "revoked", "signed_out"].into_iter().collect(),
        "{sessions}"
    );
    // The IdP's group change was a role change, audited.
    let changed = audit
        .iter()
        .find(|(a, _, _)| a == "session.role_changed")
        .and_then(|(_, _, after)| after.clone())
        .expect("sue's role change");
    assert_eq!(changed["role"], "agent");
    // Ivy signed Sue's session out from the sessions screen, as herself.
    assert!(
        audit
            .iter()
            .any(|(a, actor, _)| a == "session.revoked" && actor == &format!("agent:{ivy}")),
        "{audit:?}"
    );
    // The browser's own sessions are over.
    for who in ["ann", "sue"] {
        let (s, _) = with_session(&node, reqwest::Method::GET, "/v1/me", &cookie(who), None).await;
        assert_eq!(s, 401, "{who}'s session outlived its end");
    }

    // The sessions' own rules, with sessions written into the store.
    let sue: uuid::Uuid = sue_agent.parse().unwrap();
    let live = insert_session(&pool, sue, "live-secret", "live-csrf").await;
    let (s, me) = with_session(&node, reqwest::Method::GET, "/v1/me", "live-secret", None).await;
    assert_eq!(
        (s, me["session_id"].as_str()),
        (200, Some(live.to_string().as_str())),
        "{me}"
    );
    assert_eq!(me["role"], "supervisor");
    let status = format!("/v1/agents/{sue}/status");
    for (csrf, want) in [(None, 403), (Some("wrong"), 403), (Some("live-csrf"), 200)] {
        let req = reqwest::Client::new()
            .put(format!("{}{status}", node.base))
            .header("cookie", "sb_session=live-secret")
            .json(&json!({"status": "away"}));
        let req = match csrf {
            Some(c) => req.header("x-csrf-token", c),
            None => req,
        };
        assert_eq!(
            req.send().await.unwrap().status().as_u16(),
            want,
            "csrf {csrf:?}"
        );
    }
    // A bearer token wins over a cookie.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/me", node.base))
        .bearer_auth(&h.token)
        .header("cookie", "sb_session=live-secret")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["role"].as_str(), v["session_id"].as_str()),
        (Some("admin"), None)
    );
    // The agent sees its own sessions, marked current; not someone else's to revoke.
    let (s, mine) = with_session(
        &node,
        reqwest::Method::GET,
        "/v1/sessions",
        "live-secret",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["current"], true);
    let ann_session: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM sessions WHERE agent_id = $1 LIMIT 1")
            .bind(ann)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE sessions SET role = 'agent' WHERE id = $1")
        .bind(live)
        .execute(&pool)
        .await
        .unwrap();
    let (s, v) = with_session(
        &node,
        reqwest::Method::DELETE,
        &format!("/v1/sessions/{ann_session}"),
        "live-secret",
        Some("live-csrf"),
    )
    .await;
    assert_eq!(s, 403, "{v}");

    // Used after a while: seen again (idle expiry counts from there).
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '2 minutes' WHERE id = $1")
        .bind(live)
        .execute(&pool)
        .await
        .unwrap();
    with_session(&node, reqwest::Method::GET, "/v1/me", "live-secret", None).await;
    let seen_ago: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - last_seen_at)::float8 FROM sessions WHERE id = $1",
    )
    .bind(live)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(seen_ago < 30.0, "last seen {seen_ago} s ago");
    // Idle past its idle time: over.
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '61 minutes' WHERE id = $1")
        .bind(live)
        .execute(&pool)
        .await
        .unwrap();
    let (s, _) = with_session(&node, reqwest::Method::GET, "/v1/me", "live-secret", None).await;
    assert_eq!(s, 401, "an idle session is over");

    // Past its absolute expiry: over, and its open stream ends.
    let old = insert_session(&pool, sue, "old-secret", "old-csrf").await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/agents/{sue}/stream", node.base))
        .header("cookie", "sb_session=old-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = Sse::new(resp);
    assert_eq!(stream.next(10).await.0, "snapshot");
    sqlx::query("UPDATE sessions SET expires_at = now() WHERE id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), stream.drain())
        .await
        .expect("the expired session's stream ends");
    let (s, _) = with_session(&node, reqwest::Method::GET, "/v1/me", "old-secret", None).await;
    assert_eq!(s, 401);

    // Deactivation signs every session out.
    let last = insert_session(&pool, sue, "last-secret", "last-csrf").await;
    let (s, v) = h
        .post(&node, &format!("/v1/agents/{sue}/deactivate"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = with_session(&node, reqwest::Method::GET, "/v1/me", "last-secret", None).await;
    assert_eq!(s, 401);
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE id = $1")
            .bind(last)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("deactivated"));

    // Hostile cookies are refused, never a 500.
    let huge = format!("sb_session={}", "\u{e9}".repeat(3000));
    let flood = "a=b; ".repeat(2000) + "sb_session=nope";
    for raw in [
        "sb_session=",
        "sb_session=\"\"; sb_session=x",
        "sb_session=a\tb",
        flood.as_str(),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/me", node.base))
            .header("cookie", raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{raw:.60}");
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/me", node.base))
        .header("cookie", huge.as_bytes())
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 431), "{}", r.status());

    // The callback refuses what the IdP did not send, and sends nobody off-site.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let long_code = "c".repeat(10_000);
    for (query, reason) in [
        ("code=x&state=never-issued".to_string(), "unknown_state"),
        (
            "error=access_denied&error_description=%00%0a".to_string(),
            "idp_refused",
        ),
        ("state=only".to_string(), "bad_callback"),
        (format!("code={long_code}&state=s"), "bad_callback"),
        (
            "code=x&state=s&iss=http://evil.example".to_string(),
            "bad_callback",
        ),
    ] {
        let r = raw
            .get(format!("{}/auth/sso/callback?{query}", node.base))
            .send()
            .await
            .unwrap();
        let to = r.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(to, format!("/console/?sso_error={reason}"), "{query:.80}");
    }
    let r = raw
        .get(format!(
            "{}/auth/sso/login?return_to=//evil.example/x",
            node.base
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&issuer));
    let kept: String =
        sqlx::query_scalar("SELECT return_to FROM sso_logins ORDER BY created_at DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kept, "/console/");
    // The callback is the starting browser's alone: its state without the binder cookie (an
    // attacker's callback opened in someone else's browser) signs nobody in; with it, the code is
    // exchanged (and this made-up one refused by the IdP).
    let binder = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("sb_sso="))
        .and_then(|c| c.split(';').next())
        .expect("a binder cookie")
        .to_string();
    let location = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let r = raw
        .get(format!(
            "{}/auth/sso/callback?code=x&state={state}",
            node.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/console/?sso_error=unknown_state");
    let r = raw
        .get(format!("{}/auth/sso/login", node.base))
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("sb_sso="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    assert_ne!(cookie, binder);
    let location = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let state = location
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let r = raw
        .get(format!(
            "{}/auth/sso/callback?code=x&state={state}",
            node.base
        ))
        .header("cookie", format!("sb_sso={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/console/?sso_error=idp_refused");
    // Logging out needs a live session and its CSRF token.
    let r = raw
        .post(format!("{}/auth/logout", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
