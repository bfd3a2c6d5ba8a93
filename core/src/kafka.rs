//! Kafka plumbing: topic creation, the acknowledged producer, and the at-least-once consumer loop.
//!
//! Guarantees: [`Publisher::publish`] returns only after the broker acknowledged the record
//! (`acks=all`, idempotent producer). [`run_consumer`] stores a record's offset only after its
//! handler (and the handler's batch flush) succeeded, or after the record was written to the
//! dead-letter topic; a crash therefore redelivers, never skips. Handlers make their effects
//! idempotent (see ARCHITECTURE.md).

use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use switchboard_contracts::{derived_id, encode, DeadLetter, Envelope, Event, Topic};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::KafkaConfig;
use crate::{Error, Retry};

/// The librdkafka client config for `cfg`: brokers plus pass-through options.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.client_options {
        c.set(k, v);
    }
    c
}

fn kafka_error(e: KafkaError) -> Error {
    let retry = match &e {
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        )
        | KafkaError::ClientConfig(..) => Retry::Never,
        _ => Retry::WithBackoff,
    };
    Error::Kafka(e.to_string(), retry)
}

/// Creates every Switchboard topic under the configured prefix; existing topics are left alone.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg).create().map_err(kafka_error)?;
    let names: Vec<String> = Topic::ALL
        .iter()
        .map(|t| t.name(&cfg.topic_prefix))
        .collect();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(kafka_error)?;
    for r in results {
        match r {
            Ok(name) => info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Kafka(
                    format!("cannot create topic {name}: {code}"),
                    Retry::WithBackoff,
                ));
            }
        }
    }
    Ok(())
}

/// The acknowledged producer. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Publisher {
    /// A producer with `acks=all` and idempotence on; sends fail after `produce_timeout_ms`.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, Error> {
        let timeout = Duration::from_millis(cfg.produce_timeout_ms.max(1));
        let producer: FutureProducer = client_config(cfg)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .create()
            .map_err(kafka_error)?;
        Ok(Publisher {
            producer,
            prefix: cfg.topic_prefix.clone(),
            timeout,
        })
    }

    /// The wire name of `topic`.
    pub fn topic_name(&self, topic: Topic) -> String {
        topic.name(&self.prefix)
    }

    /// The installation's topic prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Publishes an event in its envelope; returns `(partition, offset)` once acknowledged.
    pub async fn publish<T: Event>(&self, envelope: &Envelope<T>) -> Result<(i32, i64), Error> {
        self.publish_bytes(T::TOPIC, &envelope.payload.key(), &encode(envelope))
            .await
    }

    /// Publishes pre-encoded bytes.
    pub async fn publish_bytes(
        &self,
        topic: Topic,
        key: &str,
        bytes: &[u8],
    ) -> Result<(i32, i64), Error> {
        let name = self.topic_name(topic);
        let record = FutureRecord::to(&name).key(key).payload(bytes);
        let started = Instant::now();
        let result = self.producer.send(record, self.timeout).await;
        metrics::histogram!("switchboard_produce_seconds", "topic" => topic.base_name())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => {
                metrics::counter!("switchboard_produced_total", "topic" => topic.base_name())
                    .increment(1);
                Ok((delivery.partition, delivery.offset))
            }
            Err((e, _)) => {
                metrics::counter!("switchboard_produce_errors_total", "topic" => topic.base_name())
                    .increment(1);
                Err(kafka_error(e))
            }
        }
    }

    /// Asks the cluster for metadata: proves a broker answers.
    pub async fn check(&self) -> Result<(), Error> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::Kafka(e.to_string(), Retry::WithBackoff))?
        .map_err(kafka_error)
    }

    /// Waits for queued records to be delivered (on shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.producer.flush(Duration::from_secs(5)) {
            warn!(error = %e, "producer flush on shutdown failed");
        }
    }
}

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
}

/// Why a handler failed, and so what the loop does next.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be processed: it goes to the dead-letter topic and the loop moves on.
    #[error("{0}")]
    Permanent(String),
    /// A dependency failed: the loop backs off and tries the same record again.
    #[error("{0}")]
    Transient(String),
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        match e.retry() {
            Retry::Never => HandlerError::Permanent(e.to_string()),
            Retry::WithBackoff => HandlerError::Transient(e.to_string()),
        }
    }
}

impl From<switchboard_contracts::DecodeError> for HandlerError {
    fn from(e: switchboard_contracts::DecodeError) -> Self {
        HandlerError::Permanent(e.to_string())
    }
}

/// A stage's processing logic. `handle` sees each record in partition order; `flush` is called
/// after each batch and must make the batch durable (a sink writes its buffer there). Offsets of
/// the batch are stored only after `flush` succeeds.
pub trait Handler: Send {
    fn handle(&mut self, record: Record) -> impl Future<Output = Result<(), HandlerError>> + Send;

    fn flush(&mut self) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async { Ok(()) }
    }

    /// Another handle on the same component for a concurrent lane, if records with different
    /// keys may be handled at the same time (the component is safe under concurrency and keeps
    /// nothing between records that `flush` needs). `None`: one record at a time.
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// How a consumer loop runs.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Consumer group: replicas of a stage share it and split the partitions.
    pub group: String,
    pub topics: Vec<Topic>,
    /// Records per batch before `flush`.
    pub batch_max: usize,
    /// Longest wait for more records before flushing a partial batch.
    pub batch_wait: Duration,
    /// Records of different keys handled at once within a batch (needs [`Handler::fork`]);
    /// records of one key stay in order.
    pub concurrency: usize,
    /// A group with no committed offsets starts at the end of the topics (live views that load
    /// their state elsewhere) instead of the beginning (every stage).
    pub from_latest: bool,
}

/// Reports per-partition consumer lag from librdkafka's statistics into `/metrics`.
struct LagContext {
    group: String,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "switchboard_consumer_lag",
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(50) * 2u32.saturating_pow(attempt.min(10))).min(MAX_BACKOFF)
}

/// Runs a consumer until `shutdown` fires, committing what was processed before returning.
pub async fn run_consumer<H: Handler>(
    kafka: &KafkaConfig,
    publisher: Publisher,
    settings: ConsumerSettings,
    mut handler: H,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut config = ClientConfig::new();
    // A crashed member's partitions move on after the session timeout: keep it short so a
    // restarted or surviving instance takes over within seconds. Client options may override it.
    config
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        // A fetch that finds nothing returns after this long: each hop of the pipeline waits at
        // most this for new records (librdkafka's default of 500 ms would add up per stage).
        .set("fetch.wait.max.ms", "25");
    for (k, v) in client_config(kafka).config_map() {
        config.set(k, v);
    }
    let consumer: StreamConsumer<LagContext> = config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if settings.from_latest {
                "latest"
            } else {
                "earliest"
            },
        )
        .set("statistics.interval.ms", "5000")
        .create_with_context(LagContext {
            group: settings.group.clone(),
        })
        .map_err(kafka_error)?;
    let names: Vec<String> = settings
        .topics
        .iter()
        .map(|t| publisher.topic_name(*t))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(kafka_error)?;
    info!(group = %settings.group, topics = ?names, "consumer started");

    let group = settings.group.clone();
    let mut batch: BTreeMap<(Topic, i32), i64> = BTreeMap::new();
    'outer: loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break 'outer,
            m = consumer.recv() => m,
        };
        let mut next = Some(first);
        let deadline = Instant::now() + settings.batch_wait;
        let mut records = Vec::new();
        while let Some(received) = next.take() {
            match received {
                Ok(m) => {
                    let Some(topic) = Topic::from_wire_name(publisher.prefix(), m.topic()) else {
                        warn!(topic = m.topic(), "record from an unexpected topic skipped");
                        continue;
                    };
                    records.push(Record {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                Err(e) => {
                    warn!(error = %e, group = %group, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if records.len() >= settings.batch_max.max(1) {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            next = tokio::time::timeout(remaining, consumer.recv()).await.ok();
        }
        for r in &records {
            let e = batch.entry((r.topic, r.partition)).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        if !handle_batch(
            &mut handler,
            &publisher,
            &group,
            records,
            settings.concurrency,
            &shutdown,
        )
        .await
        {
            break 'outer;
        }
        // Make the batch durable, then store its offsets.
        let mut attempt = 0;
        loop {
            match handler.flush().await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, group = %group, attempt, "flush failed, retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                    }
                }
            }
        }
        for ((topic, partition), offset) in std::mem::take(&mut batch) {
            if let Err(e) = consumer.store_offset(&publisher.topic_name(topic), partition, offset) {
                // Happens when a rebalance moved the partition away: the new owner redelivers.
                debug!(error = %e, topic = %topic, partition, "offset not stored");
            }
        }
    }
    // The final commit and close block on the broker: do them off the runtime, bounded in time.
    let g = group.clone();
    let close = tokio::task::spawn_blocking(move || {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, group = %g, "final commit skipped");
        }
        drop(consumer);
    });
    if tokio::time::timeout(Duration::from_secs(10), close)
        .await
        .is_err()
    {
        warn!(group = %group, "consumer close timed out; uncommitted records will be redelivered");
    }
    info!(group = %group, "consumer stopped");
    Ok(())
}

/// Handles a batch: one record at a time, or, when the handler forks and `concurrency` allows,
/// in lanes by (topic, partition, key) run at once, each lane in order. Returns false if
/// shutdown interrupted it (the batch is then redelivered).
async fn handle_batch<H: Handler>(
    handler: &mut H,
    publisher: &Publisher,
    group: &str,
    records: Vec<Record>,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> bool {
    if concurrency <= 1 || records.len() <= 1 || handler.fork().is_none() {
        for record in records {
            if !process(handler, publisher, group, record, shutdown).await {
                return false;
            }
        }
        return true;
    }
    let mut lanes: Vec<Vec<Record>> = Vec::new();
    let mut index: std::collections::HashMap<(Topic, i32, Option<String>), usize> =
        std::collections::HashMap::new();
    for r in records {
        let k = (r.topic, r.partition, r.key.clone());
        let i = *index.entry(k).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[i].push(r);
    }
    let forks: Vec<H> = lanes.iter().filter_map(|_| handler.fork()).collect();
    let results: Vec<bool> = futures::stream::iter(lanes.into_iter().zip(forks))
        .map(|(lane, mut h)| async move {
            for record in lane {
                if !process(&mut h, publisher, group, record, shutdown).await {
                    return false;
                }
            }
            true
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().all(|ok| ok)
}

/// Handles one record: retries transient failures, dead-letters permanent ones. Returns false if
/// shutdown interrupted it (the record is then left uncommitted and will be redelivered).
async fn process<H: Handler>(
    handler: &mut H,
    publisher: &Publisher,
    group: &str,
    record: Record,
    shutdown: &CancellationToken,
) -> bool {
    let topic = record.topic;
    let mut attempt = 0;
    loop {
        let started = std::time::Instant::now();
        let outcome = handler.handle(record.clone()).await;
        // Where the time goes, per stage (the simulator's breakdown reads the sums).
        metrics::histogram!("switchboard_handle_seconds", "group" => group.to_string(), "topic" => topic.base_name())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                metrics::counter!("switchboard_consumed_total", "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "ok").increment(1);
                return true;
            }
            Err(HandlerError::Permanent(reason)) => {
                metrics::counter!("switchboard_consumed_total", "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "dead_letter").increment(1);
                warn!(group, topic = %topic, partition = record.partition, offset = record.offset, reason = %reason, "record dead-lettered");
                return dead_letter(publisher, group, &record, reason, shutdown).await;
            }
            Err(HandlerError::Transient(reason)) => {
                attempt += 1;
                warn!(group, topic = %topic, offset = record.offset, attempt, reason = %reason, "transient failure, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

async fn dead_letter(
    publisher: &Publisher,
    group: &str,
    record: &Record,
    reason: String,
    shutdown: &CancellationToken,
) -> bool {
    let (payload_text, payload_base64) = match &record.payload {
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => {
                use base64::Engine as _;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                )
            }
        },
        None => (None, None),
    };
    let source_topic = publisher.topic_name(record.topic);
    let id = derived_id(
        switchboard_contracts::MESSAGE_NAMESPACE,
        &format!(
            "{group}/{source_topic}/{}/{}",
            record.partition, record.offset
        ),
    );
    let env = Envelope::new(
        id,
        crate::clock::now(),
        DeadLetter {
            source_topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.clone(),
            consumer_group: group.to_string(),
            reason,
            payload_text,
            payload_base64,
        },
    );
    let mut attempt = 0;
    loop {
        match publisher.publish(&env).await {
            Ok(_) => return true,
            Err(e) => {
                attempt += 1;
                warn!(error = %e, attempt, "dead-letter publish failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e: HandlerError = switchboard_contracts::DecodeError::Empty.into();
        assert!(matches!(e, HandlerError::Permanent(_)));
        let e: HandlerError = Error::Kafka("down".into(), Retry::WithBackoff).into();
        assert!(matches!(e, HandlerError::Transient(_)));
    }
}
