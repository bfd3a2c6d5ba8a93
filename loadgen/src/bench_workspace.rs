//! `switchboard-sim bench workspace`: the agent workspace's queries over a large desk.
//!
//! In a scratch database on the configured Postgres (e.g. from `switchboard services --env-file
//! F` then `source F`), with the real schema and its indexes, seeds `--tickets` tickets with
//! `--messages` messages each (words drawn from a support vocabulary with a long tail, so common
//! and rare words both exist), one customer per two tickets with a name, an email and an order,
//! `--agents` agents in `--teams` teams, tags, SLA clocks, and the mix of statuses a desk holds
//! (most tickets solved, a backlog open); tickets are seeded in batches in the order a pair of
//! tickets shares its customer (the `(i + 1) / 2`th). Then it times, with the code the API runs:
//!
//! - every built-in view's count and a team and a tag view's (`views::count_sql`), one by one
//!   and all together as `GET /v1/views/counts` does;
//! - a view's first page and a page further on by its cursor (`views::page_sql`);
//! - search (`search::run`: ranking and snippets) for a common word, a rare word, three words,
//!   an order number and a ticket number;
//! - what search's recent window costs a write (`--write-cost`: message inserts inside the
//!   window and just before it, alternating);
//! - a bulk tag change and a bulk macro on 100 tickets (`bulk::apply`, the route's code: a transaction each, its
//!   events published to Kafka).
//!
//! Then it drops the workspace's indexes and times the same queries again: each figure is
//! printed beside its unindexed baseline, as a ratio. The scratch database is dropped at the end.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use sqlx::PgPool;
use switchboard_cli::config::Config;
use switchboard_serving::auth::{Principal, Role};
use switchboard_serving::tickets::TicketSummary;
use switchboard_serving::views::{self, Cursor, Filter, View};
use switchboard_serving::{bulk, search, search_window, Api};
use uuid::Uuid;

/// Arguments of `bench workspace`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkspaceArgs {
    /// Tickets to seed (the target: 10,000,000).
    #[arg(long, default_value_t = 200_000)]
    tickets: u64,
    /// Messages per ticket.
    #[arg(long, default_value_t = 3)]
    messages: u32,
    /// Agents to seed.
    #[arg(long, default_value_t = 10_000)]
    agents: u32,
    /// Teams the agents are in.
    #[arg(long, default_value_t = 200)]
    teams: u32,
    /// Runs of each query.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Skip the unindexed baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Runs of each query without the indexes (default: a fifth of `--runs`, at least 3); at
    /// 10M tickets an unindexed search reads every message for each run.
    #[arg(long)]
    baseline_runs: Option<usize>,
    /// Keep the scratch database.
    #[arg(long)]
    keep: bool,
    /// Measure a database an earlier run kept (`--keep` prints its name) instead of seeding one;
    /// it is kept again. A 10M-ticket desk takes about an hour to seed on two cores.
    #[arg(long, value_name = "DATABASE")]
    reuse: Option<String>,
    /// The newest messages search's recent window holds (`search.window_rows`; default the
    /// configuration's). The desk's words are then searched with the window and without it,
    /// side by side.
    #[arg(long)]
    window_rows: Option<u64>,
    /// Message inserts that measure what the recent window costs a write: half land inside the
    /// window (its index maintained), half just before it (only the whole-table indexes),
    /// alternating, one transaction each; they are deleted afterwards. 0: not measured.
    #[arg(long, default_value_t = 2000)]
    write_cost: u32,
}

/// Words of support conversations; drawn with a skew so the first are the most common.
const WORDS: &[&str] = &[
    "order",
    "my",
    "the",
    "please",
    "help",
    "parcel",
    "delivery",
    "refund",
    "arrived",
    "where",
    "is",
    "still",
    "waiting",
    "tracking",
    "number",
    "return",
    "damaged",
    "broken",
    "wrong",
    "size",
    "item",
    "missing",
    "package",
    "shipping",
    "address",
    "change",
    "cancel",
    "payment",
    "charged",
    "twice",
    "invoice",
    "account",
    "password",
    "login",
    "discount",
    "code",
    "coupon",
    "exchange",
    "colour",
    "late",
    "week",
    "days",
    "courier",
    "warehouse",
    "stock",
    "available",
    "replacement",
    "quality",
    "lamp",
    "shoes",
    "jacket",
    "phone",
    "case",
    "charger",
    "cable",
    "box",
    "opened",
    "scratched",
    "leaking",
    "smell",
    "battery",
    "warranty",
    "receipt",
    "store",
    "credit",
    "card",
    "bank",
    "transfer",
    "pending",
    "approved",
    "rejected",
    "label",
    "printer",
    "pickup",
    "collect",
    "neighbour",
    "door",
    "signed",
    "photo",
    "attached",
    "urgent",
    "gift",
    "birthday",
    "christmas",
    "holiday",
    "abroad",
    "customs",
    "fee",
    "tax",
    "vat",
    "duty",
];

/// Names for customers.
const FIRST: &[&str] = &[
    "Ana", "Bo", "Cy", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena",
    "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vera", "Wen",
];
const LAST: &[&str] = &[
    "Lima", "Jensen", "Twombly", "Okafor", "Novak", "Haddad", "Petrov", "Sato", "Kowalski",
    "Silva", "Nguyen", "Müller", "García", "Rossi", "Khan", "Ivanova", "Dubois", "Larsen",
];

/// The vocabulary: the words above, then a long tail of rare tokens (`w1` ... `w19999`).
fn vocabulary() -> Vec<String> {
    WORDS
        .iter()
        .map(|w| w.to_string())
        .chain((1..20_000).map(|i| format!("w{i}")))
        .collect()
}

/// Seeds agents and teams.
async fn seed_people(pool: &PgPool, agents: u32, teams: u32) -> Result<()> {
    sqlx::query(
        "INSERT INTO agents (id, name, email, skills, max_concurrent, status, created_at)
         SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'Agent ' || i,
                'agent' || i || '@bench.example', ARRAY['general'], 5,
                CASE WHEN i % 3 = 0 THEN 'online' ELSE 'offline' END, now()
         FROM generate_series(1, $1) i",
    )
    .bind(i64::from(agents))
    .execute(pool)
    .await
    .context("seeding agents")?;
    sqlx::query(
        "INSERT INTO teams (id, name, created_at, updated_at)
         SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, 'Team ' || i, now(), now()
         FROM generate_series(1, $1) i",
    )
    .bind(i64::from(teams))
    .execute(pool)
    .await
    .context("seeding teams")?;
    sqlx::query(
        "INSERT INTO team_members (team_id, agent_id)
         SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(1 + i % $2), 12, '0'))::uuid,
                ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid
         FROM generate_series(1, $1) i",
    )
    .bind(i64::from(agents))
    .bind(i64::from(teams))
    .execute(pool)
    .await
    .context("seeding team members")?;
    Ok(())
}

/// Seeds tickets `first .. first + n` with their customers, orders, messages and clocks.
async fn seed_tickets(
    pool: &PgPool,
    first: i64,
    n: i64,
    args: &WorkspaceArgs,
    vocab: &[String],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    // Ticket i: created within the last 30 days, newest last; 10% open, 5% pending, the rest
    // solved; open ones mostly assigned, a tenth tagged, a fifth with a team.
    sqlx::query(
        "CREATE TEMP TABLE seed ON COMMIT DROP AS
         SELECT i, ('00000000-0000-7000-a000-' || lpad(to_hex(i), 12, '0'))::uuid AS ticket,
                ('00000000-0000-7000-b000-' || lpad(to_hex((i + 1) / 2), 12, '0'))::uuid AS customer,
                now() - make_interval(secs => (30 * 86400.0 * (1 - i::float8 / $3))) AS at,
                CASE WHEN i % 20 < 2 THEN 'open' WHEN i % 20 = 2 THEN 'pending'
                     WHEN i % 20 < 15 THEN 'resolved' ELSE 'closed' END AS status
         FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) i",
    )
    .bind(first)
    .bind(n)
    .bind(args.tickets as f64)
    .execute(&mut *tx)
    .await?;
    // Each statement's parameters, in order.
    #[derive(Clone, Copy)]
    enum P {
        Vocab,
        First,
        Last,
        Agents,
        Teams,
        Messages,
    }
    let statements: [(&str, &[P], &str); 7] = [
        ("customers", &[P::First, P::Last], "INSERT INTO customers (id, email, name, created_at)
         SELECT customer, 'c' || (i + 1) / 2 || '@bench.example', $1[1 + i % cardinality($1)] || ' ' || $2[1 + (i / 7) % cardinality($2)], at
         FROM seed WHERE i % 2 = 1"),
        ("identities", &[], "INSERT INTO customer_identities (kind, value, customer_id, created_at)
         SELECT 'email', 'c' || (i + 1) / 2 || '@bench.example', customer, at FROM seed WHERE i % 2 = 1"),
        ("orders", &[], "INSERT INTO orders (id, customer_id, external_id, number, total_cents, created_at, updated_at)
         SELECT gen_random_uuid(), customer, 'gid-' || (i + 1) / 2, '#' || (100000 + (i + 1) / 2), 4990, at, at
         FROM seed WHERE i % 2 = 1"),
        ("tickets", &[P::Agents, P::Teams], "INSERT INTO tickets (id, number, customer_id, channel, conversation_key, subject, status,
                              priority, priority_rank, created_at, updated_at, resolved_at, assigned_agent_id, tags, team_id)
         SELECT ticket, 'T-2026-' || lpad(i::text, 8, '0'), customer,
                (ARRAY['email','chat','sms','social','voice','api'])[1 + i % 6], 'bench:' || i,
                initcap((SELECT word FROM bench_vocab WHERE k = 1 + (i * 7) % 40)) || ' '
                    || (SELECT word FROM bench_vocab WHERE k = 1 + (i * 13) % 90) || ' '
                    || (SELECT word FROM bench_vocab WHERE k = 1 + (i * 31) % (SELECT count(*) FROM bench_vocab)),
                status, (ARRAY['low','medium','high','urgent'])[1 + i % 4], 1 + i % 4,
                at, at + interval '1 hour', CASE WHEN status IN ('resolved', 'closed') THEN at + interval '1 hour' END,
                CASE WHEN status = 'pending' OR (status = 'open' AND (i / 20) % 10 < 7)
                     THEN ('00000000-0000-7000-8000-' || lpad(to_hex(1 + (i * 7919) % $1), 12, '0'))::uuid END,
                CASE WHEN i % 10 = 0 THEN ARRAY[(ARRAY['vip','wholesale','refund','damaged','fraud-check'])[1 + (i / 10) % 5]]
                     ELSE '{}' END,
                CASE WHEN i % 5 = 0 THEN ('00000000-0000-7000-9000-' || lpad(to_hex(1 + i % $2), 12, '0'))::uuid END
         FROM seed"),
        ("messages", &[P::Vocab, P::Messages], "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at, created_at)
         SELECT gen_random_uuid(), s.ticket, 'email', CASE WHEN k % 2 = 1 THEN 'inbound' ELSE 'outbound' END, 'c' || s.i,
                (SELECT string_agg(v.word, ' ') FROM bench_vocab v JOIN (
                     SELECT 1 + floor(power(random(), 4) * $1)::int AS drawn
                     FROM generate_series(1, 8 + (s.i + k) % 9) j WHERE s.i > 0) r ON v.k = r.drawn),
                s.at + make_interval(mins => k::int), s.at + make_interval(mins => k::int)
         FROM seed s, generate_series(1, $2) k"),
        ("clocks", &[], "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by, started_at,
                                 running_since, due_at, warned_at)
         SELECT ticket, 'resolution', 1, 'standard', '24x7', 86400, gen_random_uuid(), at, at, at + interval '1 day',
                CASE WHEN i % 40 = 0 THEN at + interval '20 hours' END
         FROM seed WHERE status IN ('open', 'pending')"),
        ("deadlines", &[], "UPDATE tickets t SET next_due_at = s.at + interval '1 day', sla_warned = s.i % 40 = 0 FROM seed s
         WHERE t.id = s.ticket AND s.status IN ('open', 'pending')"),
    ];
    for (what, params, sql) in statements {
        let mut q = sqlx::query(sql);
        for p in params {
            q = match p {
                P::Vocab => q.bind(i64::try_from(vocab.len()).unwrap_or(i64::MAX)),
                P::First => q.bind(FIRST),
                P::Last => q.bind(LAST),
                P::Agents => q.bind(i64::from(args.agents)),
                P::Teams => q.bind(i64::from(args.teams)),
                P::Messages => q.bind(i64::from(args.messages)),
            };
        }
        q.execute(&mut *tx)
            .await
            .with_context(|| format!("seeding {what}"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Latencies in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures"))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// One measured query: its name and p95 (ms) over the runs.
struct Figure {
    name: String,
    p50: f64,
    p95: f64,
    detail: String,
}

/// Times `runs` runs of `f` (the run's index as its argument).
async fn time<F, Fut>(runs: usize, mut f: F) -> Result<(Histogram<u64>, String)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let mut h = histogram();
    let mut detail = String::new();
    for i in 0..runs {
        let t = Instant::now();
        detail = f(i).await?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    Ok((h, detail))
}

/// The queries the workspace runs, timed.
async fn measure(pool: &PgPool, args: &WorkspaceArgs, runs: usize) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let now = switchboard_core::clock::now();
    let recency = search::Recency::of(pool).await?;
    // The connections the concurrent counts take, opened before anything is timed (a running
    // server's pool has them; opening one is not a count's cost).
    let warm = futures::future::try_join_all((0..12).map(|_| pool.acquire())).await?;
    drop(warm);
    // The agents asking: ones holding tickets, so `my-open` has work to count.
    let holders: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT assigned_agent_id FROM tickets WHERE assigned_agent_id IS NOT NULL LIMIT 1000",
    )
    .fetch_all(pool)
    .await?;
    let agent = |i: usize| holders.get(i % holders.len().max(1)).copied();
    let team = Uuid::parse_str("00000000-0000-7000-9000-000000000001")?;
    let mut all: Vec<View> = views::builtins();
    let mut extra = |id: &str, filter: Filter| {
        let mut v = all[2].clone();
        v.id = id.into();
        v.filter = filter;
        all.push(v);
    };
    extra(
        "team-open",
        Filter {
            status: vec!["open".into(), "pending".into()],
            team_id: Some(team),
            ..Filter::default()
        },
    );
    extra(
        "tag-vip",
        Filter {
            tags_all: vec!["vip".into()],
            ..Filter::default()
        },
    );
    for v in &all {
        let (h, detail) = time(runs, |i| {
            let filter = v.filter.clone();
            async move {
                let n: i64 = views::count_sql(&filter, agent(i), now)
                    .build_query_scalar()
                    .fetch_one(pool)
                    .await?;
                Ok(format!("{n} tickets"))
            }
        })
        .await?;
        figures.push(Figure {
            name: format!("count {}", v.id),
            p50: ms(&h, 0.5),
            p95: ms(&h, 0.95),
            detail,
        });
    }
    let (h, detail) = time(runs, |i| {
        let all = &all;
        async move {
            let counted = futures::future::try_join_all(all.iter().map(|v| async move {
                views::count_sql(&v.filter, agent(i), now)
                    .build_query_scalar::<i64>()
                    .fetch_one(pool)
                    .await
            }))
            .await?;
            Ok(format!("{} views", counted.len()))
        }
    })
    .await?;
    figures.push(Figure {
        name: "counts refresh (every view at once)".into(),
        p50: ms(&h, 0.5),
        p95: ms(&h, 0.95),
        detail,
    });
    for id in [
        "my-open",
        "unassigned",
        "all-open",
        "sla-at-risk",
        "recently-solved",
        "tag-vip",
    ] {
        let Some(v) = all.iter().find(|v| v.id == id) else {
            continue;
        };
        let (h, detail) = time(runs, |i| async move {
            let rows: Vec<TicketSummary> = views::page_sql(v, agent(i), None, 50, now)
                .build_query_as()
                .fetch_all(pool)
                .await?;
            Ok(format!("{} rows", rows.len()))
        })
        .await?;
        figures.push(Figure {
            name: format!("page 1 of {id}"),
            p50: ms(&h, 0.5),
            p95: ms(&h, 0.95),
            detail,
        });
    }
    // A page further on: the all-open view after its first ten pages.
    let v = all
        .iter()
        .find(|v| v.id == "all-open")
        .context("all-open")?;
    let first: Vec<TicketSummary> = views::page_sql(v, None, None, 500, now)
        .build_query_as()
        .fetch_all(pool)
        .await?;
    if let Some(last) = first.last() {
        let cursor = Cursor::decode(&Cursor::encode(&v.sort, last), &v.sort).context("cursor")?;
        let (h, detail) = time(runs, |_| {
            let cursor = cursor.clone();
            async move {
                let rows: Vec<TicketSummary> = views::page_sql(v, None, Some(&cursor), 50, now)
                    .build_query_as()
                    .fetch_all(pool)
                    .await?;
                Ok(format!("{} rows", rows.len()))
            }
        })
        .await?;
        figures.push(Figure {
            name: "page 11 of all-open (cursor)".into(),
            p50: ms(&h, 0.5),
            p95: ms(&h, 0.95),
            detail,
        });
    }
    let order = format!("#{}", 100_000 + args.tickets / 4);
    let number = format!("T-2026-{:08}", args.tickets / 3);
    for (name, q) in [
        ("search one common word", "refund".to_string()),
        ("search one rare word", "w4321".to_string()),
        ("search one mid-frequency word", "w60".to_string()),
        ("search a customer's first name", "Priya".to_string()),
        ("search three words", "order parcel delivery".to_string()),
        ("search an order number", order),
        ("search a ticket number", number),
        (
            "search a customer's email",
            format!("c{}@bench.example", args.tickets / 4 * 2),
        ),
    ] {
        // With the recent window (what the API does) and, interleaved in the same run, with the
        // whole-table index alone.
        for (use_window, label) in [
            (search::WindowUse::Newest, ""),
            (search::WindowUse::Ignore, ", whole-table index only"),
        ] {
            let (h, detail) = time(runs, |i| {
                let q = q.clone();
                async move {
                    let r = search::run(
                        pool,
                        recency,
                        use_window,
                        &q,
                        &Filter::default(),
                        agent(i),
                        20,
                        0,
                    )
                    .await?;
                    Ok(format!("{} hits on page 1", r.hits.len()))
                }
            })
            .await?;
            figures.push(Figure {
                name: format!("{name} ({q}){label}"),
                p50: ms(&h, 0.5),
                p95: ms(&h, 0.95),
                detail,
            });
        }
    }
    Ok(figures)
}

/// Index scans of search's recent windows so far (`pg_stat_user_indexes`; a backend reports
/// its scans within about 10 s of going idle).
async fn window_scans_total(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(idx_scan), 0)::int8 FROM pg_stat_user_indexes WHERE indexrelname LIKE $1",
    )
    .bind(search_window::INDEX_LIKE)
    .fetch_one(pool)
    .await?)
}

/// Applies `action` to 100 open tickets through the bulk action's code (`bulk::apply`: each
/// ticket its own transaction, its events published, 8 at a time). Returns the wall time in ms
/// and the tickets changed.
async fn bulk(pool: &PgPool, api: &Api, action: serde_json::Value) -> Result<(f64, usize)> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets WHERE status = 'open' ORDER BY id LIMIT 100")
            .fetch_all(pool)
            .await?;
    // Not timed: the tags earlier runs left (a ticket carries at most 50).
    sqlx::query(
        "UPDATE tickets SET tags = ARRAY(SELECT g FROM unnest(tags) g WHERE g NOT LIKE 'bulk-%' AND g NOT LIKE 'macro-%')
         WHERE id = ANY($1) AND EXISTS (SELECT 1 FROM unnest(tags) g WHERE g LIKE 'bulk-%' OR g LIKE 'macro-%')",
    )
    .bind(&ids)
    .execute(pool)
    .await?;
    let who = Principal {
        role: Role::Supervisor,
        agent_id: None,
        token_id: None,
        session_id: None,
    };
    let input: bulk::BulkInput = serde_json::from_value(serde_json::json!({
        "ticket_ids": ids,
        "action": action,
    }))?;
    let t = Instant::now();
    let out = bulk::apply(api, &who, input)
        .await
        .map_err(|e| anyhow::anyhow!("bulk action: {}", e.message))?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, out.succeeded))
}

/// The workspace's indexes (0017, 0018): what the baseline runs without.
const INDEXES: &[&str] = &[
    "tickets_tags",
    "tickets_team",
    "tickets_assignee_updated",
    "tickets_status_updated",
    "tickets_unsolved_updated",
    "tickets_solved_updated",
    "tickets_escalated",
    "tickets_live",
    "tickets_team_live",
    "tickets_solved_at",
    "tickets_at_risk",
    "ticket_tags_key",
    "tickets_unassigned_priority",
    "tickets_unsolved_due",
    "messages_search",
    "messages_search_newest",
    "messages_received",
    "tickets_updated",
    "customers_created",
    "tickets_search",
    "tickets_search_newest",
    "customers_name_search",
    "customers_name_newest",
    "orders_number_key",
];

pub(crate) async fn workspace(cfg: &Config, args: WorkspaceArgs) -> Result<()> {
    if args.tickets < 1000
        || args.messages == 0
        || args.agents == 0
        || args.teams == 0
        || args.runs == 0
    {
        bail!("--tickets at least 1000; --messages, --agents, --teams and --runs at least 1");
    }
    let db = match &args.reuse {
        Some(name) => crate::bench_processors::Scratch::open(cfg, name).await?,
        None => crate::bench_processors::Scratch::new(cfg).await?,
    };
    let result = run(cfg, &db.pool, &args).await;
    if args.keep || args.reuse.is_some() {
        db.pool.close().await;
        println!("kept database {}", db.name);
    } else {
        db.drop().await;
    }
    result
}

/// Seeds the desk: people, then tickets in batches, then the secondary indexes once.
async fn seed(pool: &PgPool, args: &WorkspaceArgs) -> Result<()> {
    let vocab = vocabulary();
    let t = Instant::now();
    // Secondary indexes are set aside while the desk is seeded and built once at the end (as a
    // restore does): maintaining a full-text index row by row is most of a seed's time.
    let set_aside: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexname::text, i.indexdef FROM pg_indexes i
         WHERE i.schemaname = current_schema()
           AND i.tablename IN ('tickets', 'ticket_tags', 'messages', 'customers', 'customer_identities', 'orders', 'sla_clocks')
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
    )
    .fetch_all(pool)
    .await?;
    for (name, _) in &set_aside {
        sqlx::query(&format!("DROP INDEX {name}"))
            .execute(pool)
            .await?;
    }
    seed_people(pool, args.agents, args.teams).await?;
    // The vocabulary as a keyed table: a word drawn by its rank is an index lookup (an element
    // of a 20,000-word array parameter is found by walking the array).
    sqlx::query(
        "CREATE TABLE bench_vocab AS SELECT k::int AS k, word FROM unnest($1::text[]) WITH ORDINALITY AS v(word, k)",
    )
    .bind(&vocab)
    .execute(pool)
    .await?;
    sqlx::query("ALTER TABLE bench_vocab ADD PRIMARY KEY (k)")
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE bench_vocab").execute(pool).await?;
    let batch = 50_000i64;
    let total = i64::try_from(args.tickets)?;
    let mut first = 1i64;
    while first <= total {
        let n = batch.min(total - first + 1);
        seed_tickets(pool, first, n, args, &vocab).await?;
        first += n;
        eprintln!(
            "seeded {} of {total} tickets ({:.0} s)",
            first - 1,
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "building {} indexes ({:.0} s)",
        set_aside.len(),
        t.elapsed().as_secs_f64()
    );
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    for (name, def) in &set_aside {
        let began = Instant::now();
        sqlx::query(def)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("building {name}"))?;
        eprintln!("  {name} in {:.0} s", began.elapsed().as_secs_f64());
    }
    drop(conn);
    // A desk in service is vacuumed as it goes (autovacuum): the visibility map lets counts
    // and pages read their indexes alone, as they would there.
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

async fn run(cfg: &Config, pool: &PgPool, args: &WorkspaceArgs) -> Result<()> {
    let t = Instant::now();
    if args.reuse.is_none() {
        seed(pool, args).await?;
    }
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(pool)
        .await?;
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets")
        .fetch_one(pool)
        .await?;
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agents")
        .fetch_one(pool)
        .await?;
    let teams: i64 = sqlx::query_scalar("SELECT count(*) FROM teams")
        .fetch_one(pool)
        .await?;
    println!(
        "workspace: {tickets} tickets, {messages} messages, {agents} agents in {teams} teams, {} in {:.0} s",
        if args.reuse.is_some() { "reused" } else { "seeded" },
        t.elapsed().as_secs_f64()
    );
    // Search's recent window, as the serving role's job builds it (any size of desk).
    let window_cfg = switchboard_serving::search_window::SearchConfig {
        window_rows: args.window_rows.unwrap_or(cfg.search.window_rows),
        window_min_messages: 0,
        ..cfg.search
    };
    let window_since = match switchboard_serving::search_window::build_if_due(
        pool,
        &window_cfg,
        switchboard_core::clock::now(),
        true,
    )
    .await?
    {
        switchboard_serving::search_window::Built::Window { window, secs } => {
            println!(
                "search window: the {} messages since {} (window_rows {}), built in {secs:.1} s",
                window.rows, window.since, window_cfg.window_rows
            );
            Some(window.since)
        }
        other => {
            println!("search window: none ({other:?})");
            None
        }
    };
    let window_scans = window_scans_total(pool).await?;
    let indexed = measure(pool, args, args.runs).await?;
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    println!(
        "search window: its index was scanned {} times by the measured searches",
        window_scans_total(pool).await? - window_scans
    );
    let write_cost = match window_since {
        Some(since) if args.write_cost > 0 => {
            Some(window_write_cost(pool, since, args.write_cost).await?)
        }
        _ => None,
    };
    let scratch = tempfile::tempdir()?;
    let api = Api::new(
        pool.clone(),
        crate::bench_processors::publisher(cfg).await?,
        switchboard_core::storage::BlobStore::local(scratch.path())?,
        Vec::new(),
    );
    // Tags new to this run, so a reused desk changes every ticket again.
    let run_tag = Uuid::now_v7().simple().to_string()[24..].to_owned();
    let mut bulk_ms = Vec::new();
    for round in 0..5 {
        let (ms, changed) = bulk(
            pool,
            &api,
            serde_json::json!({"type": "tags", "add": [format!("bulk-{round}-{run_tag}")]}),
        )
        .await?;
        if changed != 100 {
            bail!("the bulk tag changed {changed} tickets, not 100");
        }
        bulk_ms.push(ms);
    }
    bulk_ms.sort_by(f64::total_cmp);
    // A macro of three actions (an internal note with placeholders, a tag, the priority), each
    // ticket all or nothing in one transaction.
    let author: Uuid = sqlx::query_scalar("SELECT id FROM agents ORDER BY id LIMIT 1")
        .fetch_one(pool)
        .await?;
    let mut macro_ms = Vec::new();
    for round in 0..5 {
        let macro_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO macros (id, title, actions, created_by) VALUES ($1, $2, $3, 'bench')",
        )
        .bind(macro_id)
        .bind(format!("bench {round} {macro_id}"))
        .bind(serde_json::json!([
            {"type": "note", "text": "Checked {{ticket.number}} for {{customer.first_name}}"},
            {"type": "tags", "add": [format!("macro-{round}-{run_tag}")]},
            {"type": "priority", "priority": if round % 2 == 0 { "high" } else { "medium" }},
        ]))
        .execute(pool)
        .await?;
        let (ms, changed) = bulk(
            pool,
            &api,
            serde_json::json!({"type": "macro", "macro_id": macro_id, "agent_id": author}),
        )
        .await?;
        if changed != 100 {
            bail!("the bulk macro changed {changed} tickets, not 100");
        }
        macro_ms.push(ms);
    }
    macro_ms.sort_by(f64::total_cmp);
    let baseline = if args.no_baseline {
        None
    } else {
        let dropped: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname::text, indexdef FROM pg_indexes
             WHERE schemaname = current_schema()
               AND (indexname = ANY($1) OR indexname LIKE $2)",
        )
        .bind(INDEXES)
        .bind(search_window::INDEX_LIKE)
        .fetch_all(pool)
        .await?;
        for (index, _) in &dropped {
            sqlx::query(&format!("DROP INDEX IF EXISTS {index}"))
                .execute(pool)
                .await?;
        }
        sqlx::query("ANALYZE").execute(pool).await?;
        eprintln!("indexes dropped; measuring the unindexed baseline");
        let runs = args
            .baseline_runs
            .unwrap_or_else(|| args.runs.div_ceil(5).max(3))
            .max(1);
        let measured = measure(pool, args, runs).await?;
        if args.keep || args.reuse.is_some() {
            eprintln!("rebuilding {} indexes for the kept database", dropped.len());
            for (_, def) in &dropped {
                sqlx::query(def).execute(pool).await?;
            }
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Some(measured)
    };
    for f in &indexed {
        let base = baseline
            .as_ref()
            .and_then(|b| b.iter().find(|b| b.name == f.name))
            .map(|b| {
                format!(
                    "; unindexed p95 {:.1} ms ({:.1}x)",
                    b.p95,
                    b.p95 / f.p95.max(0.001)
                )
            })
            .unwrap_or_default();
        println!(
            "{:<48} p50 {:>7.1} ms  p95 {:>7.1} ms  [{}]{base}",
            f.name, f.p50, f.p95, f.detail
        );
    }
    println!(
        "bulk tag of 100 tickets (bulk::apply: a transaction each, events published): median {:.0} ms, worst {:.0} ms of 5",
        bulk_ms[2], bulk_ms[4]
    );
    println!(
        "bulk macro on 100 tickets (note with placeholders, tag, priority; all or nothing per ticket): median {:.0} ms, worst {:.0} ms of 5",
        macro_ms[2], macro_ms[4]
    );
    if let Some(w) = write_cost {
        println!(
            "message insert (one transaction each, {} of each kind, alternating): inside the window p50 {:.2} ms p95 {:.2} ms, before it p50 {:.2} ms p95 {:.2} ms: the window costs a write {:.2}x at p50, {:.2}x at p95",
            w.inside.len(),
            w.inside[w.inside.len() / 2],
            w.inside[w.inside.len() * 95 / 100],
            w.outside[w.outside.len() / 2],
            w.outside[w.outside.len() * 95 / 100],
            w.inside[w.inside.len() / 2] / w.outside[w.outside.len() / 2].max(0.001),
            w.inside[w.inside.len() * 95 / 100] / w.outside[w.outside.len() * 95 / 100].max(0.001),
        );
    }
    Ok(())
}

/// Insert times (ms, sorted) of messages inside the recent window and just before it.
struct WriteCost {
    inside: Vec<f64>,
    outside: Vec<f64>,
}

/// What the recent window costs a write: `n` messages inserted one transaction each into
/// existing tickets, alternately received now (the window's partial index takes them) and an
/// hour before the window starts (it does not; every other index does either way), so the two
/// kinds see the same machine. Deleted afterwards.
async fn window_write_cost(
    pool: &PgPool,
    since: chrono::DateTime<chrono::Utc>,
    n: u32,
) -> Result<WriteCost> {
    if n < 2 {
        bail!("--write-cost needs at least 2 inserts");
    }
    let tickets: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM tickets TABLESAMPLE SYSTEM (1) LIMIT 1000")
            .fetch_all(pool)
            .await?;
    if tickets.is_empty() {
        bail!("no tickets to write messages into");
    }
    let words = vocabulary();
    let author = format!("bench-write-{}", Uuid::now_v7().simple());
    let before = since - chrono::Duration::hours(1);
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for i in 0..n as usize {
        // Ten words drawn as the seed draws them (the common ones most often).
        let text: Vec<&str> = (0..10)
            .map(|_| {
                let u: f64 = rand::random();
                words[((u.powi(4) * words.len() as f64) as usize).min(words.len() - 1)].as_str()
            })
            .collect();
        let at = if i % 2 == 0 {
            chrono::Utc::now()
        } else {
            before
        };
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at, created_at)
             VALUES ($1, $2, 'email', 'inbound', $3, $4, $5, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(tickets[i % tickets.len()])
        .bind(&author)
        .bind(text.join(" "))
        .bind(at)
        .execute(pool)
        .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i % 2 == 0 {
            inside.push(ms);
        } else {
            outside.push(ms);
        }
    }
    sqlx::query("DELETE FROM messages WHERE author = $1")
        .bind(&author)
        .execute(pool)
        .await?;
    inside.sort_by(f64::total_cmp);
    outside.sort_by(f64::total_cmp);
    Ok(WriteCost { inside, outside })
}
