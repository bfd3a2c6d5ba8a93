//! Test harness: real services (started by scripts/test.sh), one private namespace per test
//! (topic prefix, Postgres database, ClickHouse database), and `switchboard run` child processes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod mail;
pub mod shop;
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

/// The npm packages `scripts/setup.sh` installs for the browser tests (playwright-core, ...).
pub fn node_modules() -> PathBuf {
    let cache =
        std::env::var("SWITCHBOARD_CACHE").unwrap_or_else(|_| "/var/tmp/switchboard".into());
    PathBuf::from(cache).join("npm/node_modules")
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

/// Every role but the ClickHouse sink.
pub const CORE: &[&str] = &["ingest", "processors", "serving"];
/// Every role.
pub const ALL: &[&str] = &["ingest", "processors", "serving", "sink"];

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
    pub async fn spawn(&self, roles: &[&str], extra: &[(&str, &str)]) -> Node {
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

    /// Calls `node`'s API with `token` as the bearer (none: anonymously, as a customer's browser):
    /// (status, the JSON body, or the text as a JSON string when it is not JSON).
    pub async fn call_as(
        &self,
        node: &Node,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", node.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
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

    /// Calls `node`'s API as the admin.
    pub async fn call(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(node, Some(&self.token), method, path, body)
            .await
    }

    /// GET without a token: what anyone may read (the API document, the help centre).
    pub async fn get_anon(&self, node: &Node, path: &str) -> (u16, Value) {
        self.call_as(node, None, reqwest::Method::GET, path, None)
            .await
    }

    /// Opens a chat conversation as the widget does (no token): (status, the session).
    pub async fn open_chat(&self, node: &Node, body: Value) -> (u16, Value) {
        self.call_as(
            node,
            None,
            reqwest::Method::POST,
            "/chat/sessions",
            Some(body),
        )
        .await
    }

    /// GET `path` with `token` as the bearer, or none: the raw response, for its status, headers
    /// or page.
    pub async fn fetch(&self, node: &Node, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", node.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, node: &Node, path: &str, body: Value) -> (u16, Value) {
        self.call(node, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn get(&self, node: &Node, path: &str) -> (u16, Value) {
        self.call(node, reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, node: &Node, path: &str, body: Value) -> (u16, Value) {
        self.call(node, reqwest::Method::PUT, path, Some(body))
            .await
    }

    pub async fn delete(&self, node: &Node, path: &str) -> (u16, Value) {
        self.call(node, reqwest::Method::DELETE, path, None).await
    }

    /// `node`'s API as the holder of `token` (an agent's, a supervisor's) instead of the admin.
    pub fn caller<'a>(&'a self, node: &'a Node, token: &'a str) -> Caller<'a> {
        Caller {
            h: self,
            node,
            token,
        }
    }

    /// POSTs `body` to `path` as the admin and asserts 201 Created: what was created.
    pub async fn created(&self, node: &Node, path: &str, body: Value) -> Value {
        let (s, v) = self.post(node, path, body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Issues an API token with `role` (for `agent`, when an agent's) as the admin: the token.
    pub async fn issue_token(
        &self,
        node: &Node,
        role: &str,
        agent: Option<&str>,
        name: &str,
    ) -> String {
        let body = serde_json::json!({"role": role, "agent_id": agent, "name": name});
        let v = self.created(node, "/v1/tokens", body).await;
        v["token"].as_str().unwrap().to_string()
    }

    /// An agent's reply on a ticket, as the admin (asserting 201 Created).
    pub async fn reply(
        &self,
        node: &Node,
        ticket: impl std::fmt::Display,
        agent: &str,
        text: &str,
    ) -> Value {
        let path = format!("/v1/tickets/{ticket}/replies");
        self.created(
            node,
            &path,
            serde_json::json!({"agent_id": agent, "text": text}),
        )
        .await
    }

    /// Creates an agent (`email`, `skills`, `max` tickets at once, English), online or not: its id.
    pub async fn agent(
        &self,
        node: &Node,
        email: &str,
        skills: &[&str],
        max: i32,
        online: bool,
    ) -> String {
        let body = serde_json::json!({"name": email, "email": email, "skills": skills, "languages": ["en"], "max_concurrent": max});
        self.agent_with(node, body, online).await
    }

    /// Creates the agent `body` describes, online or not: its id.
    pub async fn agent_with(&self, node: &Node, body: Value, online: bool) -> String {
        let v = self.created(node, "/v1/agents", body).await;
        let id = v["id"].as_str().unwrap().to_string();
        if online {
            let (s, v) = self.agent_status(node, &id, "online").await;
            assert_eq!(s, 200, "{v}");
        }
        id
    }

    /// Sets an agent's presence (`online`, `offline`, `busy`) as the admin.
    pub async fn agent_status(&self, node: &Node, agent: &str, status: &str) -> (u16, Value) {
        let path = format!("/v1/agents/{agent}/status");
        self.put(node, &path, serde_json::json!({ "status": status }))
            .await
    }

    /// Posts `body` to `/v1/messages` as the admin (asserting 202) and waits for the ticket
    /// that stores it: its id.
    pub async fn message_ticket(&self, node: &Node, body: Value) -> Uuid {
        let (s, v) = self.post(node, "/v1/messages", body).await;
        assert_eq!(s, 202, "{v}");
        let id = Uuid::parse_str(v["message_id"].as_str().unwrap()).unwrap();
        ticket_of_message(&self.pg().await, id).await
    }

    /// `GET /v1/tickets/{id}` as the admin (asserting 200).
    pub async fn ticket_view(&self, node: &Node, id: impl std::fmt::Display) -> Value {
        let (s, v) = self.get(node, &format!("/v1/tickets/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Moves a ticket to `status` as the admin.
    pub async fn ticket_status(
        &self,
        node: &Node,
        ticket: impl std::fmt::Display,
        status: &str,
    ) -> (u16, Value) {
        let path = format!("/v1/tickets/{ticket}/status");
        self.put(node, &path, serde_json::json!({ "status": status }))
            .await
    }
}

/// A fresh namespace and one node in it with `roles` and `extra` settings (see [`Harness::spawn`]).
pub async fn start(roles: &[&str], extra: &[(&str, &str)]) -> (Harness, Node) {
    let h = Harness::new().await;
    let node = h.spawn(roles, extra).await;
    (h, node)
}

/// Asserts that an answer (`status`, `body`) is a refusal with `want` that names `field`.
pub fn assert_refused(status: u16, body: &Value, want: u16, field: &str) {
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (want, Some(field)),
        "{body}"
    );
}

/// Calls with one token: see [`Harness::caller`].
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    h: &'a Harness,
    node: &'a Node,
    token: &'a str,
}

impl Caller<'_> {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.h
            .call_as(self.node, Some(self.token), method, path, body)
            .await
    }
}

/// The `key` string of every element of the array `list` (a listing's names, a thread's texts).
pub fn strs<'v>(list: &'v Value, key: &str) -> Vec<&'v str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_str().unwrap())
        .collect()
}

/// What a `SELECT count(*) ...` on `pool` says.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A response header's value, as text.
pub fn header<'r>(r: &'r reqwest::Response, name: &str) -> &'r str {
    r.headers()[name].to_str().unwrap()
}

/// A webhook form: its fields (what a provider signs) and its url-encoded body.
pub fn form_body(fields: &[(&str, &str)]) -> (Vec<(String, String)>, String) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&fields)
        .finish();
    (fields, body)
}

/// Runs `cmd` with `input` on its stdin, to its end: its status and what it printed.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
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

/// Reads Server-Sent Events from a response: (event, data) pairs.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    pub fn new(resp: reqwest::Response) -> Sse {
        Sse {
            resp,
            buf: String::new(),
        }
    }

    pub async fn next(&mut self, secs: u64) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return (event, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("stream open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until the server ends the stream.
    pub async fn drain(&mut self) {
        while let Ok(Some(_)) = self.resp.chunk().await {}
    }

    /// The next event named `name` (others skipped).
    pub async fn until(&mut self, name: &str, secs: u64) -> Value {
        loop {
            let (e, v) = self.next(secs).await;
            if e == name {
                return v;
            }
        }
    }
}

/// The ticket of the message `id` (the `message_id` an ingest door answered with), once stored.
pub async fn ticket_of_message(pool: &PgPool, id: Uuid) -> Uuid {
    eventually("the message to be stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar("SELECT ticket_id FROM messages WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await
}

/// The ticket of the message with `external_id` (a provider's id, a mail's Message-ID), once
/// stored.
pub async fn ticket_by_external_id(pool: &PgPool, external_id: &str) -> Uuid {
    eventually("the message stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        let id = external_id.to_string();
        async move {
            sqlx::query_scalar("SELECT ticket_id FROM messages WHERE external_id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await
}
