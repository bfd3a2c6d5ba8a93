//! The customer chat over a real WebSocket: acks after the broker, idempotent resends, order,
//! typing both ways, agent replies pushed live, resume from the last seen sequence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Harness, Node};
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

async fn reply(h: &Harness, node: &Node, ticket: &str, agent: &str, text: &str) {
    let (s, v) = h
        .post(
            node,
            &format!("/v1/tickets/{ticket}/replies"),
            json!({"agent_id": agent, "text": text}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_acks_orders_pushes_and_resumes_without_loss_or_duplicates() {
    let h = Harness::new().await;
    let node = h
        .spawn(
            &["ingest", "processors", "serving"],
            &[
                ("SWITCHBOARD__MODELS__ENABLED", "false".into()),
                (
                    "SWITCHBOARD__CHANNELS__CHAT__SECRET",
                    "chat-secret-1".into(),
                ),
                (
                    "SWITCHBOARD__CHANNELS__CHAT__MAX_FRAME_BYTES",
                    "4096".into(),
                ),
            ],
        )
        .await;

    // Opening a conversation; bad input names the field.
    let (s, v) = h
        .post(&node, "/chat/sessions", json!({"email": "not-an-address"}))
        .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("email")),
        "{v}"
    );
    let r = h
        .http
        .post(format!("{}/chat/sessions", node.base))
        .json(&json!({"email": "Cara@Example.com", "name": "Cara"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "no bearer token needed: the widget is public"
    );
    let session: Value = r.json().await.unwrap();
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
    let texts: Vec<&str> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Where is order 55?", "It was due Monday."]);
    assert_eq!(view["customer_email"], "cara@example.com");

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
        reply(&h, &node, &ticket, &agent, text).await;
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
    reply(&h, &node, &ticket, &agent, "four").await;
    reply(&h, &node, &ticket, &agent, "five").await;
    eventually("both logged", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM chat_log")
                .fetch_one(&pool)
                .await
                .unwrap();
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
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE external_id LIKE '%:big'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
