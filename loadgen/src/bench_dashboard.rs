//! `switchboard-sim bench dashboard`: the supervisor dashboard's ClickHouse queries over many events.
//!
//! Creates a scratch database on the configured ClickHouse, applies the real schema (with its
//! materialized views), inserts `--events` synthetic events shaped like the real ones (ticket
//! lifecycle, SLA events, predictions, spread over `--days`), then runs the dashboard's history
//! queries (the same code `GET /v1/dashboard` runs) `--runs` times for a 24-hour and a 7-day
//! window, and prints p50/p95 per window. The scratch database is dropped at the end.

use std::time::Instant;

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use switchboard_analytics::sink::EventRow;
use switchboard_cli::config::Config;

/// Arguments of `bench dashboard`.
#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Events to insert.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Days the events spread over (ending now).
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Query runs per window.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Keep the scratch database.
    #[arg(long)]
    keep: bool,
}

const CHANNELS: [&str; 6] = ["email", "chat", "sms", "social", "voice", "api"];
const CATEGORIES: [&str; 6] = [
    "delivery",
    "refund",
    "order",
    "payment",
    "account",
    "shipping_address",
];

/// The events of ticket `t` (7 per ticket), created at `at` (seconds).
fn ticket_events(t: u64, at: u32, out: &mut Vec<EventRow>) {
    let ticket = format!("00000000-0000-7000-8000-{t:012x}");
    let channel = CHANNELS[(t % 6) as usize];
    let category = CATEGORIES[((t / 7) % 6) as usize];
    let mut push = |n: u64, schema: &str, kind: &str, secs: u32, payload: String| {
        out.push(EventRow {
            event_id: format!("{ticket}-{n}"),
            schema: schema.into(),
            version: 1,
            topic: String::new(),
            key: ticket.clone(),
            ticket_id: ticket.clone(),
            kind: kind.into(),
            occurred_at: at + secs,
            occurred_ms: u64::from(at + secs) * 1000,
            payload,
        });
    };
    let frt = 30 + (t * 7919 % 3600) as u32;
    let res = frt + 600 + (t * 104_729 % 86_400) as u32;
    push(
        0,
        "ticket_event",
        "created",
        0,
        format!(
            r#"{{"ticket_id":"{ticket}","kind":"created","channel":"{channel}","category":"{category}","priority":"medium"}}"#
        ),
    );
    push(
        1,
        "ticket_event",
        "assigned",
        5,
        format!(
            r#"{{"ticket_id":"{ticket}","kind":"assigned","agent_id":"a{}"}}"#,
            t % 500
        ),
    );
    push(
        2,
        "ticket_event",
        "message_added",
        0,
        format!(
            r#"{{"ticket_id":"{ticket}","kind":"message_added","direction":"inbound","channel":"{channel}"}}"#
        ),
    );
    push(
        3,
        "ticket_event",
        "message_added",
        frt,
        format!(
            r#"{{"ticket_id":"{ticket}","kind":"message_added","direction":"outbound","channel":"{channel}"}}"#
        ),
    );
    push(
        4,
        "ticket_event",
        "resolved",
        res,
        format!(r#"{{"ticket_id":"{ticket}","kind":"resolved"}}"#),
    );
    let sla = if t.is_multiple_of(10) {
        "breached"
    } else {
        "met"
    };
    push(
        5,
        "sla_event",
        sla,
        frt,
        format!(r#"{{"ticket_id":"{ticket}","kind":"{sla}","metric":"first_response"}}"#),
    );
    let score = ((t % 200) as f32 / 100.0) - 1.0;
    push(
        6,
        "enrichment_result",
        "enrichment_result",
        1,
        format!(
            r#"{{"ticket_id":"{ticket}","category":"{category}","intent":"track_order","sentiment":{{"label":"neutral","score":{score}}}}}"#
        ),
    );
}

pub(crate) async fn dashboard(cfg: &Config, args: DashboardArgs) -> Result<()> {
    let url = cfg.services.clickhouse.url.clone();
    anyhow::ensure!(
        !url.is_empty(),
        "set services.clickhouse.url (e.g. from `switchboard services --env-file F; source F`)"
    );
    let mut ch_cfg = cfg.services.clickhouse.clone();
    ch_cfg.database = format!(
        "bench_dashboard_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    switchboard_analytics::migrate(&ch_cfg, &url)
        .await
        .context("schema")?;
    let client = switchboard_analytics::client(&ch_cfg, &url);
    let tickets = args.events.div_ceil(7);
    let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(u32::MAX);
    let span = args.days.max(1) * 86_400;
    println!(
        "switchboard-sim bench dashboard: {} events ({tickets} tickets over {} days) into {}",
        tickets * 7,
        args.days,
        ch_cfg.database
    );
    let started = Instant::now();
    let mut batch = Vec::with_capacity(700_000);
    let mut done = 0u64;
    for t in 0..tickets {
        let at = now - span + ((t * u64::from(span)) / tickets.max(1)) as u32;
        ticket_events(t, at, &mut batch);
        if batch.len() >= 700_000 || t + 1 == tickets {
            let mut insert = client.insert::<EventRow>("events").await?;
            for row in &batch {
                insert.write(row).await?;
            }
            insert.end().await?;
            done += batch.len() as u64;
            batch.clear();
            println!(
                "  {done} events inserted, {:.0} events/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "inserted {done} events in {:.1} s (materialized views included)",
        started.elapsed().as_secs_f64()
    );
    for hours in [24u32, 168] {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut last = serde_json::Value::Null;
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            last = switchboard_serving::dashboard::history(&client, hours).await?;
            h.record(t.elapsed().as_micros() as u64)?;
        }
        println!(
            "dashboard history, {hours:>3} h window: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} runs (tickets by channel: {})",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.95) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            args.runs,
            last["by_channel"]
        );
    }
    if !args.keep {
        client
            .query(&format!("DROP DATABASE {}", ch_cfg.database))
            .execute()
            .await?;
    }
    Ok(())
}
