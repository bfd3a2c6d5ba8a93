//! Hostile input at every front door, against real services (issue 13, class 2: accepted, then
//! lost). A message a front door acknowledges must become a ticket message: NUL (which a
//! Postgres `text` cannot hold) and other control characters are removed at the door, before
//! the acknowledgment, over the API, SMTP, chat, SMS, Meta and voice alike; what cannot be
//! made storable (a lone surrogate, an out-of-range number, text that is nothing but control
//! characters) is refused with a 400 naming the field, never acknowledged and then dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, form_body, start, Harness, ALL};

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SMS_URL: &str = "https://support.example.com/webhooks/sms";
const DOMAIN: &str = "support.example.com";
/// What every hostile text carries: NUL, BEL, ESC (a terminal escape), DEL, a C1 control, and
/// the characters that must survive (CJK, an emoji, a combining mark, a tab, line breaks).
const HOSTILE: &str =
    "nul\u{0} bel\u{7} esc\u{1b}[2J del\u{7f} c1\u{85} 注文 😀 e\u{301}\ttab\r\nline";
const CLEAN: &str = "nul bel esc[2J del c1 注文 😀 e\u{301}\ttab\r\nline";

async fn post_raw(
    h: &Harness,
    url: String,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut r = h.http.post(url).body(body);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// POSTs the JSON `body` to the webhook at `path`, signed with `secret` in the `header` the
/// provider uses (voice and Meta sign alike).
async fn post_signed(
    h: &Harness,
    node: &common::Node,
    path: &str,
    header: &str,
    secret: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let headers = [
        ("content-type", "application/json".to_string()),
        (header, switchboard_ingest::voice::sign(secret, &body)),
    ];
    post_raw(h, format!("{}{path}", node.base), &headers, body).await
}

/// The inbound text stored for `channel`, once there is one.
async fn stored(pool: &sqlx::PgPool, channel: &'static str) -> String {
    eventually(
        &format!("the {channel} message in postgres"),
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, String>(
                    "SELECT text FROM messages WHERE channel = $1 AND direction = 'inbound'",
                )
                .bind(channel)
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_and_control_characters_through_every_front_door_become_ticket_messages() {
    let (h, node) = start(
        ALL,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-1"),
            ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", SMS_URL),
            ("SWITCHBOARD__CHANNELS__VOICE__SECRET", "voice-1"),
            ("SWITCHBOARD__CHANNELS__META__APP_SECRET", "app-1"),
            ("SWITCHBOARD__CHANNELS__META__VERIFY_TOKEN", "v-1"),
            ("SWITCHBOARD__CHANNELS__EMAIL__DOMAIN", DOMAIN),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
                &format!("help@{DOMAIN}"),
            ),
        ],
    )
    .await;

    // API: the hostile text is accepted, and so are a hostile subject and name.
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "api@example.com", "name": "Ann\u{0}\u{1b}"},
                   "subject": "Hi\u{0}\r\nBcc: x@evil.example", "text": HOSTILE, "external_id": "hostile\u{0}1"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    // Refused before the ack, naming the field: nothing left once controls are gone, a lone
    // surrogate, an order value no store holds.
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "api@example.com"}, "text": "\u{0}\u{1}\u{7}"}),
        )
        .await;
    assert_refused(s, &v, 400, "text");
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "api@example.com"}, "text": "big",
                   "customer_context": {"order_value": 1e300}}),
        )
        .await;
    assert_refused(s, &v, 400, "customer_context.order_value");
    let (s, body) = post_raw(
        &h,
        format!("{}/v1/messages", node.base),
        &[
            ("content-type", "application/json".into()),
            ("authorization", format!("Bearer {}", h.token)),
        ],
        br#"{"channel": "api", "customer": {"email": "api@example.com"}, "text": "lone \ud800 surrogate"}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 400, "{body}");

    // SMS (signed by the provider).
    let (form, body) = form_body(&[
        ("MessageSid", "SMhostile"),
        ("From", "+15550100077"),
        ("Body", HOSTILE),
    ]);
    let (s, b) = post_raw(
        &h,
        format!("{}/webhooks/sms", node.base),
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            (
                "x-twilio-signature",
                switchboard_ingest::sms::sign("tok-1", SMS_URL, &form),
            ),
        ],
        body.into_bytes(),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Voice (a signed transcript, with a start time no store holds).
    let call = serde_json::to_vec(&json!({
        "call_id": "CA\u{0}hostile", "from": "+15550100078", "started_at": "1900-01-01T00:00:00Z",
        "turns": [{"speaker": "customer", "text": HOSTILE}, {"speaker": "ivr", "text": "\u{0}\u{7}"}]
    }))
    .unwrap();
    let (s, b) = post_signed(
        &h,
        &node,
        "/webhooks/voice",
        "x-signature-256",
        "voice-1",
        call,
    )
    .await;
    assert_eq!(s, 202, "{b}");

    // Meta (a signed WhatsApp notification, the sender's profile name hostile too).
    let note = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"phone_number_id": "PN1"},
        "contacts": [{"profile": {"name": "Kerry\u{0}"}, "wa_id": "15550100079"}],
        "messages": [{"from": "15550100079", "id": "wamid.hostile", "timestamp": "99999999999", "type": "text", "text": {"body": HOSTILE}}]
    }}]}]}))
    .unwrap();
    let (s, b) = post_signed(
        &h,
        &node,
        "/webhooks/meta",
        "x-hub-signature-256",
        "app-1",
        note,
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Chat: a conversation, then a frame with the hostile text.
    let (s, session) = h
        .open_chat(&node, json!({"email": "chat@example.com", "name": "Cara"}))
        .await;
    assert_eq!(s, 201, "{session}");
    let token = session["token"].as_str().unwrap();
    let url = format!(
        "{}/chat/ws?token={token}&last_seq=0",
        node.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Nothing but controls is not a message.
    ws.send(WsMessage::Text(
        json!({"type": "message", "client_id": "c0", "text": "\u{0}\u{7}"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(WsMessage::Text(
        json!({"type": "message", "client_id": "c1", "text": HOSTILE})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let WsMessage::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["client_id"].is_string() {
                frames.push(v);
            }
        }
    }
    let by = |id: &str| {
        frames
            .iter()
            .find(|f| f["client_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by("c0")["type"], "error", "{frames:?}");
    assert_eq!(by("c1")["type"], "ack", "{frames:?}");

    // SMTP: the subject, the sender's name, the body and an attachment's name all hostile.
    let raw = format!(
        "From: =?UTF-8?B?{}?= <mail@example.com>\r\nTo: help@{DOMAIN}\r\nSubject: =?UTF-8?B?{}?=\r\n\
         Message-ID: <hostile-1@mail.example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b\r\n\
         Content-Type: text/plain; name=\"a.txt\"\r\nContent-Disposition: attachment; filename*=utf-8''a%00%07.txt\r\n\r\nattached\r\n--b--\r\n",
        b64("Mai\u{0}l Person"),
        b64("Subject\u{0} \u{1b}[31mred"),
        b64(HOSTILE),
    );
    let envelope = lettre::address::Envelope::new(
        Some("mail@example.com".parse().unwrap()),
        vec![format!("help@{DOMAIN}").parse().unwrap()],
    )
    .unwrap();
    let (host, port) = node.smtp.rsplit_once(':').unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port.parse().unwrap())
        .build()
        .send_raw(&envelope, raw.as_bytes())
        .await
        .expect("250");

    // Every one of them is a ticket message, with the controls gone and the rest intact.
    let pool = h.pg().await;
    for channel in ["api", "sms", "social", "chat"] {
        let text = stored(&pool, channel).await;
        assert_eq!(text, CLEAN, "{channel}");
    }
    // Mail bodies are read line by line (CRLF becomes LF).
    assert_eq!(stored(&pool, "email").await, CLEAN.replace("\r\n", "\n"));
    let voice = stored(&pool, "voice").await;
    assert_eq!(voice, format!("Customer: {}", CLEAN.trim()), "voice");
    // The single-line fields: controls became spaces, NUL went.
    let subject: String = sqlx::query_scalar("SELECT subject FROM tickets WHERE channel = 'api'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(subject, "Hi  Bcc: x@evil.example");
    let subject: String = sqlx::query_scalar("SELECT subject FROM tickets WHERE channel = 'email'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(subject, "Subject  [31mred");
    // Times the stores cannot hold became the time of intake.
    let (min, max): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT min(received_at), max(received_at) FROM messages")
            .fetch_one(&pool)
            .await
            .unwrap();
    let now = chrono::Utc::now();
    assert!(min > now - chrono::Duration::hours(1), "{min}");
    assert!(max < now + chrono::Duration::hours(1), "{max}");
    let inbound = count(
        &pool,
        "SELECT count(*) FROM messages WHERE direction = 'inbound'",
    )
    .await;
    assert_eq!(
        inbound, 6,
        "one message per front door, nothing from the refused ones"
    );
    // ClickHouse took every one of them too, and nothing was dead-lettered.
    eventually(
        "the inbound events in clickhouse",
        Duration::from_secs(60),
        || async {
            let n = h
                .ch("SELECT uniqExact(event_id) FROM events WHERE schema = 'inbound_message'")
                .await;
            (n == "6").then_some(())
        },
    )
    .await;
    let dead = h
        .ch("SELECT count() FROM events WHERE schema = 'dead_letter'")
        .await;
    assert_eq!(dead, "0", "dead letters: {dead}");
}

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s.as_bytes())
}
