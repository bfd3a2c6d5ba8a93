//! Kafka plumbing: topic creation, the acknowledged producer, and the at-least-once consumer loop.
//!
//! Guarantees: [`Publisher::publish`] returns only after the broker acknowledged the record
//! (`acks=all`, idempotent producer unless `kafka.idempotent` is off). [`run_consumer`] stores a record's offset only after its
//! handler (and the handler's batch flush) succeeded, or after the record was written to the
//! dead-letter topic; a crash therefore redelivers, never skips. Handlers make their effects
//! idempotent (see ARCHITECTURE.md).

use futures::{FutureExt as _, StreamExt as _};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use rdkafka::{Offset, TopicPartitionList};
use switchboard_contracts::{derived_id, encode, DeadLetter, Envelope, Event, Parked, Topic};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::KafkaConfig;
use crate::{Error, Retry};

/// The librdkafka client config for `cfg`: brokers plus pass-through options.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.client_options {
        c.set(k, v.expose());
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

/// How long to pause before sending a refused record again, `None` when sending it again cannot
/// help: a refusal that never succeeds, a record librdkafka already timed out (its own retries
/// spent the deadline), or a producer in a fatal state. The pause doubles from 50 ms to 800 ms.
fn resend_pause(e: &KafkaError, attempt: u32) -> Option<Duration> {
    let KafkaError::MessageProduction(code) = e else {
        return None;
    };
    if matches!(kafka_error(e.clone()), Error::Kafka(_, Retry::Never)) {
        return None;
    }
    match code {
        RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::Fatal => None,
        _ => Some(Duration::from_millis(50u64 << (attempt.clamp(1, 5) - 1))),
    }
}

/// What [`read_window`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Every partition still held its records from before the window's start: nothing in the
    /// window was deleted by retention.
    pub retained: bool,
    /// Records handed over.
    pub records: u64,
}

/// One topic of a [`read_window`]: from when (milliseconds since the epoch, by the records'
/// timestamps), and whether its records must all still be there (`retained` counts it).
#[derive(Debug, Clone, Copy)]
pub struct WindowTopic {
    pub topic: Topic,
    pub since_ms: i64,
    pub required: bool,
}

/// Reads the records of `topics` (each from its own start) up to each partition's end as it
/// was when the read began, handing each topic and payload to `each` (which stops the read by
/// answering false: an error); reads as no consumer group (nothing committed). Blocking: call
/// it off the async workers. A broker that cannot look offsets up by time is read from the
/// partition's start (`each` filters by the envelope's time anyway). More than `max_records`,
/// or `deadline` passed, is an error: the caller picks another source. With `only_retained`,
/// a window a required topic no longer holds whole is not read at all (`records` 0).
pub fn read_window(
    cfg: &KafkaConfig,
    topics: &[WindowTopic],
    max_records: u64,
    deadline: Duration,
    only_retained: bool,
    mut each: impl FnMut(Topic, &[u8]) -> bool,
) -> Result<Window, Error> {
    use rdkafka::consumer::BaseConsumer;
    let started = Instant::now();
    let timeout = Duration::from_secs(5);
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}dry-run", cfg.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A history read: large fetches, and no waiting at the broker for more.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(kafka_error)?;
    let mut assign = TopicPartitionList::new();
    // (topic name, partition) -> (topic, last offset to read)
    let mut ends: HashMap<(String, i32), (Topic, i64)> = HashMap::new();
    let mut retained = true;
    // Counted from the offsets before anything is read: a window too large costs no reading.
    let mut planned = 0u64;
    for &WindowTopic {
        topic,
        since_ms,
        required,
    } in topics
    {
        let name = topic.name(&cfg.topic_prefix);
        let md = consumer
            .fetch_metadata(Some(&name), timeout)
            .map_err(kafka_error)?;
        for mt in md.topics() {
            for p in mt.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(&name, p.id(), timeout)
                    .map_err(kafka_error)?;
                if high <= low {
                    // Every record it had is deleted: the window's may have been among them.
                    retained &= low == 0 || !required;
                    continue;
                }
                let mut at = TopicPartitionList::new();
                at.add_partition_offset(&name, p.id(), Offset::Offset(since_ms))
                    .map_err(kafka_error)?;
                let start = match consumer.offsets_for_times(at, timeout) {
                    Ok(found) => match found.elements().first().map(|e| e.offset()) {
                        Some(Offset::Offset(n)) if n >= low => n,
                        // Nothing at or after the start: this partition has no part in it.
                        Some(Offset::End) => continue,
                        _ => low,
                    },
                    Err(e) => {
                        debug!(error = %e, topic = %name, "no offset lookup by time; reading from the start");
                        low
                    }
                };
                // The first record kept is already inside the window: older ones of it may
                // have been deleted.
                if required && low > 0 && start == low {
                    retained = false;
                }
                if start >= high {
                    continue;
                }
                planned += (high - start) as u64;
                if planned > max_records {
                    return Err(Error::Kafka(
                        format!("more than {max_records} records in the window"),
                        Retry::Never,
                    ));
                }
                assign
                    .add_partition_offset(&name, p.id(), Offset::Offset(start))
                    .map_err(kafka_error)?;
                ends.insert((name.clone(), p.id()), (topic, high - 1));
            }
        }
    }
    let mut records = 0u64;
    if ends.is_empty() || (only_retained && !retained) {
        return Ok(Window { retained, records });
    }
    consumer.assign(&assign).map_err(kafka_error)?;
    while !ends.is_empty() {
        if started.elapsed() > deadline {
            return Err(Error::Kafka(
                format!("the window was not read within {deadline:?}"),
                Retry::Never,
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(kafka_error)?;
        let key = (m.topic().to_string(), m.partition());
        let Some((topic, last)) = ends.get(&key).copied() else {
            continue;
        };
        if m.offset() > last {
            ends.remove(&key);
            continue;
        }
        records += 1;
        if let Some(p) = m.payload() {
            if !each(topic, p) {
                return Err(Error::Kafka(
                    "the window is larger than a dry run holds".into(),
                    Retry::Never,
                ));
            }
        }
        if m.offset() >= last {
            ends.remove(&key);
        }
    }
    Ok(Window { retained, records })
}

/// Creates every Switchboard topic under the configured prefix; existing topics are left alone.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg).create().map_err(kafka_error)?;
    let names: Vec<String> = Topic::ALL
        .iter()
        .map(|t| t.name(&cfg.topic_prefix))
        .collect();
    let retention = cfg.retention_ms.to_string();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
            .set("retention.ms", &retention)
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
    // Topics that existed already get the configured retention too (a broker that does not keep
    // topic configs, like the embedded one, says so in the log and keeps its own).
    let resources: Vec<AlterConfig<'_>> = names
        .iter()
        .map(|n| AlterConfig::new(ResourceSpecifier::Topic(n)).set("retention.ms", &retention))
        .collect();
    match admin.alter_configs(resources.iter(), &opts).await {
        Ok(results) => {
            for r in results {
                if let Err((resource, code)) = r {
                    warn!(resource = ?resource, code = %code, "topic retention not applied");
                }
            }
        }
        Err(e) => warn!(error = %e, "topic retention not applied"),
    }
    Ok(())
}

/// The acknowledged producer. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<ProducerStats>,
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
    /// A producer with `acks=all`, idempotent unless `kafka.idempotent` is off (then one
    /// request in flight per connection, so order holds); sends fail after `produce_timeout_ms`.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, Error> {
        let timeout = Duration::from_millis(cfg.produce_timeout_ms.max(1));
        let mut config = client_config(cfg);
        if cfg.idempotent {
            config.set("enable.idempotence", "true");
        } else {
            config.set("enable.idempotence", "false");
            if !cfg
                .client_options
                .contains_key("max.in.flight.requests.per.connection")
            {
                config.set("max.in.flight.requests.per.connection", "1");
            }
        }
        let producer: FutureProducer<ProducerStats> = config
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("statistics.interval.ms", "5000")
            .create_with_context(ProducerStats::default())
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
        self.publish_bytes_with_headers(topic, key, bytes, &[])
            .await
    }

    /// Publishes pre-encoded bytes with headers. A record the broker refused with an error
    /// librdkafka does not retry itself (an "unknown server error" from a broker's storage, say)
    /// is sent again with a growing pause while `produce_timeout_ms` lasts, counted from the
    /// first send: at-least-once, a duplicate being suppressed by its consumers' idempotent
    /// writes (see ARCHITECTURE.md). A refusal that can never succeed (too large, not
    /// authorized) and a record librdkafka already timed out are not sent again.
    pub async fn publish_bytes_with_headers(
        &self,
        topic: Topic,
        key: &str,
        bytes: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(i32, i64), Error> {
        let name = self.topic_name(topic);
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut attempt = 0u32;
        let result = loop {
            let mut record = FutureRecord::to(&name).key(key).payload(bytes);
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (k, v) in headers {
                    h = h.insert(rdkafka::message::Header {
                        key: k,
                        value: Some(*v),
                    });
                }
                record = record.headers(h);
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let sent = self.producer.send(record, left);
            // A resend is bounded by what is left of the deadline; the first send by librdkafka's
            // own message timeout, which is the same deadline.
            let sent = if attempt == 0 {
                sent.await
            } else {
                match tokio::time::timeout(left, sent).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        break Err(KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageTimedOut,
                        ))
                    }
                }
            };
            match sent {
                Ok(delivery) => break Ok(delivery),
                Err((e, _)) => {
                    attempt += 1;
                    let pause = resend_pause(&e, attempt);
                    match pause {
                        Some(pause) if Instant::now() + pause < deadline => {
                            metrics::counter!(crate::telemetry::PRODUCE_RESENDS_TOTAL, "topic" => topic.base_name())
                                .increment(1);
                            warn!(error = %e, topic = %name, attempt, "the broker refused a record, sending it again");
                            tokio::time::sleep(pause).await;
                        }
                        _ => break Err(e),
                    }
                }
            }
        };
        metrics::histogram!(crate::telemetry::PRODUCE_SECONDS, "topic" => topic.base_name())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => {
                metrics::counter!(crate::telemetry::PRODUCED_TOTAL, "topic" => topic.base_name())
                    .increment(1);
                Ok((delivery.partition, delivery.offset))
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::PRODUCE_ERRORS_TOTAL, "topic" => topic.base_name())
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
    /// How many times this record was parked in the retry topic before (0 for a first delivery).
    pub parks: u32,
}

/// Header naming the one consumer group a record handed back from the retry topic is for.
const GROUP_HEADER: &str = "switchboard-group";
/// Header counting the parks of a record handed back from the retry topic.
const PARKS_HEADER: &str = "switchboard-parks";

/// Why a handler failed, and so what the loop does next.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record can never be processed: it goes to the dead-letter topic and the loop moves on.
    #[error("{0}")]
    Permanent(String),
    /// A dependency failed: the loop backs off and tries the same record again, a bounded number
    /// of times (`kafka.max_attempts`), then parks it in the retry topic and moves on.
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
    /// How long a fetch may wait at the broker when nothing is there; `None`:
    /// `kafka.fetch_wait_ms` (see there).
    pub fetch_wait: Option<Duration>,
    /// A group with no committed offsets starts at the end of the topics (live views that load
    /// their state elsewhere) instead of the beginning (every stage).
    pub from_latest: bool,
}

/// Adds a client's record bytes (cumulative in librdkafka's statistics) to
/// `switchboard_kafka_message_bytes_total`, by what grew since its last report.
#[derive(Default)]
struct ByteCount {
    out: std::sync::atomic::AtomicI64,
    fetched: std::sync::atomic::AtomicI64,
}

impl ByteCount {
    fn add(&self, stats: &Statistics) {
        use std::sync::atomic::Ordering::Relaxed;
        for (last, now, direction) in [
            (&self.out, stats.txmsg_bytes, "out"),
            (&self.fetched, stats.rxmsg_bytes, "in"),
        ] {
            let before = last.swap(now, Relaxed);
            if now > before {
                metrics::counter!(crate::telemetry::KAFKA_MESSAGE_BYTES_TOTAL, "direction" => direction)
                    .increment((now - before) as u64);
            }
        }
    }
}

/// The producer's statistics: the bytes it sent.
#[derive(Default)]
struct ProducerStats {
    bytes: ByteCount,
}

impl ClientContext for ProducerStats {
    fn stats(&self, stats: Statistics) {
        self.bytes.add(&stats);
    }
}

/// Reports per-partition consumer lag from librdkafka's statistics into `/metrics`.
struct LagContext {
    group: String,
    bytes: ByteCount,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        self.bytes.add(&stats);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    crate::telemetry::CONSUMER_LAG,
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {
    /// Says in the log which partitions this member now owns: the first thing to read when one
    /// instance of a role does all the work (a broker that assigned it every partition).
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use rdkafka::consumer::Rebalance;
        let (kind, partitions) = match rebalance {
            Rebalance::Assign(tpl) => ("assign", partition_names(tpl)),
            Rebalance::Revoke(tpl) => ("revoke", partition_names(tpl)),
            Rebalance::Error(e) => {
                warn!(group = %self.group, error = %e, "rebalance failed");
                metrics::counter!(crate::telemetry::CONSUMER_REBALANCES_TOTAL, "group" => self.group.clone(), "kind" => "error")
                    .increment(1);
                return;
            }
        };
        metrics::counter!(crate::telemetry::CONSUMER_REBALANCES_TOTAL, "group" => self.group.clone(), "kind" => kind)
            .increment(1);
        let owned = if kind == "assign" {
            partitions.len()
        } else {
            0
        };
        metrics::gauge!(crate::telemetry::CONSUMER_ASSIGNED_PARTITIONS, "group" => self.group.clone())
            .set(owned as f64);
        info!(group = %self.group, kind, count = partitions.len(), partitions = %partitions.join(","), "rebalance");
    }
}

/// `topic/partition` for every element, sorted.
fn partition_names(tpl: &TopicPartitionList) -> Vec<String> {
    let mut v: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    v.sort();
    v
}

type Consumer_ = StreamConsumer<LagContext>;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest a parked record waits: below librdkafka's `max.poll.interval.ms` (5 min), since the
/// relay waits inside its handler.
const MAX_PARK_DELAY: Duration = Duration::from_secs(240);

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(50) * 2u32.saturating_pow(attempt.min(10))).min(MAX_BACKOFF)
}

/// How long a record parked for the `parks`-th time waits before it is handed back.
fn park_delay(first: Duration, parks: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(parks.saturating_sub(1).min(16)))
        .min(MAX_PARK_DELAY)
}

/// What a loop does with failures: from `kafka.*` (see [`KafkaConfig`]).
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Attempts before a transiently failing record is parked; `None`: retried in place.
    park_after: Option<u32>,
    park_delay: Duration,
    max_parks: u32,
}

impl Policy {
    fn new(cfg: &KafkaConfig, parking: bool) -> Self {
        Policy {
            park_after: parking.then_some(cfg.max_attempts.max(1)),
            park_delay: Duration::from_millis(cfg.park_delay_ms.max(1)),
            max_parks: cfg.max_parks,
        }
    }
}

/// The health of every consumer group in this process, read by [`ConsumerGroups`] for `/readyz`.
static GROUPS: std::sync::LazyLock<health::Groups> =
    std::sync::LazyLock::new(health::Groups::default);

mod health {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Per group: rejoins in a row that did not get its stalled partitions moving.
    #[derive(Default)]
    pub(super) struct Groups(Mutex<HashMap<String, u32>>);

    impl Groups {
        pub(super) fn set(&self, group: &str, fruitless_rejoins: u32) {
            if let Ok(mut m) = self.0.lock() {
                m.insert(group.to_string(), fruitless_rejoins);
            }
        }
        pub(super) fn get(&self, group: &str) -> u32 {
            self.0
                .lock()
                .ok()
                .and_then(|m| m.get(group).copied())
                .unwrap_or(0)
        }
        pub(super) fn unhealthy(&self) -> Vec<(String, u32)> {
            self.0
                .lock()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| **n >= 2)
                        .map(|(g, n)| (g.clone(), *n))
                        .collect()
                })
                .unwrap_or_default()
        }
    }
}

/// `/readyz` check: fails while a consumer group of this process has partitions with records
/// waiting that nobody moves, and rejoining twice did not help (a supervisor should restart it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumerGroups;

impl crate::http::ReadyCheck for ConsumerGroups {
    fn name(&self) -> &'static str {
        "consumers"
    }
    fn check(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let bad = GROUPS.unhealthy();
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad
                    .iter()
                    .map(|(g, n)| format!("group {g}: partitions with waiting records have no live owner after {n} rejoins"))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        })
    }
}

fn create_consumer(kafka: &KafkaConfig, settings: &ConsumerSettings) -> Result<Consumer_, Error> {
    let mut config = ClientConfig::new();
    // A crashed member's partitions move on after the session timeout: keep it short so a
    // restarted or surviving instance takes over within seconds. Client options may override it.
    config
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        // A fetch that finds nothing returns after this long (one that finds records at once).
        .set(
            "fetch.wait.max.ms",
            settings
                .fetch_wait
                .unwrap_or(Duration::from_millis(kafka.fetch_wait_ms))
                .as_millis()
                .clamp(1, 300_000)
                .to_string(),
        );
    for (k, v) in client_config(kafka).config_map() {
        config.set(k, v);
    }
    config
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
            bytes: ByteCount::default(),
        })
        .map_err(kafka_error)
}

/// How a consumer session ended.
enum Ended {
    Shutdown,
    Rejoin,
}

/// Runs a consumer until `shutdown` fires, committing what was processed before returning.
///
/// Per record: a handler error or panic on one record never stops the loop. A permanent error or
/// a panic dead-letters the record with the reason; a transient error is retried with backoff
/// `kafka.max_attempts` times, then the record is parked in the retry topic (handed back to this
/// group later by [`run_retry_relay`]) and the partition moves on; after `kafka.max_parks` parks
/// it is dead-lettered. A watchdog makes the member leave and rejoin the group when a partition
/// of its topics has records waiting that nobody moves for `kafka.stall_secs` (a broker that
/// handed the group's partitions to nobody after a crash), and fails `/readyz` if that does not
/// help.
pub async fn run_consumer<H: Handler>(
    kafka: &KafkaConfig,
    publisher: Publisher,
    settings: ConsumerSettings,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_consumer_with(kafka, publisher, settings, handler, shutdown, true).await
}

async fn run_consumer_with<H: Handler>(
    kafka: &KafkaConfig,
    publisher: Publisher,
    settings: ConsumerSettings,
    mut handler: H,
    shutdown: CancellationToken,
    parking: bool,
) -> Result<(), Error> {
    let names: Vec<String> = settings
        .topics
        .iter()
        .map(|t| publisher.topic_name(*t))
        .collect();
    let policy = Policy::new(kafka, parking);
    let stall = Duration::from_secs(kafka.stall_secs.max(1));
    let group = settings.group.clone();
    GROUPS.set(&group, 0);
    loop {
        let consumer = Arc::new(create_consumer(kafka, &settings)?);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(kafka_error)?;
        info!(group = %group, topics = ?names, "consumer started");
        let rejoin = CancellationToken::new();
        let idle = Arc::new(Idle::default());
        let watchdog = tokio::spawn(watch(
            consumer.clone(),
            names.clone(),
            group.clone(),
            stall,
            idle.clone(),
            rejoin.clone(),
            shutdown.clone(),
        ));
        let ended = session(
            &consumer,
            &publisher,
            &settings,
            policy,
            &mut handler,
            &shutdown,
            &rejoin,
            &idle,
        )
        .await;
        watchdog.abort();
        let _ = watchdog.await;
        close(consumer, &group).await;
        match ended {
            Ended::Shutdown => break,
            Ended::Rejoin => {
                metrics::counter!(crate::telemetry::CONSUMER_REJOINS_TOTAL, "group" => group.clone())
                    .increment(1);
                warn!(group = %group, "partitions with waiting records have no live owner: rejoining the group");
            }
        }
    }
    info!(group = %group, "consumer stopped");
    Ok(())
}

/// The final commit and close block on the broker: done off the runtime, bounded in time.
async fn close(consumer: Arc<Consumer_>, group: &str) {
    let g = group.to_string();
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
}

/// Since when a session has been waiting for records with nothing in hand (`None` while it
/// handles a batch): the watchdog judges this member's own partitions only while it waits.
#[derive(Debug, Default)]
struct Idle(std::sync::Mutex<Option<Instant>>);

impl Idle {
    fn set(&self, waiting: bool) {
        if let Ok(mut w) = self.0.lock() {
            *w = waiting.then(|| w.unwrap_or_else(Instant::now));
        }
    }
    /// How long the session has been waiting, if it is.
    fn waited(&self) -> Option<Duration> {
        self.0.lock().ok().and_then(|w| w.map(|t| t.elapsed()))
    }
}

/// One membership of the group: consumes, handles and stores offsets until shutdown or until
/// the watchdog asks for a rejoin.
#[allow(clippy::too_many_arguments)]
async fn session<H: Handler>(
    consumer: &Consumer_,
    publisher: &Publisher,
    settings: &ConsumerSettings,
    policy: Policy,
    handler: &mut H,
    shutdown: &CancellationToken,
    rejoin: &CancellationToken,
    idle: &Idle,
) -> Ended {
    let group = settings.group.as_str();
    let mut batch: BTreeMap<(Topic, i32), i64> = BTreeMap::new();
    loop {
        idle.set(true);
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ended::Shutdown,
            _ = rejoin.cancelled() => return Ended::Rejoin,
            m = consumer.recv() => m,
        };
        // A consumer error is not a record: the wait goes on (a broker that only answers with
        // errors must not keep the member from being judged).
        if first.is_ok() {
            idle.set(false);
        }
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
                    let (for_group, parks) = retry_headers(&m);
                    let e = batch.entry((topic, m.partition())).or_insert(m.offset());
                    *e = (*e).max(m.offset());
                    // A record handed back from the retry topic is for one group only.
                    if for_group.is_some_and(|g| g != group) {
                        continue;
                    }
                    records.push(Record {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().map(<[u8]>::to_vec),
                        parks,
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
        if !handle_batch(
            handler,
            publisher,
            group,
            policy,
            records,
            settings.concurrency,
            shutdown,
        )
        .await
        {
            return Ended::Shutdown;
        }
        // Make the batch durable, then store its offsets.
        let mut attempt = 0;
        loop {
            let flushed = match AssertUnwindSafe(handler.flush()).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => Err(HandlerError::Transient(format!(
                    "flush panicked: {}",
                    panic_message(&panic)
                ))),
            };
            match flushed {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, group = %group, attempt, "flush failed, retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ended::Shutdown,
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
}

/// The retry headers of a record: the group it is for and how often it was parked.
fn retry_headers(m: &rdkafka::message::BorrowedMessage<'_>) -> (Option<String>, u32) {
    let mut group = None;
    let mut parks = 0;
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            match (h.key, h.value) {
                (GROUP_HEADER, Some(v)) => group = Some(String::from_utf8_lossy(v).into_owned()),
                (PARKS_HEADER, Some(v)) => {
                    parks = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    (group, parks)
}

/// Watches the group's partitions for records that nobody moves: a partition with records
/// waiting whose committed offset has not moved for `stall` means nobody in the group consumes
/// it (a broker that handed it to nobody, or to a member that died), or its owner's fetch is
/// stuck; the member then asks for a rejoin (a new consumer, a new membership, a rebalance for
/// the whole group), at most once per `2 * stall`. Partitions this member owns are judged only
/// while it has waited for records with nothing in hand for `stall` (a member busy with a long
/// batch is slow, not stuck). Costs one metadata request per look, plus a committed offsets and
/// a watermark request per partition it judges.
async fn watch(
    consumer: Arc<Consumer_>,
    topics: Vec<String>,
    group: String,
    stall: Duration,
    idle: Arc<Idle>,
    rejoin: CancellationToken,
    shutdown: CancellationToken,
) {
    let every = (stall / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut stalls = Stalls::new(stall);
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let c = consumer.clone();
        let t = topics.clone();
        let own = idle.waited().is_some_and(|w| w >= stall);
        let waiting = match tokio::task::spawn_blocking(move || waiting(&c, &t, own)).await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                debug!(error = %e, group = %group, "consumer watchdog could not look");
                continue;
            }
            Err(_) => continue,
        };
        let now = Instant::now();
        let (stalled, lag) = stalls.observe(now, &waiting);
        metrics::gauge!(crate::telemetry::CONSUMER_UNOWNED_LAG, "group" => group.clone())
            .set(lag as f64);
        metrics::gauge!(crate::telemetry::CONSUMER_STALLED_PARTITIONS, "group" => group.clone())
            .set(stalled as f64);
        if stalled == 0 {
            // Nothing waits, or this membership has been watched long enough to have seen a
            // stall: the group moves (a fresh membership's first looks prove nothing, so a rejoin
            // that did not help is still counted by the next one).
            if waiting.is_empty() || now.duration_since(started) >= stall * 2 {
                GROUPS.set(&group, 0);
            }
            continue;
        }
        // Give a fresh membership its first rebalance before judging it (the stall itself was
        // watched for `stall` already).
        if now.duration_since(started) < stall {
            continue;
        }
        let fruitless = GROUPS.get(&group) + 1;
        GROUPS.set(&group, fruitless);
        warn!(group = %group, stalled, lag, fruitless, "partitions with waiting records are not moving");
        rejoin.cancel();
        return;
    }
}

/// A partition with records past its committed offset, as the watchdog saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    committed: i64,
    /// Records past the committed offset.
    behind: i64,
    /// This member owns it.
    own: bool,
}

/// What the watchdog remembers between looks: per partition with records waiting, its committed
/// offset, whether this member owned it, and since when both stand as they are (a partition
/// handed to this member or away from it starts its clock again: its new owner gets the stall
/// time of its own).
#[derive(Debug)]
struct Stalls {
    stall: Duration,
    seen: HashMap<(String, i32), (i64, bool, Instant)>,
}

impl Stalls {
    fn new(stall: Duration) -> Self {
        Stalls {
            stall,
            seen: HashMap::new(),
        }
    }

    /// One look at `waiting` (see [`waiting`]): how many partitions have not moved for the stall
    /// time, and how many records wait in all. A partition not in `waiting` is forgotten (it
    /// caught up, or it is no longer judged).
    fn observe(&mut self, now: Instant, waiting: &HashMap<(String, i32), Waiting>) -> (u64, i64) {
        self.seen.retain(|k, _| waiting.contains_key(k));
        let mut stalled = 0u64;
        let mut lag = 0i64;
        for (k, w) in waiting {
            lag += w.behind;
            let e = self
                .seen
                .entry(k.clone())
                .or_insert((w.committed, w.own, now));
            if (e.0, e.1) != (w.committed, w.own) {
                *e = (w.committed, w.own, now);
            }
            if now.duration_since(e.2) >= self.stall {
                stalled += 1;
            }
        }
        (stalled, lag)
    }
}

/// `(topic, partition) -> (committed offset, records waiting)` for every partition of `topics`
/// that has records past its committed offset: those this member is not assigned, and with
/// `own` those it is assigned too.
fn waiting(
    consumer: &Consumer_,
    topics: &[String],
    own: bool,
) -> Result<HashMap<(String, i32), Waiting>, KafkaError> {
    let timeout = Duration::from_secs(3);
    let assigned: std::collections::HashSet<(String, i32)> = consumer
        .assignment()?
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let mut judged = TopicPartitionList::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), timeout)?;
        for mt in md.topics() {
            for p in mt.partitions() {
                if own || !assigned.contains(&(mt.name().to_string(), p.id())) {
                    judged.add_partition(mt.name(), p.id());
                }
            }
        }
    }
    let mut out = HashMap::new();
    if judged.count() == 0 {
        return Ok(out);
    }
    let committed = consumer.committed_offsets(judged, timeout)?;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let at = match e.offset() {
            Offset::Offset(n) => n,
            // This member's own partition that it never committed on: a group that starts at the
            // end (`from_latest`, the agents' streams) has nothing to read below the end, and
            // its first record commits. Nothing to judge.
            _ if assigned.contains(&(e.topic().to_string(), e.partition())) => continue,
            _ => low,
        };
        if high > at {
            let key = (e.topic().to_string(), e.partition());
            let own = assigned.contains(&key);
            out.insert(
                key,
                Waiting {
                    committed: at,
                    behind: high - at,
                    own,
                },
            );
        }
    }
    Ok(out)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Handles a batch: one record at a time, or, when the handler forks and `concurrency` allows,
/// in lanes by (topic, partition, key) run at once, each lane in order. Returns false if
/// shutdown interrupted it (the batch is then redelivered).
async fn handle_batch<H: Handler>(
    handler: &mut H,
    publisher: &Publisher,
    group: &str,
    policy: Policy,
    records: Vec<Record>,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> bool {
    if concurrency <= 1 || records.len() <= 1 || handler.fork().is_none() {
        for record in records {
            if !process(handler, publisher, group, policy, record, shutdown).await {
                return false;
            }
        }
        return true;
    }
    let mut lanes: Vec<Vec<Record>> = Vec::new();
    let mut index: HashMap<(Topic, i32, Option<String>), usize> = HashMap::new();
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
                if !process(&mut h, publisher, group, policy, record, shutdown).await {
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

/// Handles one record: retries transient failures a bounded number of times then parks the
/// record, dead-letters permanent failures and panics. Returns false if shutdown interrupted it
/// (the record is then left uncommitted and will be redelivered).
async fn process<H: Handler>(
    handler: &mut H,
    publisher: &Publisher,
    group: &str,
    policy: Policy,
    record: Record,
    shutdown: &CancellationToken,
) -> bool {
    let topic = record.topic;
    let mut attempt = 0;
    loop {
        let started = std::time::Instant::now();
        // A panic on one record is that record's failure, never the role's: it would repeat on
        // every restart (the record is redelivered) and stop the whole partition for good.
        let outcome = match AssertUnwindSafe(handler.handle(record.clone()))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                metrics::counter!(crate::telemetry::HANDLER_PANICS_TOTAL, "group" => group.to_string())
                    .increment(1);
                Err(HandlerError::Permanent(format!(
                    "handler panicked: {}",
                    panic_message(&panic)
                )))
            }
        };
        // Where the time goes, per stage (the simulator's breakdown reads the sums).
        metrics::histogram!(crate::telemetry::HANDLE_SECONDS, "group" => group.to_string(), "topic" => topic.base_name())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                metrics::counter!(crate::telemetry::CONSUMED_TOTAL, "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "ok").increment(1);
                return true;
            }
            Err(HandlerError::Permanent(reason)) => {
                metrics::counter!(crate::telemetry::CONSUMED_TOTAL, "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "dead_letter").increment(1);
                warn!(group, topic = %topic, partition = record.partition, offset = record.offset, reason = %reason, "record dead-lettered");
                return dead_letter(publisher, group, &record, reason, shutdown).await;
            }
            Err(HandlerError::Transient(reason)) => {
                attempt += 1;
                if policy.park_after.is_some_and(|max| attempt >= max) {
                    if record.parks >= policy.max_parks {
                        metrics::counter!(crate::telemetry::CONSUMED_TOTAL, "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "dead_letter").increment(1);
                        let reason = format!(
                            "gave up after {} attempts and {} parks: {reason}",
                            attempt, record.parks
                        );
                        warn!(group, topic = %topic, offset = record.offset, reason = %reason, "record dead-lettered");
                        return dead_letter(publisher, group, &record, reason, shutdown).await;
                    }
                    metrics::counter!(crate::telemetry::CONSUMED_TOTAL, "group" => group.to_string(), "topic" => topic.base_name(), "outcome" => "parked").increment(1);
                    warn!(group, topic = %topic, offset = record.offset, attempt, parks = record.parks + 1, reason = %reason, "record parked in the retry topic");
                    return park(publisher, group, policy, &record, attempt, reason, shutdown)
                        .await;
                }
                warn!(group, topic = %topic, offset = record.offset, attempt, reason = %reason, "transient failure, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

fn base64_payload(record: &Record) -> Option<String> {
    use base64::Engine as _;
    record
        .payload
        .as_ref()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

/// Publishes `env` until the broker takes it; false if shutdown came first.
async fn publish_until_done<T: Event>(
    publisher: &Publisher,
    env: &Envelope<T>,
    shutdown: &CancellationToken,
) -> bool {
    let mut attempt = 0;
    loop {
        match publisher.publish(env).await {
            Ok(_) => return true,
            Err(e) => {
                attempt += 1;
                warn!(error = %e, attempt, schema = T::SCHEMA, "publish failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
            }
        }
    }
}

async fn park(
    publisher: &Publisher,
    group: &str,
    policy: Policy,
    record: &Record,
    attempts: u32,
    reason: String,
    shutdown: &CancellationToken,
) -> bool {
    let source_topic = publisher.topic_name(record.topic);
    let parks = record.parks + 1;
    let delay = park_delay(policy.park_delay, parks);
    let id = derived_id(
        switchboard_contracts::MESSAGE_NAMESPACE,
        &format!(
            "park/{group}/{source_topic}/{}/{}/{parks}",
            record.partition, record.offset
        ),
    );
    let not_before = chrono::Utc::now()
        + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::seconds(30));
    let env = Envelope::new(
        id,
        crate::clock::now(),
        Parked {
            source_topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.clone(),
            consumer_group: group.to_string(),
            reason,
            attempts,
            parks,
            not_before,
            payload_base64: base64_payload(record),
        },
    );
    publish_until_done(publisher, &env, shutdown).await
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
            Err(_) => (None, base64_payload(record)),
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
    publish_until_done(publisher, &env, shutdown).await
}

/// Hands parked records back: waits until a record's `not_before`, then republishes its original
/// bytes to its source topic with headers that make only the group that failed it handle it
/// (every other group skips it) and carry its park count. One relay group per installation;
/// its members split the retry topic's partitions like any group.
#[derive(Debug, Clone)]
pub struct RetryRelay {
    publisher: Publisher,
    shutdown: CancellationToken,
}

impl Handler for RetryRelay {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = switchboard_contracts::decode::<Parked>(record.payload.as_deref())?;
        let parked = env.payload;
        let Some(topic) = Topic::from_wire_name(self.publisher.prefix(), &parked.source_topic)
        else {
            return Err(HandlerError::Permanent(format!(
                "parked record from unknown topic {:?}",
                parked.source_topic
            )));
        };
        let bytes = match &parked.payload_base64 {
            Some(b) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| HandlerError::Permanent(format!("parked payload: {e}")))?
            }
            None => Vec::new(),
        };
        let wait = (parked.not_before - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_PARK_DELAY);
        tokio::select! {
            _ = self.shutdown.cancelled() => return Err(HandlerError::Transient("shutting down".into())),
            _ = tokio::time::sleep(wait) => {}
        }
        let key = parked.key.clone().unwrap_or_default();
        let parks = parked.parks.to_string();
        self.publisher
            .publish_bytes_with_headers(
                topic,
                &key,
                &bytes,
                &[
                    (GROUP_HEADER, parked.consumer_group.as_bytes()),
                    (PARKS_HEADER, parks.as_bytes()),
                ],
            )
            .await?;
        metrics::counter!(crate::telemetry::RETRIED_TOTAL, "group" => parked.consumer_group.clone())
            .increment(1);
        Ok(())
    }
}

/// Runs the retry relay (see [`RetryRelay`]) until `shutdown`.
pub async fn run_retry_relay(
    kafka: &KafkaConfig,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let settings = ConsumerSettings {
        group: format!("{}retry-relay", kafka.topic_prefix),
        topics: vec![Topic::Retry],
        batch_max: 1,
        batch_wait: Duration::from_millis(5),
        concurrency: 1,
        fetch_wait: None,
        from_latest: false,
    };
    let relay = RetryRelay {
        publisher: publisher.clone(),
        shutdown: shutdown.clone(),
    };
    // The relay's own failures are the broker's: retried in place, never parked into itself.
    run_consumer_with(kafka, publisher, settings, relay, shutdown, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_record_is_sent_again_only_when_that_can_help() {
        let refused = |code| KafkaError::MessageProduction(code);
        // A broker's storage failing, a leader moving: sent again, the pause doubling to 800 ms.
        let pauses: Vec<_> = (1..=7)
            .map(|a| resend_pause(&refused(RDKafkaErrorCode::Unknown), a))
            .collect();
        assert_eq!(
            pauses,
            [50, 100, 200, 400, 800, 800, 800]
                .map(|ms| Some(Duration::from_millis(ms)))
                .to_vec()
        );
        assert!(resend_pause(&refused(RDKafkaErrorCode::NotLeaderForPartition), 1).is_some());
        // Never: too large, not authorized, already timed out by librdkafka, a fatal producer,
        // or anything that is not a refused record.
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidMessage,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(resend_pause(&refused(code), 1), None, "{code:?}");
        }
        assert_eq!(
            resend_pause(&KafkaError::Canceled, 1),
            None,
            "not a refusal"
        );
    }

    #[test]
    fn a_partition_is_stalled_once_its_offset_stood_for_the_stall_time() {
        let stall = Duration::from_secs(30);
        let mut stalls = Stalls::new(stall);
        let t0 = Instant::now();
        let at = |committed: i64, behind: i64, own: bool| {
            HashMap::from([(
                ("t".to_string(), 0),
                Waiting {
                    committed,
                    behind,
                    own,
                },
            )])
        };
        let p = |committed, behind| at(committed, behind, false);
        assert_eq!(stalls.observe(t0, &p(5, 3)), (0, 3));
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(29), &p(5, 3)),
            (0, 3)
        );
        assert_eq!(stalls.observe(t0 + stall, &p(5, 4)), (1, 4));
        // It moved: the clock starts again from that look.
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(40), &p(6, 3)),
            (0, 3)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(69), &p(6, 3)),
            (0, 3)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(70), &p(6, 3)),
            (1, 3)
        );
        // Caught up (or no longer judged): forgotten, and judged afresh when it waits again.
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(71), &HashMap::new()),
            (0, 0)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(72), &p(6, 1)),
            (0, 1)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(101), &p(6, 1)),
            (0, 1)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(102), &p(6, 1)),
            (1, 1)
        );
        // Handed to this member (a rebalance after its owner died) with the offset where the
        // old owner left it: the new owner gets a stall time of its own.
        let mine = |committed, behind| at(committed, behind, true);
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(103), &mine(6, 1)),
            (0, 1)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(132), &mine(6, 1)),
            (0, 1)
        );
        assert_eq!(
            stalls.observe(t0 + Duration::from_secs(133), &mine(6, 1)),
            (1, 1)
        );
    }

    #[test]
    fn idle_counts_from_the_first_wait_and_stops_when_busy() {
        let idle = Idle::default();
        assert_eq!(idle.waited(), None);
        idle.set(true);
        let first = idle.waited().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        idle.set(true);
        assert!(idle.waited().unwrap() >= first + Duration::from_millis(20));
        idle.set(false);
        assert_eq!(idle.waited(), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn park_delays_double_and_stay_under_the_poll_interval() {
        let first = Duration::from_secs(30);
        assert_eq!(park_delay(first, 1), first);
        assert_eq!(park_delay(first, 2), first * 2);
        assert_eq!(park_delay(first, 3), first * 4);
        assert_eq!(park_delay(first, 40), MAX_PARK_DELAY);
        assert!(MAX_PARK_DELAY < Duration::from_secs(300));
    }

    #[test]
    fn panics_are_named_by_their_message() {
        let p =
            std::panic::catch_unwind(|| panic!("byte index 3 is not a char boundary")).unwrap_err();
        assert_eq!(panic_message(&p), "byte index 3 is not a char boundary");
        let n = 7;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&p), "formatted 7");
    }

    #[test]
    fn unhealthy_groups_fail_readiness_only_after_fruitless_rejoins() {
        let groups = health::Groups::default();
        groups.set("g", 1);
        assert!(groups.unhealthy().is_empty());
        groups.set("g", 2);
        assert_eq!(groups.unhealthy(), vec![("g".to_string(), 2)]);
        groups.set("g", 0);
        assert!(groups.unhealthy().is_empty());
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e: HandlerError = switchboard_contracts::DecodeError::Empty.into();
        assert!(matches!(e, HandlerError::Permanent(_)));
        let e: HandlerError = Error::Kafka("down".into(), Retry::WithBackoff).into();
        assert!(matches!(e, HandlerError::Transient(_)));
    }
}
