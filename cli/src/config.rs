//! The whole `pipelines.yaml`: every crate's sections put together, and the registry of sources
//! and stages (which topics each kind may read and write, which role runs it).
//!
//! The sections are the components' own config types, deserialized straight from the file:
//! `channels.sms` is [`switchboard_ingest::sms::SmsConfig`], `routing` is
//! [`switchboard_processors::router::RoutingConfig`], and so on. `switchboard_core::config` keeps
//! the loader and the shared sections (`http`, `services`, `storage`, `simulation`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use marked_yaml::Spanned;
use serde::Deserialize;
use switchboard_analytics::sink::SinkConfig;
use switchboard_contracts::Topic;
use switchboard_core::config::{
    self, default_data_dir, optional_string, ConfigError, ConfigErrors, HttpConfig, ServicesConfig,
    SimulationConfig, StorageConfig,
};
use switchboard_core::kafka::ConsumerSettings;
use switchboard_ingest::start::{Door, Sender};
use switchboard_ingest::{ChannelsConfig, IngestConfig};
use switchboard_models::ModelsConfig;
use switchboard_processors::automation::RulesConfig;
use switchboard_processors::kb::KbConfig;
use switchboard_processors::router::RoutingConfig;
use switchboard_processors::sla::SlaConfig;
use switchboard_processors::start::Stage;
use switchboard_serving::privacy::RetentionConfig;
use switchboard_serving::sso::SsoConfig;

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
    /// How the team's rules run (the rules themselves live in Postgres, edited through
    /// `/v1/rules`).
    #[serde(default)]
    pub rules: RulesConfig,
    /// How outbound webhooks are delivered (the subscriptions live in Postgres, managed
    /// through `/v1/webhooks`).
    #[serde(default)]
    pub webhooks: switchboard_tickets::webhooks::WebhooksConfig,
    /// How notifications reach people by email and SMS (their preferences live in Postgres,
    /// `/v1/agents/{id}/notifications`).
    #[serde(default)]
    pub notifications: switchboard_ingest::notify_out::NotificationsConfig,
    /// The shop: its facts for the help centre, its Admin API for order actions, refund limits,
    /// the return policy, when a shipment is late.
    #[serde(default)]
    pub shop: switchboard_tickets::shop::ShopConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The demand forecast and the staffing plan's targets.
    #[serde(default)]
    pub forecast: switchboard_analytics::forecast::ForecastConfig,
    /// Search: its recent window (a partial index over the newest messages).
    #[serde(default)]
    pub search: switchboard_serving::search_window::SearchConfig,
    /// How a stop (SIGINT, SIGTERM) drains.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Single sign-on for people (OpenID Connect); off unless `sso.issuer` is set.
    #[serde(default)]
    pub sso: SsoConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub channels: ChannelsConfig,
    #[serde(default)]
    pub kb: KbConfig,
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub simulation: SimulationConfig,
    /// Front doors that write to topics (the HTTP API, later the channel connectors).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Consumers: what each reads and writes.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// How a stop drains: after the signal, `/readyz` answers 503 (`draining`) at once and, for
/// `unready_ms`, the process goes on answering so a load balancer that health-checks it takes
/// it out of rotation (0: no wait, for one machine); then requests, batches and loops in
/// flight get `drain_timeout_ms` to finish (connections 30 s at most within it); what is still
/// running then is named in the log and aborted, and is redelivered after the restart
/// (uncommitted offsets, lapsed leases). A stop therefore always ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub drain_timeout_ms: u64,
    pub unready_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 40_000,
            unready_ms: 0,
        }
    }
}

impl ShutdownConfig {
    /// How long readiness is false before the listeners close (at most a minute).
    pub fn unready(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.unready_ms.min(60_000))
    }

    /// The drain, at least one second.
    pub fn drain(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_timeout_ms.max(1_000))
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
    /// The shop's signed order webhook (`channels.orders`).
    OrderWebhook,
}

impl SourceType {
    /// The ingest front door this source is (the agent API is part of serving: none).
    pub fn door(self) -> Option<Door> {
        match self {
            SourceType::HttpApi => Some(Door::Api),
            SourceType::Chat => Some(Door::Chat),
            SourceType::TwilioSms => Some(Door::Sms),
            SourceType::MetaWebhook => Some(Door::Meta),
            SourceType::VoiceWebhook => Some(Door::Voice),
            SourceType::Smtp => Some(Door::Smtp),
            SourceType::Imap => Some(Door::Imap),
            SourceType::OrderWebhook => Some(Door::Orders),
            SourceType::AgentApi => None,
        }
    }

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
            SourceType::OrderWebhook => &[Topic::InboundOrders],
            SourceType::AgentApi => &[
                Topic::AgentPresence,
                Topic::OutboundReplies,
                Topic::TicketEvents,
                Topic::Assignments,
                Topic::CommerceEvents,
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
    /// Stores the shops' order updates.
    Orders,
    /// Runs the team's rules (`/v1/rules`): triggers on events, automations on time.
    Rules,
    /// Delivers the desk's events to the webhooks subscribed to them (`/v1/webhooks`).
    WebhookSender,
}

impl StageType {
    /// The processors' stage this is, if it is one.
    pub fn processor_stage(self) -> Option<Stage> {
        match self {
            StageType::Ticketing => Some(Stage::Ticketing),
            StageType::Router => Some(Stage::Router),
            StageType::Sla => Some(Stage::Sla),
            StageType::Orders => Some(Stage::Orders),
            StageType::Rules => Some(Stage::Rules),
            _ => None,
        }
    }

    /// The ingest reply sender this is, if it is one.
    pub fn sender(self) -> Option<Sender> {
        match self {
            StageType::SmsSender => Some(Sender::Sms),
            StageType::EmailSender => Some(Sender::Email),
            StageType::SocialSender => Some(Sender::Social),
            StageType::ChatSender => Some(Sender::Chat),
            _ => None,
        }
    }

    /// Topics this stage type can read.
    pub fn readable(self) -> &'static [Topic] {
        match self {
            StageType::Ticketing => &[Topic::InboundMessages],
            StageType::Router => &[Topic::TicketEvents, Topic::AgentPresence],
            StageType::Sla => &[Topic::TicketEvents],
            StageType::Orders => &[Topic::InboundOrders],
            StageType::Rules | StageType::WebhookSender => &[Topic::TicketEvents, Topic::SlaEvents],
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender => &[Topic::OutboundReplies],
            StageType::ClickhouseSink => Topic::EVENTS,
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
            StageType::Rules => &[
                Topic::TicketEvents,
                Topic::Assignments,
                Topic::OutboundReplies,
            ],
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender
            | StageType::Orders
            | StageType::WebhookSender
            | StageType::ClickhouseSink => &[],
        }
    }

    /// Which role runs this stage.
    pub fn role(self) -> Role {
        match self {
            StageType::Ticketing
            | StageType::Router
            | StageType::Sla
            | StageType::Orders
            | StageType::Rules => Role::Processors,
            StageType::ClickhouseSink => Role::Sink,
            StageType::SmsSender
            | StageType::EmailSender
            | StageType::ChatSender
            | StageType::SocialSender
            | StageType::WebhookSender => Role::Ingest,
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
    /// How long this stage's fetches may wait at the broker when there is nothing to read (ms):
    /// what an idle consumer costs the broker (one read of its topics per wait). A record
    /// produced meanwhile answers the fetch at once (Kafka, and the patched embedded tansu), so
    /// it adds no latency. Default `services.kafka.fetch_wait_ms`.
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

    /// Consumer settings of a stage that handles records one by one: batches of up to 64
    /// records (waiting at most 5 ms for more), handled in lanes by key, `concurrency` at once.
    pub fn consumer_settings(&self, topic_prefix: &str) -> ConsumerSettings {
        ConsumerSettings {
            group: self.group_id(topic_prefix),
            topics: self.input_topics(),
            batch_max: 64,
            batch_wait: std::time::Duration::from_millis(5),
            concurrency: self.concurrency.max(1),
            fetch_wait: self.fetch_wait(),
            from_latest: false,
        }
    }

    /// How long this stage's fetches may wait at the broker (`None`: `kafka.fetch_wait_ms`).
    pub fn fetch_wait(&self) -> Option<std::time::Duration> {
        self.fetch_wait_ms
            .map(|ms| std::time::Duration::from_millis(ms.clamp(1, 60_000)))
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
        let config: Config = config::load(path)?;
        config.checked()
    }

    /// Parses YAML text with the given environment (only `SWITCHBOARD__*` variables are used).
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let config: Config = config::from_yaml(text, env)?;
        config.checked()
    }

    fn checked(self) -> Result<Config, ConfigErrors> {
        let errors = self.validate();
        if errors.is_empty() {
            Ok(self)
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
        errors.extend(self.storage.validate());
        errors.extend(self.routing.validate());
        if let Err(e) = self.sso.validate() {
            errors.push(ConfigError::nowhere(e.to_string()));
        }
        if let Err(e) = self.forecast.check() {
            errors.push(ConfigError::nowhere(e));
        }
        if let Err(e) = self.search.check() {
            errors.push(ConfigError::nowhere(e));
        }
        if let Err(e) = self.kb.drafts.check() {
            errors.push(ConfigError::nowhere(e));
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
            "SERVICES__KAFKA__IDEMPOTENT",
            "SERVICES__KAFKA__RETENTION_MS",
            "SERVICES__KAFKA__MAX_ATTEMPTS",
            "SERVICES__KAFKA__PARK_DELAY_MS",
            "SERVICES__KAFKA__MAX_PARKS",
            "SERVICES__KAFKA__STALL_SECS",
            "SERVICES__KAFKA__FETCH_WAIT_MS",
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
            "MODELS__EXECUTION_PROVIDER",
            "MODELS__CUDA_DEVICE_ID",
            "SHUTDOWN__DRAIN_TIMEOUT_MS",
            "SHUTDOWN__UNREADY_MS",
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::config::Secret;

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
            StageType::Rules,
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
