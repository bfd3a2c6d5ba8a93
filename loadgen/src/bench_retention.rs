//! `switchboard-sim bench retention`: whether the retention job keeps up with a million tickets a
//! day.
//!
//! In a scratch database on the configured Postgres (e.g. from `switchboard services --env-file
//! F` then `source F`), with the real schema, seeds `--days` days of resolved tickets past
//! retention at `--tickets-per-day` times `--scale` a day, each with what a real ticket leaves
//! behind (`--messages` messages, an assignment, two SLA clocks, a delivery record, a survey on
//! every second, a chat session with its log on every sixth), one customer per two tickets with
//! an identity and an expired order on every fourth, plus a day of recent tickets the job must
//! keep. Then it times one retention pass (the same code the serving role runs, Postgres part:
//! no ClickHouse, no files) and prints tickets/s, rows/s and how long a day of
//! `--tickets-per-day` tickets takes. The scratch database is dropped at the end.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use sqlx::PgPool;
use switchboard_cli::config::Config;
use switchboard_serving::privacy::{run_retention, RetentionConfig};
use uuid::Uuid;

/// Arguments of `bench retention`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    /// Days of expired tickets to seed.
    #[arg(long, default_value_t = 3)]
    days: u32,
    /// Tickets a day at full scale.
    #[arg(long, default_value_t = 1_000_000)]
    tickets_per_day: u64,
    /// Share of `--tickets-per-day` seeded (1.0: all of them).
    #[arg(long, default_value_t = 0.05)]
    scale: f64,
    /// Messages per ticket.
    #[arg(long, default_value_t = 4)]
    messages: u32,
    /// Rows per deletion statement (`retention.batch_size`).
    #[arg(long, default_value_t = 5000)]
    batch: u32,
    /// Keep the scratch database.
    #[arg(long)]
    keep: bool,
}

const RETENTION_DAYS: u32 = 730;

/// Seeds `n` tickets resolved around `age_days` ago, numbered from `first`.
async fn seed_day(pool: &PgPool, first: i64, n: i64, age_days: f64, messages: i32) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE seed ON COMMIT DROP AS
         SELECT i, gen_random_uuid() AS ticket, gen_random_uuid() AS customer,
                now() - make_interval(secs => ($3 * 86400 + (i % 86400))::double precision) AS at
         FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) i",
    )
    .bind(first)
    .bind(n)
    .bind(age_days)
    .execute(&mut *tx)
    .await?;
    // One customer per two tickets (the even ticket's id), with an email identity.
    for sql in [
        "INSERT INTO customers (id, email, name, created_at)
         SELECT customer, 'c' || i || '@bench.example', 'Customer ' || i, at - interval '1 day'
         FROM seed WHERE i % 2 = 0",
        "INSERT INTO customer_identities (kind, value, customer_id, created_at)
         SELECT 'email', 'c' || i || '@bench.example', customer, at - interval '1 day'
         FROM seed WHERE i % 2 = 0",
        "INSERT INTO tickets (id, number, customer_id, channel, conversation_key, subject, status,
                              priority, priority_rank, created_at, updated_at, resolved_at)
         SELECT s.ticket, 'B-' || s.i, c.customer,
                CASE WHEN s.i % 6 = 0 THEN 'chat' ELSE 'email' END,
                CASE WHEN s.i % 6 = 0 THEN 'chat:' || s.ticket ELSE 'email:' || s.i END,
                'Where is my order ' || s.i, 'resolved', 'medium', 2,
                s.at - interval '1 hour', s.at, s.at
         FROM seed s JOIN seed c ON c.i = s.i - (s.i % 2)",
        "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at, created_at, attachments)
         SELECT gen_random_uuid(), s.ticket, 'email', CASE WHEN k % 2 = 1 THEN 'inbound' ELSE 'outbound' END,
                'c' || s.i, repeat('Hello, my parcel has not arrived yet. ', 8), s.at, s.at, '[]'
         FROM seed s, generate_series(1, $1) k",
        "INSERT INTO assignments (id, ticket_id, agent_id, reason, assigned_at, released_at)
         SELECT gen_random_uuid(), s.ticket, (SELECT id FROM agents ORDER BY id LIMIT 1), 'score', s.at, s.at
         FROM seed s",
        "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by, started_at, stopped_at)
         SELECT s.ticket, m, 1, 'standard', '24x7', 3600, gen_random_uuid(), s.at, s.at
         FROM seed s, unnest(ARRAY['first_response', 'resolution']) m",
        "INSERT INTO deliveries (reply_id, channel, recipient, state, sent_at, created_at)
         SELECT m.id, 'email', 'c' || s.i || '@bench.example', 'sent', s.at, s.at
         FROM seed s JOIN messages m ON m.ticket_id = s.ticket AND m.direction = 'outbound'",
        "INSERT INTO csat (ticket_id, token, rating, sent_at, answered_at)
         SELECT ticket, 'tok-' || i, 5, at, at FROM seed WHERE i % 2 = 0",
        "INSERT INTO chat_conversations (id, customer_email, next_seq, created_at)
         SELECT ticket, 'c' || (i - i % 2) || '@bench.example', 3, at - interval '1 hour'
         FROM seed WHERE i % 6 = 0",
        "INSERT INTO chat_log (conversation_id, seq, reply_id, author, text, created_at)
         SELECT ticket, k, gen_random_uuid(), 'agent', 'On its way!', at
         FROM seed, generate_series(1, 2) k WHERE i % 6 = 0",
        "INSERT INTO orders (id, customer_id, external_id, total_cents, created_at, updated_at)
         SELECT gen_random_uuid(), customer, 'bench-' || i, 4990, at - interval '2 days', at - interval '2 days'
         FROM seed WHERE i % 4 = 0",
    ] {
        let q = sqlx::query(sql);
        let q = if sql.contains("$1") {
            q.bind(messages)
        } else {
            q
        };
        q.execute(&mut *tx)
            .await
            .with_context(|| format!("seeding: {}", &sql[..60.min(sql.len())]))?;
    }
    tx.commit().await?;
    Ok(())
}

async fn count(pool: &PgPool, table: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await?)
}

const TABLES: [&str; 10] = [
    "tickets",
    "messages",
    "assignments",
    "sla_clocks",
    "deliveries",
    "csat",
    "customers",
    "customer_identities",
    "orders",
    "chat_log",
];

pub(crate) async fn retention(cfg: &Config, args: RetentionArgs) -> Result<()> {
    if args.scale.is_nan() || args.scale <= 0.0 || args.days == 0 {
        bail!("--scale must be above 0 and --days at least 1");
    }
    let db = crate::bench_processors::Scratch::new(cfg).await?;
    let result = run(&db.pool, &args).await;
    if args.keep {
        db.pool.close().await;
        println!("kept database {}", db.name);
    } else {
        db.drop().await;
    }
    result
}

async fn run(pool: &PgPool, args: &RetentionArgs) -> Result<()> {
    sqlx::query(
        "INSERT INTO agents (id, name, email, max_concurrent) VALUES ($1, 'Bench', 'bench@example.com', 5)",
    )
    .bind(Uuid::now_v7())
    .execute(pool)
    .await?;
    // Even: a customer has two tickets of the same day.
    let per_day = ((args.tickets_per_day as f64 * args.scale / 2.0).round() as i64).max(1) * 2;
    let t = Instant::now();
    let mut first = 0i64;
    for day in 0..args.days {
        seed_day(
            pool,
            first,
            per_day,
            f64::from(RETENTION_DAYS + 1 + day),
            args.messages as i32,
        )
        .await?;
        first += per_day;
    }
    // A day of recent resolved tickets the job keeps.
    seed_day(pool, first, per_day, 1.0, args.messages as i32).await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    let mut before = Vec::new();
    for table in TABLES {
        before.push(count(pool, table).await?);
    }
    println!(
        "seeded {} expired tickets ({} days of {per_day}) and {per_day} recent ones in {:.1}s: {}",
        per_day * i64::from(args.days),
        args.days,
        t.elapsed().as_secs_f64(),
        TABLES
            .iter()
            .zip(&before)
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let r = RetentionConfig {
        closed_tickets_days: RETENTION_DAYS,
        events_days: RETENTION_DAYS,
        orders_days: RETENTION_DAYS,
        chat_session_days: 30,
        deadletter_days: 90,
        audit_days: RETENTION_DAYS,
        rule_fires_days: 90,
        ledgers_days: 30,
        batch_size: args.batch,
        interval_secs: 3600,
    };
    let scratch = tempfile::tempdir()?;
    let t = Instant::now();
    let blobs = switchboard_core::storage::BlobStore::local(scratch.path())?;
    let report = run_retention(pool, &blobs, None, &r)
        .await?
        .context("the retention lock was taken")?;
    let secs = t.elapsed().as_secs_f64();
    let mut deleted = 0;
    for (table, b) in TABLES.iter().zip(&before) {
        deleted += b - count(pool, table).await?;
    }
    let left = count(pool, "tickets").await?;
    if left != per_day {
        bail!("retention left {left} tickets, expected the {per_day} recent ones");
    }
    let tickets_per_sec = report.tickets as f64 / secs;
    println!(
        "retention pass: {} tickets, {} messages, {} customers, {} orders, {} chat sessions in {} batches of {}: {secs:.1}s",
        report.tickets,
        report.messages,
        report.customers,
        report.orders,
        report.chat_sessions,
        report.batches,
        args.batch
    );
    println!(
        "{tickets_per_sec:.0} tickets/s, {:.0} rows/s; a day of {} tickets takes {:.0}s ({:.1}% of the day)",
        deleted as f64 / secs,
        args.tickets_per_day,
        args.tickets_per_day as f64 / tickets_per_sec,
        100.0 * args.tickets_per_day as f64 / tickets_per_sec / 86_400.0
    );
    Ok(())
}
