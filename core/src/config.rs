//! The loader of `pipelines.yaml`, and the sections every role shares.
//!
//! The file is typed, versioned (`version: 1`), rejects unknown fields, and is layered: the file
//! first, then environment variables of the form `SWITCHBOARD__SECTION__KEY=value` (e.g.
//! `SWITCHBOARD__SERVICES__KAFKA__BROKERS=kafka:9092`), which replace the value at that path.
//! [`load`] and [`from_yaml`] deserialize it into any type and return every problem with its
//! line and column, so `switchboard validate` can print them all.
//!
//! Each crate owns the sections of its components (`ingest::sms::SmsChannelConfig`,
//! `processors::router::RoutingConfig`, ...); the composition root (`cli`) puts them together
//! into the whole file. This module keeps the loader, [`Secret`], and the sections that belong to
//! no one component: `http`, `services` (Kafka, Postgres, ClickHouse, Qdrant), `storage` and
//! `simulation` (the business clock).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use marked_yaml::{Node, Span, Spanned};
use serde::Deserialize;

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
    /// A problem at `span` of the file.
    pub fn at(span: &Span, message: impl Into<String>) -> Self {
        let start = span.start();
        ConfigError {
            line: start.map(|m| m.line()),
            column: start.map(|m| m.column()),
            message: message.into(),
        }
    }

    /// A problem with no place in the file (e.g. between two settings).
    pub fn nowhere(message: impl Into<String>) -> Self {
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
pub fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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
pub fn optional_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.filter(|s| !matches!(s.trim(), "" | "~" | "null" | "Null" | "NULL")))
}

/// [`optional_string`] for a secret.
pub fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(optional_string(d)?.map(Secret))
}

pub fn default_data_dir() -> PathBuf {
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
    /// The idempotent producer (`enable.idempotence`): on for Kafka and Redpanda. The embedded
    /// broker (tansu 0.6) cannot take the epoch a librdkafka producer bumps by itself after a
    /// timed-out produce (its storage task panics, see deploy/tansu/README.md), so the
    /// repository's pipelines.yaml turns it off and the embedded stack forces it off; off means one request in flight per
    /// connection, so a partition's order holds, and a retried record may be stored twice (its
    /// consumers' idempotent writes suppress the copy).
    pub idempotent: bool,
    /// Extra librdkafka properties (SASL, TLS, ...), passed through unchanged. Values are
    /// [`Secret`]s (a SASL password is one), so a logged config never shows them.
    pub client_options: BTreeMap<String, Secret>,
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
    /// How long a consumer's fetch waits at the broker when there is nothing to read, unless
    /// its stage sets `fetch_wait_ms`: what an idle consumer costs the broker (one read of its
    /// topics per wait). A record produced meanwhile answers the fetch at once (Kafka's
    /// purgatory; the embedded tansu with `deploy/tansu/fetch-long-poll.patch`). A broker that
    /// holds every fetch this long instead (stock tansu 0.6) needs a short wait: it is then the
    /// latency each hop adds.
    pub fetch_wait_ms: u64,
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
            idempotent: true,
            client_options: BTreeMap::new(),
            retention_ms: 7 * 24 * 3600 * 1000,
            max_attempts: 10,
            park_delay_ms: 30_000,
            max_parks: 8,
            stall_secs: 30,
            fetch_wait_ms: 1000,
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

impl StorageConfig {
    /// The URL's problem, if it has one.
    pub fn validate(&self) -> Option<ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            return None;
        }
        let bucket = url
            .strip_prefix("s3://")
            .map(|rest| rest.split('/').next().unwrap_or_default());
        bucket.is_none_or(str::is_empty).then(|| {
            ConfigError::nowhere(format!(
                "storage.url {url:?} must be empty (the local data_dir) or s3://bucket[/prefix]"
            ))
        })
    }
}

/// Loads `path` into `T`, with environment overrides from the process environment.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::nowhere(format!(
            "cannot read {}: {e}",
            path.display()
        ))])
    })?;
    from_yaml(&text, std::env::vars())
}

/// Parses YAML text into `T`: the version gate, then the environment overrides (only
/// `SWITCHBOARD__*` variables are used), then the typed sections, with line-numbered errors.
pub fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigErrors> {
    let mut node =
        marked_yaml::parse_yaml(0, text).map_err(|e| ConfigErrors(vec![load_error(&e)]))?;
    check_version(&node)?;
    apply_env(&mut node, env).map_err(|e| ConfigErrors(vec![e]))?;
    marked_yaml::from_node(&node).map_err(|e| {
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
    })
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
