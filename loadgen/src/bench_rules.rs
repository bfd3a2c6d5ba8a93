//! `switchboard-sim bench rules`: what the team's rules cost, against the real Postgres, broker
//! and ClickHouse (the configured services), in scratch databases it removes afterwards.
//!
//! 1. **Per event.** `--tickets` API messages go through the real ticketing stage (models off)
//!    and its cost per message is measured. Then the real rules stage
//!    (`switchboard_processors::automation::RulesStage`) runs the `created` and
//!    `message_received` events of those tickets with 0, 100 and 1,000 enabled triggers (one
//!    rule in each set matches a tenth of the tickets and tags them; the others test channel,
//!    tags and text that do not match, as most rules of a desk do for most events). Printed:
//!    events/s and µs per event for each, and what the rules add per message as a share of the
//!    ticketing stage's cost, measured side by side in the same run.
//! 2. **Dry run.** `--days` days of `--per-day` tickets' history (ticket events, customer
//!    messages, the models' readings, SLA events, shaped as the live ones) are written to a
//!    scratch ClickHouse database and to scratch topics, and a trigger and an automation are
//!    dry-run over all of it from each source, side by side (the two must find the same).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use serde_json::json;
use switchboard_analytics::sink::EventRow;
use switchboard_cli::config::Config;
use switchboard_contracts::{
    Channel, CustomerRef, Direction, Envelope, InboundMessage, Priority, TicketChange, TicketEvent,
    TicketStatus,
};
use switchboard_core::db::Outbox;
use switchboard_processors::automation::{Cause, RulesConfig, RulesStage};
use switchboard_processors::sla::SlaRules;
use switchboard_processors::ticketing::Ticketing;
use switchboard_tickets::rules::{Compiled, On, Rule};
use uuid::Uuid;

use crate::bench_processors::{publisher, Scratch};

/// Arguments of `bench rules`.
#[derive(Debug, clap::Args)]
pub(crate) struct RulesArgs {
    /// Tickets whose events the rules stage runs (two events each).
    #[arg(long, default_value_t = 2_000)]
    tickets: usize,
    /// Days of history the dry run replays.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Tickets a day in that history.
    #[arg(long, default_value_t = 20_000)]
    per_day: u64,
    /// Skip the dry run.
    #[arg(long)]
    no_dry_run: bool,
}

fn message(i: usize) -> InboundMessage {
    let text = if i.is_multiple_of(10) {
        "I would like a refund for the blender, it arrived broken"
    } else {
        "Hi, I ordered a pair of shoes two weeks ago and the tracking page has not moved since Monday."
    };
    InboundMessage {
        message_id: Uuid::now_v7(),
        channel: Channel::Email,
        external_id: Some(format!("bench-rules-{i}")),
        conversation_key: format!("customer:rules{i}@example.com"),
        ticket_id: None,
        customer: CustomerRef {
            email: Some(format!("rules{i}@example.com")),
            phone: None,
            name: Some("Bench Customer".into()),
            handle: None,
        },
        subject: Some("My order".into()),
        text: text.into(),
        truncated: false,
        attachments: Vec::new(),
        metadata: Default::default(),
        received_at: Utc::now(),
        verified: true,
    }
}

/// `n` enabled triggers: the first tags refund requests, the rest match nothing here.
fn rule_set(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let v = if i == 0 {
                json!({"kind": "trigger", "on": ["created"],
                       "conditions": {"all": [{"field": "message.text", "op": "contains", "value": ["refund", "money back"]}]},
                       "actions": [{"type": "tags", "add": ["refund"]}]})
            } else {
                let on = if i % 2 == 0 { "created" } else { "message_received" };
                json!({"kind": "trigger", "on": [on],
                       "conditions": {"all": [
                           {"field": "channel", "op": "is", "value": ["email", "chat"]},
                           {"field": "tags", "op": "not_contains", "value": format!("seen_{i}")},
                           {"field": "message.text", "op": "contains", "value": [format!("code{i}x"), format!("promo{i}y")]}],
                         "any": [{"field": "priority", "op": "gte", "value": "medium"},
                                 {"field": "category", "op": "is", "value": "billing"}]},
                       "actions": [{"type": "tags", "add": [format!("seen_{i}")]}, {"type": "priority", "priority": "high"}]})
            };
            serde_json::from_value(v).expect("a valid rule")
        })
        .collect()
}

async fn install(pool: &sqlx::PgPool, rules: &[Rule]) -> Result<()> {
    sqlx::query("DELETE FROM rules").execute(pool).await?;
    sqlx::query("DELETE FROM rule_fires").execute(pool).await?;
    let now = Utc::now();
    for (i, r) in rules.iter().enumerate() {
        sqlx::query(
            "INSERT INTO rules (id, name, kind, definition, enabled, position, created_by, updated_by, created_at, updated_at)
             VALUES ($1, $2, 'trigger', $3, true, $4, 'bench', 'bench', $5, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(format!("rule {i}"))
        .bind(sqlx::types::Json(r))
        .bind(i as i32)
        .bind(now)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

pub(crate) async fn rules(cfg: &Config, args: RulesArgs) -> Result<()> {
    let scratch = Scratch::new(cfg).await?;
    let result = per_event(cfg, &scratch, &args).await;
    scratch.drop().await;
    result?;
    if !args.no_dry_run {
        dry_run(cfg, &args).await?;
    }
    Ok(())
}

async fn per_event(cfg: &Config, scratch: &Scratch, args: &RulesArgs) -> Result<()> {
    let pool = scratch.pool.clone();
    let outbox = Outbox::new(pool.clone(), publisher(cfg).await?);
    println!(
        "switchboard-sim bench rules: {} tickets (models off) in {}",
        args.tickets, scratch.name
    );
    let ticketing = Ticketing::new(
        pool.clone(),
        outbox.clone(),
        cfg.routing.clone(),
        None,
        None,
    );
    let mut h = histogram()?;
    let started = Instant::now();
    for i in 0..args.tickets {
        let m = message(i);
        let env = Envelope::new(m.message_id, m.received_at, m);
        let t = Instant::now();
        ticketing.process(&env).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    let ticketing_us = started.elapsed().as_micros() as f64 / args.tickets.max(1) as f64;
    println!(
        "ticketing stage: {ticketing_us:.0} µs per message (p50 {} µs, p99 {} µs)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT t.id, m.id FROM tickets t JOIN messages m ON m.ticket_id = t.id AND m.direction = 'inbound' ORDER BY t.id",
    )
    .fetch_all(&pool)
    .await?;
    let causes: Vec<Cause> = rows
        .iter()
        .flat_map(|(ticket, message)| {
            [On::Created, On::MessageReceived].map(|on| Cause {
                id: Uuid::now_v7(),
                ticket_id: *ticket,
                on,
                actor: None,
                actor_kind: "customer".into(),
                message_id: (on == On::MessageReceived).then_some(*message),
                automatic: false,
                // Read as a follow-up message: every message_received rule runs on it.
                first_message: false,
                change: None,
            })
        })
        .collect();
    let sla = SlaRules::compile(&cfg.sla)
        .map_err(|e| anyhow::anyhow!("sla settings: {}", e.join("; ")))?;
    let stage = RulesStage::new(
        pool.clone(),
        outbox,
        RulesConfig::default(),
        sla,
        "http://127.0.0.1:8080".into(),
    );
    let mut base = None;
    println!(
        "rules stage, {} events (created and message_received):",
        causes.len()
    );
    for n in [0usize, 100, 1000] {
        install(&pool, &rule_set(n)).await?;
        sqlx::query("UPDATE tickets SET tags = '{}'")
            .execute(&pool)
            .await?;
        // The first event after a change loads and compiles the set: not timed.
        if let Some(c) = causes.first() {
            stage.on_event(c).await?;
        }
        sqlx::query("DELETE FROM rule_fires").execute(&pool).await?;
        let mut h = histogram()?;
        let mut fired = 0;
        let started = Instant::now();
        for c in &causes {
            let t = Instant::now();
            fired += stage.on_event(c).await?.len();
            h.record(t.elapsed().as_micros() as u64)?;
        }
        let secs = started.elapsed().as_secs_f64();
        let us = secs * 1e6 / causes.len().max(1) as f64;
        let per_message = us * 2.0;
        let added = match base {
            None => {
                base = Some(per_message);
                String::new()
            }
            Some(b) => format!(
                "; adds {:.0} µs per message over no rules = {:.1}% of the ticketing stage's cost",
                per_message - b,
                (per_message - b) / ticketing_us * 100.0
            ),
        };
        println!(
            "  {n:>5} rules: {:>7.0} events/s, {us:>6.0} µs/event (p50 {} µs, p99 {} µs), {fired} fires{added}",
            causes.len() as f64 / secs,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
        );
    }
    let compile = Instant::now();
    let set = rule_set(1000);
    for (i, r) in set.iter().enumerate() {
        Compiled::new(Uuid::from_u128(i as u128), "r", r)
            .map_err(|e| anyhow::anyhow!("{}", e.why))?;
    }
    println!(
        "compiling 1,000 rules (what a processor does when the set changes): {:.1} ms",
        compile.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// One synthetic ticket's recorded history, shaped as the sink writes the live one.
fn history(t: u64, at_ms: u64, out: &mut Vec<EventRow>) -> Result<()> {
    let ticket = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | u128::from(t));
    let customer = Uuid::from_u128(0x0190_0000_0000_7000_9000_0000_0000_0000 | u128::from(t));
    let message_id = Uuid::from_u128(0x0190_0000_0000_7000_a000_0000_0000_0000 | u128::from(t));
    let channel = [Channel::Email, Channel::Chat, Channel::Sms][(t % 3) as usize];
    let number = format!("T-2026-{t:06}");
    let mut n = 0u32;
    let mut push = |schema: &str, kind: &str, offset_s: u64, payload: String| {
        n += 1;
        let ms = at_ms + offset_s * 1000;
        out.push(EventRow {
            event_id: Uuid::new_v5(&ticket, &n.to_le_bytes()).to_string(),
            schema: schema.into(),
            version: 1,
            topic: String::new(),
            key: ticket.to_string(),
            ticket_id: if schema == "inbound_message" {
                String::new()
            } else {
                ticket.to_string()
            },
            kind: kind.into(),
            occurred_at: u32::try_from(ms / 1000).unwrap_or(u32::MAX),
            occurred_ms: ms,
            payload,
        });
    };
    let event = |change: TicketChange, actor: Option<&str>| {
        serde_json::to_string(&TicketEvent {
            ticket_id: ticket,
            ticket_number: number.clone(),
            customer_id: customer,
            change,
            actor: actor.map(str::to_string),
        })
    };
    let text = match t % 10 {
        0 => "I want a refund, the blender arrived broken",
        1..=4 => "Where is my parcel? The tracking has not moved",
        _ => "Can I change the size of my order?",
    };
    let mut m = message(t as usize);
    m.message_id = message_id;
    m.channel = channel;
    m.text = text.into();
    push(
        "inbound_message",
        "inbound_message",
        0,
        serde_json::to_string(&m)?,
    );
    push(
        "ticket_event",
        "created",
        0,
        event(
            TicketChange::Created {
                channel,
                subject: Some("My order".into()),
                priority: Priority::Medium,
                category: Some("delivery".into()),
                required_skill: None,
                language: Some("en".into()),
            },
            Some("system"),
        )?,
    );
    push(
        "ticket_event",
        "message_added",
        0,
        event(
            TicketChange::MessageAdded {
                message_id,
                direction: Direction::Inbound,
                channel,
                automatic: false,
            },
            None,
        )?,
    );
    push(
        "enrichment_result",
        "enrichment_result",
        1,
        json!({"ticket_id": ticket, "category": "delivery", "intent": "track_order", "sentiment": -0.2, "language": "en"}).to_string(),
    );
    push(
        "ticket_event",
        "assigned",
        20,
        event(
            TicketChange::Assigned { agent_id: customer },
            Some("router"),
        )?,
    );
    let pending = 600 + t % 3600;
    push(
        "ticket_event",
        "status_changed",
        pending,
        event(
            TicketChange::StatusChanged {
                from: TicketStatus::Open,
                to: TicketStatus::Pending,
            },
            Some("agent:x"),
        )?,
    );
    if !t.is_multiple_of(4) {
        push(
            "ticket_event",
            "status_changed",
            pending + 7200,
            event(
                TicketChange::StatusChanged {
                    from: TicketStatus::Pending,
                    to: TicketStatus::Resolved,
                },
                Some("agent:x"),
            )?,
        );
    }
    push(
        "sla_event",
        if t % 10 == 3 { "breached" } else { "met" },
        900,
        json!({"ticket_id": ticket, "kind": if t % 10 == 3 { "breached" } else { "met" }, "metric": "first_response", "policy": "standard", "target_at": Utc::now(), "cycle": 0}).to_string(),
    );
    Ok(())
}

async fn dry_run(cfg: &Config, args: &RulesArgs) -> Result<()> {
    let url = cfg.services.clickhouse.url.clone();
    anyhow::ensure!(
        !url.is_empty(),
        "set services.clickhouse.url (e.g. from `switchboard services --env-file F; source F`)"
    );
    let mut ch_cfg = cfg.services.clickhouse.clone();
    ch_cfg.database = format!("bench_rules_{}", &Uuid::new_v4().simple().to_string()[..8]);
    switchboard_analytics::migrate(&ch_cfg, &url)
        .await
        .context("schema")?;
    let client = switchboard_analytics::client(&ch_cfg, &url);
    let publisher = publisher(cfg).await?;
    let mut kafka = cfg.services.kafka.clone();
    kafka.topic_prefix = publisher.prefix().to_string();
    let result = replay(&client, &publisher, &kafka, args).await;
    let _ = client
        .query(&format!("DROP DATABASE {}", ch_cfg.database))
        .execute()
        .await;
    result
}

/// Publishes `rows` as the live topics carry them (envelopes on their schema's topic).
async fn publish_rows(
    publisher: &switchboard_core::kafka::Publisher,
    rows: &[EventRow],
) -> Result<()> {
    use switchboard_contracts::Topic;
    for chunk in rows.chunks(5_000) {
        let sends = chunk.iter().filter_map(|r| {
            let topic = match r.schema.as_str() {
                "inbound_message" => Topic::InboundMessages,
                "ticket_event" => Topic::TicketEvents,
                "enrichment_result" => Topic::Enrichments,
                "sla_event" => Topic::SlaEvents,
                _ => return None,
            };
            let at = chrono::DateTime::from_timestamp_millis(r.occurred_ms as i64)?;
            let payload: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            let envelope = json!({"schema": r.schema, "version": r.version, "event_id": r.event_id,
                                  "occurred_at": at, "payload": payload});
            let bytes = serde_json::to_vec(&envelope).ok()?;
            Some(async move { publisher.publish_bytes(topic, &r.key, &bytes).await })
        });
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }
    Ok(())
}

async fn replay(
    client: &clickhouse::Client,
    publisher: &switchboard_core::kafka::Publisher,
    kafka: &switchboard_core::config::KafkaConfig,
    args: &RulesArgs,
) -> Result<()> {
    let tickets = args.per_day * u64::from(args.days.max(1));
    let now = Utc::now();
    let span_ms = u64::from(args.days.max(1)) * 86_400_000;
    let start_ms = (now.timestamp_millis() as u64).saturating_sub(span_ms);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(200_000);
    let mut rows = 0u64;
    for t in 0..tickets {
        history(t, start_ms + t * span_ms / tickets.max(1), &mut batch)?;
        if batch.len() >= 200_000 || t + 1 == tickets {
            let mut insert = client.insert::<EventRow>("events").await?;
            for row in &batch {
                insert.write(row).await?;
            }
            insert.end().await?;
            publish_rows(publisher, &batch).await?;
            rows += batch.len() as u64;
            batch.clear();
        }
    }
    println!(
        "dry run: {rows} events of {tickets} tickets over {} days ({} a day) written to clickhouse and kafka in {:.1} s",
        args.days,
        args.per_day,
        started.elapsed().as_secs_f64()
    );
    let drafts = [
        (
            "trigger: refund requests get a tag",
            json!({"kind": "trigger", "on": ["created"],
                   "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "refund"}]},
                   "actions": [{"type": "tags", "add": ["refund"]}]}),
        ),
        (
            "automation: pending 48 h gets a reminder",
            json!({"kind": "automation",
                   "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                          {"field": "hours_since_pending", "op": "gte", "value": 48},
                                          {"field": "tags", "op": "not_contains", "value": "reminded"}]},
                   "actions": [{"type": "tags", "add": ["reminded"]}]}),
        ),
    ];
    for (what, v) in drafts {
        let rule: Rule = serde_json::from_value(v)?;
        let compiled =
            Compiled::new(Uuid::nil(), "draft", &rule).map_err(|e| anyhow::anyhow!("{}", e.why))?;
        let until = now + chrono::Duration::seconds(1);
        let t = Instant::now();
        let out =
            switchboard_serving::rules::dry_run(client, &compiled, args.days + 1, until).await?;
        let ch_took = t.elapsed();
        let t = Instant::now();
        let (k, c) = (kafka.clone(), compiled.clone());
        let days = args.days + 1;
        let from_kafka = tokio::task::spawn_blocking(move || {
            switchboard_serving::rules::dry_run_kafka(
                &k,
                &c,
                days,
                until,
                switchboard_serving::rules::KAFKA_MAX_RECORDS,
                false,
            )
        })
        .await?;
        let k_took = t.elapsed();
        println!(
            "  {what}: {} fires on {} tickets of {} ({} events)",
            out.fires, out.tickets_touched, out.tickets, out.events
        );
        println!(
            "    clickhouse: {:.1} s ({:.0} events/s; goal < 60 s: {})",
            ch_took.as_secs_f64(),
            out.events as f64 / ch_took.as_secs_f64().max(1e-9),
            if ch_took < Duration::from_secs(60) {
                "met"
            } else {
                "missed"
            }
        );
        match from_kafka {
            Ok((k_out, retained)) => {
                let same = (k_out.events, k_out.fires, k_out.tickets_touched)
                    == (out.events, out.fires, out.tickets_touched);
                println!(
                    "    kafka:      {:.1} s ({:.0} events/s), {:.2}x clickhouse's time; same findings: {same}; window retained: {retained}",
                    k_took.as_secs_f64(),
                    k_out.events as f64 / k_took.as_secs_f64().max(1e-9),
                    k_took.as_secs_f64() / ch_took.as_secs_f64().max(1e-9),
                );
            }
            Err(e) => println!(
                "    kafka:      not replayed ({e}): a dry run takes ClickHouse for this window"
            ),
        }
    }
    Ok(())
}
