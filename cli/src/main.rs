//! `switchboard`: the production binary. `up` runs everything locally; `run --role` runs roles
//! against external services; `validate` checks pipelines.yaml; `models` manages the registry.
//! The simulator and the benchmarks are `switchboard-sim` (the `loadgen/` crate).

use switchboard_cli::{init_tracing, load, models_cmd, openapi_doc, roles, stack};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_cli::config::{Config, Role};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time customer-support core: ingest, ticketing, routing, analytics"
)]
struct Cli {
    #[command(flatten)]
    global: switchboard_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine: broker, Postgres, ClickHouse, every role, the HTTP API.
    Up,
    /// Run one or more roles against configured services (the scaled-out form).
    Run {
        /// Roles to run in this process.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<RoleArg>,
    },
    /// Start only the local services and print their URLs (for development and tests).
    Services {
        /// Write the endpoints as shell exports to this file once everything is up.
        #[arg(long)]
        env_file: Option<PathBuf>,
    },
    /// Create topics and apply the Postgres and ClickHouse schemas, then exit (a deploy init step).
    Migrate,
    /// Check a pipelines file; prints every error with its line and exits non-zero.
    Validate {
        /// The file (default: --config).
        file: Option<PathBuf>,
    },
    /// Read JSON lines `{"text": ...}` on stdin, write one prediction per line (same order).
    Predict,
    /// List every metric `/metrics` reports: name, kind, meaning (from the crates' telemetry).
    Metrics,
    /// Print the OpenAPI document (also served at GET /openapi.json).
    Openapi,
    /// The model registry: list, activate, roll back, evaluate.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Agents in bulk.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// The team's rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// The demand forecast.
    #[command(subcommand)]
    Forecast(ForecastCommand),
    /// Search.
    #[command(subcommand)]
    Search(SearchCommand),
}

#[derive(Debug, Subcommand)]
enum SearchCommand {
    /// Build search's recent window now (what the serving role's job does every
    /// `search.window_every_secs`; after a restore, or to try another size) and drop the older
    /// ones; prints the window.
    BuildWindow {
        /// How many of the newest messages it holds (default `search.window_rows`).
        #[arg(long)]
        rows: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ForecastCommand {
    /// Fit the demand forecast now on ClickHouse's hourly history and store it (what the
    /// serving role's job does every `forecast.every_secs`); prints what was fitted.
    Fit,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Replay the last days of history (the topics while they hold the window, else
    /// ClickHouse) through a draft rule (JSON: kind, on, conditions, actions, as
    /// `POST /v1/rules` takes them) and print which tickets it would have touched and how, as
    /// JSON; changes nothing.
    DryRun {
        /// The rule, as JSON (`-` reads stdin).
        file: PathBuf,
        /// Days of history (1 to 90).
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Where from: auto, kafka or clickhouse.
        #[arg(long, default_value = "auto")]
        source: String,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Create agents from a CSV file (columns: name, email, max_concurrent, skills, languages,
    /// level, timezone, shift, channel_capacity, team); prints a report line per row and exits
    /// non-zero if any row was refused. Existing emails are left as they are.
    Import {
        /// The CSV file (a header row names the columns).
        file: PathBuf,
        /// Check every row; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Every model version, its metrics, and which is active.
    List,
    /// Make VERSION the active version of NAME (refused, nothing changed, unless it loads and checks out).
    Activate { name: String, version: String },
    /// Re-activate the version of NAME that was active before.
    Rollback { name: String },
    /// Accuracy, macro-F1, Pearson r of the active set (and a candidate) on the held-out sets.
    Eval {
        /// A candidate version to compare, NAME=VERSION (repeatable).
        #[arg(long)]
        candidate: Vec<String>,
        /// Folder with bitext_test.jsonl and sentiment_test.jsonl.
        #[arg(long, default_value = "models/testsets")]
        testsets: PathBuf,
        /// At most this many rows per test set.
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
    },
    /// Add a few-shot intent to the active intent head without retraining the encoder: a new
    /// registered version (the head plus the intent), evaluated on held-out examples.
    AddIntent {
        /// The intent's name (lowercase, `_`).
        name: String,
        /// Training examples, one message per line (a few dozen).
        #[arg(long)]
        examples: PathBuf,
        /// The category it routes to (one of the category head's labels).
        #[arg(long)]
        category: Option<String>,
        /// Held-out examples, one per line, never trained on (precision and recall reported).
        #[arg(long)]
        held_out: Option<PathBuf>,
        /// Texts of other intents, one per line.
        #[arg(long, default_value = "models/training/intents/negatives.txt")]
        negatives: PathBuf,
        /// The new version's name.
        #[arg(long)]
        version: String,
        /// Activate it when registered.
        #[arg(long)]
        activate: bool,
    },
    /// Fit a classification head to real messages (JSON lines with `text` and the head's label):
    /// a prototype per label and a calibrating temperature, as a new registered version.
    FitHead {
        /// The head: category or intent.
        name: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        version: String,
        /// Only the temperature (no prototypes from the rows).
        #[arg(long)]
        calibrate_only: bool,
        #[arg(long)]
        activate: bool,
    },
    /// Run a candidate in shadow beside the active set on JSON-lines texts (stdin or --file) and
    /// print how often they agree.
    Shadow {
        /// The candidate, NAME=VERSION (repeatable).
        #[arg(long, required = true)]
        candidate: Vec<String>,
        /// JSON lines with a "text" field (default: stdin).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write agents' corrections (a category or intent changed, a sentiment flagged) as labelled
    /// examples for the next training round, scrubbed of personal data, with a data card.
    ExportTrainingData {
        /// The folder written (category.jsonl, intent.jsonl, sentiment.jsonl, DATA_CARD.md).
        #[arg(long)]
        out: PathBuf,
        /// Corrections made on or after this day (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        /// Corrections made before this day (YYYY-MM-DD, UTC).
        #[arg(long)]
        until: Option<chrono::NaiveDate>,
    },
    /// Fit the churn score's weights on outcomes: customers who wrote in the 90 days before
    /// --as-of, and whether they ordered again within --horizon-days after it (the shop's order
    /// webhooks). Fitted on 7 in 10 customers, judged against the hand-set weights by AUC on
    /// the other 3; --activate stores the fit and scores customers with it when it is better.
    FitChurn {
        /// The moment the signals are read at (RFC 3339 or YYYY-MM-DD; default: now minus the
        /// horizon, the newest moment whose outcomes are all known).
        #[arg(long)]
        as_of: Option<String>,
        /// Days after --as-of an order counts as "ordered again" (1 to 365).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=365))]
        horizon_days: u32,
        /// Store the fit and score customers with it, if it beats the hand-set weights on the
        /// held-out customers (20 who left and 20 who stayed at least).
        #[arg(long)]
        activate: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Ingest,
    Processors,
    Serving,
    Sink,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Ingest => Role::Ingest,
            RoleArg::Processors => Role::Processors,
            RoleArg::Serving => Role::Serving,
            RoleArg::Sink => Role::Sink,
        }
    }
}

/// Cancels the token on Ctrl-C or SIGTERM. With an `unready` window, readiness (`/readyz`)
/// turns false first and the process keeps answering for that long, so a load balancer that
/// health-checks it takes it out of rotation before its listeners close; a second signal ends
/// the window at once.
fn shutdown_on_signal(unready: std::time::Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        switchboard_core::http::start_draining();
        if !unready.is_zero() {
            info!(
                unready_ms = unready.as_millis() as u64,
                "draining: not ready, still answering"
            );
            tokio::select! {
                _ = tokio::time::sleep(unready) => {},
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        info!("shutting down");
        t.cancel();
    });
    token
}

fn metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    switchboard_cli::install_metrics()
}

fn external_endpoints(cfg: &Config) -> Result<stack::Endpoints> {
    let s = &cfg.services;
    let need = |v: &str, key: &str| -> Result<String> {
        if v.is_empty() {
            anyhow::bail!(
                "{key} is not configured (set it in the file or SWITCHBOARD__{})",
                key.replace('.', "__").to_uppercase()
            )
        }
        Ok(v.to_string())
    };
    Ok(stack::Endpoints {
        kafka_brokers: need(&s.kafka.brokers, "services.kafka.brokers")?,
        postgres_url: s.postgres.url.expose().to_string(),
        clickhouse_url: s.clickhouse.url.clone(),
        clickhouse_password: None,
        embedded_kafka: false,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A blocking call still stuck on a service (a Kafka client's close waiting on the broker)
    // must not hold the exit: after the drain, what it held is redelivered anyway.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

/// What stops `roles` from running as one of several replicas: each ingest replica must verify
/// chat tokens the others signed, so the chat secret must be set and shared (`up` keeps its own
/// under the data directory).
fn replica_problem(cfg: &Config, roles: &[Role]) -> Option<String> {
    (roles.contains(&Role::Ingest)
        && cfg.has_source(switchboard_cli::config::SourceType::Chat)
        && cfg.channels.chat.secret.is_empty())
    .then(|| {
        "channels.chat.secret is not set (SWITCHBOARD__CHANNELS__CHAT__SECRET): every ingest \
         replica must share it, or a chat token one replica signed fails on the others"
            .to_string()
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = &cli.global.config;
    match cli.command {
        Command::Validate { file } => Ok(validate(&file.unwrap_or(cli.global.config))),
        Command::Up => up(load(config)?).await,
        Command::Run { roles } => {
            let roles: Vec<Role> = roles.into_iter().map(Role::from).collect();
            run_roles(load(config)?, &roles).await
        }
        Command::Services { env_file } => services(load(config)?, env_file).await,
        Command::Migrate => migrate(load(config)?).await,
        Command::Metrics => {
            for m in switchboard_cli::all_metrics() {
                println!("{}\t{}\t{}", m.name, m.kind.as_str(), m.help);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!("{}", openapi_doc().to_pretty_json()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict => {
            models_cmd::predict(&load(config)?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(cmd) => models(&load(config)?, cmd).await,
        Command::Rules(RulesCommand::DryRun { file, days, source }) => {
            let cfg = load(config)?;
            rules_dry_run(&cfg, &file, days, &source).await
        }
        Command::Forecast(ForecastCommand::Fit) => {
            let cfg = load(config)?;
            let url = &cfg.services.clickhouse.url;
            if url.is_empty() {
                anyhow::bail!(
                    "services.clickhouse.url is not configured (set it in the file or SWITCHBOARD__SERVICES__CLICKHOUSE__URL)"
                );
            }
            switchboard_analytics::migrate(&cfg.services.clickhouse, url).await?;
            let ch = switchboard_analytics::client(&cfg.services.clickhouse, url);
            let f = roles::forecasting(&cfg);
            let started = std::time::Instant::now();
            let run = switchboard_analytics::forecast::run_once(
                &ch,
                &f.config,
                &f.holidays,
                switchboard_core::clock::now(),
            )
            .await?;
            eprintln!(
                "fitted {} series ({} hours ahead stored) in {:.2} s",
                run.series,
                run.rows,
                started.elapsed().as_secs_f64()
            );
            for (series, why) in &run.skipped {
                eprintln!("  {series}: not fitted, {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Search(SearchCommand::BuildWindow { rows }) => {
            let cfg = load(config)?;
            let pool = postgres(&cfg).await?;
            use switchboard_serving::search_window::{build_if_due, Built, SearchConfig};
            let window_cfg = SearchConfig {
                window_rows: rows.unwrap_or(cfg.search.window_rows),
                window_min_messages: 0,
                ..cfg.search
            };
            if let Err(e) = window_cfg.check() {
                anyhow::bail!(e);
            }
            match build_if_due(&pool, &window_cfg, switchboard_core::clock::now(), true).await? {
                Built::Window { window, secs } => {
                    println!(
                        "search window {}: the {} messages received since {}, built in {secs:.1} s",
                        window.index_name, window.rows, window.since
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Built::Busy => {
                    anyhow::bail!(
                        "another instance is building the search window; try again when it is done"
                    )
                }
                Built::NotNeeded | Built::NotDue => {
                    println!("no search window: the rum extension is missing, search.window is off, or there are not that many messages");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Agents(AgentsCommand::Import { file, dry_run }) => {
            let cfg = load(config)?;
            let pool = postgres(&cfg).await?;
            let clean = switchboard_cli::agents_cmd::run(&pool, &file, dry_run).await?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// `switchboard validate`: every problem with its line, and what a replica would refuse.
fn validate(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            // Settings that compile into runtime rules (timezones, durations, actions).
            if let Err(errs) = switchboard_processors::sla::SlaRules::compile(&c.sla) {
                for e in &errs {
                    println!("{}: sla: {e}", path.display());
                }
                println!("{} error(s)", errs.len());
                return ExitCode::FAILURE;
            }
            if let Some(problem) = replica_problem(&c, &[Role::Ingest]) {
                println!("{}: for `run --role ingest`: {problem}", path.display());
            }
            println!(
                "{}: ok ({} sources, {} stages)",
                path.display(),
                c.sources.len(),
                c.stages.len()
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            let file = path.display().to_string();
            for e in &errs.0 {
                println!("{}", e.render(&file));
            }
            println!("{} error(s)", errs.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `switchboard up`: the local services, then every role against them.
async fn up(mut cfg: Config) -> Result<ExitCode> {
    // Chat tokens outlive a restart: the signing secret is kept with the other secrets.
    if cfg.channels.chat.secret.is_empty() {
        cfg.channels.chat.secret = stack::secret(&cfg.data_dir.join("secrets/chat.secret"))?.into();
    }
    // One machine, no load balancer in front: no unready window.
    let shutdown = shutdown_on_signal(std::time::Duration::ZERO);
    let (mut stack, endpoints) = stack::Stack::start(&cfg).await?;
    endpoints.apply(&mut cfg);
    let admin_token = match &cfg.http.admin_token {
        Some(t) if !t.is_empty() => t.expose().to_string(),
        _ => stack::secret(&cfg.data_dir.join("secrets/admin.token"))?,
    };
    let addr = cfg.http.listen.as_str().to_string();
    println!("switchboard is starting");
    println!(
        "  api:      http://{addr}/v1  (Authorization: Bearer $(cat {}))",
        cfg.data_dir.join("secrets/admin.token").display()
    );
    println!(
        "  console:  http://{addr}/console/  (sign in with an agent's token: POST /v1/tokens)"
    );
    println!("  health:   http://{addr}/readyz   metrics: http://{addr}/metrics");
    println!("  kafka:    {}", endpoints.kafka_brokers);
    println!("  postgres: {}", redact(&endpoints.postgres_url));
    println!("  clickhouse: {}", endpoints.clickhouse_url);
    println!("  try: curl -s -X POST http://{addr}/v1/messages -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\");
    println!("         -d '{{\"channel\":\"api\",\"customer\":{{\"email\":\"ana@example.com\"}},\"text\":\"Where is my refund?\"}}'");
    let rt = roles::Runtime {
        config: cfg,
        endpoints,
        metrics: metrics(),
        admin_token: Some(admin_token),
    };
    // The stack, broker included, outlives the roles: they commit on the way out.
    stack.watch_broker();
    let result = rt.run(&Role::ALL, shutdown).await;
    stack.stop().await;
    result.map(|_| ExitCode::SUCCESS)
}

/// `switchboard run --role ...`: roles against configured services.
async fn run_roles(cfg: Config, roles: &[Role]) -> Result<ExitCode> {
    let endpoints = external_endpoints(&cfg)?;
    if roles
        .iter()
        .any(|r| matches!(r, Role::Processors | Role::Serving))
        && endpoints.postgres_url.is_empty()
    {
        anyhow::bail!(
            "services.postgres.url is not configured (SWITCHBOARD__SERVICES__POSTGRES__URL)"
        );
    }
    if roles.contains(&Role::Sink) && endpoints.clickhouse_url.is_empty() {
        anyhow::bail!(
            "services.clickhouse.url is not configured (SWITCHBOARD__SERVICES__CLICKHOUSE__URL)"
        );
    }
    if let Some(problem) = replica_problem(&cfg, roles) {
        anyhow::bail!(problem);
    }
    let admin_token = cfg
        .http
        .admin_token
        .as_ref()
        .filter(|t| !t.is_empty())
        .map(|t| t.expose().to_string());
    if admin_token.is_none()
        && roles
            .iter()
            .any(|r| matches!(r, Role::Ingest | Role::Serving))
    {
        anyhow::bail!("http.admin_token is not configured (SWITCHBOARD__HTTP__ADMIN_TOKEN): the API refuses to run open");
    }
    let unready = cfg.shutdown.unready();
    let rt = roles::Runtime {
        config: cfg,
        endpoints,
        metrics: metrics(),
        admin_token,
    };
    rt.run(roles, shutdown_on_signal(unready)).await?;
    Ok(ExitCode::SUCCESS)
}

/// `switchboard services`: only the local services, their URLs as shell exports.
async fn services(cfg: Config, env_file: Option<PathBuf>) -> Result<ExitCode> {
    let shutdown = shutdown_on_signal(std::time::Duration::ZERO);
    let (mut stack, e) = stack::Stack::start(&cfg).await?;
    let exports: String = e
        .env()
        .iter()
        .map(|(key, value)| format!("export SWITCHBOARD__{key}='{value}'\n"))
        .collect();
    if let Some(path) = env_file {
        // It holds passwords: owner-only from the start.
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        stack::write_private(&tmp, exports.as_bytes()).context("cannot write the env file")?;
        std::fs::rename(&tmp, &path)?;
    }
    println!("{exports}# services up; Ctrl-C stops them");
    stack.watch_broker();
    shutdown.cancelled().await;
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// `switchboard rules dry-run FILE`: the draft rule replayed over the history (the topics, or
/// ClickHouse's).
async fn rules_dry_run(
    cfg: &Config,
    file: &std::path::Path,
    days: u32,
    source: &str,
) -> Result<ExitCode> {
    use anyhow::Context as _;
    use switchboard_serving::rules::DrySource;
    if !(1..=90).contains(&days) {
        anyhow::bail!("--days: 1 to 90");
    }
    let source = match source {
        "auto" => DrySource::Auto,
        "kafka" => DrySource::Kafka,
        "clickhouse" => DrySource::Clickhouse,
        _ => anyhow::bail!("--source: auto, kafka or clickhouse"),
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let rule: switchboard_tickets::rules::Rule =
        serde_json::from_str(&text).context("not a rule (kind, on, conditions, actions)")?;
    let compiled = switchboard_tickets::rules::Compiled::new(uuid::Uuid::nil(), "draft", &rule)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.why))?;
    let url = &cfg.services.clickhouse.url;
    let ch =
        (!url.is_empty()).then(|| switchboard_analytics::client(&cfg.services.clickhouse, url));
    let kafka = (!cfg.services.kafka.brokers.is_empty()).then(|| cfg.services.kafka.clone());
    if ch.is_none() && kafka.is_none() {
        anyhow::bail!(
            "neither services.kafka.brokers nor services.clickhouse.url is configured (SWITCHBOARD__SERVICES__KAFKA__BROKERS, SWITCHBOARD__SERVICES__CLICKHOUSE__URL)"
        );
    }
    let started = std::time::Instant::now();
    let (out, from) = switchboard_serving::rules::dry_run_from(
        source,
        kafka.as_ref(),
        ch.as_ref(),
        &compiled,
        days,
        switchboard_core::clock::now(),
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot replay the history: {e}"))?;
    eprintln!(
        "replayed {} events of {} tickets from {from} in {:.1} s: {} fires on {} tickets",
        out.events,
        out.tickets,
        started.elapsed().as_secs_f64(),
        out.fires,
        out.tickets_touched
    );
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `switchboard migrate`: topics and schemas, then exit.
/// A small pool on the configured Postgres, its schema brought up to date (the commands that
/// read or write the store directly).
async fn postgres(cfg: &Config) -> Result<sqlx::PgPool> {
    let url = cfg.services.postgres.url.expose();
    if url.is_empty() {
        anyhow::bail!(
            "services.postgres.url is not configured (set it in the file or SWITCHBOARD__SERVICES__POSTGRES__URL)"
        );
    }
    let pool = switchboard_core::db::connect(url, 2, std::time::Duration::from_secs(30)).await?;
    switchboard_core::db::migrate(&pool).await?;
    Ok(pool)
}

async fn migrate(cfg: Config) -> Result<ExitCode> {
    let e = external_endpoints(&cfg)?;
    let mut k = cfg.services.kafka.clone();
    k.brokers = e.kafka_brokers.clone();
    switchboard_core::kafka::ensure_topics(&k).await?;
    if !e.postgres_url.is_empty() {
        let pool =
            switchboard_core::db::connect(&e.postgres_url, 2, std::time::Duration::from_secs(60))
                .await?;
        switchboard_core::db::migrate(&pool).await?;
    }
    if !e.clickhouse_url.is_empty() {
        switchboard_analytics::migrate(&cfg.services.clickhouse, &e.clickhouse_url).await?;
    }
    println!("topics and schemas are up to date");
    Ok(ExitCode::SUCCESS)
}

/// `switchboard models ...`.
async fn models(cfg: &Config, cmd: ModelsCommand) -> Result<ExitCode> {
    match cmd {
        ModelsCommand::List => models_cmd::list(cfg)?,
        ModelsCommand::Activate { name, version } => models_cmd::activate(cfg, &name, &version)?,
        ModelsCommand::Rollback { name } => models_cmd::rollback(cfg, &name)?,
        ModelsCommand::Eval {
            candidate,
            testsets,
            limit,
        } => models_cmd::eval(cfg, &candidate, &testsets, limit).await?,
        ModelsCommand::AddIntent {
            name,
            examples,
            category,
            held_out,
            negatives,
            version,
            activate,
        } => models_cmd::add_intent(
            cfg,
            &models_cmd::AddIntent {
                name,
                examples,
                category,
                held_out,
                negatives,
                version,
                activate,
            },
        )?,
        ModelsCommand::FitHead {
            name,
            data,
            version,
            calibrate_only,
            activate,
        } => models_cmd::fit_head(
            cfg,
            &models_cmd::FitHead {
                name,
                data,
                calibrate_only,
                version,
                activate,
            },
        )?,
        ModelsCommand::ExportTrainingData { out, since, until } => {
            let pool = postgres(cfg).await?;
            let a = models_cmd::ExportTrainingData { out, since, until };
            let counts = models_cmd::export_training_data(&pool, &a).await?;
            for (field, n) in &counts {
                println!(
                    "{field}: {n} examples -> {}",
                    a.out.join(format!("{field}.jsonl")).display()
                );
            }
            println!("data card: {}", a.out.join("DATA_CARD.md").display());
        }
        ModelsCommand::FitChurn {
            as_of,
            horizon_days,
            activate,
        } => {
            let pool = postgres(cfg).await?;
            models_cmd::fit_churn(&pool, as_of.as_deref(), horizon_days, activate).await?;
        }
        ModelsCommand::Shadow { candidate, file } => {
            models_cmd::shadow(cfg, &candidate, file.as_deref()).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hides the password in a URL for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every YAML document under deploy/ parses, every switchboard command in it is one this
    /// binary accepts, and every `SWITCHBOARD__*` variable names a real config key.
    #[test]
    fn arroyo_pipelines_read_real_topics_and_use_existing_udfs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let known: Vec<String> = switchboard_contracts::Topic::ALL
            .iter()
            .map(|t| t.name("switchboard."))
            .collect();
        let mut files = 0;
        for entry in std::fs::read_dir(root.join("deploy/arroyo")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("sql") {
                continue;
            }
            files += 1;
            let sql = std::fs::read_to_string(&path).unwrap();
            for block in sql.split("CREATE TABLE").skip(1) {
                let topic = block
                    .split("topic = '")
                    .nth(1)
                    .and_then(|t| t.split('\'').next())
                    .unwrap_or_else(|| panic!("{}: a table without a topic", path.display()));
                if block.contains("type = 'source'") {
                    assert!(
                        known.iter().any(|k| k == topic),
                        "{}: unknown topic {topic}",
                        path.display()
                    );
                } else {
                    assert!(
                        topic.starts_with("switchboard.analytics."),
                        "{}: sink {topic}",
                        path.display()
                    );
                }
            }
            for udf in ["classify", "sentiment"] {
                if sql.contains(&format!("{udf}(")) {
                    let src = std::fs::read_to_string(root.join(format!("udfs/{udf}/src/lib.rs")))
                        .unwrap();
                    assert!(src.contains(&format!("fn {udf}(")), "udf {udf} missing");
                }
            }
        }
        assert!(files >= 2, "no arroyo pipelines found");
    }

    #[test]
    fn deploy_manifests_use_real_commands_and_config_keys() {
        use yaml_rust2::{Yaml, YamlLoader};

        fn walk<'a>(y: &'a Yaml, out: &mut Vec<&'a Yaml>) {
            out.push(y);
            match y {
                Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
                    walk(k, out);
                    walk(v, out);
                }),
                Yaml::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        fn get<'a>(y: &'a Yaml, key: &str) -> Option<&'a Yaml> {
            y.as_hash()?.get(&Yaml::String(key.to_string()))
        }
        fn is_switchboard(y: &Yaml) -> bool {
            let image = get(y, "image").or_else(|| get(y, "<<").and_then(|m| get(m, "image")));
            image
                .and_then(Yaml::as_str)
                .is_some_and(|i| i.starts_with("switchboard"))
        }

        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut files = vec![dir.join("docker-compose.yml")];
        for e in std::fs::read_dir(dir.join("k8s")).unwrap() {
            files.push(e.unwrap().path());
        }
        let known = Config::known_env_keys();
        let (mut commands, mut keys) = (0, 0);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let docs = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(!docs.is_empty(), "{}", file.display());
            for doc in &docs {
                assert!(
                    doc.as_hash().is_some(),
                    "{}: a document is not a mapping",
                    file.display()
                );
                let mut nodes = Vec::new();
                walk(doc, &mut nodes);
                for node in nodes {
                    if let Some(s) = node.as_str() {
                        if let Some(key) = s.strip_prefix("SWITCHBOARD__") {
                            assert!(
                                known.contains(&key),
                                "{}: unknown config key {s}",
                                file.display()
                            );
                            keys += 1;
                        }
                    }
                    if !is_switchboard(node) {
                        continue;
                    }
                    if let Some(args) = get(node, "command")
                        .or_else(|| get(node, "args"))
                        .and_then(Yaml::as_vec)
                    {
                        let argv: Vec<&str> = std::iter::once("switchboard")
                            .chain(args.iter().filter_map(Yaml::as_str))
                            .collect();
                        Cli::try_parse_from(&argv)
                            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", file.display()));
                        commands += 1;
                    }
                }
            }
        }
        assert!(commands >= 10, "found only {commands} switchboard commands");
        assert!(keys >= 10, "found only {keys} config keys");
    }

    #[test]
    fn every_known_env_key_is_accepted_by_the_config() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.yaml"),
        )
        .unwrap();
        for key in Config::known_env_keys() {
            let value = match *key {
                k if k.ends_with("LISTEN") => "127.0.0.1:1",
                "STORAGE__URL" => "s3://bucket/prefix",
                "CHANNELS__EMAIL__OUTBOUND__SECURITY" => "tls",
                k if k.ends_with("ENABLED")
                    || k.ends_with("IDEMPOTENT")
                    || k.ends_with("REQUIRES_SENIOR")
                    || k.ends_with("ALLOW_HTTP")
                    || k.ends_with("IMAP__TLS") =>
                {
                    "true"
                }
                k if k.ends_with("SHARE") || k.ends_with("THRESHOLD") => "0.5",
                "MODELS__EXECUTION_PROVIDER" => "cpu",
                k if k.ends_with("DEVICE_ID") => "0",
                k if k.ends_with("SECS")
                    || k.ends_with("CENTS")
                    || k.ends_with("DAYS")
                    || k.ends_with("CONTACT")
                    || k.ends_with("SUGGESTIONS") =>
                {
                    "7"
                }
                k if k.ends_with("CONFIDENCE")
                    || k.ends_with("SENTIMENT")
                    || k.ends_with("SPEED") =>
                {
                    "0.5"
                }
                k if k.ends_with("_MS")
                    || k.ends_with("BYTES")
                    || k.ends_with("ROWS")
                    || k.ends_with("PARTITIONS")
                    || k.ends_with("FACTOR")
                    || k.ends_with("CONNECTIONS")
                    || k.ends_with("THREADS")
                    || k.ends_with("BATCH")
                    || k.ends_with("TOKENS")
                    || k.ends_with("PORT")
                    || k.ends_with("PER_SEC")
                    || k.ends_with("PER_IP")
                    || k.ends_with("ATTEMPTS")
                    || k.ends_with("PARKS")
                    || k.ends_with("SIZE")
                    || k.ends_with("PER_MIN")
                    || k.ends_with("PER_CONVERSATION") =>
                {
                    "7"
                }
                _ => "x",
            };
            let env = vec![(format!("SWITCHBOARD__{key}"), value.to_string())];
            Config::from_yaml(&base, env).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }

    #[test]
    fn the_openapi_document_names_every_route_and_their_security() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_doc().to_json().unwrap()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/messages",
            "/v1/agents",
            "/v1/agents/{id}/stream",
            "/v1/tickets",
            "/v1/tickets/{id}",
            "/v1/tickets/{id}/replies",
            "/v1/tickets/{id}/status",
            "/v1/tokens",
            "/v1/customers/{id}",
            "/v1/dashboard",
            "/chat/sessions",
            "/track",
            "/webhooks/orders",
            "/csat/{token}",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        // Every /v1 operation needs the bearer token; the public ones do not.
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let secured = op.get("security").is_some();
                assert_eq!(secured, path.starts_with("/v1/"), "{method} {path}");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}"
                );
            }
        }
        assert!(doc["components"]["schemas"]["TicketView"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(redact("http://h:1"), "http://h:1");
    }
}
