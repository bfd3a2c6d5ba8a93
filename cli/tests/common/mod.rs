//! Test harness: real services (started by scripts/test.sh), one private namespace per test
//! (topic prefix, Postgres database, ClickHouse database), and `switchboard run` child processes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod mail;
pub mod up;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Endpoints of the shared test services.
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka: String,
    pub postgres: String,
    pub clickhouse: String,
    /// The ClickHouse password (the embedded server requires one; `services` exports it).
    pub clickhouse_password: String,
}

pub fn services() -> Services {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: run the tests through scripts/test.sh, which starts the services"
            )
        })
    };
    Services {
        kafka: get("SWITCHBOARD__SERVICES__KAFKA__BROKERS"),
        postgres: get("SWITCHBOARD__SERVICES__POSTGRES__URL"),
        clickhouse: get("SWITCHBOARD__SERVICES__CLICKHOUSE__URL"),
        clickhouse_password: std::env::var("SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD")
            .unwrap_or_default(),
    }
}

/// The `switchboard` binary: this package's own when the tests are the cli's, else the one
/// built beside the test executable (`target/<profile>/switchboard`, e.g. for `loadgen`'s tests).
pub fn switchboard_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_switchboard") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/switchboard
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("switchboard")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free loopback port for a child process to listen on.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports, taken below the kernel's ephemeral range (32768 and up on
/// Linux), so that no outgoing connection of a test running alongside can take one between
/// this check and the child's bind. Every port is held until all are chosen, so two never
/// coincide; tests in other processes draw at random from 12,000 ports.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    let mut i = 0;
    while i < N {
        let port: u16 = rng.random_range(20_000..32_000);
        if ports[..i].contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports[i] = port;
            i += 1;
        }
    }
    ports
}

/// One test's private namespace on the shared services.
#[derive(Debug)]
pub struct Harness {
    pub services: Services,
    pub name: String,
    pub prefix: String,
    pub pg_url: String,
    pub token: String,
    pub http: reqwest::Client,
    /// The pipelines file nodes run with (the repository's by default).
    pub config: PathBuf,
}

/// A running `switchboard run` process.
#[derive(Debug)]
pub struct Node {
    pub child: Child,
    pub base: String,
    /// The node's SMTP listener (host:port).
    pub smtp: String,
    /// The node's data dir (attachments, dead-lettered raw mail, the knowledge base).
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Kills the process with SIGKILL (no chance to commit or flush anything).
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Harness {
    pub async fn new() -> Harness {
        let services = services();
        let name = format!("t{}", &Uuid::now_v7().simple().to_string()[..20]);
        let admin = PgPool::connect(&services.postgres).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let pg_url = match services.postgres.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("unexpected postgres url"),
        };
        Harness {
            services,
            prefix: format!("{name}."),
            pg_url,
            token: Uuid::now_v7().simple().to_string(),
            name,
            http: reqwest::Client::new(),
            config: repo().join("pipelines.yaml"),
        }
    }

    /// Starts `switchboard run --role ...` in this namespace and waits until /readyz says ready.
    pub async fn spawn(&self, roles: &[&str], extra: &[(&str, String)]) -> Node {
        let [port, smtp_port] = free_ports();
        let log =
            std::env::temp_dir().join(format!("{}-{}-{port}.log", self.name, roles.join("-")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(switchboard_bin());
        // Relative paths in pipelines.yaml (the model registry) are relative to the repository.
        cmd.current_dir(repo());
        cmd.arg("--config").arg(&self.config).arg("run");
        // Each node its own data dir (the embedded knowledge base lives there).
        let data = std::env::temp_dir().join(format!("{}-{port}-data", self.name));
        for r in roles {
            cmd.args(["--role", r]);
        }
        cmd.env(
            "SWITCHBOARD__SERVICES__KAFKA__BROKERS",
            &self.services.kafka,
        )
        .env("SWITCHBOARD__SERVICES__KAFKA__TOPIC_PREFIX", &self.prefix)
        .env("SWITCHBOARD__SERVICES__KAFKA__PARTITIONS", "3")
        .env("SWITCHBOARD__SERVICES__POSTGRES__URL", &self.pg_url)
        .env(
            "SWITCHBOARD__SERVICES__CLICKHOUSE__URL",
            &self.services.clickhouse,
        )
        .env("SWITCHBOARD__SERVICES__CLICKHOUSE__DATABASE", &self.name)
        .env(
            "SWITCHBOARD__SERVICES__CLICKHOUSE__PASSWORD",
            &self.services.clickhouse_password,
        )
        .env("SWITCHBOARD__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__HTTP__ADMIN_TOKEN", &self.token)
        // Every ingest replica of a test shares the chat signing secret (as a deployment must).
        .env(
            "SWITCHBOARD__CHANNELS__CHAT__SECRET",
            format!("chat-{}", self.token),
        )
        .env(
            "SWITCHBOARD__CHANNELS__EMAIL__SMTP__LISTEN",
            format!("127.0.0.1:{smtp_port}"),
        )
        .env("SWITCHBOARD__ROUTING__SWEEP_INTERVAL_MS", "500")
        .env("SWITCHBOARD__SINK__BATCH_MAX_WAIT_MS", "200")
        .env("SWITCHBOARD__DATA_DIR", &data)
        .env(
            "RUST_LOG",
            std::env::var("SWITCHBOARD_TEST_RUST_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn,librdkafka=off,sqlx=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut node = Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
            smtp: format!("127.0.0.1:{smtp_port}"),
            data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", node.base)).send().await {
                if r.status() == 200 {
                    return node;
                }
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!(
                    "switchboard exited ({status}) before ready:\n{}",
                    node.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not ready in time:\n{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes a copy of pipelines.yaml with `edits` (find, replace) applied and runs nodes with
    /// it from now on.
    pub fn edit_config(&mut self, edits: &[(&str, &str)]) {
        let mut text = std::fs::read_to_string(repo().join("pipelines.yaml")).unwrap();
        for (from, to) in edits {
            assert!(text.contains(from), "pipelines.yaml has no {from:?}");
            text = text.replace(from, to);
        }
        let path = std::env::temp_dir().join(format!("{}-pipelines.yaml", self.name));
        std::fs::write(&path, text).unwrap();
        self.config = path;
    }

    pub async fn pg(&self) -> PgPool {
        PgPool::connect(&self.pg_url).await.unwrap()
    }

    /// Runs a ClickHouse query in this test's database and returns the text result.
    pub async fn ch(&self, sql: &str) -> String {
        let r = self
            .http
            .post(format!(
                "{}/?database={}",
                self.services.clickhouse, self.name
            ))
            .basic_auth("default", Some(&self.services.clickhouse_password))
            .body(sql.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "clickhouse {sql}: {text}");
        text.trim().to_string()
    }

    pub async fn call(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", node.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, node: &Node, path: &str, body: Value) -> (u16, Value) {
        self.call(node, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn get(&self, node: &Node, path: &str) -> (u16, Value) {
        self.call(node, reqwest::Method::GET, path, None).await
    }

    pub async fn agent(
        &self,
        node: &Node,
        email: &str,
        skills: &[&str],
        max: i32,
        online: bool,
    ) -> String {
        let (s, v) = self
            .post(node, "/v1/agents", serde_json::json!({"name": email, "email": email, "skills": skills, "languages": ["en"], "max_concurrent": max}))
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        if online {
            let (s, v) = self
                .call(
                    node,
                    reqwest::Method::PUT,
                    &format!("/v1/agents/{id}/status"),
                    Some(serde_json::json!({"status": "online"})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
        id
    }
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The tansu binary the setup script installed.
pub fn tansu_bin() -> PathBuf {
    std::env::var_os("SWITCHBOARD_TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var("SWITCHBOARD_CACHE")
                .unwrap_or_else(|_| "/var/tmp/switchboard".into());
            PathBuf::from(cache).join("tansu-0.6.0/bin/tansu")
        })
}
