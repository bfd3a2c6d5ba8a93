//! A stop as a rolling restart sees it: after SIGTERM, `/readyz` answers 503 (`draining`) at
//! once while the API goes on answering for `shutdown.unready_ms` (the load balancer takes the
//! instance out meanwhile); then the process drains and exits cleanly, within its budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{eventually, start};

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The node's exit status once it exits, failing the test after a minute.
async fn exit_within_a_minute(node: &mut common::Node) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = node.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readiness_false_first_keeps_answering_then_exits_cleanly() {
    let (h, mut node) = start(
        &["serving"],
        &[
            ("SWITCHBOARD__SHUTDOWN__UNREADY_MS", "6000"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, base: String| async move {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json::<Value>().await.ok()?))
    };
    let (s, _) = ready(http.clone(), node.base.clone()).await.unwrap();
    assert_eq!(s, 200);
    let (s, _) = h.get(&node, "/v1/me").await;
    assert_eq!(s, 200);

    let signalled = Instant::now();
    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).unwrap();
    let v = eventually("readiness false", Duration::from_secs(3), || {
        let (http, base) = (http.clone(), node.base.clone());
        async move {
            let (s, v) = ready(http, base).await?;
            (s == 503).then_some(v)
        }
    })
    .await;
    assert_eq!(
        (v["ready"].as_bool(), v["draining"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    // Still answering: a request that reaches it now is served, not refused.
    let (s, me) = h.get(&node, "/v1/me").await;
    assert_eq!(s, 200, "{me}");
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "the unready window had already passed: the test machine is too slow to tell"
    );
    // Then it stops, cleanly: exit status 0 within the window and the drain.
    let status = exit_within_a_minute(&mut node).await;
    assert!(status.success(), "{status:?}: {}", node.log_tail());
    assert!(
        signalled.elapsed() >= Duration::from_secs(6),
        "it stopped before its unready window ended"
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("draining: not ready, still answering"),
        "{log}"
    );
}

/// Reads one SMTP reply (every line of a multi-line one), or what was read when the server
/// closed the connection.
async fn smtp_reply(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    use tokio::io::AsyncBufReadExt as _;
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line))
            .await
            .expect("an smtp reply within 30 s")
            .unwrap_or(0);
        all.push_str(&line);
        if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_lets_an_smtp_message_under_way_finish_and_turns_idle_sessions_away() {
    use tokio::io::AsyncWriteExt as _;
    let (_h, mut node) = start(
        &["ingest"],
        &[
            ("SWITCHBOARD__SHUTDOWN__UNREADY_MS", "300"),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let open = |addr: String| async move {
        let (r, w) = tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap()
            .into_split();
        let mut r = tokio::io::BufReader::new(r);
        assert!(smtp_reply(&mut r).await.starts_with("220"));
        (r, w)
    };
    // One sender in the middle of its message's body, one connected between messages.
    let (mut r, mut w) = open(node.smtp.clone()).await;
    for cmd in [
        "EHLO sender.example\r\n",
        "MAIL FROM:<Zoë@example.org>\r\n",
        "RCPT TO:<help@switchboard.localhost>\r\n",
        "DATA\r\n",
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let rep = smtp_reply(&mut r).await;
        assert!(rep.starts_with('2') || rep.starts_with('3'), "{cmd}: {rep}");
    }
    w.write_all("From: Zoë <zoe@example.org>\r\nTo: help@switchboard.localhost\r\nSubject: mid-stop ✓\r\n\r\nThe first half, \u{7} with a bell,\r\n".as_bytes())
        .await
        .unwrap();
    let (mut idle_r, mut idle_w) = open(node.smtp.clone()).await;
    idle_w.write_all(b"EHLO idle.example\r\n").await.unwrap();
    assert!(smtp_reply(&mut idle_r).await.starts_with("250"));

    kill(Pid::from_raw(node.child.id() as i32), Signal::SIGTERM).unwrap();
    // The idle session is told at once once the unready window passed: 421, and closed.
    let told = smtp_reply(&mut idle_r).await;
    assert!(told.starts_with("421"), "idle session: {told:?}");
    // MAIL in that state would start a new transaction: the sender under way is not cut off.
    w.write_all(b"MAIL the second half, after the stop\r\n.\r\n")
        .await
        .unwrap();
    let done = smtp_reply(&mut r).await;
    assert!(
        done.starts_with("250"),
        "the message begun before the stop: {done:?}: {}",
        node.log_tail()
    );
    let after = smtp_reply(&mut r).await;
    assert!(after.starts_with("421"), "then 421: {after:?}");

    let status = exit_within_a_minute(&mut node).await;
    assert!(status.success(), "{status:?}: {}", node.log_tail());
}
