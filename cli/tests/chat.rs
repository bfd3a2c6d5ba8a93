//! The customer chat over a real WebSocket: acks after the broker, idempotent resends, order,
//! typing both ways, agent replies pushed live, resume from the last seen sequence; identity
//! verification (an unsigned chat never lands on the record of the address it names, a signed
//! one does, a bad signature is refused); floods of frames and sockets held to their caps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, strs, Harness, Node, CORE};

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(node: &Node, token: &str, last_seq: i64) -> Ws {
    let url = format!(
        "{}/chat/ws?token={token}&last_seq={last_seq}",
        node.base.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON frame (panics after `secs`).
async fn next(ws: &mut Ws, secs: u64) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_acks_orders_pushes_and_resumes_without_loss_or_duplicates() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret-1"),
            ("SWITCHBOARD__CHANNELS__CHAT__MAX_FRAME_BYTES", "4096"),
        ],
    )
    .await;

    // Opening a conversation; bad input names the field.
    let (s, v) = h
        .post(&node, "/chat/sessions", json!({"email": "not-an-address"}))
        .await;
    assert_refused(s, &v, 400, "email");
    let (s, session) = h
        .open_chat(&node, json!({"email": "Cara@Example.com", "name": "Cara"}))
        .await;
    assert_eq!(s, 201, "no bearer token needed: the widget is public");
    let token = session["token"].as_str().unwrap().to_string();
    let conversation = session["conversation_id"].as_str().unwrap().to_string();

    // A forged token never upgrades.
    let forged = token.replacen(&conversation, &uuid::Uuid::now_v7().to_string(), 1);
    let url = format!(
        "{}/chat/ws?token={forged}",
        node.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("forged token accepted: {:?}", other.map(|_| ())),
    }

    let mut ws = connect(&node, &token, 0).await;
    send(
        &mut ws,
        json!({"type": "message", "client_id": "c1", "text": "Where is order 55?"}),
    )
    .await;
    let ack1 = next(&mut ws, 20).await;
    assert_eq!(
        (ack1["type"].as_str(), ack1["client_id"].as_str()),
        (Some("ack"), Some("c1")),
        "{ack1}"
    );
    send(
        &mut ws,
        json!({"type": "message", "client_id": "c2", "text": "It was due Monday."}),
    )
    .await;
    assert_eq!(next(&mut ws, 20).await["client_id"], "c2");
    // A resend (the client did not see the ack) is the same message.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "c1", "text": "Where is order 55?"}),
    )
    .await;
    let again = next(&mut ws, 20).await;
    assert_eq!(again["message_id"], ack1["message_id"]);
    // Bad frames are answered, the socket stays.
    send(&mut ws, json!({"type": "message", "text": "no id"})).await;
    let e = next(&mut ws, 5).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_frame")),
        "{e}"
    );

    // One ticket with both messages in order, none doubled.
    let pool = h.pg().await;
    let ticket: String = eventually("the chat ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let r: Option<(uuid::Uuid, i64)> = sqlx::query_as(
                "SELECT t.id, (SELECT count(*) FROM messages m WHERE m.ticket_id = t.id) FROM tickets t WHERE t.channel = 'chat'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            r.filter(|(_, n)| *n >= 2).map(|(id, _)| id.to_string())
        }
    })
    .await;
    let (_, view) = h.get(&node, &format!("/v1/tickets/{ticket}")).await;
    let texts = strs(&view["messages"], "text");
    assert_eq!(texts, ["Where is order 55?", "It was due Monday."]);
    // Unsigned: the typed address is only a claim.
    assert_eq!(view["customer_email"], Value::Null, "{view}");
    assert_eq!(view["customer_verified"], false);
    assert_eq!(
        view["messages"][0]["metadata"]["claimed_email"],
        "cara@example.com"
    );

    // Typing, both ways.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen("switchboard_chat_customer_typing")
        .await
        .unwrap();
    send(&mut ws, json!({"type": "typing", "on": true})).await;
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), format!("{conversation}:1"));
    let (s, _) = h
        .post(
            &node,
            &format!("/v1/tickets/{ticket}/typing"),
            json!({"on": true}),
        )
        .await;
    assert_eq!(s, 204);
    let t = next(&mut ws, 10).await;
    assert_eq!(
        (t["type"].as_str(), t["who"].as_str(), t["on"].as_bool()),
        (Some("typing"), Some("agent"), Some(true))
    );

    // Agent replies arrive live, in order, numbered.
    let agent = h
        .agent(&node, "chat-agent@example.com", &["orders"], 5, false)
        .await;
    for text in ["one", "two", "three"] {
        h.reply(&node, &ticket, &agent, text).await;
        if text == "two" {
            // An internal note between replies never reaches the customer: the socket's next
            // message is "three", numbered 3.
            let (s, v) = h
                .post(
                    &node,
                    &format!("/v1/tickets/{ticket}/notes"),
                    json!({"text": "internal: she sounds upset @chat-agent@example.com"}),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let f = next(&mut ws, 20).await;
        if f["type"] == "message" {
            got.push((
                f["seq"].as_i64().unwrap(),
                f["text"].as_str().unwrap().to_string(),
                f["author"].clone(),
            ));
        }
    }
    assert_eq!(
        got.iter()
            .map(|(s, t, _)| (*s, t.as_str()))
            .collect::<Vec<_>>(),
        [(1, "one"), (2, "two"), (3, "three")]
    );
    assert_eq!(got[0].2, "agent");
    send(&mut ws, json!({"type": "delivered", "seq": 2})).await;

    // Gone; two more replies while away; back with the last seen seq: exactly what was missed.
    ws.close(None).await.unwrap();
    drop(ws);
    h.reply(&node, &ticket, &agent, "four").await;
    h.reply(&node, &ticket, &agent, "five").await;
    eventually("both logged", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let n = count(&pool, "SELECT count(*) FROM chat_log").await;
            (n == 5).then_some(())
        }
    })
    .await;
    let mut ws = connect(&node, &token, 2).await;
    let mut resumed = Vec::new();
    while resumed.len() < 3 {
        let f = next(&mut ws, 20).await;
        if f["type"] == "message" {
            resumed.push((
                f["seq"].as_i64().unwrap(),
                f["text"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(
        resumed,
        [
            (3, "three".to_string()),
            (4, "four".to_string()),
            (5, "five".to_string())
        ]
    );
    // Nothing more (no duplicate of what was sent before or during the replay).
    let extra = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await;
    assert!(extra.is_err(), "unexpected frame: {extra:?}");
    let delivered: i64 = sqlx::query_scalar("SELECT delivered_seq FROM chat_conversations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(delivered, 2);

    // An oversized frame closes the socket (1009); nothing of it is accepted.
    send(
        &mut ws,
        json!({"type": "message", "client_id": "big", "text": "x".repeat(10_000)}),
    )
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the socket closes");
    assert!(matches!(closed, None | Some(1009)), "{closed:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = count(
        &pool,
        "SELECT count(*) FROM messages WHERE external_id LIKE '%:big'",
    )
    .await;
    assert_eq!(n, 0);
}

const IDENTITY_SECRET: &str = "shop-identity-secret-1";

/// Sends one message on a new socket and waits for its ack.
async fn say(node: &Node, token: &str, client_id: &str, text: &str) {
    let mut ws = connect(node, token, 0).await;
    send(
        &mut ws,
        json!({"type": "message", "client_id": client_id, "text": text}),
    )
    .await;
    let ack = next(&mut ws, 20).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// The ticket (summary and messages) of the first message of a chat conversation.
async fn ticket_of_conversation(h: &Harness, node: &Node, conversation: &str) -> Value {
    let pool = h.pg().await;
    let key = format!("chat:{conversation}");
    let id: uuid::Uuid = eventually("the chat ticket", Duration::from_secs(60), || {
        let (pool, key) = (pool.clone(), key.clone());
        async move {
            sqlx::query_scalar("SELECT id FROM tickets WHERE conversation_key = $1")
                .bind(key)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await;
    h.get(node, &format!("/v1/tickets/{id}")).await.1
}

/// A chat opened with someone else's email (unsigned) is its own customer: the opener's
/// messages never join the victim's record, history or orders, and the console is told it is
/// unverified. A chat the shop signed is the customer's; a wrong signature is refused.
#[tokio::test(flavor = "multi_thread")]
async fn chat_identity_is_verified_by_the_shops_signature_never_by_a_typed_email() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret-2"),
            (
                "SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET",
                IDENTITY_SECRET,
            ),
        ],
    )
    .await;
    // The victim: a customer with a ticket.
    let (s, v) = h
        .post(
            &node,
            "/v1/messages",
            json!({"channel": "api", "customer": {"email": "vera@example.com", "name": "Vera"},
                   "text": "My new address is 12 Hidden Lane", "external_id": "vera-1"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let victim: Value = eventually("the victim's customer", Duration::from_secs(60), || async {
        let (s, v) = h.get(&node, "/v1/customers?email=vera@example.com").await;
        (s == 200 && v["tickets"].as_array().is_some_and(|t| t.len() == 1)).then_some(v)
    })
    .await;
    let victim_id = victim["id"].as_str().unwrap().to_string();

    // The attacker types her address (any case) into the widget: accepted, but unverified.
    let (s, session) = h
        .open_chat(
            &node,
            json!({"email": "VERA@example.com", "name": "Vera ☃ Ünverified"}),
        )
        .await;
    assert_eq!(s, 201, "{session}");
    assert_eq!(session["verified"], false);
    let conversation = session["conversation_id"].as_str().unwrap().to_string();
    say(
        &node,
        session["token"].as_str().unwrap(),
        "a1",
        "Hi, it's Vera. Which address do you have for me?",
    )
    .await;
    let ticket = ticket_of_conversation(&h, &node, &conversation).await;
    assert_ne!(ticket["customer_id"].as_str(), Some(victim_id.as_str()));
    assert_eq!(ticket["customer_email"], Value::Null, "{ticket}");
    assert_eq!(ticket["customer_verified"], false);
    let m = &ticket["messages"][0];
    assert_eq!(m["metadata"]["sender_verified"], "false", "{m}");
    assert_eq!(m["metadata"]["claimed_email"], "vera@example.com");
    // Its customer: only the conversation, the address a claim; none of the victim's history.
    let (s, c) = h
        .get(
            &node,
            &format!("/v1/customers/{}", ticket["customer_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        (c["verified"].as_bool(), c["claimed_email"].as_str()),
        (Some(false), Some("vera@example.com")),
        "{c}"
    );
    assert_eq!(c["identities"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["identities"][0]["kind"], "chat");
    assert_eq!(c["tickets"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["orders"], json!([]));
    // The victim's record did not move: one ticket, no new identity.
    let (_, after) = h.get(&node, "/v1/customers?email=vera@example.com").await;
    assert_eq!(after["id"].as_str(), Some(victim_id.as_str()));
    assert_eq!(after["tickets"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["identities"], victim["identities"]);
    assert_eq!(after["verified"], true);
    let (_, listed) = h
        .get(&node, "/v1/tickets?customer_email=vera@example.com")
        .await;
    assert_eq!(listed["tickets"].as_array().unwrap().len(), 1, "{listed}");

    // Signed by the shop: the chat is Vera's, on her record.
    let sig = switchboard_ingest::chat::identity_hmac(IDENTITY_SECRET, "Vera@Example.com");
    let (s, signed) = h.open_chat(&node, json!({"identity": {"email": "Vera@Example.com", "name": "Vera"}, "identity_hmac": sig}),
    )
    .await;
    assert_eq!(s, 201, "{signed}");
    assert_eq!(signed["verified"], true);
    say(
        &node,
        signed["token"].as_str().unwrap(),
        "v1",
        "Hello again",
    )
    .await;
    let mine = ticket_of_conversation(&h, &node, signed["conversation_id"].as_str().unwrap()).await;
    assert_eq!(
        mine["customer_id"].as_str(),
        Some(victim_id.as_str()),
        "{mine}"
    );
    assert_eq!(
        (
            mine["customer_email"].as_str(),
            mine["customer_verified"].as_bool()
        ),
        (Some("vera@example.com"), Some(true))
    );
    assert_eq!(mine["messages"][0]["metadata"].get("sender_verified"), None);

    // A shop id alone, signed: its own identity kind.
    let sig = switchboard_ingest::chat::identity_hmac(IDENTITY_SECRET, "shop-user:42");
    let (s, by_id) = h
        .open_chat(
            &node,
            json!({"identity": {"external_id": "shop-user:42"}, "identity_hmac": sig}),
        )
        .await;
    assert_eq!(
        (s, by_id["verified"].as_bool()),
        (201, Some(true)),
        "{by_id}"
    );
    say(
        &node,
        by_id["token"].as_str().unwrap(),
        "x1",
        "Order question",
    )
    .await;
    let t = ticket_of_conversation(&h, &node, by_id["conversation_id"].as_str().unwrap()).await;
    let (_, c) = h
        .get(
            &node,
            &format!("/v1/customers/{}", t["customer_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        c["identities"],
        json!([{"kind": "external", "value": "shop-user:42"}])
    );

    // Refused, with the field named: a signature of someone else, of nothing, garbage, none.
    let wrong = switchboard_ingest::chat::identity_hmac(IDENTITY_SECRET, "eve@example.com");
    for (body, status, field) in [
        (
            json!({"identity": {"email": "vera@example.com"}, "identity_hmac": wrong}),
            401,
            "identity_hmac",
        ),
        (
            json!({"identity": {"email": "vera@example.com"}, "identity_hmac": "zz\u{0}☃".repeat(500)}),
            401,
            "identity_hmac",
        ),
        (
            json!({"identity": {"email": "vera@example.com"}}),
            400,
            "identity_hmac",
        ),
        (json!({"identity_hmac": wrong}), 400, "identity"),
        (
            json!({"identity": {"name": "Vera"}, "identity_hmac": wrong}),
            400,
            "identity",
        ),
        (
            json!({"identity": {"external_id": "a\u{0}b"}, "identity_hmac": wrong}),
            400,
            "identity.external_id",
        ),
        (
            json!({"email": "vera@example.com", "name": "a\u{7}b"}),
            400,
            "name",
        ),
        (json!({"name": "Vera"}), 400, "email"),
    ] {
        let (s, v) = h.open_chat(&node, body.clone()).await;
        assert_eq!(
            (s, v["error"]["field"].as_str()),
            (status, Some(field)),
            "{body} -> {v}"
        );
    }
    // None of the refused ones opened anything.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_conversations")
        .fetch_one(&h.pg().await)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

/// Without an identity secret no chat is verified, and a signed identity is refused, not
/// silently downgraded.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_identity_is_refused_where_verification_is_off() {
    let (h, node) = start(
        &["ingest"],
        &[("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret-3")],
    )
    .await;
    let sig = switchboard_ingest::chat::identity_hmac("anything", "vera@example.com");
    let (s, v) = h
        .open_chat(
            &node,
            json!({"identity": {"email": "vera@example.com"}, "identity_hmac": sig}),
        )
        .await;
    assert_refused(s, &v, 400, "identity");
}

/// One conversation flooding typing frames is throttled and then cut off; another conversation
/// keeps working meanwhile. New conversations per IP and sockets per conversation are capped,
/// and an idle socket is closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_conversation_is_cut_off_while_others_keep_working() {
    let (h, node) = start(
        &["ingest", "processors"],
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret-4"),
            ("SWITCHBOARD__CHANNELS__CHAT__FRAMES_PER_SEC", "5"),
            (
                "SWITCHBOARD__CHANNELS__CHAT__MAX_SOCKETS_PER_CONVERSATION",
                "2",
            ),
            ("SWITCHBOARD__CHANNELS__CHAT__IDLE_TIMEOUT_SECS", "3"),
            ("SWITCHBOARD__CHANNELS__CHAT__SESSIONS_PER_IP_PER_MIN", "3"),
        ],
    )
    .await;
    let (_, flood) = h
        .open_chat(&node, json!({"email": "flood@example.com"}))
        .await;
    let (_, calm) = h
        .open_chat(&node, json!({"email": "calm@example.com"}))
        .await;
    let flood_id = flood["conversation_id"].as_str().unwrap().to_string();
    // Three new conversations a minute from one address; the fourth waits.
    let (s, _) = h
        .open_chat(&node, json!({"email": "third@example.com"}))
        .await;
    assert_eq!(s, 201);
    let (s, v) = h
        .open_chat(&node, json!({"email": "fourth@example.com"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let pool = h.pg().await;
    let mut typing = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    typing
        .listen("switchboard_chat_customer_typing")
        .await
        .unwrap();

    let mut bad = connect(&node, flood["token"].as_str().unwrap(), 0).await;
    // A second socket of the flooding conversation is allowed; a third is not (before upgrade).
    let _second = connect(&node, flood["token"].as_str().unwrap(), 0).await;
    let url = format!(
        "{}/chat/ws?token={}",
        node.base.replace("http://", "ws://"),
        flood["token"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a third socket was accepted: {:?}", other.map(|_| ())),
    }

    // 2,000 typing frames as fast as the socket takes them (until it is closed on us), while
    // the calm conversation is served: its message is acked, its typing forwarded.
    let flooding = tokio::spawn(async move {
        let mut sent = 0;
        for i in 0..2000 {
            let frame = json!({"type": "typing", "on": i % 2 == 0}).to_string();
            if bad.send(Message::Text(frame.into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        let code = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match bad.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("the flooding socket is closed");
        (code, sent)
    });
    let mut good = connect(&node, calm["token"].as_str().unwrap(), 0).await;
    send(
        &mut good,
        json!({"type": "message", "client_id": "g1", "text": "Still there?"}),
    )
    .await;
    let ack = next(&mut good, 20).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    send(&mut good, json!({"type": "typing", "on": true})).await;
    let (code, sent) = flooding.await.unwrap();
    assert_eq!(code, Some(1008), "sent {sent}");
    let calm_id = calm["conversation_id"].as_str().unwrap().to_string();
    let mut forwarded_flood = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), typing.recv())
            .await
            .expect("the calm conversation's typing is forwarded")
            .unwrap();
        if n.payload().starts_with(&flood_id) {
            forwarded_flood += 1;
        } else if n.payload() == format!("{calm_id}:1") {
            break;
        }
    }
    // Of the flood, at most what the budget allows (a burst of 10, then 5 a second) went on;
    // the rest was dropped and the socket cut after 50 refusals in a row.
    assert!(
        forwarded_flood < 100,
        "{forwarded_flood} of {sent} typing frames forwarded"
    );

    // Idle: nothing from the customer for the idle timeout closes the socket with 4408.
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match good.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the idle socket is closed");
    assert_eq!(code, Some(4408));
}
