//! `pipelines.yaml`: Switchboard's one configuration file.
//!
//! Typed, versioned (`version: 1`), unknown fields rejected, and layered: the file first, then
//! environment variables of the form `SWITCHBOARD__SECTION__KEY=value` (e.g.
//! `SWITCHBOARD__SERVICES__KAFKA__BROKERS=kafka:9092`), which replace the value at that path.
//! [`load`] returns every problem at once, each with its line and column, so `switchboard validate`
//! can print them all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};
use serde::Deserialize;
use switchboard_contracts::Topic;

/// The newest config version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// A problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn at(span: &Span, message: impl Into<String>) -> Self {
        let start = span.start();
        ConfigError {
            line: start.map(|m| m.line()),
            column: start.map(|m| m.column()),
            message: message.into(),
        }
    }

    fn nowhere(message: impl Into<String>) -> Self {
        ConfigError {
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: message`, as compilers print it.
    pub fn render(&self, file: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: {}", self.message),
            (Some(l), None) => format!("{file}:{l}: {}", self.message),
            _ => format!("{file}: {}", self.message),
        }
    }
}

/// All problems found while loading.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} configuration error(s), first: {}", .0.len(), .0.first().map(|e| e.render("pipelines.yaml")).unwrap_or_default())]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: Spanned<u32>,
    /// Where the embedded stack keeps everything (broker log, Postgres, ClickHouse, models).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub sla: SlaConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub channels: ChannelsConfig,
    #[serde(default)]
    pub kb: KbConfig,
    #[serde(default)]
    pub models: ModelsSection,
    #[serde(default)]
    pub simulation: SimulationConfig,
    /// Front doors that write to topics (the HTTP API, later the channel connectors).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Consumers: what each reads and writes.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// A secret value (a token, a password, a signing key): `Debug` and `Display` print `***` (or
/// `""` when it is not set), never the value, so a logged config or error cannot leak it. Read it
/// with [`Secret::expose`], where it is used and nowhere else. Deserialized from a plain string.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset (empty).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("***")
        }
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A list of strings, written as a YAML sequence or as one comma-separated string.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
    })
}

/// An optional string where YAML's `null`, `~` and the empty string mean "not set" (the YAML
/// loader hands every scalar over as text).
fn optional_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !matches!(s.trim(), "" | "~" | "null" | "Null" | "NULL")))
}

/// [`optional_string`] for a secret.
fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(optional_string(d)?.map(Secret))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// The HTTP server (agent API, inbound API, ops endpoints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Bind address. Loopback by default: expose it deliberately.
    pub listen: Spanned<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Admin bearer token. Set it through `SWITCHBOARD__HTTP__ADMIN_TOKEN`, not in the file.
    #[serde(deserialize_with = "optional_secret")]
    pub admin_token: Option<Secret>,
    /// Where customers reach this installation (links in surveys); empty: `http://<listen>`.
    pub public_url: String,
    /// A client must send a request's whole header within this time, and an idle keep-alive
    /// connection is closed after it (slowloris).
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this time of its header (408-like 400 after).
    pub body_read_timeout_ms: u64,
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Open connections one IP address may hold (0: no limit). Loopback is exempt (the local
    /// console and a reverse proxy on the same host). Behind a proxy on another host every
    /// client has the proxy's address: raise it or set 0 there.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Spanned::new(Span::new_blank(), "127.0.0.1:8080".into()),
            max_body_bytes: 1024 * 1024,
            admin_token: None,
            public_url: String::new(),
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            max_connections: 16_384,
            max_connections_per_ip: 1024,
        }
    }
}

impl HttpConfig {
    /// The parsed bind address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|e| {
            format!(
                "http.listen {:?} is not an address: {e}",
                self.listen.as_str()
            )
        })
    }
}

/// External services. An empty URL means "start the local one" under `switchboard up`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    pub clickhouse: ClickHouseConfig,
    pub qdrant: QdrantConfig,
}

/// Kafka (or any Kafka-protocol broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`. Empty: `up` starts the embedded tansu broker.
    pub brokers: String,
    /// Port of the embedded broker.
    pub embedded_port: u16,
    /// Prepended to every topic name.
    pub topic_prefix: String,
    /// Partitions for topics Switchboard creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long a produce may wait for the broker's ack before the API answers 503.
    pub produce_timeout_ms: u64,
    /// Extra librdkafka properties (SASL, TLS, ...), passed through unchanged.
    pub client_options: BTreeMap<String, String>,
    /// `retention.ms` of the topics Switchboard creates: how long a record (and so an erased
    /// customer's data) can live in the log. `-1` keeps records forever.
    pub retention_ms: i64,
    /// A record whose handler fails transiently this many times in a row is parked in the retry
    /// topic (and the partition moves on) instead of being retried in place.
    pub max_attempts: u32,
    /// First wait before a parked record is handed back; doubles with every park.
    pub park_delay_ms: u64,
    /// A record parked this many times is dead-lettered.
    pub max_parks: u32,
    /// A partition of a group's topics that nobody in the group moves for this long while it has
    /// records waiting makes the group rejoin (and, if that does not help, fails `/readyz`).
    pub stall_secs: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            embedded_port: 9092,
            topic_prefix: "switchboard.".into(),
            partitions: 4,
            replication_factor: 1,
            produce_timeout_ms: 5000,
            client_options: BTreeMap::new(),
            retention_ms: 7 * 24 * 3600 * 1000,
            max_attempts: 10,
            park_delay_ms: 30_000,
            max_parks: 8,
            stall_secs: 30,
        }
    }
}

/// Postgres: the ticket store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:pass@host:port/db` (a secret: it holds the password). Empty: `up` starts
    /// a private cluster under `data_dir`.
    pub url: Secret,
    pub embedded_port: u16,
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: Secret::default(),
            embedded_port: 54329,
            max_connections: 16,
        }
    }
}

/// ClickHouse: analytics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// `http://host:8123`. Empty: `up` starts a local clickhouse-server under `data_dir`.
    pub url: String,
    pub database: String,
    pub user: String,
    /// Environment only: `SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD`. The embedded server's is
    /// generated (`data_dir/secrets/clickhouse.password`).
    pub password: Secret,
    pub embedded_http_port: u16,
    pub embedded_tcp_port: u16,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "switchboard".into(),
            user: "default".into(),
            password: Secret::default(),
            embedded_http_port: 18123,
            embedded_tcp_port: 19000,
        }
    }
}

/// Qdrant: the knowledge-base vector store. Empty URL: embedded qdrant-edge under `data_dir`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QdrantConfig {
    /// gRPC endpoint of a Qdrant server, e.g. `http://qdrant:6334`.
    pub url: String,
    /// API key of the server (environment only: `SWITCHBOARD__SERVICES__QDRANT__API_KEY`).
    pub api_key: Secret,
}

/// The HTTP inbound API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Longer texts are cut at this many bytes (on a character boundary) and flagged `truncated`.
    pub max_text_bytes: usize,
    /// Requests per second each source (by name) accepts before answering 429 with
    /// `Retry-After`; a source not listed is not limited.
    pub rate_limits: BTreeMap<String, u32>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_text_bytes: 64 * 1024,
            rate_limits: BTreeMap::new(),
        }
    }
}

/// A keyword rule that sets a ticket's category and the skill it needs (used until the
/// classifier models take over the category).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    pub category: String,
    pub skill: String,
    pub keywords: Vec<String>,
    #[serde(default)]
    pub priority: Option<String>,
}

/// What a model category means for routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRoute {
    /// Skill an agent needs; none: anyone may take it.
    #[serde(default, deserialize_with = "optional_string")]
    pub skill: Option<String>,
    /// Priority of a new ticket in this category (default medium).
    #[serde(default, deserialize_with = "optional_string")]
    pub priority: Option<String>,
}

/// Routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Skill required when no rule matches; `null` means any agent may take it.
    #[serde(deserialize_with = "optional_string")]
    pub default_skill: Option<String>,
    pub rules: Vec<CategoryRule>,
    /// The classifier's categories (lowercase): skill and priority. Used when the model is at
    /// least `min_confidence` sure; otherwise the keyword rules decide.
    pub categories: BTreeMap<String, CategoryRoute>,
    pub min_confidence: f32,
    /// A sentiment score at or below this raises a new ticket's priority one step.
    pub escalate_sentiment: f32,
    /// How often the router retries tickets waiting for an agent.
    pub sweep_interval_ms: u64,
    /// Weights of the agent score (normalised to sum 1).
    pub weights: RoutingWeights,
    /// An assignment not accepted within this time goes to someone else (0: never).
    pub accept_timeout_secs: u64,
    /// Response time that scores 0.5 on the response-time part (faster scores higher).
    pub target_response_secs: f64,
    /// VIP customers only go to senior agents (or supervisors).
    pub vip_requires_senior: bool,
    /// Customer tiers that count as VIP.
    pub vip_tiers: Vec<String>,
    /// An order at least this large (in cents) raises the priority one step.
    pub high_value_order_cents: i64,
    /// Contacts about the same category within this many days count as repeats.
    pub repeat_window_days: u32,
    /// The contact (counting this one) that escalates: 3 = the third contact about the same issue.
    pub escalate_on_contact: u32,
}

/// The parts of the agent score (design: 40/30/20/10).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingWeights {
    pub skill: f64,
    pub workload: f64,
    pub satisfaction: f64,
    pub response_time: f64,
}

impl Default for RoutingWeights {
    fn default() -> Self {
        RoutingWeights {
            skill: 0.4,
            workload: 0.3,
            satisfaction: 0.2,
            response_time: 0.1,
        }
    }
}

/// A compressed business clock for `switchboard-sim simulate` (see `switchboard_core::clock`).
/// Refused unless every listener is on loopback: a simulation never serves real customers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationConfig {
    pub enabled: bool,
    /// Simulated seconds per wall second (96: a day in 15 minutes).
    pub speed: f64,
    /// The simulated time when the simulation began (RFC 3339).
    pub start: String,
    /// The wall time the simulation began (RFC 3339); empty: when this process started. Give
    /// every process of one simulation the same anchor.
    pub anchor: String,
}

impl Default for SimulationConfig {
    fn default() -> Self {
        SimulationConfig {
            enabled: false,
            speed: 96.0,
            start: "2026-11-23T00:00:00Z".into(),
            anchor: String::new(),
        }
    }
}

impl SimulationConfig {
    /// The clock to install, or why not (None when disabled).
    pub fn clock(&self) -> Result<Option<crate::clock::Simulated>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let parse = |v: &str, key: &str| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("simulation.{key} {v:?}: {e}"))
        };
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 10_000.0) {
            return Err(format!(
                "simulation.speed {} must be above 0 and at most 10000",
                self.speed
            ));
        }
        Ok(Some(crate::clock::Simulated {
            start: parse(&self.start, "start")?,
            anchor: if self.anchor.is_empty() {
                chrono::Utc::now()
            } else {
                parse(&self.anchor, "anchor")?
            },
            speed: self.speed,
        }))
    }
}

/// Where attachments and raw mail that could not become a ticket are kept ([`crate::storage`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Empty: the local folder `data_dir` (the embedded default; with several replicas, a
    /// volume every ingest and serving replica mounts). `s3://bucket[/prefix]`: an
    /// S3-compatible object store every replica reaches.
    pub url: String,
    /// The endpoint of an S3-compatible store that is not AWS (MinIO, Ceph, R2, …), e.g.
    /// `https://s3.example.com`; empty: AWS.
    pub endpoint: String,
    /// The store's region; empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Empty: `AWS_ACCESS_KEY_ID` (or the instance's / pod's role).
    pub access_key_id: String,
    /// Environment only: `SWITCHBOARD__STORAGE__SECRET_ACCESS_KEY` (or `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Secret,
    /// Allow a plain `http://` endpoint (a store on loopback or a private network).
    pub allow_http: bool,
}

/// How long data is kept (the serving role's retention job).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Resolved or closed tickets (with messages, attachments, surveys, chat logs) older than
    /// this are erased; a customer left with no ticket and no order goes with its identities.
    pub closed_tickets_days: u32,
    /// ClickHouse events older than this are deleted.
    pub events_days: u32,
    /// Orders not updated for this long are deleted.
    pub orders_days: u32,
    /// A chat session idle this long (no message either way, no open or pending ticket) expires:
    /// its conversation and log are deleted.
    pub chat_session_days: u32,
    /// Raw mail that could not be a ticket (`deadletter/email` in the attachment store) is deleted this long
    /// after it arrived.
    pub deadletter_days: u32,
    /// Rows per deletion statement (tickets per batch); each batch is its own transaction.
    pub batch_size: u32,
    /// How often the job runs.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            closed_tickets_days: 730,
            events_days: 730,
            orders_days: 730,
            chat_session_days: 30,
            deadletter_days: 90,
            batch_size: 5000,
            interval_secs: 3600,
        }
    }
}

/// Channel connectors' settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    pub orders: OrdersChannelConfig,
    pub email: EmailChannelConfig,
    pub chat: ChatChannelConfig,
    pub sms: SmsChannelConfig,
    pub voice: VoiceChannelConfig,
    pub meta: MetaChannelConfig,
}

/// Email: the SMTP listener, the IMAP poller and the SMTP relay replies go out through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailChannelConfig {
    /// The domain of Switchboard's own Message-IDs (`<ticket.reply@domain>`).
    pub domain: String,
    /// Attachments up to this size are stored (larger ones are listed on the message only).
    pub max_attachment_bytes: usize,
    pub smtp: SmtpListenConfig,
    pub imap: ImapPollConfig,
    pub outbound: SmtpRelayConfig,
}

impl Default for EmailChannelConfig {
    fn default() -> Self {
        EmailChannelConfig {
            domain: "switchboard.localhost".into(),
            max_attachment_bytes: 10 * 1024 * 1024,
            smtp: SmtpListenConfig::default(),
            imap: ImapPollConfig::default(),
            outbound: SmtpRelayConfig::default(),
        }
    }
}

/// The shop's order webhooks (`POST /webhooks/orders`, serving role).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersChannelConfig {
    /// The webhook signing secret (environment only: `SWITCHBOARD__CHANNELS__ORDERS__SECRET`).
    /// Empty: every order webhook is refused.
    pub secret: Secret,
}

/// The customer chat WebSocket (source type `chat`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatChannelConfig {
    /// Signs conversation tokens; every instance needs the same (environment only:
    /// `SWITCHBOARD__CHANNELS__CHAT__SECRET`). Empty: a random one per process (tokens then
    /// stop working on restart and on other instances).
    pub secret: Secret,
    /// Identity verification: the shop's backend signs the visitor it knows,
    /// `identity_hmac = hex(HMAC-SHA256(identity_secret, email, else external_id))`, and a chat
    /// opened with a valid signature is that customer's (environment only:
    /// `SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET`). Empty: no chat is verified; every chat
    /// is its own customer and a signed identity is refused.
    pub identity_secret: Secret,
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Messages per second one conversation may send (all its sockets together).
    pub messages_per_sec: u32,
    /// Frames of any type (message, typing, delivered) per second one conversation may send;
    /// bursts of twice this. Over it, typing and receipts are dropped and messages refused
    /// (`rate_limited`); a socket that keeps sending over it is closed (1008).
    pub frames_per_sec: u32,
    /// New conversations one IP address may open per minute (bursts of this many).
    pub sessions_per_ip_per_min: u32,
    /// Open sockets one IP address may hold.
    pub max_sockets_per_ip: u32,
    /// Open sockets one conversation may have (tabs of one visitor).
    pub max_sockets_per_conversation: u32,
    /// A socket on which the customer sent nothing for this long is closed (4408, `idle`);
    /// the widget reconnects when the customer writes again.
    pub idle_timeout_secs: u64,
}

impl Default for ChatChannelConfig {
    fn default() -> Self {
        ChatChannelConfig {
            secret: Secret::default(),
            identity_secret: Secret::default(),
            max_frame_bytes: 64 * 1024,
            messages_per_sec: 5,
            frames_per_sec: 20,
            sessions_per_ip_per_min: 60,
            max_sockets_per_ip: 200,
            max_sockets_per_conversation: 8,
            idle_timeout_secs: 900,
        }
    }
}

/// The inbound SMTP listener (source type `smtp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpListenConfig {
    pub listen: String,
    /// The name in the greeting.
    pub hostname: String,
    /// Accepted recipients: addresses (`help@example.com`) or domains (`@example.com`); any
    /// other recipient is refused (never an open relay).
    #[serde(deserialize_with = "string_list")]
    pub recipients: Vec<String>,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    /// Connections at once from one IP address (more: `421 4.7.0`).
    pub max_connections_per_ip: usize,
    /// Bytes of messages being received over all connections together (past it a message is
    /// answered `452 4.3.1` and the sender retries later).
    pub max_buffered_bytes: usize,
    /// Recipients of one message (more: `452 4.5.3`).
    pub max_recipients: usize,
    /// Disk the stored email attachments may take in all, SMTP and IMAP alike (`0`: no limit;
    /// past it a message with an attachment is answered `452 4.3.1`, IMAP leaves it unseen).
    pub attachment_quota_bytes: u64,
}

impl Default for SmtpListenConfig {
    fn default() -> Self {
        SmtpListenConfig {
            listen: "127.0.0.1:2525".into(),
            hostname: "switchboard.localhost".into(),
            recipients: vec!["@switchboard.localhost".into()],
            max_message_bytes: 25 * 1024 * 1024,
            max_connections: 512,
            max_connections_per_ip: 20,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_recipients: 100,
            attachment_quota_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// The IMAP poller (source type `imap`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapPollConfig {
    pub host: String,
    pub port: u16,
    /// IMAPS; turn off only for a server on localhost.
    pub tls: bool,
    pub username: String,
    /// Environment only: `SWITCHBOARD__CHANNELS__EMAIL__IMAP__PASSWORD`.
    pub password: Secret,
    pub mailbox: String,
    pub poll_interval_ms: u64,
    /// At most this many messages per poll.
    pub batch: usize,
}

impl Default for ImapPollConfig {
    fn default() -> Self {
        ImapPollConfig {
            host: String::new(),
            port: 993,
            tls: true,
            username: String::new(),
            password: Secret::default(),
            mailbox: "INBOX".into(),
            poll_interval_ms: 5000,
            batch: 100,
        }
    }
}

/// How replies leave: an SMTP relay (stage type `email_sender`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpRelayConfig {
    /// Empty: email replies cannot be sent and are dead-lettered with that reason.
    pub host: String,
    pub port: u16,
    /// `none` (localhost only), `starttls` or `tls`.
    pub security: String,
    pub username: String,
    /// Environment only: `SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__PASSWORD`.
    pub password: Secret,
    /// The From of replies, e.g. `Support <help@example.com>`.
    pub from: String,
}

impl Default for SmtpRelayConfig {
    fn default() -> Self {
        SmtpRelayConfig {
            host: String::new(),
            port: 587,
            security: "starttls".into(),
            username: String::new(),
            password: Secret::default(),
            from: "Support <support@switchboard.localhost>".into(),
        }
    }
}

/// Meta webhooks: the app secret that signs them and the subscription verify token (both
/// environment only: `SWITCHBOARD__CHANNELS__META__APP_SECRET`, `..._VERIFY_TOKEN`); replies
/// through the Graph API with `access_token` (environment only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaChannelConfig {
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub graph_api_base: String,
    pub graph_api_version: String,
    pub access_token: Secret,
}

impl Default for MetaChannelConfig {
    fn default() -> Self {
        MetaChannelConfig {
            app_secret: Secret::default(),
            verify_token: Secret::default(),
            graph_api_base: "https://graph.facebook.com".into(),
            graph_api_version: "v21.0".into(),
            access_token: Secret::default(),
        }
    }
}

/// The call-transcript webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceChannelConfig {
    /// Shared signing secret (environment only: `SWITCHBOARD__CHANNELS__VOICE__SECRET`). Empty:
    /// every call is refused.
    pub secret: Secret,
}

/// The SMS provider (Twilio-compatible).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsChannelConfig {
    /// The provider's auth token, which signs webhooks (environment only:
    /// `SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN`). Empty: every webhook call is refused.
    pub auth_token: Secret,
    /// The webhook URL exactly as configured at the provider (signatures cover it); empty:
    /// `http://<http.listen>/webhooks/sms`.
    pub public_url: String,
    /// Sending: the provider's API base, account and the number texts come from.
    pub api_base_url: String,
    pub account_sid: String,
    pub from_number: String,
}

impl Default for SmsChannelConfig {
    fn default() -> Self {
        SmsChannelConfig {
            auth_token: Secret::default(),
            public_url: String::new(),
            api_base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            from_number: String::new(),
        }
    }
}

/// SLA policies, calendars and escalation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    /// A warning fires at this share of a target (0.75: three quarters of the time used).
    pub warn_share: f64,
    /// How often due clocks are looked for (a fired event is at most this late, plus work).
    pub poll_interval_ms: u64,
    /// Business calendars by name; `24x7` always exists.
    pub calendars: BTreeMap<String, CalendarConfig>,
    /// The calendar of a team, by the skill its tickets need (overrides the policy's calendar).
    pub team_calendars: BTreeMap<String, String>,
    /// First matching policy wins; the last should match everything.
    pub policies: Vec<SlaPolicyConfig>,
    /// Escalation actions on a warning and on a breach: `raise_priority`, `move_to_senior`,
    /// `move_to_supervisor`, `notify_supervisor`.
    pub on_warning: Vec<String>,
    pub on_breach: Vec<String>,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            warn_share: 0.75,
            poll_interval_ms: 250,
            calendars: BTreeMap::new(),
            team_calendars: BTreeMap::new(),
            policies: Vec::new(),
            on_warning: vec!["notify_supervisor".into()],
            on_breach: vec![
                "raise_priority".into(),
                "move_to_senior".into(),
                "notify_supervisor".into(),
            ],
        }
    }
}

/// Business hours of a team: opening hours per weekday in a timezone, and holidays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// `mon` .. `sun` to `"09:00-17:00"`; a day not listed is closed.
    pub hours: BTreeMap<String, String>,
    /// Closed dates, `YYYY-MM-DD`.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// Targets for tickets of some priorities and customer tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicyConfig {
    pub name: String,
    /// Priorities this policy covers; empty: all.
    #[serde(default)]
    pub priorities: Vec<String>,
    /// Customer tiers this policy covers; empty: all.
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default = "default_calendar")]
    pub calendar: String,
    /// Durations such as `15m`, `4h`, `2d` (business time on the calendar).
    pub first_response: String,
    pub next_response: String,
    pub resolution: String,
}

fn default_calendar() -> String {
    "24x7".into()
}

/// The knowledge base and its bot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbConfig {
    pub enabled: bool,
    /// Articles loaded into an empty knowledge base at start (JSON lines).
    pub seed_file: PathBuf,
    /// The bot answers when the best article's similarity is at least this.
    pub answer_threshold: f32,
    /// Suggestions attached to every new ticket for the agent.
    pub suggestions: usize,
    /// Channels the bot answers on (it never answers where no reply can go back). A list, or
    /// one comma-separated string (so the environment can set it).
    #[serde(deserialize_with = "string_list")]
    pub bot_channels: Vec<String>,
    /// A bot answer with no customer reply for this long counts as resolved by the bot.
    pub bot_resolve_after_secs: u64,
}

impl Default for KbConfig {
    fn default() -> Self {
        KbConfig {
            enabled: true,
            seed_file: PathBuf::from("processors/kb/articles.jsonl"),
            answer_threshold: 0.8,
            suggestions: 3,
            bot_channels: vec!["chat".into(), "email".into(), "sms".into(), "social".into()],
            bot_resolve_after_secs: 86_400,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_skill: None,
            rules: Vec::new(),
            categories: BTreeMap::new(),
            min_confidence: 0.6,
            escalate_sentiment: -0.5,
            sweep_interval_ms: 2000,
            weights: RoutingWeights::default(),
            accept_timeout_secs: 120,
            target_response_secs: 120.0,
            vip_requires_senior: true,
            vip_tiers: vec!["vip".into()],
            high_value_order_cents: 50_000,
            repeat_window_days: 7,
            escalate_on_contact: 3,
        }
    }
}

/// The ClickHouse sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub batch_max_rows: usize,
    pub batch_max_wait_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_rows: 5000,
            batch_max_wait_ms: 500,
        }
    }
}

/// The model runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSection {
    /// Run the models in the ticketing stage (category, intent, sentiment on every message).
    pub enabled: bool,
    /// The registry: a folder per model version, and `active.json`.
    pub registry_dir: PathBuf,
    /// `libonnxruntime.so`; empty: the one `scripts/setup.sh` installed (or `ORT_DYLIB_PATH`).
    pub onnxruntime: String,
    /// ONNX Runtime intra-op threads.
    pub intra_threads: usize,
    /// Largest micro-batch across concurrent callers.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_wait_ms: u64,
    /// Tokens read per text; longer texts are truncated and flagged.
    pub max_tokens: usize,
    /// How often a running process checks the registry for a new active set (hot swap).
    pub reload_interval_ms: u64,
}

impl Default for ModelsSection {
    fn default() -> Self {
        ModelsSection {
            enabled: false,
            registry_dir: PathBuf::from("models/registry"),
            onnxruntime: String::new(),
            intra_threads: 2,
            max_batch: 32,
            max_wait_ms: 2,
            max_tokens: 256,
            reload_interval_ms: 2000,
        }
    }
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    /// `POST /v1/messages`.
    HttpApi,
    /// The agent API (agent status changes).
    AgentApi,
    /// The SMS webhook (Twilio-compatible, `channels.sms`).
    TwilioSms,
    /// The call-transcript webhook (`channels.voice`).
    VoiceWebhook,
    /// Meta webhooks (WhatsApp Cloud API today; `channels.meta`).
    MetaWebhook,
    /// The inbound SMTP listener (`channels.email.smtp`).
    Smtp,
    /// The IMAP mailbox poller (`channels.email.imap`).
    Imap,
    /// The customer chat WebSocket (`channels.chat`).
    Chat,
}

impl SourceType {
    /// Topics this source type may write.
    pub fn writable(self) -> &'static [Topic] {
        match self {
            SourceType::HttpApi
            | SourceType::TwilioSms
            | SourceType::VoiceWebhook
            | SourceType::MetaWebhook
            | SourceType::Chat => &[Topic::InboundMessages],
            // A message that cannot be parsed is kept on the dead-letter topic.
            SourceType::Smtp | SourceType::Imap => &[Topic::InboundMessages, Topic::DeadLetter],
            SourceType::AgentApi => &[
                Topic::AgentPresence,
                Topic::OutboundReplies,
                Topic::TicketEvents,
                Topic::Assignments,
            ],
        }
    }
}

/// A front door.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<SourceType>,
    pub outputs: Vec<Spanned<String>>,
}

/// Kinds of stage (the explicit registry of consumers; the binary maps each to its component).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageType {
    /// Threads inbound messages into tickets.
    Ticketing,
    /// Assigns tickets to agents.
    Router,
    /// Writes events to ClickHouse.
    ClickhouseSink,
    /// Keeps SLA clocks, fires warnings and breaches, escalates.
    Sla,
    /// Sends replies on SMS tickets through the provider.
    SmsSender,
    /// Sends replies on email tickets through the SMTP relay.
    EmailSender,
    /// Delivers replies on chat tickets to the customer's WebSocket.
    ChatSender,
    /// Sends replies on social tickets through the Graph API.
    SocialSender,
}

impl StageType {
    /// Topics this stage type can read.
    pub fn readable(self) -> &'static [Topic] {
        match self {
            StageType::Ticketing => &[Topic::InboundMessages],
            StageType::Router => &[Topic::TicketEvents, Topic::AgentPresence],
            StageType::Sla => &[Topic::TicketEvents],
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender => &[Topic::OutboundReplies],
            StageType::ClickhouseSink => &Topic::EVENTS,
        }
    }

    /// Topics this stage type can write (every consumer may also write the dead-letter topic).
    pub fn writable(self) -> &'static [Topic] {
        match self {
            StageType::Ticketing => &[
                Topic::TicketEvents,
                Topic::Enrichments,
                Topic::OutboundReplies,
            ],
            StageType::Router => &[Topic::TicketEvents, Topic::Assignments],
            StageType::Sla => &[Topic::SlaEvents, Topic::TicketEvents, Topic::Assignments],
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender
            | StageType::ClickhouseSink => &[],
        }
    }

    /// How long a fetch of this stage may wait at the broker by default (ms): 25 for every
    /// stage type, so each hop adds at most that. An idle consumer costs the broker one fetch
    /// per this long, with work per partition (the embedded tansu holds every fetch until this
    /// has passed, even one that finds records at once); a stage whose hop may be slower can
    /// wait longer and cost less (`fetch_wait_ms` on the stage).
    pub fn fetch_wait_ms(self) -> u64 {
        match self {
            StageType::Ticketing
            | StageType::Router
            | StageType::ChatSender
            | StageType::Sla
            | StageType::SmsSender
            | StageType::EmailSender
            | StageType::SocialSender
            | StageType::ClickhouseSink => 25,
        }
    }

    /// Which role runs this stage.
    pub fn role(self) -> Role {
        match self {
            StageType::Ticketing | StageType::Router | StageType::Sla => Role::Processors,
            StageType::ClickhouseSink => Role::Sink,
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender => Role::Ingest,
        }
    }
}

/// One consumer stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<StageType>,
    pub inputs: Vec<Spanned<String>>,
    #[serde(default)]
    pub outputs: Vec<Spanned<String>>,
    /// Consumer group; defaults to `<topic_prefix><name>`. Replicas of a role share it.
    #[serde(default, deserialize_with = "optional_string")]
    pub group: Option<String>,
    /// Records of different keys this stage handles at once per instance (records of one key
    /// always in order). Default 16; the ClickHouse sink batches instead and ignores it.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long this stage's fetches may wait at the broker (ms): the latency its hop may add,
    /// and what it costs the broker while idle. Default by type ([`StageType::fetch_wait_ms`]).
    #[serde(default)]
    pub fetch_wait_ms: Option<u64>,
}

fn default_concurrency() -> usize {
    16
}

impl StageConfig {
    /// The consumer group id: the configured one, else the stage name under the installation's
    /// topic prefix (so installations sharing a cluster never share a group).
    pub fn group_id(&self, topic_prefix: &str) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("{topic_prefix}{}", self.name.as_str()))
    }

    /// How long this stage's fetches may wait at the broker.
    pub fn fetch_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.fetch_wait_ms
                .unwrap_or_else(|| self.kind.fetch_wait_ms())
                .clamp(1, 60_000),
        )
    }

    /// Input topics (validated names).
    pub fn input_topics(&self) -> Vec<Topic> {
        self.inputs
            .iter()
            .filter_map(|t| Topic::from_base_name(t))
            .collect()
    }
}

/// A deployable role: one process type that scales out on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Front doors: the inbound HTTP API and channel connectors.
    Ingest,
    /// Ticketing and routing consumers.
    Processors,
    /// The agent and admin API.
    Serving,
    /// The ClickHouse sink.
    Sink,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Processors, Role::Serving, Role::Sink];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Processors => "processors",
            Role::Serving => "serving",
            Role::Sink => "sink",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl Config {
    /// Loads `path`, applies environment overrides from the process environment, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::nowhere(format!(
                "cannot read {}: {e}",
                path.display()
            ))])
        })?;
        Config::from_yaml(&text, std::env::vars())
    }

    /// Parses YAML text with the given environment (only `SWITCHBOARD__*` variables are used).
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut node =
            marked_yaml::parse_yaml(0, text).map_err(|e| ConfigErrors(vec![load_error(&e)]))?;
        check_version(&node)?;
        apply_env(&mut node, env).map_err(|e| ConfigErrors(vec![e]))?;
        let config: Config = marked_yaml::from_node(&node).map_err(|e| {
            let path = e.path().map(str::to_string);
            let inner = e.into_inner();
            let mark = inner.start_mark().or_else(|| match &inner {
                marked_yaml::Error::UnknownFieldError(field, _, _) => find_key(&node, field),
                _ => None,
            });
            let message = match path {
                Some(p) if !p.is_empty() && p != "." => format!("{p}: {inner}"),
                _ => inner.to_string(),
            };
            ConfigErrors(vec![ConfigError {
                line: mark.map(|m| m.line()),
                column: mark.map(|m| m.column()),
                message,
            }])
        })?;
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Every semantic problem: unknown topics, topics read that nothing writes, duplicate names,
    /// stages reading or writing topics their type cannot.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.http.listen_addr() {
            errors.push(ConfigError::at(self.http.listen.span(), e));
        }
        if self.services.kafka.partitions < 1 {
            errors.push(ConfigError::nowhere(
                "services.kafka.partitions must be at least 1",
            ));
        }
        let url = self.storage.url.trim();
        if !url.is_empty() {
            let bucket = url
                .strip_prefix("s3://")
                .map(|rest| rest.split('/').next().unwrap_or_default());
            if bucket.is_none_or(str::is_empty) {
                errors.push(ConfigError::nowhere(format!(
                    "storage.url {url:?} must be empty (the local data_dir) or s3://bucket[/prefix]"
                )));
            }
        }
        for (name, route) in &self.routing.categories {
            if let Some(p) = &route.priority {
                if switchboard_contracts::Priority::parse(p).is_none() {
                    errors.push(ConfigError::nowhere(format!(
                        "routing.categories.{name}.priority {p:?} is not one of low, medium, high, urgent, critical"
                    )));
                }
            }
        }
        for rule in &self.routing.rules {
            if let Some(p) = &rule.priority {
                if switchboard_contracts::Priority::parse(p).is_none() {
                    errors.push(ConfigError::nowhere(format!(
                        "routing.rules: priority {p:?} of category {:?} is not one of low, medium, high, urgent, critical",
                        rule.category
                    )));
                }
            }
        }

        let mut names = BTreeSet::new();
        let mut written: BTreeSet<Topic> = BTreeSet::new();
        // Every consumer may dead-letter.
        if !self.stages.is_empty() {
            written.insert(Topic::DeadLetter);
        }
        let check_topic =
            |name: &Spanned<String>, errors: &mut Vec<ConfigError>| -> Option<Topic> {
                let t = Topic::from_base_name(name);
                if t.is_none() {
                    let known: Vec<_> = Topic::ALL.iter().map(|t| t.base_name()).collect();
                    errors.push(ConfigError::at(
                        name.span(),
                        format!(
                            "unknown topic {:?} (known: {})",
                            name.as_str(),
                            known.join(", ")
                        ),
                    ));
                }
                t
            };
        for source in &self.sources {
            if !names.insert(source.name.as_str().to_string()) {
                errors.push(ConfigError::at(
                    source.name.span(),
                    format!("duplicate name {:?}", source.name.as_str()),
                ));
            }
            for out in &source.outputs {
                if let Some(t) = check_topic(out, &mut errors) {
                    if !source.kind.writable().contains(&t) {
                        errors.push(ConfigError::at(
                            out.span(),
                            format!(
                                "source {:?} cannot write topic {:?}",
                                source.name.as_str(),
                                out.as_str()
                            ),
                        ));
                    }
                    written.insert(t);
                }
            }
        }
        for stage in &self.stages {
            if !names.insert(stage.name.as_str().to_string()) {
                errors.push(ConfigError::at(
                    stage.name.span(),
                    format!("duplicate name {:?}", stage.name.as_str()),
                ));
            }
            for out in &stage.outputs {
                if let Some(t) = check_topic(out, &mut errors) {
                    if !stage.kind.writable().contains(&t) {
                        errors.push(ConfigError::at(
                            out.span(),
                            format!(
                                "stage {:?} of type {:?} cannot write topic {:?}",
                                stage.name.as_str(),
                                *stage.kind,
                                out.as_str()
                            ),
                        ));
                    }
                    written.insert(t);
                }
            }
        }
        for stage in &self.stages {
            if stage.inputs.is_empty() {
                errors.push(ConfigError::at(
                    stage.name.span(),
                    format!("stage {:?} reads no topic", stage.name.as_str()),
                ));
            }
            for input in &stage.inputs {
                let Some(t) = Topic::from_base_name(input) else {
                    check_topic(input, &mut errors);
                    continue;
                };
                if !stage.kind.readable().contains(&t) {
                    errors.push(ConfigError::at(
                        input.span(),
                        format!(
                            "stage {:?} of type {:?} cannot read topic {:?}",
                            stage.name.as_str(),
                            *stage.kind,
                            input.as_str()
                        ),
                    ));
                }
                if !written.contains(&t) {
                    errors.push(ConfigError::at(
                        input.span(),
                        format!(
                            "stage {:?} reads topic {:?} but no source or stage writes it",
                            stage.name.as_str(),
                            input.as_str()
                        ),
                    ));
                }
            }
        }
        if let Err(e) = self.simulation.clock() {
            errors.push(ConfigError::nowhere(e));
        }
        if self.simulation.enabled {
            let loopback = |a: &str| {
                a.parse::<SocketAddr>()
                    .map(|a| a.ip().is_loopback())
                    .unwrap_or(false)
            };
            if !loopback(self.http.listen.as_str()) || !loopback(&self.channels.email.smtp.listen) {
                errors.push(ConfigError::nowhere(
                    "simulation.enabled needs http.listen and channels.email.smtp.listen on loopback: a simulated clock never serves real customers",
                ));
            }
        }
        errors
    }

    /// Stages that belong to `role`.
    pub fn stages_for(&self, role: Role) -> impl Iterator<Item = &StageConfig> {
        self.stages.iter().filter(move |s| s.kind.role() == role)
    }

    /// Whether a source of `kind` is configured.
    pub fn has_source(&self, kind: SourceType) -> bool {
        self.sources.iter().any(|s| *s.kind == kind)
    }

    /// Every config key path this build understands (for checking deploy manifests' env overrides).
    pub fn known_env_keys() -> &'static [&'static str] {
        &[
            "DATA_DIR",
            "STORAGE__URL",
            "STORAGE__ENDPOINT",
            "STORAGE__REGION",
            "STORAGE__ACCESS_KEY_ID",
            "STORAGE__SECRET_ACCESS_KEY",
            "STORAGE__ALLOW_HTTP",
            "HTTP__LISTEN",
            "HTTP__MAX_BODY_BYTES",
            "HTTP__ADMIN_TOKEN",
            "HTTP__PUBLIC_URL",
            "HTTP__HEADER_READ_TIMEOUT_MS",
            "HTTP__BODY_READ_TIMEOUT_MS",
            "HTTP__MAX_CONNECTIONS",
            "HTTP__MAX_CONNECTIONS_PER_IP",
            "SERVICES__KAFKA__BROKERS",
            "SERVICES__KAFKA__TOPIC_PREFIX",
            "SERVICES__KAFKA__PARTITIONS",
            "SERVICES__KAFKA__REPLICATION_FACTOR",
            "SERVICES__KAFKA__PRODUCE_TIMEOUT_MS",
            "SERVICES__KAFKA__RETENTION_MS",
            "SERVICES__KAFKA__MAX_ATTEMPTS",
            "SERVICES__KAFKA__PARK_DELAY_MS",
            "SERVICES__KAFKA__MAX_PARKS",
            "SERVICES__KAFKA__STALL_SECS",
            "SERVICES__POSTGRES__URL",
            "SERVICES__POSTGRES__MAX_CONNECTIONS",
            "SERVICES__CLICKHOUSE__URL",
            "SERVICES__CLICKHOUSE__DATABASE",
            "SERVICES__CLICKHOUSE__USER",
            "SERVICES__CLICKHOUSE__PASSWORD",
            "SERVICES__QDRANT__URL",
            "SERVICES__QDRANT__API_KEY",
            "INGEST__MAX_TEXT_BYTES",
            "ROUTING__DEFAULT_SKILL",
            "ROUTING__SWEEP_INTERVAL_MS",
            "SINK__BATCH_MAX_ROWS",
            "SINK__BATCH_MAX_WAIT_MS",
            "MODELS__ENABLED",
            "ROUTING__MIN_CONFIDENCE",
            "ROUTING__ESCALATE_SENTIMENT",
            "MODELS__REGISTRY_DIR",
            "MODELS__ONNXRUNTIME",
            "MODELS__INTRA_THREADS",
            "MODELS__MAX_BATCH",
            "MODELS__MAX_WAIT_MS",
            "MODELS__MAX_TOKENS",
            "MODELS__RELOAD_INTERVAL_MS",
            "ROUTING__ACCEPT_TIMEOUT_SECS",
            "ROUTING__TARGET_RESPONSE_SECS",
            "ROUTING__VIP_REQUIRES_SENIOR",
            "ROUTING__HIGH_VALUE_ORDER_CENTS",
            "ROUTING__REPEAT_WINDOW_DAYS",
            "ROUTING__ESCALATE_ON_CONTACT",
            "SLA__WARN_SHARE",
            "SLA__POLL_INTERVAL_MS",
            "KB__ENABLED",
            "KB__SEED_FILE",
            "KB__ANSWER_THRESHOLD",
            "KB__SUGGESTIONS",
            "KB__BOT_RESOLVE_AFTER_SECS",
            "KB__BOT_CHANNELS",
            "CHANNELS__SMS__AUTH_TOKEN",
            "CHANNELS__SMS__PUBLIC_URL",
            "CHANNELS__SMS__API_BASE_URL",
            "CHANNELS__SMS__ACCOUNT_SID",
            "CHANNELS__SMS__FROM_NUMBER",
            "CHANNELS__VOICE__SECRET",
            "CHANNELS__ORDERS__SECRET",
            "SIMULATION__ENABLED",
            "SIMULATION__SPEED",
            "SIMULATION__START",
            "SIMULATION__ANCHOR",
            "RETENTION__CLOSED_TICKETS_DAYS",
            "RETENTION__EVENTS_DAYS",
            "RETENTION__INTERVAL_SECS",
            "RETENTION__ORDERS_DAYS",
            "RETENTION__CHAT_SESSION_DAYS",
            "RETENTION__DEADLETTER_DAYS",
            "RETENTION__BATCH_SIZE",
            "CHANNELS__CHAT__SECRET",
            "CHANNELS__CHAT__MAX_FRAME_BYTES",
            "CHANNELS__CHAT__MESSAGES_PER_SEC",
            "CHANNELS__CHAT__IDENTITY_SECRET",
            "CHANNELS__CHAT__FRAMES_PER_SEC",
            "CHANNELS__CHAT__SESSIONS_PER_IP_PER_MIN",
            "CHANNELS__CHAT__MAX_SOCKETS_PER_IP",
            "CHANNELS__CHAT__MAX_SOCKETS_PER_CONVERSATION",
            "CHANNELS__CHAT__IDLE_TIMEOUT_SECS",
            "CHANNELS__EMAIL__DOMAIN",
            "CHANNELS__EMAIL__MAX_ATTACHMENT_BYTES",
            "CHANNELS__EMAIL__SMTP__LISTEN",
            "CHANNELS__EMAIL__SMTP__HOSTNAME",
            "CHANNELS__EMAIL__SMTP__MAX_MESSAGE_BYTES",
            "CHANNELS__EMAIL__SMTP__RECIPIENTS",
            "CHANNELS__EMAIL__IMAP__HOST",
            "CHANNELS__EMAIL__IMAP__PORT",
            "CHANNELS__EMAIL__IMAP__TLS",
            "CHANNELS__EMAIL__IMAP__USERNAME",
            "CHANNELS__EMAIL__IMAP__PASSWORD",
            "CHANNELS__EMAIL__IMAP__MAILBOX",
            "CHANNELS__EMAIL__IMAP__POLL_INTERVAL_MS",
            "CHANNELS__EMAIL__OUTBOUND__HOST",
            "CHANNELS__EMAIL__OUTBOUND__PORT",
            "CHANNELS__EMAIL__OUTBOUND__SECURITY",
            "CHANNELS__EMAIL__OUTBOUND__USERNAME",
            "CHANNELS__EMAIL__OUTBOUND__PASSWORD",
            "CHANNELS__EMAIL__OUTBOUND__FROM",
            "CHANNELS__META__APP_SECRET",
            "CHANNELS__META__VERIFY_TOKEN",
            "CHANNELS__META__GRAPH_API_BASE",
            "CHANNELS__META__GRAPH_API_VERSION",
            "CHANNELS__META__ACCESS_TOKEN",
        ]
    }
}

/// Where a mapping key first appears in the tree (for errors the deserializer reports without one).
fn find_key(node: &Node, key: &str) -> Option<marked_yaml::Marker> {
    match node {
        Node::Mapping(map) => map.iter().find_map(|(k, v)| {
            if k.as_str() == key {
                k.span().start().copied()
            } else {
                find_key(v, key)
            }
        }),
        Node::Sequence(seq) => seq.iter().find_map(|n| find_key(n, key)),
        Node::Scalar(_) => None,
    }
}

fn load_error(e: &marked_yaml::LoadError) -> ConfigError {
    use marked_yaml::LoadError as L;
    let (mark, msg) = match e {
        L::TopLevelMustBeMapping(m) => (Some(*m), "the top level must be a mapping".to_string()),
        L::TopLevelMustBeSequence(m) => (Some(*m), "the top level must be a sequence".to_string()),
        L::UnexpectedAnchor(m) => (Some(*m), "anchors are not supported".to_string()),
        L::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be scalars".to_string()),
        L::UnexpectedTag(m) => (Some(*m), "tags are not supported".to_string()),
        L::ScanError(m, s) => (Some(*m), format!("invalid YAML: {s}")),
        L::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!("duplicate key {:?}", d.key.as_str()),
        ),
    };
    ConfigError {
        line: mark.map(|m| m.line()),
        column: mark.map(|m| m.column()),
        message: msg,
    }
}

fn check_version(node: &Node) -> Result<(), ConfigErrors> {
    let map = node.as_mapping().ok_or_else(|| {
        ConfigErrors(vec![ConfigError::at(
            node.span(),
            "the top level must be a mapping",
        )])
    })?;
    let Some(v) = map.get_scalar("version") else {
        return Err(ConfigErrors(vec![ConfigError::at(
            node.span(),
            format!("missing `version:` key (this build reads version {CONFIG_VERSION})"),
        )]));
    };
    match v.as_str().parse::<u32>() {
        Ok(CONFIG_VERSION) => Ok(()),
        Ok(n) => Err(ConfigErrors(vec![ConfigError::at(
            v.span(),
            format!(
                "config version {n} is not supported (this build reads version {CONFIG_VERSION})"
            ),
        )])),
        Err(_) => Err(ConfigErrors(vec![ConfigError::at(
            v.span(),
            format!("version {:?} is not a number", v.as_str()),
        )])),
    }
}

/// Applies `SWITCHBOARD__A__B=value` overrides onto the parsed tree, creating mappings as needed.
fn apply_env(
    node: &mut Node,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (key, value) in vars {
        let path: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::nowhere(format!(
                "environment variable {key} has an empty path segment"
            )));
        }
        let mut cur = &mut *node;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let Some(map) = cur.as_mapping_mut() else {
                return Err(ConfigError::nowhere(format!(
                    "environment variable {key}: {} is not a mapping",
                    path[..i].join(".")
                )));
            };
            let k = marked_yaml::types::MarkedScalarNode::new(Span::new_blank(), seg.clone());
            if last {
                let v = marked_yaml::types::MarkedScalarNode::new(Span::new_blank(), value.clone());
                map.insert(k, Node::from(v));
                break;
            }
            if map.get(&k).is_none() {
                map.insert(
                    k.clone(),
                    Node::from(marked_yaml::types::MarkedMappingNode::new_empty(
                        Span::new_blank(),
                    )),
                );
            }
            let Some(next) = map.get_mut(&k) else {
                return Err(ConfigError::nowhere(format!(
                    "environment variable {key}: cannot set {seg}"
                )));
            };
            cur = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: 1
http:
  listen: 127.0.0.1:9999
sources:
  - name: api
    type: http_api
    outputs: [inbound.messages]
  - name: agents
    type: agent_api
    outputs: [agent.presence]
stages:
  - name: ticketing
    type: ticketing
    inputs: [inbound.messages]
    outputs: [ticket.events]
  - name: router
    type: router
    inputs: [ticket.events, agent.presence]
    outputs: [ticket.events, assignments]
  - name: clickhouse
    type: clickhouse_sink
    inputs: [ticket.events, assignments, deadletter]
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn loads_a_good_file() {
        let c = Config::from_yaml(GOOD, no_env()).unwrap();
        assert_eq!(c.http.listen_addr().unwrap().port(), 9999);
        assert_eq!(c.stages.len(), 3);
        assert_eq!(
            c.stages[0].group_id(&c.services.kafka.topic_prefix),
            "switchboard.ticketing"
        );
        assert_eq!(c.stages_for(Role::Processors).count(), 2);
    }

    #[test]
    fn env_overrides_file_and_creates_sections() {
        let env = vec![
            (
                "SWITCHBOARD__HTTP__LISTEN".to_string(),
                "127.0.0.1:7000".to_string(),
            ),
            (
                "SWITCHBOARD__SERVICES__KAFKA__BROKERS".to_string(),
                "k:9092".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::from_yaml(GOOD, env).unwrap();
        assert_eq!(c.http.listen_addr().unwrap().port(), 7000);
        assert_eq!(c.services.kafka.brokers, "k:9092");
    }

    #[test]
    fn unknown_field_names_its_line() {
        let text = GOOD.replace(
            "  listen: 127.0.0.1:9999",
            "  listen: 127.0.0.1:9999\n  lisen: 1",
        );
        let err = Config::from_yaml(&text, no_env()).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, Some(5), "{:?}", err.0);
        assert!(err.0[0].message.contains("lisen"), "{:?}", err.0);
    }

    #[test]
    fn yaml_null_means_unset() {
        let c = Config::from_yaml(
            &format!("{GOOD}routing:\n  default_skill: null\n"),
            no_env(),
        )
        .unwrap();
        assert_eq!(c.routing.default_skill, None);
        let c = Config::from_yaml(
            &format!("{GOOD}routing:\n  default_skill: general\n"),
            no_env(),
        )
        .unwrap();
        assert_eq!(c.routing.default_skill.as_deref(), Some("general"));
    }

    #[test]
    fn missing_or_future_version_is_refused() {
        let err = Config::from_yaml("http: {}\n", no_env()).unwrap_err();
        assert!(err.0[0].message.contains("missing `version:`"));
        let err =
            Config::from_yaml(&GOOD.replace("version: 1", "version: 2"), no_env()).unwrap_err();
        assert!(err.0[0].message.contains("version 2 is not supported"));
        assert_eq!(err.0[0].line, Some(2));
    }

    #[test]
    fn a_topic_nobody_writes_is_an_error_at_its_line() {
        let text = GOOD.replace("    outputs: [agent.presence]\n", "    outputs: []\n");
        let err = Config::from_yaml(&text, no_env()).unwrap_err();
        assert_eq!(err.0.len(), 1, "{:?}", err.0);
        let e = &err.0[0];
        assert!(
            e.message
                .contains("reads topic \"agent.presence\" but no source or stage writes it"),
            "{e:?}"
        );
        let line = text
            .lines()
            .position(|l| l.contains("inputs: [ticket.events, agent.presence]"))
            .unwrap()
            + 1;
        assert_eq!(e.line, Some(line));
    }

    #[test]
    fn reports_every_error_at_once() {
        let text = GOOD
            .replace("inputs: [inbound.messages]", "inputs: [inbound.mesages]")
            .replace(
                "outputs: [ticket.events, assignments]",
                "outputs: [ticket.events, assignments, enrichments]",
            )
            .replace("name: router", "name: ticketing");
        let err = Config::from_yaml(&text, no_env()).unwrap_err();
        let msgs: Vec<_> = err.0.iter().map(|e| e.message.clone()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("unknown topic \"inbound.mesages\"")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("cannot write topic \"enrichments\"")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("duplicate name \"ticketing\"")),
            "{msgs:?}"
        );
        assert!(err.0.iter().all(|e| e.line.is_some()), "{:?}", err.0);
    }

    #[test]
    fn bad_listen_address_is_reported() {
        let err =
            Config::from_yaml(&GOOD.replace("127.0.0.1:9999", "nowhere"), no_env()).unwrap_err();
        assert!(err.0[0].message.contains("not an address"));
        assert_eq!(err.0[0].line, Some(4));
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let env = [
            ("SWITCHBOARD__HTTP__ADMIN_TOKEN", "adm-s3cret-1"),
            (
                "SWITCHBOARD__SERVICES__POSTGRES__URL",
                "postgres://u:pg-s3cret-2@h/db",
            ),
            ("SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD", "ch-s3cret-3"),
            ("SWITCHBOARD__SERVICES__QDRANT__API_KEY", "qd-s3cret-4"),
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "ord-s3cret-5"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-s3cret-6"),
            (
                "SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET",
                "idn-s3cret-7",
            ),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__IMAP__PASSWORD",
                "imap-s3cret-8",
            ),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__PASSWORD",
                "smtp-s3cret-9",
            ),
            ("SWITCHBOARD__CHANNELS__META__APP_SECRET", "meta-s3cret-10"),
            (
                "SWITCHBOARD__CHANNELS__META__VERIFY_TOKEN",
                "meta-s3cret-11",
            ),
            (
                "SWITCHBOARD__CHANNELS__META__ACCESS_TOKEN",
                "meta-s3cret-12",
            ),
            ("SWITCHBOARD__CHANNELS__VOICE__SECRET", "voice-s3cret-13"),
            ("SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN", "sms-s3cret-14"),
        ];
        let c = Config::from_yaml(
            GOOD,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        let printed = format!("{c:?} {c:#?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("***"));
        // Each value is still there to use.
        assert_eq!(
            c.http.admin_token.as_ref().unwrap().expose(),
            "adm-s3cret-1"
        );
        assert_eq!(c.channels.sms.auth_token.expose(), "sms-s3cret-14");
        assert_eq!(
            c.services.postgres.url.expose(),
            "postgres://u:pg-s3cret-2@h/db"
        );
        let s = Secret::from("x\u{0}\u{1F600}");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }

    #[test]
    fn the_shipped_pipelines_yaml_is_valid() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines.yaml"))
                .unwrap();
        let c = Config::from_yaml(&text, no_env()).unwrap();
        assert!(c.has_source(SourceType::HttpApi));
        for stage in [
            StageType::Ticketing,
            StageType::Router,
            StageType::Sla,
            StageType::SmsSender,
            StageType::EmailSender,
            StageType::ChatSender,
            StageType::SocialSender,
            StageType::ClickhouseSink,
        ] {
            assert!(
                c.stages.iter().any(|s| *s.kind == stage),
                "{stage:?} missing"
            );
        }
    }
}
