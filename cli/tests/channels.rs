//! Channel connectors against real services: the signed SMS, voice and Meta webhooks, replies
//! through the providers' APIs (local stand-ins that record what they were sent), and one
//! customer across channels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, count, eventually, start, Harness, CORE};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_ingest::sms::sign;

const URL: &str = "https://support.example.com/webhooks/sms";

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn send(
    h: &Harness,
    base: &str,
    params: &[(String, String)],
    signature: &str,
) -> (u16, String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let r = h
        .http
        .post(format!("{base}/webhooks/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ct, r.text().await.unwrap())
}

/// Requests the fake provider got: the Authorization header and the form.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A stand-in for the provider's messages API that records what it was sent.
async fn fake_provider() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                let mut seen = s.lock().unwrap();
                seen.push((auth, form));
                axum::Json(
                    serde_json::json!({"sid": format!("SMfake{}", seen.len()), "status": "queued"}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// Requests a stand-in Graph API got: path, Authorization, JSON body.
type GraphSeen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

async fn fake_graph() -> (String, GraphSeen) {
    let seen: GraphSeen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v21.0/{business}/messages",
        axum::routing::post(
            move |axum::extract::Path(business): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<serde_json::Value>| {
                let s = s.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let mut seen = s.lock().unwrap();
                    seen.push((business, auth, body));
                    axum::Json(serde_json::json!({"message_id": format!("mid.out{}", seen.len())}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_sms_become_one_conversation_and_bad_ones_are_refused() {
    let (provider, seen) = fake_provider().await;
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-123"),
            ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", URL),
            ("SWITCHBOARD__CHANNELS__SMS__API_BASE_URL", &provider),
            ("SWITCHBOARD__CHANNELS__SMS__ACCOUNT_SID", "AC123"),
            ("SWITCHBOARD__CHANNELS__SMS__FROM_NUMBER", "+15550199999"),
            ("SWITCHBOARD__HTTP__MAX_BODY_BYTES", "65536"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let first = form(&[
        ("MessageSid", "SM0001"),
        ("From", "+15550100001"),
        ("To", "+15550199999"),
        ("Body", "Where is my parcel?"),
        ("NumMedia", "0"),
    ]);
    let (s, ct, body) = send(&h, &node.base, &first, &sign("tok-123", URL, &first)).await;
    assert_eq!(s, 200, "{body}");
    assert!(
        ct.starts_with("text/xml") && body.contains("<Response>"),
        "{ct} {body}"
    );
    // The provider retries the same message: accepted again, stored once.
    let (s, _, _) = send(&h, &node.base, &first, &sign("tok-123", URL, &first)).await;
    assert_eq!(s, 200);
    let second = form(&[
        ("MessageSid", "SM0002"),
        ("From", "+1 555 010 0001"),
        ("Body", "It was due on Monday"),
    ]);
    let (s, _, _) = send(&h, &node.base, &second, &sign("tok-123", URL, &second)).await;
    assert_eq!(s, 200);

    // Refused: wrong token, a tampered body, no signature, a signed form without a sender.
    let (s, _, body) = send(&h, &node.base, &first, &sign("other", URL, &first)).await;
    assert_eq!(s, 401, "{body}");
    let mut tampered = first.clone();
    tampered[3].1 = "Refund me now".into();
    let (s, _, _) = send(&h, &node.base, &tampered, &sign("tok-123", URL, &first)).await;
    assert_eq!(s, 401);
    let (s, _, _) = send(&h, &node.base, &first, "").await;
    assert_eq!(s, 401);
    // Oversized: 413 before any signature work.
    let r = h
        .http
        .post(format!("{}/webhooks/sms", node.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let nobody = form(&[("MessageSid", "SM0003"), ("Body", "hi")]);
    let (s, _, body) = send(&h, &node.base, &nobody, &sign("tok-123", URL, &nobody)).await;
    assert_eq!(s, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["field"], "From");

    // Two messages, one ticket, one customer by phone; nothing from the refused calls.
    let pool = h.pg().await;
    let (messages, tickets): (i64, i64) = eventually("both sms stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let r: (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT ticket_id) FROM messages WHERE channel = 'sms'")
                .fetch_one(&pool)
                .await
                .unwrap();
            (r.0 >= 2).then_some(r)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = count(&pool, "SELECT count(*) FROM messages").await;
    assert_eq!((messages, tickets, all), (2, 1, 2));
    let phone: String = sqlx::query_scalar("SELECT c.phone FROM customers c JOIN tickets t ON t.customer_id = c.id WHERE t.channel = 'sms'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(phone, "+15550100001");

    // An agent's reply goes back by SMS through the provider, once, to the sender's number.
    let agent = h
        .agent(&node, "sms-agent@example.com", &["shipping"], 5, false)
        .await;
    let ticket: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tickets WHERE channel = 'sms'")
        .fetch_one(&pool)
        .await
        .unwrap();
    h.reply(
        &node,
        ticket,
        &agent,
        "It is on its way, arriving tomorrow.",
    )
    .await;
    let sent = eventually(
        "the provider to get the reply",
        Duration::from_secs(30),
        || async {
            let seen = seen.lock().unwrap();
            (!seen.is_empty()).then(|| seen.clone())
        },
    )
    .await;
    let (auth, form) = &sent[0];
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("To"), Some("+15550100001"));
    assert_eq!(get("From"), Some("+15550199999"));
    assert_eq!(get("Body"), Some("It is on its way, arriving tomorrow."));
    assert!(auth.starts_with("Basic "), "{auth}");
    let (state, provider_id): (String, Option<String>) =
        eventually("the delivery recorded", Duration::from_secs(10), || {
            let pool = pool.clone();
            async move {
                let r: (String, Option<String>) =
                    sqlx::query_as("SELECT state, provider_id FROM deliveries")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (r.0 == "sent").then_some(r)
            }
        })
        .await;
    assert_eq!(
        (state.as_str(), provider_id.as_deref()),
        ("sent", Some("SMfake1"))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_transcripts_become_tickets_of_the_same_customer_as_their_texts() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-123"),
            ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", URL),
            ("SWITCHBOARD__CHANNELS__VOICE__SECRET", "voice-secret"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let text = form(&[
        ("MessageSid", "SM9"),
        ("From", "+15550100007"),
        ("Body", "I will call you about my refund"),
    ]);
    assert_eq!(
        send(&h, &node.base, &text, &sign("tok-123", URL, &text))
            .await
            .0,
        200
    );
    let call = serde_json::json!({
        "call_id": "CA42", "from": "+1 555 010 0007", "duration_secs": 95,
        "recording_url": "https://recordings.example.com/CA42.wav",
        "turns": [
            {"speaker": "ivr", "text": "Thanks for calling."},
            {"speaker": "customer", "text": "My refund has not arrived after two weeks."}
        ]
    });
    let body = serde_json::to_vec(&call).unwrap();
    let post = |body: Vec<u8>, sig: String| {
        let h = &h;
        let url = format!("{}/webhooks/voice", node.base);
        async move {
            let r = h
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("x-signature-256", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, b) = post(
        body.clone(),
        switchboard_ingest::voice::sign("voice-secret", &body),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    // Retried by the provider: the same message.
    assert_eq!(
        post(
            body.clone(),
            switchboard_ingest::voice::sign("voice-secret", &body)
        )
        .await
        .0,
        202
    );
    // Refused: wrong secret; a signed body without a transcript names the field.
    assert_eq!(
        post(body.clone(), switchboard_ingest::voice::sign("nope", &body))
            .await
            .0,
        401
    );
    let empty = serde_json::to_vec(
        &serde_json::json!({"call_id": "CA43", "from": "+15550100007", "turns": []}),
    )
    .unwrap();
    let (s, b) = post(
        empty.clone(),
        switchboard_ingest::voice::sign("voice-secret", &empty),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["error"]["field"],
        "turns"
    );

    let pool = h.pg().await;
    let rows: Vec<(String, uuid::Uuid, String)> = eventually("the text and the call stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, uuid::Uuid, String)> = sqlx::query_as(
                "SELECT m.channel, t.customer_id, m.text FROM messages m JOIN tickets t ON t.id = m.ticket_id ORDER BY m.channel",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (rows.len() >= 2).then_some(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (sms, voice) = (&rows[0], &rows[1]);
    assert_eq!((sms.0.as_str(), voice.0.as_str()), ("sms", "voice"));
    assert_eq!(sms.1, voice.1, "one customer across sms and voice");
    assert!(
        voice.2.contains("Customer: My refund has not arrived"),
        "{}",
        voice.2
    );
    assert!(
        voice.2.contains("System: Thanks for calling."),
        "{}",
        voice.2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_webhooks_verify_the_subscription_and_the_signature_and_replies_go_back() {
    let (graph, graph_seen) = fake_graph().await;
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__CHANNELS__META__APP_SECRET", "app-secret"),
            ("SWITCHBOARD__CHANNELS__META__VERIFY_TOKEN", "verify-me"),
            ("SWITCHBOARD__CHANNELS__META__GRAPH_API_BASE", &graph),
            ("SWITCHBOARD__CHANNELS__META__ACCESS_TOKEN", "page-token"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let url = format!("{}/webhooks/meta", node.base);
    // The subscription handshake.
    let r = h
        .http
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=12345"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "12345");
    let r = h
        .http
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=12345"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let note = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
    "messaging_product": "whatsapp", "metadata": {"phone_number_id": "PN1"},
    "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "15550100042"}],
    "messages": [
        {"from": "15550100042", "id": "wamid.1", "timestamp": "1764150000", "type": "text", "text": {"body": "My order never arrived"}},
        {"from": "15550100042", "id": "wamid.2", "timestamp": "1764150005", "type": "image", "image": {"id": "MEDIA9", "caption": "the empty box"}}
    ]}}]}]});
    let body = serde_json::to_vec(&note).unwrap();
    let post = |body: Vec<u8>, sig: String| {
        let (h, url) = (&h, url.clone());
        async move {
            let r = h
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let sig = switchboard_ingest::voice::sign("app-secret", &body);
    let (s, b) = post(body.clone(), sig.clone()).await;
    assert_eq!(s, 200, "{b}");
    // Meta retries: same messages, nothing new.
    assert_eq!(post(body.clone(), sig).await.0, 200);
    assert_eq!(
        post(
            body.clone(),
            switchboard_ingest::voice::sign("other", &body)
        )
        .await
        .0,
        401
    );
    let other = serde_json::to_vec(&serde_json::json!({"object": "twitter", "entry": []})).unwrap();
    let (s, b) = post(
        other.clone(),
        switchboard_ingest::voice::sign("app-secret", &other),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["error"]["field"],
        "object"
    );
    // Messenger: a message, an echo of ours and a delivery receipt (only the first is a message).
    let messenger = serde_json::to_vec(&serde_json::json!({"object": "page", "entry": [{"id": "PAGE1", "time": 1764150000000i64, "messaging": [
        {"sender": {"id": "7001"}, "recipient": {"id": "PAGE1"}, "timestamp": 1764150000100i64, "message": {"mid": "m_1", "text": "Can I change my address?"}},
        {"sender": {"id": "PAGE1"}, "recipient": {"id": "7001"}, "timestamp": 1764150000200i64, "message": {"mid": "m_2", "text": "echo", "is_echo": true}},
        {"sender": {"id": "7001"}, "recipient": {"id": "PAGE1"}, "timestamp": 1764150000300i64, "delivery": {"mids": ["m_0"]}}
    ]}]})).unwrap();
    let (s, b) = post(
        messenger.clone(),
        switchboard_ingest::voice::sign("app-secret", &messenger),
    )
    .await;
    assert_eq!((s, b.as_str()), (200, r#"{"accepted":1}"#));
    // Instagram: an image with no text.
    let insta = serde_json::to_vec(&serde_json::json!({"object": "instagram", "entry": [{"id": "IG1", "time": 1764150001000i64, "messaging": [
        {"sender": {"id": "8002"}, "recipient": {"id": "IG1"}, "timestamp": 1764150001100i64, "message": {"mid": "ig_1", "attachments": [{"type": "image", "payload": {"url": "https://cdn.example/1.jpg"}}]}}
    ]}]})).unwrap();
    let (s, _) = post(
        insta.clone(),
        switchboard_ingest::voice::sign("app-secret", &insta),
    )
    .await;
    assert_eq!(s, 200);
    let bad_sender = serde_json::to_vec(
        &serde_json::json!({"object": "page", "entry": [{"id": "PAGE1", "messaging": [
        {"sender": {"id": "../x"}, "message": {"mid": "m_9", "text": "hi"}}]}]}),
    )
    .unwrap();
    let (s, b) = post(
        bad_sender.clone(),
        switchboard_ingest::voice::sign("app-secret", &bad_sender),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["error"]["field"],
        "entry[0].messaging[0].sender.id"
    );

    let pool = h.pg().await;
    let rows: Vec<(String, String, Option<String>)> = eventually("both whatsapp messages stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT m.text, c.phone, c.name FROM messages m JOIN tickets t ON t.id = m.ticket_id JOIN customers c ON c.id = t.customer_id
                 WHERE m.metadata->>'social_network' = 'whatsapp' ORDER BY m.received_at",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let all = count(&pool, "SELECT count(*) FROM messages").await;
            (rows.len() >= 2 && all >= 4).then_some(rows)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = count(&pool, "SELECT count(*) FROM messages").await;
    assert_eq!(n, 4, "2 whatsapp, 1 messenger, 1 instagram");
    assert_eq!(rows[0].0, "My order never arrived");
    assert_eq!(rows[1].0, "the empty box");
    assert_eq!(rows[0].1, "+15550100042");
    assert_eq!(rows[0].2.as_deref(), Some("Kerry"));

    // Messenger and Instagram senders are customers by their scoped ids.
    let handles: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.kind || ':' || i.value, m.text FROM messages m JOIN tickets t ON t.id = m.ticket_id
           JOIN customer_identities i ON i.customer_id = t.customer_id
         WHERE i.kind IN ('messenger', 'instagram') ORDER BY m.received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        handles,
        [
            (
                "messenger:7001".to_string(),
                "Can I change my address?".to_string()
            ),
            ("instagram:8002".to_string(), "(image)".to_string())
        ]
    );

    // Replies go back through the Graph API: WhatsApp to the number, Messenger to the sender.
    let agent = h
        .agent(&node, "social-agent@example.com", &["orders"], 5, false)
        .await;
    let ticket_of = |network: &'static str| {
        let pool = pool.clone();
        async move {
            let id: uuid::Uuid = sqlx::query_scalar(
                "SELECT DISTINCT m.ticket_id FROM messages m WHERE m.metadata->>'social_network' = $1",
            )
            .bind(network)
            .fetch_one(&pool)
            .await
            .unwrap();
            id
        }
    };
    for (network, text) in [
        ("whatsapp", "A new box ships today."),
        ("messenger", "Yes, send it to us."),
    ] {
        let t = ticket_of(network).await;
        h.reply(&node, t, &agent, text).await;
    }
    let sent = eventually(
        "both replies at the graph api",
        Duration::from_secs(30),
        || async {
            let seen = graph_seen.lock().unwrap();
            (seen.len() >= 2).then(|| seen.clone())
        },
    )
    .await;
    let wa = sent
        .iter()
        .find(|(b, _, _)| b == "PN1")
        .expect("whatsapp reply");
    assert_eq!(wa.1, "Bearer page-token");
    assert_eq!(wa.2["to"], "15550100042");
    assert_eq!(wa.2["text"]["body"], "A new box ships today.");
    let ms = sent
        .iter()
        .find(|(b, _, _)| b == "PAGE1")
        .expect("messenger reply");
    assert_eq!(ms.2["recipient"]["id"], "7001");
    assert_eq!(ms.2["message"]["text"], "Yes, send it to us.");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(graph_seen.lock().unwrap().len(), 2, "each sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_customer_across_channels_when_an_authenticated_message_names_both() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-9"),
            ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", URL),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let pool = h.pg().await;
    // A VIP writes by email; later someone texts from a number nobody knows yet.
    let (s, v) = h
        .post(&node, "/v1/messages", serde_json::json!({"channel": "api", "customer": {"email": "dana@example.com"},
              "text": "Where is my refund?", "external_id": "e-1", "customer_context": {"tier": "vip"}}))
        .await;
    assert_eq!(s, 202, "{v}");
    let sms = form(&[
        ("MessageSid", "SMd1"),
        ("From", "+15550100077"),
        ("Body", "Any news on the refund?"),
    ]);
    let (s, _, _) = send(&h, &node.base, &sms, &sign("tok-9", URL, &sms)).await;
    assert_eq!(s, 200);
    eventually(
        "two customers, two tickets",
        Duration::from_secs(60),
        || async { (count(&pool, "SELECT count(*) FROM tickets").await == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM customers WHERE merged_into IS NULL"
        )
        .await,
        2
    );

    // A bad phone is named.
    let (s, v) = h
        .post(&node, "/v1/messages", serde_json::json!({"channel": "api", "customer": {"email": "dana@example.com", "phone": "call me"}, "text": "x"}))
        .await;
    assert_refused(s, &v, 400, "customer.phone");
    // The shop (authenticated) says the email and the number are one person: merged.
    let (s, _) = h
        .post(&node, "/v1/messages", serde_json::json!({"channel": "api", "customer": {"email": "dana@example.com", "phone": "+1 555 010 0077"},
              "text": "Also my address changed.", "external_id": "e-2"}))
        .await;
    assert_eq!(s, 202);
    eventually("the merge", Duration::from_secs(60), || async {
        (count(
            &pool,
            "SELECT count(*) FROM customers WHERE merged_into IS NOT NULL",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let (survivors, owners, tier): (i64, i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM customers WHERE merged_into IS NULL),
                (SELECT count(DISTINCT customer_id) FROM tickets),
                (SELECT tier FROM customers WHERE merged_into IS NULL)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((survivors, owners, tier.as_str()), (1, 1, "vip"));
    // Her history by email now shows the SMS ticket too; the next text joins the same customer.
    let (_, list) = h
        .get(&node, "/v1/tickets?customer_email=dana@example.com")
        .await;
    let channels: std::collections::BTreeSet<String> = list["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["channel"].as_str().unwrap().to_string())
        .collect();
    assert!(
        channels.contains("sms") && channels.contains("api"),
        "{list}"
    );
    let sms2 = form(&[
        ("MessageSid", "SMd2"),
        ("From", "+15550100077"),
        ("Body", "Thanks!"),
    ]);
    let (s, _, _) = send(&h, &node.base, &sms2, &sign("tok-9", URL, &sms2)).await;
    assert_eq!(s, 200);
    eventually("the next text stored", Duration::from_secs(60), || async {
        (count(
            &pool,
            "SELECT count(*) FROM messages WHERE external_id = 'SMd2'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT customer_id) FROM tickets").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM customers WHERE merged_into IS NULL"
        )
        .await,
        1
    );
}

/// A rebalance can hand one reply to two consumers at once: the provider still gets it once.
/// The second waits (a retry) while the first's call is in flight and then finds it sent; a
/// failed call releases its claim at once; a dead holder's claim lapses.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_two_consumers_hold_at_once_reaches_its_provider_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use switchboard_core::kafka::HandlerError;
    use switchboard_ingest::ledger::deliver_once;

    let h = Harness::new().await;
    let pool = h.pg().await;
    switchboard_core::db::migrate(&pool).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let reply = uuid::Uuid::now_v7();

    // The first consumer's provider call is in flight until the gate opens.
    let first = tokio::spawn({
        let (pool, calls, gate) = (pool.clone(), calls.clone(), gate.clone());
        async move {
            deliver_once(&pool, reply, "email", "a@example.com", || async {
                calls.fetch_add(1, SeqCst);
                gate.notified().await;
                Ok("first".to_string())
            })
            .await
        }
    });
    eventually("the first claim", Duration::from_secs(10), || async {
        (calls.load(SeqCst) == 1).then_some(())
    })
    .await;
    let second = deliver_once(&pool, reply, "email", "a@example.com", || async {
        calls.fetch_add(1, SeqCst);
        Ok("second".to_string())
    })
    .await;
    assert!(
        matches!(&second, Err(HandlerError::Transient(why)) if why.contains("another consumer")),
        "{second:?}"
    );
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().as_deref(), Some("first"));
    let retried = deliver_once(&pool, reply, "email", "a@example.com", || async {
        calls.fetch_add(1, SeqCst);
        Ok("retry".to_string())
    })
    .await
    .unwrap();
    assert_eq!(retried, None, "the retry finds it sent");
    assert_eq!(calls.load(SeqCst), 1, "the provider was called once");
    let (state, provider, attempts): (String, String, i32) =
        sqlx::query_as("SELECT state, provider_id, attempts FROM deliveries WHERE reply_id = $1")
            .bind(reply)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), provider.as_str(), attempts),
        ("sent", "first", 1)
    );

    // A failed call releases its claim: the retry goes at once.
    let failing = uuid::Uuid::now_v7();
    let failed = deliver_once(&pool, failing, "sms", "+15550100001", || async {
        Err(HandlerError::Transient("provider down".into()))
    })
    .await;
    assert!(
        matches!(failed, Err(HandlerError::Transient(_))),
        "{failed:?}"
    );
    let again = deliver_once(&pool, failing, "sms", "+15550100001", || async {
        Ok("SM1".to_string())
    })
    .await
    .unwrap();
    assert_eq!(again.as_deref(), Some("SM1"));

    // A holder that died keeps the reply until its claim lapses, then another sends it.
    let orphan = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (reply_id, channel, recipient, claimed_until)
         VALUES ($1, 'social', 'whatsapp:1', now() + interval '1 minute')",
    )
    .bind(orphan)
    .execute(&pool)
    .await
    .unwrap();
    let held = deliver_once(&pool, orphan, "social", "whatsapp:1", || async {
        Ok("wamid.1".to_string())
    })
    .await;
    assert!(matches!(held, Err(HandlerError::Transient(_))), "{held:?}");
    sqlx::query(
        "UPDATE deliveries SET claimed_until = now() - interval '1 second' WHERE reply_id = $1",
    )
    .bind(orphan)
    .execute(&pool)
    .await
    .unwrap();
    let lapsed = deliver_once(&pool, orphan, "social", "whatsapp:1", || async {
        Ok("wamid.1".to_string())
    })
    .await
    .unwrap();
    assert_eq!(lapsed.as_deref(), Some("wamid.1"));
}
