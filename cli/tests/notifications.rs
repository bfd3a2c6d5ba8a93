//! Notifications that reach people, over real services: email through a real SMTP relay
//! (aiosmtpd, as the email test uses), SMS through a stand-in for the provider's API (a third
//! party's SaaS). Per-person preferences checked on save; "tell the on-call lead by SMS when a
//! VIP breaches" end to end; many notifications at once become one digest; quiet hours hold
//! mail until they end; an SLA escalation's `notify_supervisor` reaches the supervisor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, free_port, ticket_by_external_id, Harness, CORE};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The relay (aiosmtpd writing what it takes to a Maildir), killed on drop.
struct Relay {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn relay(name: &str) -> Relay {
    let dir = std::env::temp_dir().join(format!("{name}-relay"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let child = Command::new("/usr/bin/python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(dir.join("sent"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
        .spawn()
        .expect("python3-aiosmtpd: scripts/setup.sh installs it");
    eventually("the relay", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    Relay { child, port, dir }
}

/// Every message the relay took, as text.
fn mails(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join("sent").join(sub)) {
            for e in rd.flatten() {
                out.push(String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned());
            }
        }
    }
    out
}

fn to(mails: &[String], addr: &str) -> Vec<String> {
    mails
        .iter()
        .filter(|m| m.lines().any(|l| l.starts_with("To:") && l.contains(addr)))
        .cloned()
        .collect()
}

type Texts = Arc<Mutex<Vec<String>>>;

/// The SMS provider's API (Twilio-compatible), recording each form body.
async fn sms_provider() -> (String, Texts) {
    let seen: Texts = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        axum::routing::post(move |body: String| {
            let s = s.clone();
            async move {
                let mut seen = s.lock().unwrap();
                seen.push(body);
                axum::Json(json!({"sid": format!("SM{}", seen.len())}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn form_value(body: &str, key: &str) -> String {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn people_are_told_by_email_and_sms_as_they_choose() {
    let mut h = Harness::new().await;
    // A VIP's first response is due in 2 s: breaches come quickly.
    h.edit_config(&[(
        "{ name: vip, tiers: [vip], calendar: 24x7, first_response: 15m,",
        "{ name: vip, tiers: [vip], calendar: 24x7, first_response: 2s,",
    )]);
    let mail = relay(&h.name).await;
    let (provider, texts) = sms_provider().await;
    let relay_port = mail.port.to_string();
    let node = h
        .spawn(
            CORE,
            &[
                ("SWITCHBOARD__MODELS__ENABLED", "false"),
                ("SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__HOST", "127.0.0.1"),
                ("SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__PORT", &relay_port),
                ("SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__SECURITY", "none"),
                (
                    "SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__FROM",
                    "Desk <desk@example.com>",
                ),
                ("SWITCHBOARD__CHANNELS__SMS__API_BASE_URL", &provider),
                ("SWITCHBOARD__CHANNELS__SMS__ACCOUNT_SID", "AC1"),
                ("SWITCHBOARD__CHANNELS__SMS__FROM_NUMBER", "+15550100000"),
                ("SWITCHBOARD__NOTIFICATIONS__DIGEST_WINDOW_MS", "4000"),
                ("SWITCHBOARD__NOTIFICATIONS__POLL_MS", "100"),
            ],
        )
        .await;
    let pool = h.pg().await;
    // Nobody online: tickets wait, no assignment races the rules.
    let lead = h.agent(&node, "lead@example.com", &[], 5, false).await;
    let sam = h.agent(&node, "sam@example.com", &[], 5, false).await;
    let night = h.agent(&node, "night@example.com", &[], 5, false).await;
    let boss = h
        .agent_with(
            &node,
            json!({"name": "Boss", "email": "boss@example.com", "skills": [], "languages": ["en"],
                   "max_concurrent": 5, "level": "supervisor"}),
            false,
        )
        .await;
    let sam_token = h.issue_token(&node, "agent", Some(&sam), "sam").await;
    let sam_c = h.caller(&node, &sam_token);

    // Preferences: the defaults until set; each bad field named; an agent sets only its own.
    let (s, v) = sam_c.get(&format!("/v1/agents/{sam}/notifications")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["email"], true);
    assert_eq!(v["sms"], false);
    let (s, v) = sam_c
        .put(
            &format!("/v1/agents/{lead}/notifications"),
            json!({"email": false, "sms": false, "topics": []}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let base = json!({"email": true, "sms": true, "phone": "+4915112345678", "topics": ["rule"]});
    let with = |k: &str, val: Value| {
        let mut b = base.clone();
        b[k] = val;
        b
    };
    for (body, field) in [
        (with("phone", json!("12345")), "phone"),
        (with("phone", json!("+49 151\u{0}")), "phone"),
        (with("phone", Value::Null), "phone"),
        (with("topics", json!(["rule", "gossip"])), "topics[1]"),
        (
            with(
                "quiet_hours",
                json!({"start": "22:00", "end": "7", "timezone": "UTC"}),
            ),
            "quiet_hours.end",
        ),
        (
            with(
                "quiet_hours",
                json!({"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}),
            ),
            "quiet_hours.timezone",
        ),
        (with("pager", json!(true)), "pager"),
    ] {
        let (s, v) = sam_c
            .put(&format!("/v1/agents/{sam}/notifications"), body.clone())
            .await;
        assert_refused(s, &v, 400, field);
    }
    // The on-call lead: rules by SMS only. The night owl: mail held by quiet hours that cover
    // now (UTC, so the test runs any time of day).
    let now = chrono::Utc::now();
    let hhmm = |d: chrono::DateTime<chrono::Utc>| d.format("%H:%M").to_string();
    for (who, prefs) in [
        (
            &lead,
            json!({"email": false, "sms": true, "phone": "+4915112345678", "topics": ["rule"]}),
        ),
        (
            &night,
            json!({"email": true, "sms": false, "topics": ["rule"],
                        "quiet_hours": {"start": hhmm(now - chrono::Duration::hours(1)),
                                        "end": hhmm(now + chrono::Duration::hours(2)), "timezone": "UTC"}}),
        ),
    ] {
        let (s, v) = h
            .put(&node, &format!("/v1/agents/{who}/notifications"), prefs)
            .await;
        assert_eq!(s, 200, "{v}");
    }

    // "Tell the on-call lead by SMS when a VIP breaches"; and urgent tickets to Sam and the
    // night owl by email.
    for r in [
        json!({"name": "VIP breach to the lead", "kind": "trigger", "on": ["sla_breached"], "enabled": true,
               "conditions": {"all": [{"field": "tier", "op": "is", "value": "vip"}]},
               "actions": [{"type": "notify", "to": [format!("agent:{lead}")], "via": ["sms"],
                            "text": "VIP {{ticket.number}} breached"}]}),
        json!({"name": "urgent to Sam", "kind": "trigger", "on": ["created"], "enabled": true,
               "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "urgent"}]},
               "actions": [{"type": "notify", "to": [format!("agent:{sam}"), format!("agent:{night}")],
                            "via": ["email"], "text": "Urgent: {{ticket.number}} — “{{customer.name}}”"}]}),
    ] {
        h.created(&node, "/v1/rules", r).await;
    }
    let (s, v) = h
        .post(&node, "/v1/rules", json!({"name": "x", "kind": "trigger", "on": ["created"],
               "actions": [{"type": "notify", "to": ["assignee"], "via": ["pigeon"], "text": "hi"}]}))
        .await;
    assert_refused(s, &v, 400, "actions[0].via[0]");

    let send = |ext: String, text: &'static str, ctx: Value| {
        let (h, node) = (&h, &node);
        async move {
            let (s, v) = h
                .post(
                    node,
                    "/v1/messages",
                    json!({"channel": "api", "customer": {"email": format!("{ext}@example.com")},
                       "text": text, "external_id": ext, "customer_context": ctx}),
                )
                .await;
            assert_eq!(s, 202, "{v}");
        }
    };
    for i in 0..5 {
        send(
            format!("urgent-{i}"),
            "This is urgent \u{1b}[31m!",
            json!({}),
        )
        .await;
    }
    for i in 0..3 {
        send(
            format!("vip-{i}"),
            "Hello from a VIP",
            json!({"tier": "vip"}),
        )
        .await;
    }

    // Five urgent tickets at once: Sam gets one digest, not five mails.
    let sam_mail = eventually("Sam's mail", Duration::from_secs(60), || async {
        let sent: i64 = common::count(
            &pool,
            &format!(
                "SELECT count(*) FROM notifications WHERE agent_id = '{sam}' AND state = 'sent'"
            ),
        )
        .await;
        (sent == 5).then(|| to(&mails(&mail.dir), "sam@example.com"))
    })
    .await;
    let (s, history) = sam_c
        .get(&format!("/v1/agents/{sam}/notifications/history"))
        .await;
    assert_eq!(s, 200, "{history}");
    let messages: std::collections::BTreeSet<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(sam_mail.len(), messages.len(), "{sam_mail:?}");
    assert!(messages.len() <= 2, "a digest, not a flood: {history}");
    let digest = sam_mail
        .iter()
        .find(|m| m.contains("notifications from Switchboard"))
        .expect("a digest");
    assert!(
        digest.contains("Auto-Submitted: auto-generated"),
        "{digest}"
    );
    assert!(!digest.contains('\u{1b}'));
    assert!(digest.contains("Urgent: T-"), "{digest}");

    // The night owl's mail waits for the end of its quiet hours.
    let held: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT state, due_at FROM notifications WHERE agent_id = $1::uuid")
            .bind(&night)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(held.len(), 5);
    assert!(
        held.iter()
            .all(|(s, due)| s == "pending" && *due > now + chrono::Duration::minutes(100)),
        "{held:?}"
    );
    assert!(to(&mails(&mail.dir), "night@example.com").is_empty());

    // The VIP breaches: the lead is texted (and not mailed), once per ticket or in a digest.
    let texted = eventually("the lead's SMS", Duration::from_secs(60), || async {
        let sent: i64 = common::count(
            &pool,
            &format!("SELECT count(*) FROM notifications WHERE agent_id = '{lead}' AND channel = 'sms' AND state = 'sent'"),
        )
        .await;
        (sent == 3).then(|| texts.lock().unwrap().clone())
    })
    .await;
    assert!(!texted.is_empty());
    for t in &texted {
        assert_eq!(form_value(t, "To"), "+4915112345678");
        assert_eq!(form_value(t, "From"), "+15550100000");
        assert!(form_value(t, "Body").contains("VIP T-"), "{t}");
    }
    assert!(to(&mails(&mail.dir), "lead@example.com").is_empty());

    // notify_supervisor on each breach reaches the desk's supervisor (no team here): the three
    // VIP breaches in one digest or few mails, each escalation listed.
    let boss_mail = eventually("the supervisor's mail", Duration::from_secs(60), || async {
        let sent: i64 = common::count(
            &pool,
            &format!("SELECT count(*) FROM notifications WHERE agent_id = '{boss}' AND topic = 'sla' AND state = 'sent'"),
        )
        .await;
        (sent >= 3).then(|| to(&mails(&mail.dir), "boss@example.com"))
    })
    .await;
    let all = boss_mail.join("\n");
    for i in 0..3 {
        let t = ticket_by_external_id(&pool, &format!("vip-{i}")).await;
        let number: String = sqlx::query_scalar("SELECT number FROM tickets WHERE id = $1")
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            all.contains(&format!("{number} escalated")),
            "{number} in {all}"
        );
    }
    assert!(boss_mail.len() < 3 + 3, "digests: {}", boss_mail.len());
}
