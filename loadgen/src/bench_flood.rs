//! `switchboard-sim bench flood`: legitimate traffic with and without a hostile flood, side by side.
//!
//! Against a running Switchboard (ingest and serving roles, the SMS source on): creates an agent
//! and its token, then runs two phases of `--seconds` each with the same legitimate load,
//! open-loop at `--rate` requests per second: half correctly signed SMS webhooks, half the
//! agent's `GET /v1/me`. The second phase adds a flood at `--factor` times `--limit` (the
//! server's per-client limit, `ingest.rate_limits.sms` and `.agent_api`), half unsigned SMS
//! webhooks, half requests with wrong bearer tokens. Prints the legitimate requests answered 2xx
//! per second in each phase, their latency, and the ratio flood / no flood (1.0: the flood took
//! nothing from legitimate clients).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Arguments of `bench flood`.
#[derive(Debug, clap::Args)]
pub(crate) struct FloodArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token (creates the agent and its token).
    #[arg(long, env = "SWITCHBOARD__HTTP__ADMIN_TOKEN")]
    token: String,
    /// The SMS provider's auth token the server checks signatures with.
    #[arg(long, env = "SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN")]
    sms_token: String,
    /// The SMS webhook URL as the server knows it (`channels.sms.public_url`); default
    /// `<url>/webhooks/sms`.
    #[arg(long)]
    sms_url: Option<String>,
    /// The server's per-client limit (requests per second) of the SMS and agent API sources.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Legitimate requests per second (default 80% of `--limit`).
    #[arg(long)]
    rate: Option<u32>,
    /// The flood, as a multiple of `--limit`.
    #[arg(long, default_value_t = 10)]
    factor: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    legit_ok: u64,
    legit_failed: u64,
    /// Legitimate requests that failed, by kind and status (0: no answer).
    failures: std::collections::BTreeMap<(&'static str, u16), u64>,
    latency: Histogram<u64>,
    hostile_sent: u64,
    hostile_refused: u64,
    hostile_accepted: u64,
    elapsed: f64,
}

impl Phase {
    fn ok_per_sec(&self) -> f64 {
        self.legit_ok as f64 / self.elapsed.max(1e-9)
    }
}

#[derive(Default)]
struct Counters {
    legit_ok: AtomicU64,
    legit_failed: AtomicU64,
    hostile_sent: AtomicU64,
    hostile_refused: AtomicU64,
    hostile_accepted: AtomicU64,
}

struct Target {
    http: reqwest::Client,
    url: String,
    sms_url: String,
    sms_token: String,
    agent_token: String,
}

impl Target {
    fn sms(&self, id: &str, signed: bool) -> reqwest::RequestBuilder {
        let params = vec![
            ("MessageSid".to_string(), id.to_string()),
            ("From".to_string(), "+15550100777".to_string()),
            ("Body".to_string(), "Where is my parcel?".to_string()),
        ];
        let signature = if signed {
            switchboard_ingest::sms::sign(&self.sms_token, &self.sms_url, &params)
        } else {
            format!("forged-{id}")
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        self.http
            .post(format!("{}/webhooks/sms", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
    }

    fn me(&self, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}/v1/me", self.url))
            .bearer_auth(token)
    }
}

/// Sends `rate` requests per second for `seconds`, `make(k)` building the k-th; `record` sees
/// each answer (status, or none on a transport error) and its latency.
async fn open_loop<M, R>(rate: u32, seconds: u64, make: M, record: R)
where
    M: Fn(u64) -> reqwest::RequestBuilder,
    R: Fn(u64, Option<u16>, Duration) + Send + Sync + 'static,
{
    let record = Arc::new(record);
    let total = u64::from(rate) * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        tick.tick().await;
        let (req, record) = (make(k), record.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let status = req.send().await.ok().map(|r| r.status().as_u16());
            record(k, status, t.elapsed());
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn phase(
    target: &Arc<Target>,
    args: &FloodArgs,
    rate: u32,
    flood: bool,
    run: &str,
) -> Result<Phase> {
    let counters = Arc::new(Counters::default());
    let failures = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let started = Instant::now();
    let legit = {
        let (t, c, l, f, run) = (
            target.clone(),
            counters.clone(),
            latency.clone(),
            failures.clone(),
            run.to_string(),
        );
        let (seconds, tag) = (args.seconds, if flood { "f" } else { "c" });
        async move {
            let t2 = t.clone();
            open_loop(
                rate,
                seconds,
                move |k| {
                    if k % 2 == 0 {
                        t2.sms(&format!("SMbench{run}{tag}{k}"), true)
                    } else {
                        t2.me(&t2.agent_token)
                    }
                },
                move |k, status, took| {
                    if status.is_some_and(|s| (200..300).contains(&s)) {
                        c.legit_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.legit_failed.fetch_add(1, Ordering::Relaxed);
                        let kind = if k % 2 == 0 { "sms" } else { "agent" };
                        *f.lock().entry((kind, status.unwrap_or(0))).or_insert(0) += 1;
                    }
                    let _ = l.lock().record((took.as_micros() as u64).max(1));
                },
            )
            .await;
        }
    };
    let hostile = {
        let (t, c) = (target.clone(), counters.clone());
        let hostile_rate = if flood {
            args.limit.saturating_mul(args.factor)
        } else {
            0
        };
        let seconds = args.seconds;
        async move {
            if hostile_rate == 0 {
                return;
            }
            let t2 = t.clone();
            open_loop(
                hostile_rate,
                seconds,
                move |k| {
                    if k % 2 == 0 {
                        t2.sms(&format!("SMhostile{k}"), false)
                    } else {
                        t2.me(&format!("wrong-token-{k}"))
                    }
                },
                move |_, status, _| {
                    c.hostile_sent.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Some(s) if (200..300).contains(&s) => {
                            c.hostile_accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {
                            c.hostile_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {}
                    }
                },
            )
            .await;
        }
    };
    tokio::join!(legit, hostile);
    let elapsed = started.elapsed().as_secs_f64();
    let latency = latency.lock().clone();
    let failures = failures.lock().clone();
    Ok(Phase {
        legit_ok: counters.legit_ok.load(Ordering::Relaxed),
        legit_failed: counters.legit_failed.load(Ordering::Relaxed),
        failures,
        latency,
        hostile_sent: counters.hostile_sent.load(Ordering::Relaxed),
        hostile_refused: counters.hostile_refused.load(Ordering::Relaxed),
        hostile_accepted: counters.hostile_accepted.load(Ordering::Relaxed),
        elapsed,
    })
}

pub(crate) async fn flood(args: FloodArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let url = args.url.trim_end_matches('/').to_string();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let rate = args.rate.unwrap_or(args.limit * 4 / 5).max(2);
    println!(
        "switchboard-sim bench flood: {rate} legitimate req/s for {} s, then the same under {} x {} hostile req/s, against {url}",
        args.seconds, args.factor, args.limit
    );
    let agent: Value = http
        .post(format!("{url}/v1/agents"))
        .bearer_auth(&args.token)
        .json(&json!({"name": "Flood bench", "email": format!("flood-bench-{run}@example.com"), "skills": [], "languages": ["en"], "max_concurrent": 5}))
        .send()
        .await?
        .json()
        .await?;
    let agent = agent["id"].as_str().context("creating the agent")?;
    let issued: Value = http
        .post(format!("{url}/v1/tokens"))
        .bearer_auth(&args.token)
        .json(&json!({"role": "agent", "agent_id": agent, "name": "flood bench"}))
        .send()
        .await?
        .json()
        .await?;
    let agent_token = issued["token"]
        .as_str()
        .context("issuing the agent's token")?
        .to_string();
    let target = Arc::new(Target {
        http,
        sms_url: args
            .sms_url
            .clone()
            .unwrap_or_else(|| format!("{url}/webhooks/sms")),
        url,
        sms_token: args.sms_token.clone(),
        agent_token,
    });
    let clean = phase(&target, &args, rate, false, &run).await?;
    // Let the buckets refill between the phases.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flooded = phase(&target, &args, rate, true, &run).await?;
    println!(
        "{:<9} {:>10} {:>8} {:>9} {:>9} {:>12} {:>9} {:>9}",
        "phase", "legit ok/s", "failed", "p50 ms", "p99 ms", "hostile/s", "refused", "accepted"
    );
    for (name, p) in [("no flood", &clean), ("flood", &flooded)] {
        println!(
            "{name:<9} {:>10.1} {:>8} {:>9.2} {:>9.2} {:>12.1} {:>9} {:>9}",
            p.ok_per_sec(),
            p.legit_failed,
            p.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p.latency.value_at_quantile(0.99) as f64 / 1000.0,
            p.hostile_sent as f64 / p.elapsed.max(1e-9),
            p.hostile_refused,
            p.hostile_accepted
        );
    }
    for (name, p) in [("no flood", &clean), ("flood", &flooded)] {
        if !p.failures.is_empty() {
            let list: Vec<String> = p
                .failures
                .iter()
                .map(|((kind, status), n)| format!("{kind} {status}: {n}"))
                .collect();
            println!("{name} failures (0: no answer): {}", list.join(", "));
        }
    }
    println!(
        "legitimate throughput under a {}x flood: {:.3} of the throughput without",
        args.factor,
        flooded.ok_per_sec() / clean.ok_per_sec().max(1e-9)
    );
    Ok(())
}
