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
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = node.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
