//! Channel connectors against real services: the signed SMS webhook.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{eventually, Harness};
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

#[tokio::test(flavor = "multi_thread")]
async fn signed_sms_become_one_conversation_and_bad_ones_are_refused() {
    let h = Harness::new().await;
    let node = h
        .spawn(
            &["ingest", "processors", "serving"],
            &[
                ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-123".into()),
                ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", URL.into()),
                ("SWITCHBOARD__MODELS__ENABLED", "false".into()),
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
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((messages, tickets, all), (2, 1, 2));
    let phone: String = sqlx::query_scalar("SELECT c.phone FROM customers c JOIN tickets t ON t.customer_id = c.id WHERE t.channel = 'sms'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(phone, "+15550100001");
}
