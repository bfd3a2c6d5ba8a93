//! Floods from one client must not starve the others (real services): unsigned webhooks at ten
//! times the limit while the provider's signed calls still get through, a flood of wrong bearer
//! tokens while a real agent keeps working, and slow clients (headers or a body a byte at a
//! time, or nothing at all) cut off by the server while everyone else is served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{form_body, start};

use std::time::Duration;

use serde_json::Value;
use switchboard_ingest::sms::sign;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const URL: &str = "https://support.example.com/webhooks/sms";
/// Requests per second the flooded source takes (per client).
const LIMIT: usize = 5;

async fn post_sms(http: &reqwest::Client, base: &str, body: String, signature: &[u8]) -> u16 {
    http.post(format!("{base}/webhooks/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-twilio-signature",
            reqwest::header::HeaderValue::from_bytes(signature).unwrap(),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Hostile webhook calls: no, wrong, or garbage signatures over odd bodies.
fn hostile_sms(i: usize) -> (String, Vec<u8>) {
    let huge = "Ж".repeat(20_000);
    let (params, body) = form_body(&[
        ("MessageSid", &format!("SMflood{i}")),
        ("From", "+15550100666"),
        (
            "Body",
            match i % 4 {
                0 => "refund now \u{0} \u{1b}[31m",
                1 => "é\u{301}\u{1F600}\u{10FFFF}",
                2 => &huge,
                _ => "",
            },
        ),
    ]);
    let signature = match i % 5 {
        0 => Vec::new(),
        1 => b"not base64 !!".to_vec(),
        2 => sign("wrong-token", URL, &params).into_bytes(),
        3 => vec![0xC3, 0xA9, b'=', 0xFF],
        _ => sign(
            "tok-flood",
            "https://elsewhere.example/webhooks/sms",
            &params,
        )
        .into_bytes(),
    };
    (body, signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_sms_floods_never_take_the_providers_budget() {
    let (_h, node) = start(
        &["ingest"],
        &[
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "tok-flood"),
            ("SWITCHBOARD__CHANNELS__SMS__PUBLIC_URL", URL),
            ("SWITCHBOARD__INGEST__RATE_LIMITS__SMS", &LIMIT.to_string()),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    // Ten times the limit at once, wave after wave, until the signed calls are through.
    let flood = {
        let (http, base, stop) = (reqwest::Client::new(), node.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let mut wave = 0;
            while !stop.is_cancelled() || wave < 2 {
                let calls = (0..10 * LIMIT).map(|i| {
                    let (body, sig) = hostile_sms(wave * 100 + i);
                    let (http, base) = (&http, &base);
                    async move { post_sms(http, base, body, &sig).await }
                });
                codes.extend(futures::future::join_all(calls).await);
                wave += 1;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = reqwest::Client::new();
    let mut signed = Vec::new();
    for i in 0..3 {
        let (params, body) = form_body(&[
            ("MessageSid", &format!("SMreal{i}")),
            ("From", "+15550100001"),
            ("To", "+15550199999"),
            ("Body", "Where is my parcel?"),
        ]);
        let sig = sign("tok-flood", URL, &params);
        signed.push(post_sms(&http, &node.base, body, sig.as_bytes()).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.cancel();
    let codes = flood.await.unwrap();
    assert_eq!(
        signed,
        [200, 200, 200],
        "the provider got through the flood"
    );
    assert!(codes.len() >= 20 * LIMIT, "{} hostile calls", codes.len());
    assert!(
        codes.iter().all(|c| *c == 401),
        "unsigned calls are refused before any budget: {:?}",
        codes
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, c| {
                *m.entry(*c).or_insert(0) += 1;
                m
            })
    );
    // The provider's own budget still holds: a burst of signed calls over it is told to wait.
    let burst = (0..4 * LIMIT).map(|i| {
        let (params, body) = form_body(&[
            ("MessageSid", &format!("SMburst{i}")),
            ("From", "+15550100002"),
            ("Body", "hello"),
        ]);
        let sig = sign("tok-flood", URL, &params);
        let (http, base) = (&http, &node.base);
        async move { post_sms(http, base, body, sig.as_bytes()).await }
    });
    let codes = futures::future::join_all(burst).await;
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bearer_tokens_never_take_an_agents_budget() {
    let (h, node) = start(
        &["ingest", "serving"],
        &[
            (
                "SWITCHBOARD__INGEST__RATE_LIMITS__AGENT_API",
                &LIMIT.to_string(),
            ),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let agent = h
        .agent(&node, "flood-agent@example.com", &[], 3, false)
        .await;
    let token = h.issue_token(&node, "agent", Some(&agent), "console").await;
    // The agent's console is signed in before the flood starts.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/me", node.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (http, base, stop) = (reqwest::Client::new(), node.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let mut wave = 0;
            while !stop.is_cancelled() || wave < 2 {
                let calls = (0..10 * LIMIT).map(|i| {
                    let bad: Vec<u8> = match i % 5 {
                        0 => format!("Bearer wrong-{wave}-{i}").into_bytes(),
                        1 => b"Bearer same-wrong-token".to_vec(),
                        2 => [b"Bearer ".as_slice(), &[0xC3, 0xA9, 0xFF, b'\t', b'x']].concat(),
                        3 => format!("Bearer {}", "A".repeat(6000)).into_bytes(),
                        _ => format!("Basic {wave}{i}").into_bytes(),
                    };
                    let (http, base) = (&http, &base);
                    async move {
                        http.get(format!("{base}/v1/me"))
                            .header(
                                "authorization",
                                reqwest::header::HeaderValue::from_bytes(&bad).unwrap(),
                            )
                            .send()
                            .await
                            .unwrap()
                            .status()
                            .as_u16()
                    }
                });
                codes.extend(futures::future::join_all(calls).await);
                wave += 1;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = reqwest::Client::new();
    let mut mine = Vec::new();
    for _ in 0..3 {
        let r = http
            .get(format!("{}/v1/me", node.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        mine.push((status, v["role"].as_str().map(str::to_string)));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.cancel();
    let codes = flood.await.unwrap();
    assert!(
        mine.iter()
            .all(|(s, r)| *s == 200 && r.as_deref() == Some("agent")),
        "the agent works through the flood: {mine:?}"
    );
    assert!(codes.len() >= 20 * LIMIT, "{} hostile calls", codes.len());
    // Every wrong token is refused: 401, or 429 once the address has tried too many tokens that
    // do not work (or one of them too often); none ever got through.
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    assert!(codes.contains(&401), "{codes:?}");
}

/// Sends `bytes` one per second on `stream` while reading it: whether the server closed the
/// connection before everything was sent, and what it answered.
async fn drip(stream: tokio::net::TcpStream, head: &[u8], bytes: &[u8]) -> (bool, String) {
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head).await.unwrap();
    let reader = async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let writer = async move {
        for b in bytes {
            if wr.write_all(&[*b]).await.is_err() {
                // The server is gone: wait for the reader to see it.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        answer = reader => (true, answer),
        () = writer => (false, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let (h, node) = start(
        &["ingest"],
        &[
            ("SWITCHBOARD__HTTP__HEADER_READ_TIMEOUT_MS", "2000"),
            ("SWITCHBOARD__HTTP__BODY_READ_TIMEOUT_MS", "2000"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let addr = node.base.trim_start_matches("http://").to_string();
    let healthz = || async {
        // A fresh client each time: the server closes idle connections after the header timeout.
        reqwest::Client::new()
            .get(format!("{}/healthz", node.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    // Headers a byte per second (40 s worth): closed long before they are complete.
    let slow_head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let long_header = format!("X-Slow: {}\r\n\r\n", "é".repeat(16));
    let slow = tokio::spawn(async move {
        drip(
            slow_head,
            b"G",
            format!("ET /healthz HTTP/1.1\r\nHost: x\r\n{long_header}").as_bytes(),
        )
        .await
    });
    // A body a byte per second (60 s worth) after a complete header.
    let slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n",
        h.token
    );
    let body = tokio::spawn(async move { drip(slow_body, head.as_bytes(), &[b' '; 60]).await });
    // A connection that sends nothing at all.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let idle = tokio::spawn(async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), idle.read_to_end(&mut buf))
            .await
            .is_ok()
    });
    // Meanwhile everyone else is served.
    for _ in 0..3 {
        assert_eq!(healthz().await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (closed, answer) = slow.await.unwrap();
    assert!(closed, "the slow header was cut off before it was complete");
    assert!(!answer.contains("200 OK"), "{answer}");
    let (closed, answer) = body.await.unwrap();
    assert!(closed, "the slow body was cut off before it was complete");
    assert!(
        !answer.contains(" 202 "),
        "nothing accepted from a cut-off body: {answer}"
    );
    assert!(idle.await.unwrap(), "an idle connection is closed");
    assert_eq!(healthz().await, 200);
}
