//! `switchboard-sim bench api`: the agent API's latency under a steady mixed load.
//!
//! Against a running Switchboard (ingest, processors, serving): creates `--tickets` tickets
//! through `POST /v1/messages` and waits for them, then sends `--rate` requests per second for
//! `--seconds`, open-loop (a slow answer does not slow the offered rate): 50% ticket reads,
//! 20% ticket lists, 10% customer profiles, 10% replies, 10% status changes with the ticket's
//! version (a 409 from a concurrent change counts as handled, not as an error). Prints p50/p99
//! per kind and overall and the achieved rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// Arguments of `bench api`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token.
    #[arg(long, env = "SWITCHBOARD__HTTP__ADMIN_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 500)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value_t = 200)]
    tickets: usize,
    /// Postgres of the Switchboard under test: with it, the run also compares what a request
    /// pays to be recognised by a bearer token and by a single sign-on session (a session is
    /// written into the store for the bench agent, as a sign-in would).
    #[arg(long, env = "SWITCHBOARD__SERVICES__POSTGRES__URL")]
    database_url: Option<String>,
    /// Requests per credential in that comparison (`GET /v1/me`, one at a time, interleaved).
    #[arg(long, default_value_t = 2000)]
    credential_requests: usize,
}

type Results = Arc<Mutex<BTreeMap<&'static str, (Histogram<u64>, u64)>>>;

pub(crate) async fn api(args: ApiArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (url, token) = (args.url.clone(), args.token.clone());
    println!(
        "switchboard-sim bench api: {} req/s for {} s against {url} ({} tickets)",
        args.rate, args.seconds, args.tickets
    );
    let agent: Value = http
        .post(format!("{url}/v1/agents"))
        .bearer_auth(&token)
        .json(&json!({"name": "Bench", "email": format!("api-bench-{run}@example.com"), "skills": [], "languages": ["en"], "max_concurrent": 50}))
        .send()
        .await?
        .json()
        .await?;
    let agent = agent["id"].as_str().context("agent")?.to_string();
    match &args.database_url {
        Some(db) => credentials(&http, &url, &token, &agent, db, args.credential_requests).await?,
        None => println!(
            "credential check: skipped (give --database-url to compare a token with a session)"
        ),
    }
    for i in 0..args.tickets {
        let r = http
            .post(format!("{url}/v1/messages"))
            .bearer_auth(&token)
            .json(&json!({"channel": "api", "customer": {"email": format!("api-{run}-{i}@example.com")},
                          "text": "Where is my order? It has not arrived.", "external_id": format!("api-{run}-{i}")}))
            .send()
            .await?;
        if r.status() != 202 {
            bail!("seeding: {}", r.status());
        }
    }
    // The tickets and their customers.
    let mut tickets: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..args.tickets {
        loop {
            let v: Value = http
                .get(format!(
                    "{url}/v1/tickets?customer_email=api-{run}-{i}@example.com"
                ))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if let (Some(t), Some(c)) = (
                v["tickets"][0]["id"].as_str(),
                v["tickets"][0]["customer_id"].as_str(),
            ) {
                tickets.push((t.to_string(), c.to_string()));
                break;
            }
            if Instant::now() > deadline {
                bail!("tickets not created within 120 s (are the processors running?)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("{} tickets ready", tickets.len());
    let tickets = Arc::new(tickets);
    let mut per_kind = BTreeMap::new();
    for kind in ["ticket", "list", "customer", "reply", "status"] {
        per_kind.insert(
            kind,
            (Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?, 0),
        );
    }
    let results: Results = Arc::new(Mutex::new(per_kind));
    let total = u64::from(args.rate) * args.seconds;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        tick.tick().await;
        let (http, url, token, agent, tickets, results) = (
            http.clone(),
            url.clone(),
            token.clone(),
            agent.clone(),
            tickets.clone(),
            results.clone(),
        );
        tasks.spawn(async move {
            let (ticket, customer) = &tickets[(k as usize * 7919) % tickets.len()];
            let (kind, req) = match k % 10 {
                0..=4 => ("ticket", http.get(format!("{url}/v1/tickets/{ticket}"))),
                5 | 6 => ("list", http.get(format!("{url}/v1/tickets?status=open&limit=50"))),
                7 => ("customer", http.get(format!("{url}/v1/customers/{customer}"))),
                8 => (
                    "reply",
                    http.post(format!("{url}/v1/tickets/{ticket}/replies"))
                        .json(&json!({"agent_id": agent, "text": "Checking with the carrier.", "request_id": format!("r{k}")})),
                ),
                _ => (
                    "status",
                    http.put(format!("{url}/v1/tickets/{ticket}/status"))
                        .json(&json!({"status": if k % 20 == 9 { "pending" } else { "open" }})),
                ),
            };
            let t = Instant::now();
            let ok = match req.bearer_auth(&token).send().await {
                Ok(r) => r.status().is_success() || r.status() == 409,
                Err(_) => false,
            };
            let us = t.elapsed().as_micros() as u64;
            if let Some(e) = results.lock().await.get_mut(kind) {
                let _ = e.0.record(us.max(1));
                if !ok {
                    e.1 += 1;
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let r = results.lock().await;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    println!(
        "{:<10} {:>8} {:>7} {:>9} {:>9}",
        "kind", "requests", "errors", "p50 ms", "p99 ms"
    );
    for (kind, (h, e)) in r.iter() {
        all.add(h)?;
        errors += e;
        println!(
            "{kind:<10} {:>8} {e:>7} {:>9.2} {:>9.2}",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    println!(
        "all        {:>8} {errors:>7} {:>9.2} {:>9.2}   achieved {:.0} req/s (offered {})",
        all.len(),
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.len() as f64 / elapsed,
        args.rate
    );
    Ok(())
}

/// The cost of recognising the caller: the configured admin token (compared in memory), an
/// issued agent token (one indexed lookup) and a single sign-on session (one indexed lookup,
/// a write of `last_seen_at` at most once a minute), each on `GET /v1/me`, one request at a
/// time and interleaved, so the three share the machine's noise.
async fn credentials(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    agent: &str,
    db: &str,
    n: usize,
) -> Result<()> {
    let issued: Value = http
        .post(format!("{url}/v1/tokens"))
        .bearer_auth(admin)
        .json(&json!({"role": "agent", "agent_id": agent, "name": "bench api credentials", "expires_in_secs": 3600}))
        .send()
        .await?
        .json()
        .await?;
    let agent_token = issued["token"]
        .as_str()
        .context("issued token")?
        .to_string();
    let pool = sqlx::PgPool::connect(db)
        .await
        .context("cannot connect to postgres")?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let session = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sessions (id, secret_sha256, csrf_sha256, agent_id, role, issuer, subject, created_at, last_seen_at,
                               idle_secs, expires_at, refreshed_at)
         VALUES ($1, sha256(convert_to($2, 'UTF8')), sha256(convert_to($3, 'UTF8')), $4::uuid, 'agent', 'bench', 'bench',
                 now(), now(), 3600, now() + interval '1 hour', now() + interval '1 hour')",
    )
    .bind(session)
    .bind(&secret)
    .bind(format!("csrf-{secret}"))
    .bind(agent)
    .execute(&pool)
    .await?;
    let kinds = ["admin token", "agent token", "session"];
    let mut hist = Vec::new();
    for _ in kinds {
        hist.push(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?);
    }
    let mut failed = 0u64;
    let warmup = 100.min(n);
    for i in 0..(n + warmup) * kinds.len() {
        let k = i % kinds.len();
        let req = http.get(format!("{url}/v1/me"));
        let req = match k {
            0 => req.bearer_auth(admin),
            1 => req.bearer_auth(&agent_token),
            _ => req.header("cookie", format!("sb_session={secret}")),
        };
        let t = Instant::now();
        let ok = req.send().await.is_ok_and(|r| r.status().is_success());
        let us = t.elapsed().as_micros() as u64;
        if i >= warmup * kinds.len() {
            hist[k].record(us.max(1))?;
            failed += u64::from(!ok);
        }
    }
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'bench' WHERE id = $1")
        .bind(session)
        .execute(&pool)
        .await?;
    println!("credential check: GET /v1/me, {n} requests each, one at a time, interleaved ({failed} failed)");
    println!("{:<12} {:>9} {:>9}", "credential", "p50 ms", "p99 ms");
    for (k, h) in kinds.iter().zip(&hist) {
        println!(
            "{k:<12} {:>9.3} {:>9.3}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    let (t, s) = (&hist[1], &hist[2]);
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (tq, sq) = (t.value_at_quantile(q) as f64, s.value_at_quantile(q) as f64);
        println!(
            "session vs agent token {name}: {:+.3} ms ({:.2}x)",
            (sq - tq) / 1000.0,
            sq / tq.max(1.0)
        );
    }
    if failed > 0 {
        bail!("{failed} credential requests failed");
    }
    Ok(())
}
