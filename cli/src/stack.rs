//! The embedded local stack behind `switchboard up`: the tansu broker (sqlite storage), a private
//! Postgres cluster, and a ClickHouse server, each a child process with all data under
//! `data_dir`. A service whose URL is configured is not started; the configured one is used.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::config::Config;
use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use switchboard_core::config::Secret;
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

/// Where each service is, local or external.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub kafka_brokers: String,
    pub postgres_url: String,
    pub clickhouse_url: String,
    /// The embedded ClickHouse's generated password (none: the configured server's, from
    /// `services.clickhouse.password`).
    pub clickhouse_password: Option<Secret>,
    /// The broker is the embedded tansu: its producers run without idempotence, whatever the
    /// config says (tansu 0.6 cannot take the epoch librdkafka bumps by itself after a timed-out
    /// produce, see deploy/tansu/README.md).
    pub embedded_kafka: bool,
}

impl Endpoints {
    /// Points `cfg` at these services where it needs more than the URLs: the embedded
    /// ClickHouse's password, and no idempotent producer against the embedded broker.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(p) = &self.clickhouse_password {
            cfg.services.clickhouse.password = p.clone();
        }
        if self.embedded_kafka && cfg.services.kafka.idempotent {
            info!("the embedded broker runs producers without idempotence (services.kafka.idempotent set to false)");
            cfg.services.kafka.idempotent = false;
        }
    }

    /// The shell exports that point a process at these services (`switchboard services`'
    /// output, the environment the simulator gives its instances).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SERVICES__KAFKA__BROKERS", self.kafka_brokers.clone()),
            ("SERVICES__POSTGRES__URL", self.postgres_url.clone()),
            ("SERVICES__CLICKHOUSE__URL", self.clickhouse_url.clone()),
        ];
        if let Some(p) = &self.clickhouse_password {
            env.push(("SERVICES__CLICKHOUSE__PASSWORD", p.expose().to_string()));
        }
        if self.embedded_kafka {
            env.push(("SERVICES__KAFKA__IDEMPOTENT", "false".to_string()));
        }
        env
    }
}

/// A started child service.
#[derive(Debug)]
struct Service {
    name: &'static str,
    child: Child,
    /// Signal that makes it shut down cleanly.
    stop_signal: Signal,
}

impl Service {
    /// Asks it to stop with its signal; kills it after 30 s.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), self.stop_signal);
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => info!(service = self.name, %status, "stopped"),
            _ => {
                warn!(service = self.name, "did not stop in time, killing");
                let _ = self.child.kill().await;
            }
        }
    }
}

/// The running local services.
#[derive(Debug, Default)]
pub struct Stack {
    services: Vec<Service>,
    /// How the embedded broker was started (data dir, port, in memory), to start it again.
    broker: Option<(PathBuf, u16, bool)>,
    /// The broker's watch, once [`Stack::watch_broker`] handed it over: its stop and its task.
    watch: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

/// Starts a tansu process on `port` and waits for its port.
async fn spawn_tansu(data: &Path, port: u16, memory: bool) -> Result<Child> {
    let bin = tansu_bin()?;
    let dir = data.join("tansu");
    std::fs::create_dir_all(&dir)?;
    let url = format!("tcp://127.0.0.1:{port}");
    let (out, err) = log_file(&data.join("logs"), "tansu")?;
    let mut child = Command::new(&bin)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .arg("--storage-engine")
        // tansu resolves sqlite paths against its working directory.
        .arg(if memory {
            "memory://tansu/"
        } else {
            "sqlite://tansu.db"
        })
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .process_group(0)
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    write_pid(data, "tansu", &child)?;
    wait_for_port(port, "tansu", Duration::from_secs(20), &mut child).await?;
    Ok(child)
}

/// Whether the broker on `port` answers a metadata request within 3 s.
async fn broker_answers(port: u16) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    tokio::task::spawn_blocking(move || {
        let consumer: Result<BaseConsumer, _> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("log_level", "0")
            .create();
        consumer.is_ok_and(|c| c.fetch_metadata(None, Duration::from_secs(3)).is_ok())
    })
    .await
    .unwrap_or(false)
}

/// The embedded broker, watched. tansu 0.6 can lose its storage task to a panic while the
/// process lives on and keeps its port (seen here: "more or less than one row" in its
/// idempotent-producer check, "entered unreachable code" in a group update); from then on it
/// answers nothing and every role stalls. A metadata request every 2 s; after three failures in
/// a row (6 s and more without an answer) the broker is killed and started again on the same
/// port and data. Its SQLite log is durable and every client reconnects by itself, so no
/// acknowledged record is lost; `/metrics` counts `switchboard_embedded_broker_restarts_total`.
#[derive(Debug)]
struct BrokerWatch {
    service: Service,
    data: PathBuf,
    port: u16,
    memory: bool,
}

impl BrokerWatch {
    const EVERY: Duration = Duration::from_secs(2);
    const FAILURES: u32 = 3;

    /// Watches until `stop`, then stops the broker.
    async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Self::EVERY) => {}
            }
            if broker_answers(self.port).await {
                failures = 0;
                continue;
            }
            failures += 1;
            warn!(
                port = self.port,
                failures, "the embedded broker does not answer"
            );
            if failures >= Self::FAILURES && !stop.is_cancelled() {
                self.restart().await;
                failures = 0;
            }
        }
        self.service.stop().await;
    }

    async fn restart(&mut self) {
        let _ = self.service.child.kill().await;
        let _ = self.service.child.wait().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_free(self.port) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match spawn_tansu(&self.data, self.port, self.memory).await {
            Ok(child) => {
                self.service.child = child;
                metrics::counter!(crate::telemetry::EMBEDDED_BROKER_RESTARTS_TOTAL).increment(1);
                warn!(port = self.port, "the embedded broker was restarted");
            }
            Err(e) => {
                error!(error = %e, "the embedded broker could not be restarted; trying again")
            }
        }
    }
}

const CACHE_DEFAULT: &str = "/var/tmp/switchboard";

fn cache_dir() -> PathBuf {
    std::env::var_os("SWITCHBOARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CACHE_DEFAULT))
}

/// Finds a program: an explicit environment variable, then the setup script's cache, then PATH.
fn find_program(env: &str, cached: &[PathBuf], name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    for c in cached {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} not found: run scripts/setup.sh, or set {env}")
}

fn tansu_bin() -> Result<PathBuf> {
    find_program(
        "SWITCHBOARD_TANSU_BIN",
        &[cache_dir().join("tansu-0.6.0/bin/tansu")],
        "tansu",
    )
}

fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHBOARD_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let v = versions.last().ok_or_else(|| {
        anyhow!("postgres server not found under /usr/lib/postgresql: run scripts/setup.sh")
    })?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

fn clickhouse_bin() -> Result<PathBuf> {
    find_program("SWITCHBOARD_CLICKHOUSE_BIN", &[], "clickhouse-server")
}

/// 128 random bits as 32 hex digits.
pub fn random_secret() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// Creates `path` readable by its owner only (mode 0600 from the first byte: never written
/// first and restricted afterwards) and writes `value`; fails if it exists.
pub fn write_private(path: &Path, value: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(value)?;
    f.sync_all()?;
    Ok(())
}

/// Creates `dir` with mode 0700 (its missing parents with the usual mode: the data directory
/// must stay reachable for the Postgres user), or restricts it to 0700 if it exists.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Reads a secret from `path`, creating a random one on first use: the file mode 0600 from the
/// start, its directory 0700.
pub fn secret(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt as _;

    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if let Ok(s) = std::fs::read_to_string(path) {
        // A file from an older version may have been readable by others for a moment.
        if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
        // Empty (a crash between create and write): make it again.
        std::fs::remove_file(path)?;
    }
    let value = random_secret();
    write_private(path, value.as_bytes())?;
    Ok(value)
}

fn log_file(dir: &Path, name: &str) -> Result<(Stdio, Stdio)> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

async fn wait_for_port(port: u16, name: &str, timeout: Duration, child: &mut Child) -> Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited during start ({status}); see its log under data_dir/logs");
        }
        if Instant::now() > deadline {
            bail!("{name} did not listen on {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records a child's pid under `data/run`, so a later start can stop a leftover one.
fn write_pid(data: &Path, name: &str, child: &Child) -> Result<()> {
    let dir = data.join("run");
    std::fs::create_dir_all(&dir)?;
    if let Some(pid) = child.id() {
        std::fs::write(dir.join(format!("{name}.pid")), pid.to_string())?;
    }
    Ok(())
}

/// Stops a service left running by an earlier `up` that was killed before it could stop it.
async fn stop_leftover(data: &Path, name: &str, program: &str) {
    let file = data.join("run").join(format!("{name}.pid"));
    let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let _ = std::fs::remove_file(&file);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(program) {
        return;
    }
    warn!(
        service = name,
        pid, "stopping a leftover process from an earlier run"
    );
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Stack {
    /// Starts whatever the config does not point elsewhere, and returns the endpoints.
    pub async fn start(cfg: &Config) -> Result<(Stack, Endpoints)> {
        let data = absolute(&cfg.data_dir)?;
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let mut stack = Stack::default();
        let result = stack.start_all(cfg, &data).await;
        match result {
            Ok(endpoints) => Ok((stack, endpoints)),
            Err(e) => {
                stack.stop().await;
                Err(e)
            }
        }
    }

    async fn start_all(&mut self, cfg: &Config, data: &Path) -> Result<Endpoints> {
        let s = &cfg.services;
        let kafka_brokers = if s.kafka.brokers.is_empty() {
            self.start_tansu(data, s.kafka.embedded_port, false).await?
        } else {
            s.kafka.brokers.clone()
        };
        let postgres_url = if s.postgres.url.is_empty() {
            self.start_postgres(data, s.postgres.embedded_port).await?
        } else {
            s.postgres.url.expose().to_string()
        };
        let (clickhouse_url, clickhouse_password) = if s.clickhouse.url.is_empty() {
            let (url, password) = self
                .start_clickhouse(
                    data,
                    s.clickhouse.embedded_http_port,
                    s.clickhouse.embedded_tcp_port,
                    &s.clickhouse.user,
                )
                .await?;
            (url, Some(password))
        } else {
            (s.clickhouse.url.clone(), None)
        };
        Ok(Endpoints {
            kafka_brokers,
            postgres_url,
            clickhouse_url,
            clickhouse_password,
            embedded_kafka: s.kafka.brokers.is_empty(),
        })
    }

    /// Keeps `child` as the service `name` (its pid file, how to stop it) once it listens on
    /// `port`.
    async fn watch(
        &mut self,
        data: &Path,
        name: &'static str,
        mut child: Child,
        port: u16,
        wait: Duration,
        stop_signal: Signal,
    ) -> Result<()> {
        write_pid(data, name, &child)?;
        wait_for_port(port, name, wait, &mut child).await?;
        self.services.push(Service {
            name,
            child,
            stop_signal,
        });
        Ok(())
    }

    /// Whether this stack started the embedded broker.
    pub fn broker_started(&self) -> bool {
        self.broker.is_some()
    }

    /// Starts the tansu broker on `port` (sqlite storage under `data`, or in memory).
    pub async fn start_tansu(&mut self, data: &Path, port: u16, memory: bool) -> Result<String> {
        stop_leftover(data, "tansu", "tansu").await;
        if !port_free(port) {
            bail!("port {port} for the embedded broker is taken (another `switchboard up`?); set services.kafka.embedded_port");
        }
        let child = spawn_tansu(data, port, memory).await?;
        info!(port, "embedded kafka broker (tansu) started");
        self.services.push(Service {
            name: "tansu",
            child,
            stop_signal: Signal::SIGTERM,
        });
        self.broker = Some((data.to_path_buf(), port, memory));
        Ok(format!("127.0.0.1:{port}"))
    }

    /// Watches the embedded broker (nothing when it is external) until [`Stack::stop`], which
    /// stops it after the other services.
    pub fn watch_broker(&mut self) {
        let Some((data, port, memory)) = self.broker.take() else {
            return;
        };
        let Some(i) = self.services.iter().position(|s| s.name == "tansu") else {
            return;
        };
        let watch = BrokerWatch {
            service: self.services.remove(i),
            data,
            port,
            memory,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        self.watch = Some((stop.clone(), tokio::spawn(watch.run(stop))));
    }

    async fn start_postgres(&mut self, data: &Path, port: u16) -> Result<String> {
        stop_leftover(data, "postgres", "postgres").await;
        if !port_free(port) {
            bail!("port {port} for the embedded postgres is taken; set services.postgres.embedded_port");
        }
        let bin = postgres_bin_dir()?;
        let dir = data.join("postgres");
        let run = data.join("postgres-run");
        let password = secret(&data.join("secrets/postgres.password"))?;
        // Postgres refuses to run as root: run it as the `postgres` user when we are root.
        let owner = if nix::unistd::geteuid().is_root() {
            Some(
                User::from_name("postgres")?
                    .ok_or_else(|| anyhow!("running as root and no `postgres` user exists"))?,
            )
        } else {
            None
        };
        std::fs::create_dir_all(&run)?;
        let (out, err) = log_file(&data.join("logs"), "postgres")?;
        if !dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&dir)?;
            let pwfile = run.join("initdb.pw");
            let _ = std::fs::remove_file(&pwfile);
            write_private(&pwfile, password.as_bytes())?;
            if let Some(u) = &owner {
                chown_tree(&dir, u)?;
                chown_tree(&run, u)?;
            }
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            let mut cmd = std::process::Command::new(bin.join("initdb"));
            cmd.arg("-D").arg(&dir).args([
                "-U",
                "switchboard",
                "-E",
                "UTF8",
                "--auth=scram-sha-256",
                "--no-instructions",
            ]);
            cmd.arg(format!("--pwfile={}", pwfile.display()))
                .stdout(out)
                .stderr(err);
            if let Some(u) = &owner {
                cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
            }
            let status = cmd.status().context("cannot run initdb")?;
            let _ = std::fs::remove_file(&pwfile);
            if !status.success() {
                bail!("initdb failed ({status}); see data_dir/logs/postgres.log");
            }
            info!(dir = %dir.display(), "postgres cluster initialised");
        } else if let Some(u) = &owner {
            chown_tree(&run, u)?;
        }
        let (out, err) = log_file(&data.join("logs"), "postgres")?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&run);
        cmd.args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=on",
        ]);
        cmd.stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(u) = &owner {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        let child = cmd.spawn().context("cannot start postgres")?;
        self.watch(
            data,
            "postgres",
            child,
            port,
            Duration::from_secs(30),
            Signal::SIGINT,
        )
        .await?;
        let admin_url = format!("postgres://switchboard:{password}@127.0.0.1:{port}/postgres");
        let pool = switchboard_core::db::connect(&admin_url, 1, Duration::from_secs(30)).await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'switchboard'")
                .fetch_optional(&pool)
                .await?;
        if exists.is_none() {
            sqlx::query("CREATE DATABASE switchboard")
                .execute(&pool)
                .await?;
        }
        pool.close().await;
        info!(port, "embedded postgres started");
        Ok(format!(
            "postgres://switchboard:{password}@127.0.0.1:{port}/switchboard"
        ))
    }

    /// Starts ClickHouse with one user, `user`, whose password is generated on first use
    /// (`secrets/clickhouse.password`) and stored in `users.xml` only as its SHA-256: nothing
    /// on this machine (a web page's script posting to localhost included) runs SQL without it.
    async fn start_clickhouse(
        &mut self,
        data: &Path,
        http_port: u16,
        tcp_port: u16,
        user: &str,
    ) -> Result<(String, Secret)> {
        stop_leftover(data, "clickhouse", "clickhouse").await;
        if !port_free(http_port) || !port_free(tcp_port) {
            bail!("port {http_port} or {tcp_port} for the embedded clickhouse is taken; set services.clickhouse.embedded_*_port");
        }
        let bin = clickhouse_bin()?;
        let dir = data.join("clickhouse");
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("config.xml"),
            clickhouse_config(&dir, http_port, tcp_port),
        )?;
        let password = secret(&data.join("secrets/clickhouse.password"))?;
        let users = dir.join("users.xml");
        let _ = std::fs::remove_file(&users);
        write_private(&users, clickhouse_users(user, &password)?.as_bytes())?;
        let (out, err) = log_file(&data.join("logs"), "clickhouse")?;
        let child = Command::new(&bin)
            .arg(format!(
                "--config-file={}",
                dir.join("config.xml").display()
            ))
            .current_dir(&dir)
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.watch(
            data,
            "clickhouse",
            child,
            http_port,
            Duration::from_secs(60),
            Signal::SIGTERM,
        )
        .await?;
        info!(port = http_port, "embedded clickhouse started");
        Ok((
            format!("http://127.0.0.1:{http_port}"),
            Secret::new(password),
        ))
    }

    /// Stops every service, last started first, cleanly (then forcibly after 30 s).
    pub async fn stop(&mut self) {
        // The watched broker goes last, as it was started first.
        while let Some(mut s) = self.services.pop() {
            s.stop().await;
        }
        if let Some((stop, watch)) = self.watch.take() {
            stop.cancel();
            let _ = watch.await;
        }
    }
}

pub fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn chown_tree(dir: &Path, user: &User) -> Result<()> {
    nix::unistd::chown(dir, Some(user.uid), Some(user.gid))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chown_tree(&path, user)?;
        } else {
            nix::unistd::chown(&path, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(())
}

fn clickhouse_config(dir: &Path, http_port: u16, tcp_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog><size>10M</size><count>3</count></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
</yandex>
"#
    )
}

/// `users.xml`: `user` with the SHA-256 of `password`, from loopback only.
fn clickhouse_users(user: &str, password: &str) -> Result<String> {
    use sha2::Digest as _;
    if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("services.clickhouse.user {user:?} must be alphanumeric for the embedded clickhouse");
    }
    let hash: String = sha2::Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!(
        r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><{user}><password_sha256_hex>{hash}</password_sha256_hex><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></{user}></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_embedded_broker_gets_no_idempotent_producer_whatever_the_config_says() {
        let endpoints = |embedded_kafka| Endpoints {
            kafka_brokers: "127.0.0.1:9092".into(),
            postgres_url: "postgres://u:p@127.0.0.1/db".into(),
            clickhouse_url: "http://127.0.0.1:8123".into(),
            clickhouse_password: Some(Secret::from("pw".to_string())),
            embedded_kafka,
        };
        // A user's own config that never heard of the key: the default is on.
        let config = || Config::from_yaml("version: 1\n", std::iter::empty()).unwrap();
        let mut cfg = config();
        assert!(cfg.services.kafka.idempotent);
        endpoints(true).apply(&mut cfg);
        assert!(!cfg.services.kafka.idempotent);
        assert_eq!(cfg.services.clickhouse.password.expose(), "pw");
        let env = endpoints(true).env();
        assert!(env.contains(&("SERVICES__KAFKA__IDEMPOTENT", "false".to_string())));
        assert!(env.contains(&("SERVICES__CLICKHOUSE__PASSWORD", "pw".to_string())));
        // A real Kafka keeps what the config says.
        let mut cfg = config();
        endpoints(false).apply(&mut cfg);
        assert!(cfg.services.kafka.idempotent);
        let env = endpoints(false).env();
        assert!(!env.iter().any(|(k, _)| *k == "SERVICES__KAFKA__IDEMPOTENT"));
        assert_eq!(
            env[0],
            ("SERVICES__KAFKA__BROKERS", "127.0.0.1:9092".to_string())
        );
    }

    #[test]
    fn secrets_are_private_from_the_start_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/secrets/x.token");
        let first = secret(&path).unwrap();
        assert_eq!(first.len(), 32);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_ne!(
            mode(&dir.path().join("data")),
            0o700,
            "the data folder above stays reachable (the postgres user)"
        );
        assert_eq!(secret(&path).unwrap(), first, "read back, not regenerated");
        // A file that exists is never overwritten by the creating path.
        assert!(write_private(&path, b"other").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    }

    #[test]
    fn clickhouse_users_hold_the_hash_only() {
        let xml = clickhouse_users("default", "pw").unwrap();
        // sha256("pw")
        assert!(xml.contains(
            "<password_sha256_hex>30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4</password_sha256_hex>"
        ));
        assert!(!xml.contains(">pw<"));
        assert!(!xml.contains("<password>"));
        assert!(clickhouse_users("a<b", "pw").is_err());
    }
}
