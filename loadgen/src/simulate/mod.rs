//! `switchboard-sim simulate`: a support day through the real front doors.
//!
//! Starts (or uses) the services, runs Switchboard as four processes (ingest, processors,
//! serving, sink) in a fresh namespace with a compressed business clock, and drives them like
//! customers, providers and agents would: email over SMTP, chat over the WebSocket, signed SMS,
//! WhatsApp, voice and order webhooks, agents through the agent API and their live stream.
//! Replies come back through the providers' side the simulator plays (an SMTP relay, the SMS
//! and Graph APIs). Nothing goes around the front doors; the stores are read only at the end, to
//! account for every accepted message. Live progress, then a text, JSON and HTML report.
//!
//! `--find-max` raises a flat load step by step until a goal (`goals:` in the model) breaks
//! and reports the highest load that held, in tickets per real day on this machine.

mod actors;
mod chaos;
mod doors;
pub(crate) mod model;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rand::Rng as _;
use switchboard_cli::config::Config;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use actors::World;
use doors::{Doors, Inbox, Target};
use model::{SimConfig, Texts};
use report::{Extra, Report, Stats};

use switchboard_cli::stack::random_secret as secret;

/// A file of the repository (tests).
#[cfg(test)]
pub(crate) fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Arguments of `simulate`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SimulateArgs {
    /// The traffic model.
    #[arg(long, default_value = "deploy/simulate/day.yaml")]
    model: PathBuf,
    /// Simulated time to run instead of the model's (`2h`, `30m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// New tickets per simulated day instead of the model's.
    #[arg(long)]
    tickets_per_day: Option<f64>,
    /// Simulated seconds per wall second instead of the model's.
    #[arg(long)]
    speed: Option<f64>,
    /// Seed instead of the model's (same seed: same texts and choices).
    #[arg(long)]
    seed: Option<u64>,
    /// Agents instead of the model's count.
    #[arg(long)]
    agents: Option<usize>,
    /// The agents' count and shifts from a staffing plan (`switchboard-sim forecast
    /// --plan-out`) instead of the model's.
    #[arg(long)]
    shifts: Option<PathBuf>,
    /// The simulated time the run starts at instead of the model's (RFC 3339): the day a plan
    /// was made for.
    #[arg(long)]
    start: Option<String>,
    /// Hostile requests per valid ticket instead of the model's share.
    #[arg(long)]
    hostile: Option<f64>,
    /// The Bitext CSV folder instead of the model's `texts`.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// A flat day (no curve, no bursts) at the model's volume.
    #[arg(long)]
    flat: bool,
    /// A soak: this many tickets per real day (e.g. 70% of `--find-max`), flat, for 30 wall
    /// minutes (or `--duration` of simulated time).
    #[arg(long)]
    soak: Option<f64>,
    /// Where report.txt, report.json and report.html go.
    #[arg(long, default_value = "simulation")]
    out: PathBuf,
    /// Raise a flat load until a goal breaks; report the highest that held.
    #[arg(long)]
    find_max: bool,
    /// Wall seconds per capacity step.
    #[arg(long, default_value_t = 60)]
    step_secs: u64,
    /// The first capacity step, tickets per real day.
    #[arg(long, default_value_t = 100_000.0)]
    from: f64,
    /// Each capacity step is this much above the last.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Run with the models off (not the capacity figure: the is with models on).
    #[arg(long)]
    no_models: bool,
    /// Exit non-zero when anything was lost or failed, or a hostile request was not refused.
    #[arg(long)]
    strict: bool,
    /// Hide the progress bar (logs only).
    #[arg(long)]
    quiet: bool,
    /// Instances per role, e.g. `ingest=2,processors=3,serving=2,sink=2` (1 to 8 each). The
    /// consumer roles share the Kafka consumer groups; several front doors (ingest, serving) sit
    /// behind HAProxy on loopback, checked on `/readyz`, as a deployment's would.
    #[arg(long, value_parser = parse_instances)]
    instances: Option<Instances>,
    /// Partitions per topic of this run (its topics are new). Default: the config's (1) with one
    /// instance per role; 6 with several (an even share for 1, 2 or 3 instances, so scaling runs
    /// compare like with like). A consumer role cannot use more instances than partitions.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: Option<i32>,
    /// Every this long (wall time), SIGKILL a random instance of a random role and start it
    /// again after `--chaos-pause`; the report says what each kill cost. The front doors sit
    /// behind HAProxy, and customers, providers and agents retry what met a restart.
    #[arg(long, value_parser = humantime::parse_duration)]
    chaos: Option<Duration>,
    /// How long a killed instance stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    chaos_pause: Duration,
    /// A third into the run, restart every instance one by one with SIGTERM as a rolling update
    /// does (the front doors behind HAProxy); callers do not retry (a failed request counts), and
    /// the report sets the ack p99 during the restart beside the p99 without it.
    #[arg(long, conflicts_with = "chaos")]
    rolling_restart: bool,
}

/// How many processes of each consumer role a simulation runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Instances {
    ingest: usize,
    processors: usize,
    serving: usize,
    sink: usize,
}

impl Instances {
    /// The most instances of any role (each consumes from some group: ingest the outbound
    /// stages, serving the webhooks).
    fn most(&self) -> usize {
        self.processors
            .max(self.sink)
            .max(self.ingest)
            .max(self.serving)
    }

    /// Several front doors need the load balancer in front.
    fn balanced(&self) -> bool {
        self.ingest > 1 || self.serving > 1
    }
}

impl Default for Instances {
    fn default() -> Self {
        Instances {
            ingest: 1,
            processors: 1,
            serving: 1,
            sink: 1,
        }
    }
}

/// `processors=3,sink=2`.
fn parse_instances(s: &str) -> Result<Instances, String> {
    let mut out = Instances::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (role, n) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: ROLE=N"))?;
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| (1..=8).contains(n))
            .ok_or_else(|| format!("{part:?}: N is 1 to 8"))?;
        match role {
            "ingest" => out.ingest = n,
            "processors" => out.processors = n,
            "serving" => out.serving = n,
            "sink" => out.sink = n,
            other => return Err(format!("{other:?}: ingest, processors, serving or sink")),
        }
    }
    Ok(out)
}

/// The processes of the system under simulation.
struct System {
    procs: Arc<tokio::sync::Mutex<Vec<chaos::Proc>>>,
    launcher: Arc<chaos::Launcher>,
    /// HAProxy, when the front doors are balanced.
    lb: Option<Child>,
    /// `(every, pause)` of the chaos loop.
    chaos: Option<(Duration, Duration)>,
    /// Restart every instance one by one a third into the run.
    rolling: bool,
    target: Target,
    metrics: Vec<(String, String)>,
    postgres_url: String,
    clickhouse_url: String,
    clickhouse_db: String,
    /// The ClickHouse user and password (the embedded server requires them).
    clickhouse_user: String,
    clickhouse_password: String,
}

impl System {
    async fn stop(&mut self) {
        let mut procs = self.procs.lock().await;
        for c in procs.iter().filter_map(|p| p.child.as_ref()) {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for c in procs.iter_mut().filter_map(|p| p.child.as_mut()) {
            if tokio::time::timeout(Duration::from_secs(15), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        if let Some(lb) = self.lb.as_mut() {
            let _ = lb.kill().await;
        }
    }

    /// What the sampler watches: each of our processes, and each service as all its processes
    /// (Postgres runs one per connection).
    async fn watched(&self) -> Vec<(String, Watch)> {
        let mut v: Vec<(String, Watch)> = self
            .procs
            .lock()
            .await
            .iter()
            .map(|p| (p.name.clone(), Watch::Slot(p.pid.clone())))
            .collect();
        // The load itself shares the machine.
        v.push((
            "simulator".into(),
            Watch::Slot(Arc::new(AtomicU32::new(std::process::id()))),
        ));
        if let Some(pid) = self.lb.as_ref().and_then(Child::id) {
            v.push(("haproxy".into(), Watch::Slot(Arc::new(AtomicU32::new(pid)))));
        }
        // The services, found by name (started by this command or before it).
        for (name, needle) in [
            ("kafka", "tansu"),
            ("postgres", "postgres"),
            ("clickhouse", "clickhouse"),
        ] {
            v.push((name.into(), Watch::Named(needle)));
        }
        v
    }
}

/// A process to sample.
#[derive(Debug, Clone)]
enum Watch {
    /// The process whose pid is here now (one the chaos loop restarts gets a new one).
    Slot(Arc<AtomicU32>),
    /// Every process whose program name contains this.
    Named(&'static str),
}

impl Watch {
    fn pids(&self) -> Vec<u32> {
        match self {
            Watch::Slot(p) => match p.load(std::sync::atomic::Ordering::Relaxed) {
                0 => Vec::new(),
                p => vec![p],
            },
            Watch::Named(needle) => processes_named(needle),
        }
    }
}

/// Processes whose program name (argv[0], which Postgres sets per backend) contains `needle`,
/// oldest first.
fn processes_named(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let first = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(first).contains(needle) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Starts the four processes in a fresh namespace against `endpoints`.
async fn start_system(
    config_path: &Path,
    cfg: &Config,
    endpoints: &switchboard_cli::stack::Endpoints,
    sim: &SimConfig,
    args: &SimulateArgs,
    run: &str,
    providers: (u16, u16),
) -> Result<System> {
    let db = format!("sim_{run}");
    let admin = sqlx::PgPool::connect(&endpoints.postgres_url)
        .await
        .context("postgres")?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let postgres_url = match endpoints.postgres_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => bail!("unexpected postgres url"),
    };
    let data = switchboard_cli::stack::absolute(&cfg.data_dir)?
        .join("simulations")
        .join(run);
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&args.out)?;
    let (relay, provider_http) = providers;
    // (process name, role): N of each role.
    let n = args.instances.unwrap_or_default();
    // Several members of a group share its partitions: a topic of one partition would leave
    // every member but one idle.
    let partitions = args
        .partitions
        .or((n.most() > 1).then_some(6))
        .map(|p| p.max(n.most() as i32));
    // Chaos kills front doors too: they need a second instance and the balancer in front.
    let balanced = n.balanced() || args.chaos.is_some() || args.rolling_restart;
    let mut roles: Vec<(String, &str)> = Vec::new();
    for (role, count) in [
        ("ingest", n.ingest),
        ("processors", n.processors),
        ("serving", n.serving),
        ("sink", n.sink),
    ] {
        for k in 1..=count {
            let name = if k == 1 {
                role.to_string()
            } else {
                format!("{role}-{k}")
            };
            roles.push((name, role));
        }
    }
    // Every listener its own port: HTTP and SMTP per process, three for the balancer.
    let all = crate::bench::free_ports(2 * roles.len() + 3)?;
    let (ports, rest) = all.split_at(roles.len());
    let (smtp_ports, lb_ports) = rest.split_at(roles.len());
    let base = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let at = |name: &str| roles.iter().position(|(n, _)| n == name).unwrap_or(0);
    let lb = balanced.then(|| chaos::LbPorts {
        ingest: lb_ports[0],
        serving: lb_ports[1],
        smtp: lb_ports[2],
    });
    let target = Target {
        ingest: lb
            .map(|l| format!("http://127.0.0.1:{}", l.ingest))
            .unwrap_or_else(|| base(at("ingest"))),
        serving: lb
            .map(|l| format!("http://127.0.0.1:{}", l.serving))
            .unwrap_or_else(|| base(at("serving"))),
        smtp: format!(
            "127.0.0.1:{}",
            lb.map(|l| l.smtp).unwrap_or(smtp_ports[at("ingest")])
        ),
        admin_token: secret(),
        sms_token: secret(),
        voice_secret: secret(),
        meta_secret: secret(),
        orders_secret: secret(),
        support_address: "help@switchboard.localhost".into(),
        chat_rate: cfg.channels.chat.messages_per_sec,
        chat_identity_secret: secret(),
    };
    let anchor = chrono::Utc::now().to_rfc3339();
    let chat_secret = secret();
    let clickhouse_password = endpoints
        .clickhouse_password
        .as_ref()
        .unwrap_or(&cfg.services.clickhouse.password)
        .expose()
        .to_string();
    let launcher = Arc::new(chaos::Launcher {
        exe: crate::switchboard_exe(),
        config: config_path.to_path_buf(),
        out: args.out.clone(),
    });
    let mut procs = Vec::new();
    for (i, (name, role)) in roles.iter().enumerate() {
        // A fresh log per run (a restart appends to it).
        std::fs::File::create(args.out.join(format!("{name}.log")))?;
        let mut env: Vec<(&str, String)> = vec![
            ("SERVICES__KAFKA__BROKERS", endpoints.kafka_brokers.clone()),
            ("SERVICES__KAFKA__TOPIC_PREFIX", format!("sim{run}.")),
            ("SERVICES__POSTGRES__URL", postgres_url.clone()),
            (
                "SERVICES__CLICKHOUSE__URL",
                endpoints.clickhouse_url.clone(),
            ),
            ("SERVICES__CLICKHOUSE__DATABASE", db.clone()),
            (
                "SERVICES__CLICKHOUSE__PASSWORD",
                clickhouse_password.clone(),
            ),
            ("HTTP__LISTEN", format!("127.0.0.1:{}", ports[i])),
            // Behind the load balancer a stopping instance is unready for a moment first, so
            // the balancer's checks (every 500 ms) move new requests away before it drains.
            (
                "SHUTDOWN__UNREADY_MS",
                if balanced { "1500" } else { "0" }.into(),
            ),
            ("HTTP__ADMIN_TOKEN", target.admin_token.clone()),
            ("HTTP__PUBLIC_URL", target.serving.clone()),
            // A second processors instance keeps its own embedded knowledge-base index (one
            // process per index directory); every ingest and serving instance shares the
            // attachment store (content-addressed files, as an S3 bucket would be).
            (
                "DATA_DIR",
                if name == role || *role != "processors" {
                    data.display().to_string()
                } else {
                    data.join(name).display().to_string()
                },
            ),
            (
                "CHANNELS__EMAIL__SMTP__LISTEN",
                format!("127.0.0.1:{}", smtp_ports[i]),
            ),
            ("CHANNELS__EMAIL__OUTBOUND__HOST", "127.0.0.1".into()),
            ("CHANNELS__EMAIL__OUTBOUND__PORT", relay.to_string()),
            ("CHANNELS__EMAIL__OUTBOUND__SECURITY", "none".into()),
            ("CHANNELS__SMS__AUTH_TOKEN", target.sms_token.clone()),
            // The provider signs the URL it calls: the balancer's when there is one.
            (
                "CHANNELS__SMS__PUBLIC_URL",
                format!("{}{}", target.ingest, switchboard_ingest::sms::PATH),
            ),
            ("CHANNELS__SMS__ACCOUNT_SID", "ACsimulation".into()),
            ("CHANNELS__SMS__FROM_NUMBER", "+15550100000".into()),
            (
                "CHANNELS__SMS__API_BASE_URL",
                format!("http://127.0.0.1:{provider_http}"),
            ),
            ("CHANNELS__META__APP_SECRET", target.meta_secret.clone()),
            ("CHANNELS__META__VERIFY_TOKEN", "simulation".into()),
            ("CHANNELS__META__ACCESS_TOKEN", secret()),
            (
                "CHANNELS__META__GRAPH_API_BASE",
                format!("http://127.0.0.1:{provider_http}"),
            ),
            ("CHANNELS__VOICE__SECRET", target.voice_secret.clone()),
            ("CHANNELS__ORDERS__SECRET", target.orders_secret.clone()),
            ("CHANNELS__CHAT__SECRET", chat_secret.clone()),
            // The simulated shop signs its customers' chats (identity verification).
            (
                "CHANNELS__CHAT__IDENTITY_SECRET",
                target.chat_identity_secret.clone(),
            ),
            // Every simulated customer comes from 127.0.0.1: lift the per-IP caps meant for
            // the internet (the chat flood kind still meets the per-conversation limits).
            ("CHANNELS__CHAT__SESSIONS_PER_IP_PER_MIN", "1000000".into()),
            ("CHANNELS__CHAT__MAX_SOCKETS_PER_IP", "1000000".into()),
            // The bot's resolve-after is a wall-clock timer: scaled so it means the same day.
            (
                "KB__BOT_RESOLVE_AFTER_SECS",
                ((cfg.kb.bot_resolve_after_secs as f64 / sim.speed).ceil() as u64)
                    .max(1)
                    .to_string(),
            ),
            ("SIMULATION__ENABLED", "true".into()),
            ("SIMULATION__SPEED", sim.speed.to_string()),
            ("SIMULATION__START", sim.start.clone()),
            ("SIMULATION__ANCHOR", anchor.clone()),
        ];
        if let Some(p) = partitions {
            env.push(("SERVICES__KAFKA__PARTITIONS", p.to_string()));
        }
        if endpoints.embedded_kafka {
            env.push(("SERVICES__KAFKA__IDEMPOTENT", "false".into()));
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (format!("SWITCHBOARD__{k}"), v))
            .collect();
        if args.no_models {
            env.push(("SWITCHBOARD__MODELS__ENABLED".into(), "false".into()));
        }
        env.push((
            "RUST_LOG".into(),
            std::env::var("SWITCHBOARD_SIM_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        let mut p = chaos::Proc {
            name: name.clone(),
            role: role.to_string(),
            url: base(i),
            env,
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
        };
        launcher.spawn(&mut p)?;
        procs.push(p);
    }
    let lb_child = match lb {
        Some(l) => {
            let of =
                |r: &str| -> Vec<usize> { (0..roles.len()).filter(|i| roles[*i].1 == r).collect() };
            let ingest: Vec<(String, u16, u16)> = of("ingest")
                .into_iter()
                .map(|i| (roles[i].0.clone(), ports[i], smtp_ports[i]))
                .collect();
            let serving: Vec<(String, u16)> = of("serving")
                .into_iter()
                .map(|i| (roles[i].0.clone(), ports[i]))
                .collect();
            Some(
                chaos::start_haproxy(
                    &args.out,
                    &chaos::haproxy_config(l, chaos::haproxy_maxconn(), &ingest, &serving),
                )
                .await?,
            )
        }
        None => None,
    };
    let mut system = System {
        procs: Arc::new(tokio::sync::Mutex::new(procs)),
        launcher,
        lb: lb_child,
        chaos: args.chaos.map(|every| (every, args.chaos_pause)),
        rolling: args.rolling_restart,
        metrics: roles
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), base(i)))
            .collect(),
        target,
        postgres_url,
        clickhouse_url: endpoints.clickhouse_url.clone(),
        clickhouse_db: db,
        clickhouse_user: cfg.services.clickhouse.user.clone(),
        clickhouse_password,
    };
    // Ready: every process answers /readyz (the processors load the models first).
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut waiting: Vec<(String, String)> = system.metrics.clone();
    if balanced {
        // And the balancer has them in service.
        waiting.push((
            "load balancer (ingest)".into(),
            system.target.ingest.clone(),
        ));
        waiting.push((
            "load balancer (serving)".into(),
            system.target.serving.clone(),
        ));
    }
    for (role, url) in waiting {
        loop {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            let exited = system.procs.lock().await.iter_mut().find_map(|p| {
                let c = p.child.as_mut()?;
                c.try_wait().ok().flatten().map(|s| (p.name.clone(), s))
            });
            let exited = exited.or_else(|| {
                let lb = system.lb.as_mut()?;
                lb.try_wait()
                    .ok()
                    .flatten()
                    .map(|s| ("haproxy".to_string(), s))
            });
            if let Some((n, status)) = exited {
                let log =
                    std::fs::read_to_string(args.out.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                system.stop().await;
                bail!(
                    "the {n} process exited ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if Instant::now() > deadline {
                system.stop().await;
                bail!(
                    "the {role} process was not ready in 240 s (see {})",
                    args.out.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(system)
}

/// A Prometheus text exposition as (name{labels}, value) lines.
async fn scrape(http: &reqwest::Client, url: &str) -> Vec<(String, f64)> {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
        return Vec::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(all: &[(String, String, f64)], name: &str) -> f64 {
    all.iter()
        .filter(|(_, k, _)| k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, _, v)| v)
        .sum()
}

/// Samples CPU, memory, load and queue depth every second until `stop`.
async fn sampler(
    world: Arc<World>,
    watched: Vec<(String, Watch)>,
    waiting_url: String,
    stop: CancellationToken,
    bar: Option<indicatif::ProgressBar>,
) {
    let http = reqwest::Client::new();
    let ticks = |pid: u32| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let rss = |pid: u32| crate::bench_chat::rss_mib(&pid.to_string()).unwrap_or(0.0);
    // CPU ticks per pid, so processes that come and go (Postgres backends) count from when
    // they were first seen.
    let mut last: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (_, w) in &watched {
        for p in w.pids() {
            if let Some(t) = ticks(p) {
                last.insert(p, t);
            }
        }
    }
    let mut last_t = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let dt = last_t.elapsed().as_secs_f64();
        last_t = Instant::now();
        let mut procs = Vec::new();
        for (name, w) in &watched {
            let pids = w.pids();
            let mut used = 0u64;
            for p in &pids {
                if let Some(t) = ticks(*p) {
                    used += t.saturating_sub(last.get(p).copied().unwrap_or(t));
                    last.insert(*p, t);
                }
            }
            // /proc counts in USER_HZ, 100 per second on Linux. Memory: the main (oldest)
            // process; Postgres backends share its buffers.
            procs.push(report::ProcSample {
                name: name.clone(),
                cpu: used as f64 / 100.0 / dt * 100.0,
                rss_mib: pids.first().map(|p| rss(*p)).unwrap_or(0.0),
            });
        }
        let m = scrape(&http, &waiting_url).await;
        let waiting = m
            .iter()
            .find(|(k, _)| k == "switchboard_tickets_waiting")
            .map(|(_, v)| *v)
            .unwrap_or(0.0);
        let (offered, accepted, errors) = world.stats.totals();
        let sim_hours = world.sim_elapsed() / 3600.0;
        world.stats.sample(report::Sample {
            wall_secs: world.began.elapsed().as_secs_f64(),
            sim_hours,
            offered,
            accepted,
            waiting,
            procs,
        });
        if let Some(b) = &bar {
            b.set_position((world.sim_elapsed() as u64).min(b.length().unwrap_or(u64::MAX)));
            b.set_message(format!(
                "offered {offered}, accepted {accepted}, errors {errors}, waiting {waiting:.0}"
            ));
        }
    }
}

/// What the stores hold now (the end of a step minus its start is the step's share).
#[derive(Debug, Default, Clone)]
struct Counts {
    postgres_inbound: i64,
    clickhouse_inbound: i64,
    dead_letters: i64,
    sla: std::collections::BTreeMap<String, i64>,
    /// What the stores did so far (cumulative): Postgres transactions, rows, WAL bytes;
    /// ClickHouse bytes on disk.
    stores: std::collections::BTreeMap<String, f64>,
    /// (role, metric line, value) of every process.
    metrics: Vec<(String, String, f64)>,
}

async fn clickhouse(system: &System, sql: &str) -> Option<String> {
    let url = format!(
        "{}/?database={}",
        system.clickhouse_url, system.clickhouse_db
    );
    let r = reqwest::Client::new()
        .post(url)
        .basic_auth(&system.clickhouse_user, Some(&system.clickhouse_password))
        .body(sql.to_string())
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

async fn postgres_inbound(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE direction = 'inbound'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn counts(system: &System, pool: &sqlx::PgPool) -> Counts {
    let number = |t: Option<String>| t.and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let mut c = Counts {
        postgres_inbound: postgres_inbound(pool).await,
        clickhouse_inbound: number(
            clickhouse(
                system,
                "SELECT uniqExact(event_id) FROM events WHERE topic = 'inbound.messages'",
            )
            .await,
        ),
        dead_letters: number(
            clickhouse(
                system,
                "SELECT uniqExact(event_id) FROM events WHERE topic = 'deadletter'",
            )
            .await,
        ),
        ..Default::default()
    };
    let pg: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted, tup_returned + tup_fetched,
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    if let Some((xacts, written, read, wal)) = pg {
        for (k, v) in [
            ("postgres transactions (reads too)", xacts),
            ("postgres rows written", written),
            ("postgres rows read", read),
            ("postgres WAL bytes (cluster)", wal),
        ] {
            c.stores.insert(k.into(), v as f64);
        }
    }
    if let Some(t) = clickhouse(
        system,
        "SELECT sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts WHERE database = currentDatabase() AND active FORMAT TabSeparated",
    )
    .await
    {
        let mut f = t.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(0.0));
        c.stores
            .insert("clickhouse bytes on disk".into(), f.next().unwrap_or(0.0));
        c.stores
            .insert("clickhouse bytes uncompressed".into(), f.next().unwrap_or(0.0));
    }
    if let Some(t) = clickhouse(system, "SELECT kind, uniqExact(event_id) FROM events WHERE topic = 'sla.events' GROUP BY kind FORMAT TabSeparated").await {
        for l in t.lines() {
            if let Some((k, v)) = l.split_once('\t') {
                c.sla.insert(k.to_string(), v.trim().parse().unwrap_or(0));
            }
        }
    }
    let http = reqwest::Client::new();
    for (role, url) in &system.metrics {
        for (k, v) in scrape(&http, url).await {
            c.metrics.push((role.clone(), k, v));
        }
    }
    c
}

/// Runs one simulation (or capacity step) on a started system and returns its report.
async fn run_day(
    system: &System,
    sim: SimConfig,
    texts: Arc<Texts>,
    inbox: Inbox,
    label: String,
    quiet: bool,
) -> Result<Report> {
    // Under chaos every caller retries what met a restart, for up to a minute.
    let retry_for = if system.chaos.is_some() {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    };
    let doors = Doors::new(system.target.clone(), retry_for)?;
    let stop = CancellationToken::new();
    let mut rng = model::rng(sim.seed);
    let world = Arc::new(World {
        cfg: sim.clone(),
        doors,
        inbox: inbox.clone(),
        texts,
        stats: Stats::default(),
        began: Instant::now(),
        stop: stop.clone(),
        seen: Default::default(),
        next_customer: AtomicU64::new(rng.random_range(0..1_000_000_000)),
        next_order: AtomicU64::new(rng.random_range(10_000..1_000_000)),
        wismo: Default::default(),
        experiences: Default::default(),
        run: format!("{:x}", rng.random::<u32>()),
    });
    // The stores and counters before this run (a capacity step shares them with the last).
    let pool = sqlx::PgPool::connect(&system.postgres_url).await?;
    let before = counts(system, &pool).await;
    let seats = actors::hire(&world)
        .await
        .context("cannot create the simulated agents")?;
    let mut tasks = tokio::task::JoinSet::new();
    for s in seats.clone() {
        tasks.spawn(actors::agent(world.clone(), s, rng.random()));
    }
    let total_sim = sim.duration.as_secs_f64();
    let bar = (!quiet).then(|| {
        let b = indicatif::ProgressBar::new(total_sim as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {percent:>3}% sim {elapsed_precise} wall | {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(label.clone());
        b
    });
    let sample_stop = CancellationToken::new();
    let sampler_task = tokio::spawn(sampler(
        world.clone(),
        system.watched().await,
        system
            .metrics
            .iter()
            .find(|(r, _)| r == "processors")
            .map(|(_, u)| u.clone())
            .unwrap_or_default(),
        sample_stop.clone(),
        bar.clone(),
    ));
    let chaos_stop = CancellationToken::new();
    let chaos_task = system.chaos.map(|(every, pause)| {
        let (w, url) = (world.clone(), system.postgres_url.clone());
        let stored_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy(&url)
            .ok();
        let probe = chaos::Probe {
            accepted: Box::new({
                let w = w.clone();
                move || w.stats.totals().1
            }),
            stored: Box::new(move || {
                let pool = stored_pool.clone();
                Box::pin(async move {
                    match &pool {
                        Some(p) => postgres_inbound(p).await,
                        None => 0,
                    }
                })
            }),
            retried: Box::new(move || {
                w.doors
                    .retrying
                    .retried
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
        };
        tokio::spawn(chaos::run(
            system.procs.clone(),
            system.launcher.clone(),
            every,
            pause,
            sim.seed.unwrap_or(0) ^ 0x5eed,
            probe,
            chaos_stop.clone(),
        ))
    });
    let rolling_task = system.rolling.then(|| {
        let (w, procs, launcher) = (world.clone(), system.procs.clone(), system.launcher.clone());
        tokio::spawn(async move {
            while w.sim_elapsed() < total_sim / 3.0 && !w.stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            w.stats.restarting(true);
            let r = chaos::rolling(procs, launcher).await;
            w.stats.restarting(false);
            r
        })
    });
    // Arrivals: a Poisson process following the model's rate.
    let mut customers = tokio::task::JoinSet::new();
    let tick = Duration::from_millis(20);
    let mut next_gap = -f64::ln(1.0 - rng.random::<f64>());
    let mut acc = 0.0;
    let mut hostile_acc = 0.0;
    let mut hostile_k = 0u64;
    let mut last = world.sim_elapsed();
    while world.sim_elapsed() < total_sim {
        tokio::time::sleep(tick).await;
        let now = world.sim_elapsed().min(total_sim);
        let at = sim.start() + chrono::Duration::milliseconds((now * 1000.0) as i64);
        acc += sim.rate_at(at) * (now - last);
        last = now;
        while acc >= next_gap {
            acc -= next_gap;
            next_gap = -f64::ln(1.0 - rng.random::<f64>());
            let channel = model::pick_weighted(&mut rng, &sim.channels).to_string();
            customers.spawn(actors::customer(world.clone(), channel, rng.random()));
            hostile_acc += sim.hostile.share;
            while hostile_acc >= 1.0 {
                hostile_acc -= 1.0;
                hostile_k += 1;
                customers.spawn(actors::hostile(world.clone(), hostile_k));
            }
        }
        while customers.try_join_next().is_some() {}
    }
    let arrival_secs = world.began.elapsed().as_secs_f64();
    // The chaos ends with the arrivals (a kill in progress finishes its restart first).
    chaos_stop.cancel();
    let kills = match chaos_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    // A rolling restart that outlasts the arrivals finishes first (the drain waits for it).
    let restarts = match rolling_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    // Drain: let the pipeline catch up with what was accepted (up to a minute of wall time).
    let inbound = || async { postgres_inbound(&pool).await - before.postgres_inbound };
    // Until every accepted message is stored, or the count stops moving for 30 s (a stuck
    // pipeline, reported as a loss), or 10 minutes.
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    let (mut seen, mut moved) = (-1i64, Instant::now());
    while Instant::now() < drain_deadline && moved.elapsed() < Duration::from_secs(30) {
        let (_, accepted, _) = world.stats.totals();
        let stored = inbound().await;
        if stored >= accepted as i64 {
            break;
        }
        if stored != seen {
            (seen, moved) = (stored, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the agents with what is still in flight (at most the assignment goal's time).
    let settle = Instant::now() + Duration::from_secs_f64(sim.goals.assign_p99_secs);
    while Instant::now() < settle {
        let (waiting, tickets) = world.stats.waiting();
        if waiting as f64 <= 0.02 * tickets as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall_secs = world.began.elapsed().as_secs_f64();
    stop.cancel();
    sample_stop.cancel();
    let _ = sampler_task.await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    customers.abort_all();
    while tasks.join_next().await.is_some() {}
    // Agents leave (their tickets go back to the queue for the next step's agents).
    for s in &seats {
        actors::put_status(&world, s, "offline").await;
    }
    // What the system says: metrics, and the accounting in its stores (this run's share).
    let accepted = world.stats.totals().1 as i64;
    let mut after = counts(system, &pool).await;
    // Give the sink time to store its last batches: until ClickHouse has every accepted
    // message, or its count stood still for 150 s (two rounds of a consumer group's stall
    // watchdog, which moves partitions a killed member left behind and rejoins a member whose
    // fetch is stuck: 30 s of stall seen, then a rejoin, each), or 5 minutes.
    let (deadline, mut seen, mut moved) = (
        Instant::now() + Duration::from_secs(300),
        after.clickhouse_inbound,
        Instant::now(),
    );
    while after.clickhouse_inbound - before.clickhouse_inbound < accepted
        && Instant::now() < deadline
        && moved.elapsed() < Duration::from_secs(150)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = counts(system, &pool).await;
        if after.clickhouse_inbound != seen {
            (seen, moved) = (after.clickhouse_inbound, Instant::now());
        }
    }
    // What the consumers said about their groups (read when something went missing).
    let consumer_log = consumer_log(&system.launcher.out).await;
    // Why each dead letter of the run is one (the report names the unexpected ones).
    let dead_letter_reasons: Vec<String> = clickhouse(
        system,
        "SELECT concat(visitParamExtractString(payload, 'consumer_group'), ': ', visitParamExtractString(payload, 'reason')) FROM events WHERE topic = 'deadletter' ORDER BY occurred_ms DESC LIMIT 20 FORMAT TabSeparated",
    )
    .await
    .map(|t| t.lines().map(|l| l.chars().take(200).collect()).collect())
    .unwrap_or_default();
    let delta = |role: &str, k: &str, v: f64| {
        v - before
            .metrics
            .iter()
            .find(|(r, kk, _)| r == role && kk == k)
            .map(|(_, _, b)| *b)
            .unwrap_or(0.0)
    };
    let all: Vec<(String, String, f64)> = after
        .metrics
        .iter()
        .map(|(r, k, v)| (r.clone(), k.clone(), delta(r, k, *v)))
        .collect();
    let mut stages = std::collections::BTreeMap::new();
    for (role, k, v) in &all {
        if let Some(rest) = k.strip_prefix("switchboard_handle_seconds_sum{") {
            let group = rest
                .split("group=\"")
                .nth(1)
                .and_then(|g| g.split('"').next())
                .unwrap_or("?");
            // The namespace's topic prefix says nothing; the stage name does.
            let group = group.rsplit('.').next().unwrap_or(group);
            let group = if group.starts_with("serving-stream-") {
                "agent streams"
            } else {
                group
            };
            *stages.entry(format!("{role}: {group}")).or_insert(0.0) += v;
        }
        if let Some(rest) = k.strip_prefix("switchboard_ticketing_part_seconds_sum{") {
            let part = rest
                .split("part=\"")
                .nth(1)
                .and_then(|g| g.split('"').next())
                .unwrap_or("?");
            *stages
                .entry(format!("{role}: ticketing / {part}"))
                .or_insert(0.0) += v;
        }
    }
    let bot = [
        ("answers", "switchboard_kb_bot_answers_total"),
        ("deflected", "switchboard_kb_deflected_total"),
        ("handovers", "switchboard_kb_handovers_total"),
        ("reopened", "switchboard_kb_reopened_after_bot_total"),
    ]
    .into_iter()
    .map(|(k, m)| (k.to_string(), metric(&all, m) + 0.0))
    .collect();
    let clickhouse_inbound = after.clickhouse_inbound - before.clickhouse_inbound;
    let dead_letters = after.dead_letters - before.dead_letters;
    let sla = after
        .sla
        .iter()
        .map(|(k, v)| (k.clone(), v - before.sla.get(k).copied().unwrap_or(0)))
        .collect();
    let postgres_inbound = inbound().await;
    // What this run cost the stores, the broker and the models, in total.
    let mut costs: std::collections::BTreeMap<String, f64> = after
        .stores
        .iter()
        .map(|(k, v)| (k.clone(), v - before.stores.get(k).copied().unwrap_or(0.0)))
        .collect();
    for (direction, k) in [
        ("out", "kafka bytes produced"),
        ("in", "kafka bytes fetched"),
    ] {
        let v: f64 = all
            .iter()
            .filter(|(_, line, _)| {
                line.starts_with("switchboard_kafka_message_bytes_total{")
                    && line.contains(&format!("direction=\"{direction}\""))
            })
            .map(|(_, _, v)| v)
            .sum();
        costs.insert(k.into(), v);
    }
    costs.insert(
        "model milliseconds (waited)".into(),
        stages
            .iter()
            .filter(|(k, _)| k.ends_with("ticketing / models"))
            .map(|(_, v)| v * 1000.0)
            .sum(),
    );
    let mut post_purchase = post_purchase(&world, &pool, &all).await;
    post_purchase.extend(churn(&world, &pool).await);
    // What staffing plans need: how long an assignment holds an agent's slot (simulated time).
    let handling: Option<(Option<f64>, i64)> = sqlx::query_as(
        "SELECT avg(extract(epoch FROM released_at - assigned_at))::float8, count(*) FROM assignments WHERE released_at IS NOT NULL",
    )
    .fetch_optional(&pool)
    .await
    .ok()
    .flatten();
    pool.close().await;
    Ok(world.stats.report(Extra {
        label,
        tickets_per_day: sim.tickets_per_day,
        speed: sim.speed,
        wall_secs,
        arrival_secs,
        sim_hours: total_sim / 3600.0,
        postgres_inbound,
        clickhouse_inbound,
        dead_letters,
        sla,
        bot,
        post_purchase,
        stages,
        unknown_replies: inbox.unknown.load(std::sync::atomic::Ordering::Relaxed),
        duplicate_replies: inbox.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        duplicate_samples: inbox.duplicate_samples.lock().clone(),
        out_of_order_replies: inbox
            .out_of_order
            .load(std::sync::atomic::Ordering::Relaxed),
        retried: world
            .doors
            .retrying
            .retried
            .load(std::sync::atomic::Ordering::Relaxed),
        reconnects: world
            .doors
            .retrying
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        kills,
        restarts,
        dead_letter_reasons,
        consumer_log,
        costs,
        handling_secs: handling.and_then(|(mean, n)| Some((mean?, n))),
    }))
}

/// The consumer groups' warnings in the processes' logs (`<name>.log` under `out`): rejoins
/// of the stall watchdog, failed rebalances and flushes, requests the broker did not answer;
/// the newest 30, each with its process. Nothing when the system runs in this process. The logs
/// are read a line at a time and only the newest 30 matches are kept, however long a run's logs
/// grew.
async fn consumer_log(out: &Path) -> Vec<String> {
    use tokio::io::AsyncBufReadExt as _;
    const KEEP: usize = 30;
    const SIGNS: [&str; 6] = [
        "rejoining the group",
        "are not moving",
        "rebalance failed",
        "flush failed",
        "REQTMOUT",
        "consumer close timed out",
    ];
    let Ok(mut dir) = tokio::fs::read_dir(out).await else {
        return Vec::new();
    };
    // The newest matches so far, oldest on top (a min-heap by the line, its timestamp first).
    let mut newest: std::collections::BinaryHeap<std::cmp::Reverse<(String, String)>> =
        std::collections::BinaryHeap::new();
    while let Ok(Some(e)) = dir.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(process) = name.strip_suffix(".log") else {
            continue;
        };
        let Ok(file) = tokio::fs::File::open(e.path()).await else {
            continue;
        };
        let mut reader = tokio::io::BufReader::new(file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let l = String::from_utf8_lossy(&buf);
            let l = l.trim_end_matches(['\n', '\r']);
            if !SIGNS.iter().any(|s| l.contains(s)) {
                continue;
            }
            // Without the terminal's colours; the timestamp first, so the lines sort.
            let plain = strip_ansi(l);
            let shown = format!("{process}: {}", plain.chars().take(240).collect::<String>());
            newest.push(std::cmp::Reverse((plain, shown)));
            if newest.len() > KEEP {
                newest.pop();
            }
        }
    }
    // Oldest first.
    newest
        .into_sorted_vec()
        .into_iter()
        .rev()
        .map(|std::cmp::Reverse((_, l))| l)
        .collect()
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What became of the post-purchase contacts, from the stores: where-is-my-order tickets by
/// what the bot did (its answer stood, it handed over, the customer wrote again), the bot's
/// order answers by outcome (its metrics), and the returns the help centre took.
async fn post_purchase(
    world: &World,
    pool: &sqlx::PgPool,
    metrics: &[(String, String, f64)],
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let asked: Vec<String> = world.wismo.lock().clone();
    if !asked.is_empty() {
        out.insert("wismo_asked".into(), asked.len() as f64);
        // The bot's answer stood: the ticket's bot state is still `answered` (pending, quiet)
        // or `resolved` (the sweep resolved it); `handed_over`: late, stuck, or the customer
        // wrote again; none: the bot did not answer (the model did not read it as
        // where-is-my-order, or nothing of the customer's was found).
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT t.bot_state, count(DISTINCT t.id) FROM messages m JOIN tickets t ON t.id = m.ticket_id
              WHERE m.direction = 'inbound' AND m.external_id = ANY($1) GROUP BY 1",
        )
        .bind(&asked)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        for (state, n) in rows {
            let key = match state.as_deref() {
                Some("answered" | "resolved") => "wismo_deflected",
                Some("handed_over") => "wismo_handed_over",
                Some("reopened") => "wismo_reopened",
                _ => "wismo_not_answered_by_bot",
            };
            *out.entry(key.to_string()).or_insert(0.0) += n as f64;
        }
        for outcome in ["answered", "handed_over"] {
            let v: f64 = metrics
                .iter()
                .filter(|(_, k, _)| {
                    // Where-is-my-order intents only (return questions are answered from the
                    // order's data too).
                    k.starts_with("switchboard_bot_order_answers_total{")
                        && k.contains(&format!("outcome=\"{outcome}\""))
                        && (k.contains("intent=\"track_order\"")
                            || k.contains("intent=\"delivery_problem\""))
                })
                .map(|(_, _, v)| v)
                .sum();
            out.insert(format!("bot_order_answers_{outcome}"), v + 0.0);
        }
    }
    let offered = world.stats.counted("returns_offered");
    if offered > 0 {
        let run = format!("sim-{}-o%", world.run);
        let (returns, automatic): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE r.automatic)
               FROM returns r JOIN orders o ON o.id = r.order_id WHERE o.external_id LIKE $1",
        )
        .bind(&run)
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        out.insert("returns_offered".into(), offered as f64);
        out.insert("returns_stored".into(), returns as f64);
        out.insert("returns_auto_approved".into(), automatic as f64);
    }
    out
}

/// The churn behaviour against Switchboard's score: each email and chat customer leaves or stays
/// by their hidden experience ([`actors::Experience::churn_probability`], drawn once per
/// customer from the run's seed), and the score Switchboard gives them now
/// (`GET /v1/customers/at-risk?min_score=0`, through the front door) is judged by its AUC.
/// Then the outcome reaches Switchboard as a shop would tell it: each customer who stays orders
/// again within 30 days (a signed order webhook dated ahead), and the weights are fitted on
/// those outcomes and judged on held-out customers by `switchboard_tickets::churn::evaluate`,
/// the code `switchboard models fit-churn` runs.
async fn churn(world: &World, pool: &sqlx::PgPool) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let experiences = world.experiences.lock().clone();
    if experiences.is_empty() {
        return out;
    }
    let scores = match actors::admin(
        world,
        reqwest::Method::GET,
        "/v1/customers/at-risk?days=365&min_score=0&limit=5000",
        None,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            world.stats.error("churn", format!("scores: {e}"));
            return out;
        }
    };
    let by_email: std::collections::HashMap<&str, f64> = scores
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["email"].as_str()?, c["score"].as_f64()?)))
        .collect();
    let seed = world.cfg.seed.unwrap_or(0);
    let mut pairs = Vec::new();
    let mut stayers = Vec::new();
    for (email, e) in &experiences {
        let Some(score) = by_email.get(email.as_str()) else {
            continue;
        };
        let h = email.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let left = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(h).random::<f64>()
            < e.churn_probability();
        pairs.push((*score, left));
        if !left {
            stayers.push(email.clone());
        }
    }
    let left = pairs.iter().filter(|p| p.1).count();
    out.insert("churn_customers".into(), pairs.len() as f64);
    out.insert("churn_left".into(), left as f64);
    if let Some(auc) = switchboard_tickets::churn::auc(&pairs) {
        out.insert("churn_auc".into(), auc);
    }
    out.extend(churn_fit(world, pool, &experiences, &stayers).await);
    out
}

/// The stayers' next orders through the order webhook, then a fit on those outcomes.
async fn churn_fit(
    world: &World,
    pool: &sqlx::PgPool,
    experiences: &std::collections::HashMap<String, actors::Experience>,
    stayers: &[String],
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let as_of = world.sim_now();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
        world.cfg.seed.unwrap_or(0) ^ 0xc4,
    );
    for email in stayers {
        let at = as_of + chrono::Duration::hours(rng.random_range(24..30 * 24));
        let parcel = serde_json::json!({"status": "success", "shipment_status": "delivered",
            "tracking_company": "DHL", "tracking_number": format!("JD{:012}", rng.random_range(0..u32::MAX))});
        actors::announce_sale(world, &mut rng, 0, email, at, parcel).await;
    }
    // The order stage stores them: wait until it has (at most three minutes; a stayer whose
    // order is not stored by then would count as gone).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE created_at > $1")
            .bind(as_of)
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        if stored >= stayers.len() as i64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let emails: Vec<&str> = experiences.keys().map(String::as_str).collect();
    let ids: Vec<uuid::Uuid> =
        match sqlx::query_scalar("SELECT id FROM customers WHERE email = ANY($1)")
            .bind(&emails)
            .fetch_all(pool)
            .await
        {
            Ok(ids) => ids,
            Err(e) => {
                world.stats.error("churn", format!("customers: {e}"));
                return out;
            }
        };
    let report = match pool.acquire().await {
        Ok(mut conn) => {
            switchboard_tickets::churn::evaluate(&mut conn, as_of, 30, Some(&ids)).await
        }
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => {
            out.insert("churn_fit_train".into(), r.train_customers as f64);
            out.insert("churn_fit_held_out".into(), r.held_out_customers as f64);
            out.insert("churn_fit_held_out_left".into(), r.held_out_churned as f64);
            if let Some(a) = r.auc_hand_set {
                out.insert("churn_fit_auc_hand_set".into(), a);
            }
            if let Some(a) = r.auc_fitted {
                out.insert("churn_fit_auc_fitted".into(), a);
            }
        }
        Err(e) => world.stats.error("churn", format!("fit: {e}")),
    }
    out
}

fn write_report(out: &Path, name: &str, r: &Report) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.txt")), r.text())?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_vec_pretty(r)?,
    )?;
    std::fs::write(out.join(format!("{name}.html")), r.html())?;
    Ok(())
}

pub(crate) async fn simulate(
    config_path: &Path,
    cfg: Config,
    args: SimulateArgs,
) -> Result<std::process::ExitCode> {
    let mut sim = SimConfig::load(&args.model)?;
    if let Some(d) = args.duration {
        sim.duration = d;
    }
    if let Some(t) = args.tickets_per_day {
        sim.tickets_per_day = t;
    }
    if let Some(s) = args.speed {
        sim.speed = s;
    }
    if let Some(s) = args.seed {
        sim.seed = Some(s);
    }
    if let Some(path) = &args.shifts {
        sim.use_plan(path)?;
    }
    if let Some(a) = args.agents {
        sim.agents.count = a;
    }
    if let Some(start) = &args.start {
        chrono::DateTime::parse_from_rfc3339(start)
            .context("--start: RFC 3339, e.g. 2026-11-23T00:00:00Z")?;
        sim.start = start.clone();
    }
    if let Some(h) = args.hostile {
        sim.hostile.share = h;
    }
    if let Some(t) = &args.texts {
        sim.texts = t.clone();
    }
    if args.flat {
        sim = sim.flat(sim.tickets_per_day);
    }
    if let Some(rate) = args.soak {
        sim = sim.flat(rate / sim.speed);
        if args.duration.is_none() {
            sim.duration = Duration::from_secs_f64(1800.0 * sim.speed);
        }
    }
    let mut rng = model::rng(sim.seed);
    let t = Instant::now();
    let mut texts = Texts::load(&sim.texts, &mut rng)?;
    if sim.post_purchase.wismo_share > 0.0 {
        texts.load_wismo(&sim.post_purchase.texts)?;
    }
    let texts = Arc::new(texts);
    println!(
        "switchboard-sim simulate: {} customer texts from {} ({:.1} s)",
        texts.len(),
        sim.texts.display(),
        t.elapsed().as_secs_f64()
    );

    // Services: the configured ones, else the embedded stack.
    let (mut stack, endpoints) = switchboard_cli::stack::Stack::start(&cfg).await?;
    // As `up` does: an embedded broker that stops answering (tansu 0.6 can lose its storage task
    // to a panic, seen here under the group churn of --chaos) is started again on its data.
    stack.watch_broker();
    let inbox = Inbox::default();
    let providers = doors::start_providers(inbox.clone()).await?;
    let run = format!("{:x}", rand::rng().random::<u32>());
    let mut system =
        match start_system(config_path, &cfg, &endpoints, &sim, &args, &run, providers).await {
            Ok(s) => s,
            Err(e) => {
                stack.stop().await;
                return Err(e);
            }
        };
    println!(
        "system up: ingest {}, serving {}, smtp {} (namespace sim_{run}, models {})",
        system.target.ingest,
        system.target.serving,
        system.target.smtp,
        if args.no_models { "off" } else { "on" }
    );
    let result = if args.find_max {
        find_max(&system, &sim, texts, inbox, &args).await
    } else {
        let label = format!(
            "{:.0} tickets/simulated day, {:.1} h at x{}",
            sim.tickets_per_day,
            sim.duration.as_secs_f64() / 3600.0,
            sim.speed
        );
        run_day(&system, sim.clone(), texts, inbox, label, args.quiet)
            .await
            .and_then(|r| {
                print!("{}", r.text());
                write_report(&args.out, "report", &r)?;
                println!("report: {}", args.out.join("report.html").display());
                Ok(r.clean().is_empty())
            })
    };
    system.stop().await;
    stack.stop().await;
    match result {
        Ok(clean) if clean || !args.strict => Ok(std::process::ExitCode::SUCCESS),
        Ok(_) => Ok(std::process::ExitCode::FAILURE),
        Err(e) => Err(e),
    }
}

/// Raises a flat load until a goal breaks.
async fn find_max(
    system: &System,
    sim: &SimConfig,
    texts: Arc<Texts>,
    inbox: Inbox,
    args: &SimulateArgs,
) -> Result<bool> {
    let goals = sim.goals.clone();
    let mut rate = args.from;
    let mut best: Option<(f64, Report)> = None;
    let mut lines = Vec::new();
    println!("capacity search: {} s per step from {:.0} tickets/day, x{} per step; goals: ack p99 <= {} ms, inbound -> assignment p99 <= {} s, {:.1}% accepted",
        args.step_secs, rate, args.factor, goals.ack_p99_ms, goals.assign_p99_secs, goals.accepted_share * 100.0);
    let mut steps = 0u64;
    loop {
        // A flat day at `rate` real tickets/day: at speed s the simulated day carries rate / s.
        let mut step = sim.flat(rate / sim.speed);
        // Each step its own customers and agents (a seeded search would hire the same twice).
        steps += 1;
        step.seed = sim.seed.map(|s| s.wrapping_add(steps));
        step.duration = Duration::from_secs_f64(args.step_secs as f64 * sim.speed);
        // Agents enough for the load and quick, all day: the search measures the machine, not staffing.
        step.agents.shifts = vec![model::Shift {
            start: "00:00".into(),
            end: "23:59".into(),
            share: 1.0,
        }];
        step.agents.reply_delay = (Duration::from_secs(10), Duration::from_secs(40));
        step.agents.resolve_after = Duration::from_secs(60);
        step.agents.break_share = 0.0;
        step.agents.max_concurrent = 50;
        step.customers.think = (Duration::from_secs(20), Duration::from_secs(60));
        let label = format!("step {:.0} tickets/day", rate);
        let r = run_day(
            system,
            step,
            texts.clone(),
            inbox.clone(),
            label,
            args.quiet,
        )
        .await?;
        let (assign_ms, ack_ms) = (
            r.assign_ms.p99,
            r.ack_ms.values().map(|p| p.p99).fold(0.0, f64::max),
        );
        let offered: u64 = r.offered.values().sum();
        let accepted: u64 = r
            .offered
            .keys()
            .map(|k| r.accepted.get(k).copied().unwrap_or(0))
            .sum();
        let share = if offered > 0 {
            accepted as f64 / offered as f64
        } else {
            1.0
        };
        // The queue at the end (the router's gauge): a backlog that kept growing breaks the step.
        let waiting = r.timeline.last().map(|s| s.waiting).unwrap_or(0.0);
        let backlog = waiting > (0.02 * r.tickets as f64).max(5.0);
        let held = ack_ms <= goals.ack_p99_ms
            && assign_ms <= goals.assign_p99_secs * 1000.0
            && share >= goals.accepted_share
            && !backlog;
        let line = format!("{:>10.0} tickets/day: ack p99 {:>7.1} ms, assignment p99 {:>7.0} ms, accepted {:.2}%, waiting at the end {waiting:.0} -> {}",
            rate, ack_ms, assign_ms, share * 100.0, if held { "held" } else { "BROKE" });
        println!("{line}");
        lines.push(line);
        write_report(&args.out, &format!("step-{:.0}", rate), &r)?;
        if !held {
            break;
        }
        best = Some((rate, r));
        rate *= args.factor;
    }
    match best {
        Some((rate, r)) => {
            print!("{}", r.text());
            println!("\ncapacity on this machine (models {}): {:.0} tickets per day at the goals ({:.1}% of the design's 1,000,000)",
                if args.no_models { "off" } else { "on" }, rate, rate / 10_000.0);
            for l in &lines {
                println!("  {l}");
            }
            write_report(&args.out, "report", &r)?;
            std::fs::write(
                args.out.join("capacity.txt"),
                format!("{rate:.0}\n{}\n", lines.join("\n")),
            )?;
            Ok(r.clean().is_empty())
        }
        None => bail!(
            "the first step ({:.0} tickets/day) already broke a goal; start lower with --from",
            args.from
        ),
    }
}

#[cfg(test)]
mod instance_tests {
    use super::parse_instances;

    #[test]
    fn instances_name_the_roles_and_refuse_the_rest() {
        let i = parse_instances("processors=3, sink=2").unwrap();
        assert_eq!((i.processors, i.sink), (3, 2));
        let i = parse_instances("processors=2,ingest=1").unwrap();
        assert_eq!((i.processors, i.sink), (2, 1));
        assert!(!i.balanced());
        let i = parse_instances("ingest=2,processors=3,serving=2,sink=2").unwrap();
        assert_eq!((i.ingest, i.processors, i.serving, i.sink), (2, 3, 2, 2));
        assert!(i.balanced());
        assert_eq!(i.most(), 3);
        for (bad, want) in [
            ("processors=0", "1 to 8"),
            ("processors=9", "1 to 8"),
            ("processors", "ROLE=N"),
            ("router=2", "ingest, processors, serving or sink"),
            ("processors=٣", "1 to 8"),
        ] {
            let e = parse_instances(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod consumer_log_tests {
    use super::{consumer_log, strip_ansi};

    #[test]
    fn colours_are_stripped_and_text_kept() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m é ok"),
            "2026  WARN é ok"
        );
        assert_eq!(strip_ansi("plain\u{1b}"), "plain");
    }

    #[tokio::test]
    async fn the_groups_warnings_of_every_process_come_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sink.log"),
            "\u{1b}[2m2026-12-03T11:48:02Z\u{1b}[0m WARN partitions with waiting records have no live owner: rejoining the group\n\
             2026-12-03T11:47:00Z INFO rebalance\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sink-2.log"),
            "2026-12-03T11:47:53Z WARN librdkafka: REQTMOUT timed out\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("report.txt"), "REQTMOUT in a report").unwrap();
        let lines = consumer_log(dir.path()).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("sink-2: 2026-12-03T11:47:53Z"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("sink: 2026-12-03T11:48:02Z"),
            "{lines:?}"
        );
        assert!(lines[1].contains("rejoining"), "{lines:?}");
        assert!(consumer_log(&dir.path().join("absent")).await.is_empty());

        // A long run: only the newest 30 of many, across files, oldest of them first; a line
        // that is not UTF-8 is read all the same.
        let mut long = Vec::new();
        for i in 0..500 {
            long.extend_from_slice(
                format!(
                    "2026-12-03T12:{:02}:{:02}Z WARN rebalance failed",
                    i / 60,
                    i % 60
                )
                .as_bytes(),
            );
            long.extend_from_slice(b" \xff\n");
            long.extend_from_slice(b"2026-12-03T12:00:00Z INFO nothing to see\n");
        }
        std::fs::write(dir.path().join("processors.log"), long).unwrap();
        let lines = consumer_log(dir.path()).await;
        assert_eq!(lines.len(), 30, "{lines:?}");
        assert!(
            lines[0].starts_with("processors: 2026-12-03T12:07:50Z"),
            "{lines:?}"
        );
        assert!(
            lines[29].starts_with("processors: 2026-12-03T12:08:19Z"),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|l| l.contains("rebalance failed")),
            "{lines:?}"
        );
    }
}
