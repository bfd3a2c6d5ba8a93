//! Processor benchmarks against real Postgres and Kafka (the configured services, e.g. from
//! `switchboard services --env-file F` then `source F`). Each run works in a scratch database
//! and topic prefix it removes afterwards.
//!
//! - `bench routing`: decisions/s and per-decision latency of the real router (Postgres row
//!   locks, scoring, decision record, outbox) with 10K agents and 100K queued tickets.
//! - `bench sla`: what 1M open SLA clocks cost (Postgres bytes, the processors hold none in
//!   memory) and how fast and how late the poller fires due ones among them.
//! - `bench pipeline`: inbound-to-assignment latency with the whole pipeline running (models
//!   on) while messages arrive at a steady rate through the HTTP API.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use switchboard_cli::config::Config;
use switchboard_core::db::Outbox;
use switchboard_core::kafka::{self, Publisher};
use switchboard_processors::router::Router;
use switchboard_processors::sla::{Sla, SlaRules};
use uuid::Uuid;

/// Arguments of `bench routing`.
#[derive(Debug, clap::Args)]
pub(crate) struct RoutingArgs {
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    #[arg(long, default_value_t = 100_000)]
    tickets: usize,
    /// Decisions measured (the queue is not drained).
    #[arg(long, default_value_t = 3_000)]
    decisions: usize,
    /// Routers deciding at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

/// Arguments of `bench sla`.
#[derive(Debug, clap::Args)]
pub(crate) struct SlaArgs {
    #[arg(long, default_value_t = 1_000_000)]
    clocks: usize,
    /// Of which this many are due now.
    #[arg(long, default_value_t = 20_000)]
    due: usize,
}

/// Arguments of `bench pipeline`.
#[derive(Debug, clap::Args)]
pub(crate) struct PipelineArgs {
    /// Messages per second offered.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// A scratch database on the configured Postgres, migrated, dropped by [`Scratch::drop`].
pub(crate) struct Scratch {
    admin: PgPool,
    pub(crate) name: String,
    pub(crate) pool: PgPool,
}

impl Scratch {
    /// The configured server (an admin pool on its own database) and the URL without the
    /// database, which a scratch database's name completes.
    async fn server(cfg: &Config) -> Result<(PgPool, String)> {
        let url = cfg.services.postgres.url.expose();
        if url.is_empty() {
            bail!("set services.postgres.url (e.g. `switchboard services --env-file F` then `source F`)");
        }
        let admin = PgPool::connect(url)
            .await
            .context("cannot connect to postgres")?;
        let (base, _) = url
            .rsplit_once('/')
            .context("postgres url has no database")?;
        Ok((admin, base.to_owned()))
    }

    /// The pool on `name`, migrated to this build.
    async fn migrated(base: &str, name: &str) -> Result<PgPool> {
        let pool =
            switchboard_core::db::connect(&format!("{base}/{name}"), 16, Duration::from_secs(30))
                .await
                .with_context(|| format!("cannot open the database {name}"))?;
        switchboard_core::db::migrate(&pool).await?;
        Ok(pool)
    }

    pub(crate) async fn new(cfg: &Config) -> Result<Scratch> {
        let (admin, base) = Scratch::server(cfg).await?;
        let name = format!("bench_{}", &Uuid::now_v7().simple().to_string()[..16]);
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        let pool = Scratch::migrated(&base, &name).await?;
        Ok(Scratch { admin, name, pool })
    }

    /// A scratch database kept by an earlier run (`--keep`), migrated to this build.
    pub(crate) async fn open(cfg: &Config, name: &str) -> Result<Scratch> {
        if !name.starts_with("bench_")
            || !name[6..].chars().all(|c| c.is_ascii_hexdigit())
            || name.len() != 22
        {
            bail!("--reuse takes a database a bench kept (bench_ and 16 hex digits), not {name:?}");
        }
        let (admin, base) = Scratch::server(cfg).await?;
        let pool = Scratch::migrated(&base, name).await?;
        Ok(Scratch {
            admin,
            name: name.to_owned(),
            pool,
        })
    }

    pub(crate) async fn drop(self) {
        self.pool.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await;
    }
}

pub(crate) async fn publisher(cfg: &Config) -> Result<Publisher> {
    let mut k = cfg.services.kafka.clone();
    if k.brokers.is_empty() {
        bail!(
            "set services.kafka.brokers (e.g. `switchboard services --env-file F` then `source F`)"
        );
    }
    k.topic_prefix = format!("bench-{}.", Uuid::now_v7().simple());
    kafka::ensure_topics(&k).await?;
    Ok(Publisher::new(&k)?)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) async fn routing(cfg: &Config, args: RoutingArgs) -> Result<()> {
    let db = Scratch::new(cfg).await?;
    let publisher = publisher(cfg).await?;
    let t = Instant::now();
    // Agents: 3 of 20 skills with levels, 1 of 5 languages plus English, 80% online, a fifth
    // senior, capacity 5, some load and history.
    sqlx::query(
        "INSERT INTO agents (id, name, email, skills, skill_levels, languages, max_concurrent, status, level, active_count,
                             csat_sum, csat_count, response_secs_sum, response_count)
         SELECT gen_random_uuid(), 'a' || g, 'a' || g || '@bench', s.skills,
                jsonb_build_object(s.skills[1], 1 + g % 5, s.skills[2], 1 + (g / 5) % 5, s.skills[3], 3),
                ARRAY[(ARRAY['es','de','fr','pt','it'])[1 + g % 5], 'en'], 5,
                CASE WHEN g % 10 < 8 THEN 'online' ELSE 'offline' END,
                CASE WHEN g % 5 = 0 THEN 'senior' ELSE 'agent' END,
                g % 3, 4.2 * 20, 20, (60 + g % 300) * 50.0, 50
         FROM generate_series(1, $1) g,
              LATERAL (SELECT ARRAY['skill' || (g % 20), 'skill' || ((g * 7 + 3) % 20), 'skill' || ((g * 13 + 5) % 20)] AS skills) s",
    )
    .bind(args.agents as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query("INSERT INTO customers (id, email, tier) SELECT gen_random_uuid(), 'c' || g || '@bench', CASE WHEN g % 20 = 0 THEN 'vip' ELSE 'standard' END FROM generate_series(1, 10000) g")
        .execute(&db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO tickets (id, number, customer_id, channel, status, priority, priority_rank, required_skill, language, next_due_at, created_at)
         SELECT gen_random_uuid(), 'B-' || g, c.id, 'chat', 'open', 'medium', g % 5, 'skill' || (g % 20),
                (ARRAY['en','es','de','fr','pt'])[1 + g % 5], now() + (g % 86400) * interval '1 second', now() - g * interval '1 millisecond'
         FROM generate_series(1, $1) g JOIN LATERAL (SELECT id FROM customers OFFSET (g % 10000) LIMIT 1) c ON true",
    )
    .bind(args.tickets as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    println!(
        "switchboard-sim bench routing: {} agents, {} queued tickets (set up in {:.1} s), {} decisions, {} router(s)",
        args.agents,
        args.tickets,
        t.elapsed().as_secs_f64(),
        args.decisions,
        args.concurrency
    );
    let queue: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tickets WHERE status = 'open' AND assigned_agent_id IS NULL
         ORDER BY priority_rank DESC, next_due_at NULLS LAST, created_at LIMIT $1",
    )
    .bind(args.decisions as i64)
    .fetch_all(&db.pool)
    .await?;
    let router = Router::new(
        db.pool.clone(),
        Outbox::new(db.pool.clone(), publisher.clone()),
        cfg.routing.clone(),
    );
    let per = queue.len().div_ceil(args.concurrency.max(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in queue.chunks(per.max(1)) {
        let (router, chunk) = (router.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut assigned = 0usize;
            for id in chunk {
                let t = Instant::now();
                if let switchboard_processors::router::AssignOutcome::Assigned(_) =
                    router.try_assign(id).await?
                {
                    assigned += 1;
                }
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok((h, assigned))
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut assigned = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, a) = r??;
        all.add(h)?;
        assigned += a;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  {} decisions in {secs:.2} s = {:.0} decisions/s ({assigned} assigned); per decision p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        queue.len(),
        queue.len() as f64 / secs,
        ms(&all, 0.5),
        ms(&all, 0.99),
        all.max() as f64 / 1000.0
    );
    let over: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents WHERE active_count > max_concurrent")
            .fetch_one(&db.pool)
            .await?;
    println!("  agents over capacity afterwards: {over}");
    publisher.flush();
    db.drop().await;
    Ok(())
}

pub(crate) async fn sla(cfg: &Config, args: SlaArgs) -> Result<()> {
    let db = Scratch::new(cfg).await?;
    let publisher = publisher(cfg).await?;
    let rules = SlaRules::compile(&cfg.sla).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let t = Instant::now();
    sqlx::query("INSERT INTO customers (id, email) VALUES ('00000000-0000-0000-0000-000000000001', 'c@bench')")
        .execute(&db.pool)
        .await?;
    // One ticket per clock; clocks far in the future except `due` of them, due now.
    sqlx::query(
        "INSERT INTO tickets (id, number, customer_id, channel, status, priority, priority_rank)
         SELECT md5('t' || g)::uuid, 'S-' || g, '00000000-0000-0000-0000-000000000001', 'email', 'open', 'medium', 1
         FROM generate_series(1, $1) g",
    )
    .bind(args.clocks as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by, started_at,
                                 running_since, warn_at, due_at, next_fire_at)
         SELECT md5('t' || g)::uuid, 'first_response', 0, 'standard', '24x7', 14400, md5('s' || g)::uuid, now(), now(),
                CASE WHEN g <= $2 THEN now() - interval '1 second' ELSE now() + interval '3 hours' END,
                CASE WHEN g <= $2 THEN now() ELSE now() + interval '4 hours' END,
                CASE WHEN g <= $2 THEN now() - interval '1 second' ELSE now() + interval '3 hours' END
         FROM generate_series(1, $1) g",
    )
    .bind(args.clocks as i64)
    .bind(args.due as i64)
    .execute(&db.pool)
    .await?;
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let (table, total): (i64, i64) = sqlx::query_as(
        "SELECT pg_relation_size('sla_clocks'), pg_total_relation_size('sla_clocks')",
    )
    .fetch_one(&db.pool)
    .await?;
    println!(
        "switchboard-sim bench sla: {} open clocks (set up in {:.1} s), {} due now",
        args.clocks,
        t.elapsed().as_secs_f64(),
        args.due
    );
    println!(
        "  postgres: {:.1} MiB table + indexes = {:.0} bytes per open clock ({:.0} bytes of rows); the processors hold none in memory",
        total as f64 / 1048576.0,
        total as f64 / args.clocks as f64,
        table as f64 / args.clocks as f64
    );
    let rss_before = rss_kib();
    let sla = Sla::new(
        db.pool.clone(),
        Outbox::new(db.pool.clone(), publisher.clone()),
        rules,
    );
    let started = Instant::now();
    let mut fired = 0;
    loop {
        let n = sla.fire_due().await?;
        fired += n;
        if n == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let lateness: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM breached_at - due_at)::float8 FROM sla_clocks WHERE breached_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    let pct = |p: f64| {
        lateness
            .get(((lateness.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "  poller: {fired} events (warning + breach with escalation) in {secs:.2} s = {:.0} events/s; process RSS {} -> {} KiB",
        fired as f64 / secs,
        rss_before,
        rss_kib()
    );
    println!(
        "  breach lateness when all {} fall due at once: p50 {:.2} s, p99 {:.2} s (a steady flow fires within the {} ms poll)",
        args.due,
        pct(0.5),
        pct(0.99),
        cfg.sla.poll_interval_ms
    );
    publisher.flush();
    db.drop().await;
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits (up to 120 s) for the pipeline at `url` to be ready, then puts 20 agents online for
/// every skill with room for everything.
async fn ready_with_agents(http: &reqwest::Client, url: &str, token: &str) -> Result<()> {
    let ready = Instant::now();
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if ready.elapsed() > Duration::from_secs(120) {
            bail!("the pipeline did not get ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        let r: serde_json::Value = http
            .post(format!("{url}/v1/agents"))
            .bearer_auth(token)
            .json(&serde_json::json!({"name": format!("a{i}"), "email": format!("a{i}@bench.example"), "level": "supervisor",
                "skills": ["billing", "shipping", "orders", "accounts"], "max_concurrent": 1000}))
            .send()
            .await?
            .json()
            .await?;
        let id = r["id"].as_str().context("agent not created")?.to_string();
        http.put(format!("{url}/v1/agents/{id}/status"))
            .bearer_auth(token)
            .json(&serde_json::json!({"status": "online"}))
            .send()
            .await?;
    }
    Ok(())
}

pub(crate) async fn pipeline(
    cfg: &Config,
    config_path: &std::path::Path,
    args: PipelineArgs,
) -> Result<()> {
    let db = Scratch::new(cfg).await?;
    let (base, _) = cfg
        .services
        .postgres
        .url
        .expose()
        .rsplit_once('/')
        .context("postgres url has no database")?;
    let prefix = format!("bench-{}.", Uuid::now_v7().simple());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let token = Uuid::now_v7().simple().to_string();
    let data = tempfile::tempdir()?;
    let log = data.path().join("run.log");
    let child = std::process::Command::new(crate::switchboard_exe())
        .arg("--config")
        .arg(config_path)
        .args([
            "run",
            "--role",
            "ingest",
            "--role",
            "processors",
            "--role",
            "serving",
        ])
        .env("SWITCHBOARD__SERVICES__KAFKA__TOPIC_PREFIX", &prefix)
        .env(
            "SWITCHBOARD__SERVICES__POSTGRES__URL",
            format!("{base}/{}", db.name),
        )
        .env("SWITCHBOARD__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD__HTTP__ADMIN_TOKEN", &token)
        .env(
            "SWITCHBOARD__CHANNELS__CHAT__SECRET",
            switchboard_cli::stack::random_secret(),
        )
        .env("SWITCHBOARD__DATA_DIR", data.path())
        // Nobody accepts in a benchmark: keep the first assignment.
        .env("SWITCHBOARD__ROUTING__ACCEPT_TIMEOUT_SECS", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(data.path().join("run.err"))?)
        .spawn()?;
    // Stopped however this function ends.
    let mut child = KillOnDrop(child);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    ready_with_agents(&http, &url, &token).await?;
    let texts = [
        "Hi, I ordered a pair of shoes two weeks ago and the tracking page has not moved since Monday. Can you check?",
        "I was charged twice for my last order, please refund the second payment",
        "How do I change the shipping address on an order I placed this morning?",
        "I cannot log in to my account since I reset my password",
        "The invoice for my company purchase is missing the VAT number",
    ];
    let total = (args.rate * args.seconds) as usize;
    println!(
        "switchboard-sim bench pipeline: {} msg/s for {} s through POST /v1/messages, ingest + processors (models {}) + serving in one process",
        args.rate,
        args.seconds,
        if cfg.models.enabled { "on" } else { "off" }
    );
    let gap = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    let mut errors = 0usize;
    for i in 0..total {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        let text = texts[i % texts.len()];
        sends.spawn(async move {
            http.post(format!("{url}/v1/messages"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"channel": "api", "customer": {"email": format!("p{i}@bench.example")}, "text": text, "external_id": format!("p-{i}")}))
                .send()
                .await
                .map(|r| r.status() == 202)
                .unwrap_or(false)
        });
        if i % (args.rate as usize * 10).max(1) == 0 && i > 0 {
            eprintln!("  offered {i}/{total}");
        }
    }
    while let Some(r) = sends.join_next().await {
        if !r.unwrap_or(false) {
            errors += 1;
        }
    }
    let offered_secs = start.elapsed().as_secs_f64();
    // Wait for the assignments to land.
    let drain = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM assignments")
            .fetch_one(&db.pool)
            .await?;
        if n as usize >= total - errors || drain.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(a.assigned_at) - min(m.received_at))::float8 * 1000
         FROM assignments a JOIN messages m ON m.ticket_id = a.ticket_id AND m.direction = 'inbound'
         GROUP BY a.ticket_id ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    child.stop();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "  offered {total} in {offered_secs:.1} s ({:.0} msg/s), {errors} refused; assigned {}; inbound-to-assignment p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        total as f64 / offered_secs,
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    db.drop().await;
    Ok(())
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}
