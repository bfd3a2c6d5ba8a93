//! The consumer loop against the real broker: a record whose handler panics is dead-lettered with
//! the panic's message and the partition moves on (a poison record never stops a role); a record
//! that keeps failing transiently is parked in the retry topic after `kafka.max_attempts`, handed
//! back to its group only (another group on the same topic does not see the copy) and handled
//! there; one that never succeeds is dead-lettered after `kafka.max_parks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_contracts::{decode, DeadLetter, Topic};
use switchboard_core::config::KafkaConfig;
use switchboard_core::kafka::{self, ConsumerSettings, Handler, HandlerError, Publisher, Record};
use tokio_util::sync::CancellationToken;

/// Records what it saw; panics on `panic`, fails transiently on `flaky` until the record was
/// parked once, and on `never` always.
#[derive(Clone, Default)]
struct Picky {
    seen: Arc<Mutex<Vec<(String, u32)>>>,
}

impl Handler for Picky {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let text = String::from_utf8(record.payload.clone().unwrap_or_default()).unwrap();
        match text.as_str() {
            "panic" => {
                // What a byte slice inside a multi-byte character does.
                let s = "Где мой заказ";
                let n = std::hint::black_box(1);
                let _ = &s[..n];
                unreachable!()
            }
            "flaky" if record.parks == 0 => {
                return Err(HandlerError::Transient("mailbox busy".into()))
            }
            "never" => return Err(HandlerError::Transient("mailbox busy".into())),
            _ => {}
        }
        self.seen.lock().unwrap().push((text, record.parks));
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Collect {
    seen: Arc<Mutex<Vec<Record>>>,
}

impl Handler for Collect {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(record);
        Ok(())
    }
}

fn settings(group: String, topic: Topic) -> ConsumerSettings {
    ConsumerSettings {
        group,
        topics: vec![topic],
        batch_max: 16,
        batch_wait: Duration::from_millis(5),
        concurrency: 1,
        fetch_wait: None,
        from_latest: false,
    }
}

/// Runs `handler` as the group `<prefix>name` on `topic` until `shutdown`.
fn consume<H: Handler + Send + Sync + 'static>(
    cfg: &KafkaConfig,
    publisher: &Publisher,
    shutdown: &CancellationToken,
    name: &str,
    topic: Topic,
    handler: H,
) -> tokio::task::JoinHandle<Result<(), switchboard_core::Error>> {
    let (c, p, s) = (cfg.clone(), publisher.clone(), shutdown.clone());
    let st = settings(format!("{}{name}", c.topic_prefix), topic);
    tokio::spawn(async move { kafka::run_consumer(&c, p, st, handler, s).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_transient_ones_parked_and_handed_back() {
    let services = common::services();
    let prefix = format!("consumer{}.", uuid::Uuid::now_v7().simple());
    let cfg = KafkaConfig {
        brokers: services.kafka.clone(),
        topic_prefix: prefix.clone(),
        partitions: 1,
        max_attempts: 2,
        park_delay_ms: 200,
        max_parks: 2,
        // As the repository's pipelines.yaml: the embedded broker takes no idempotent producer.
        idempotent: false,
        ..KafkaConfig::default()
    };
    kafka::ensure_topics(&cfg).await.unwrap();
    let publisher = Publisher::new(&cfg).unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    let picky = Picky::default();
    let other = Collect::default();
    let dead = Collect::default();
    {
        tasks.push(consume(
            &cfg,
            &publisher,
            &shutdown,
            "picky",
            Topic::InboundMessages,
            picky.clone(),
        ));
        tasks.push(consume(
            &cfg,
            &publisher,
            &shutdown,
            "other",
            Topic::InboundMessages,
            other.clone(),
        ));
        tasks.push(consume(
            &cfg,
            &publisher,
            &shutdown,
            "dead",
            Topic::DeadLetter,
            dead.clone(),
        ));
        let (c, p, s) = (cfg.clone(), publisher.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            kafka::run_retry_relay(&c, p, s).await
        }));
    }

    for text in ["first", "panic", "flaky", "never", "last"] {
        publisher
            .publish_bytes(Topic::InboundMessages, "k", text.as_bytes())
            .await
            .unwrap();
    }

    // The partition moved past the poison and the flaky records; the flaky one came back once.
    let seen = common::eventually("every record handled", Duration::from_secs(90), || {
        let seen = picky.seen.lock().unwrap().clone();
        async move { (seen.len() >= 3).then_some(seen) }
    })
    .await;
    assert_eq!(seen[0], ("first".to_string(), 0));
    assert_eq!(
        seen[1],
        ("last".to_string(), 0),
        "the parked records did not hold the partition"
    );
    assert_eq!(
        seen[2],
        ("flaky".to_string(), 1),
        "handed back after one park"
    );

    // The panic and the record that never succeeds are dead letters, with their reasons.
    let letters = common::eventually("two dead letters", Duration::from_secs(90), || {
        let d = dead.seen.lock().unwrap().clone();
        async move { (d.len() >= 2).then_some(d) }
    })
    .await;
    let letters: Vec<DeadLetter> = letters
        .iter()
        .map(|r| decode::<DeadLetter>(r.payload.as_deref()).unwrap().payload)
        .collect();
    let panicked = letters
        .iter()
        .find(|l| l.payload_text.as_deref() == Some("panic"))
        .expect("the panicking record is a dead letter");
    assert!(
        panicked.reason.starts_with("handler panicked:")
            && panicked.reason.contains("char boundary"),
        "{}",
        panicked.reason
    );
    assert_eq!(panicked.consumer_group, format!("{prefix}picky"));
    let gave_up = letters
        .iter()
        .find(|l| l.payload_text.as_deref() == Some("never"))
        .expect("the record that never succeeds is a dead letter");
    assert!(
        gave_up.reason.contains("2 parks") && gave_up.reason.contains("mailbox busy"),
        "{}",
        gave_up.reason
    );

    // The other group saw each original once and none of the copies handed back to `picky`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts: Vec<String> = other
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap_or_default()).unwrap())
        .collect();
    assert_eq!(texts, ["first", "panic", "flaky", "never", "last"]);
    assert!(other.seen.lock().unwrap().iter().all(|r| r.parks == 0));
    assert!(
        !picky.seen.lock().unwrap().iter().any(|(t, _)| t == "panic"),
        "a panicking record is never counted as handled"
    );

    shutdown.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}
