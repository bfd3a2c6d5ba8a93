//! `switchboard-sim bench chat`: concurrent customer WebSockets held by a running Switchboard, the
//! ack latency of customer messages, and the delivery latency of agents' replies to the
//! customer under that load.
//!
//! Runs as a separate process from the server (each side needs a file descriptor per
//! connection). Against `switchboard run --role ingest --role processors --role serving` (or
//! `up`): opens `--connections` conversations and sockets and holds them; `--active` of them
//! write a message (acked after the broker) and get a ticket; then replies are posted through the
//! agent API at `--rate`, each carrying its send time, and every socket measures when it
//! arrives. Reports held connections, memory, rates and latency percentiles, and checks that
//! every reply arrived exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `bench chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// The running Switchboard.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token (for the agent API).
    #[arg(long, env = "SWITCHBOARD__HTTP__ADMIN_TOKEN")]
    token: String,
    /// The shop's chat identity key (`channels.chat.identity_secret`): each bench customer's
    /// chat is signed, so its ticket is found by the customer's email.
    #[arg(long, env = "SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET")]
    identity_secret: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Conversations that write and get replies.
    #[arg(long, default_value_t = 200)]
    active: usize,
    /// Agent replies to send.
    #[arg(long, default_value_t = 2_000)]
    replies: usize,
    /// Replies per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// The server's pid, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

pub(crate) fn rss_mib(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// What a socket's reader reports.
enum Seen {
    Ack(usize),
    Reply {
        conn: usize,
        seq: i64,
        latency_us: u64,
    },
}

/// Opens one conversation (its session, then its socket) and reads the socket on a task of
/// its own, reporting acks and replies on `tx`.
async fn open_one(
    http: reqwest::Client,
    url: String,
    ws_base: String,
    tx: mpsc::UnboundedSender<Seen>,
    i: usize,
    email: String,
    signature: String,
) -> Result<(Sink, String)> {
    let mut attempt = 0;
    let session: Value = loop {
        let r = http
            .post(format!("{url}/chat/sessions"))
            .json(&json!({"identity": {"email": email}, "identity_hmac": signature}))
            .send()
            .await?;
        if r.status() == 429 && attempt < 20 {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if r.status() != 201 {
            bail!("session: {}", r.status());
        }
        break r.json().await?;
    };
    let token = session["token"].as_str().context("token")?.to_string();
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{ws_base}/chat/ws?token={token}")).await?;
    let (sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("ack") => {
                    let _ = tx.send(Seen::Ack(i));
                }
                Some("message") => {
                    let sent: u64 = v["text"]
                        .as_str()
                        .and_then(|t| t.strip_prefix("t="))
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_default();
                    let _ = tx.send(Seen::Reply {
                        conn: i,
                        seq: v["seq"].as_i64().unwrap_or_default(),
                        latency_us: now_micros().saturating_sub(sent),
                    });
                }
                _ => {}
            }
        }
    });
    Ok((sink, email))
}

/// Sends `n` agent replies at `rate` a second through the agent API, round robin over
/// `tickets`, each carrying its send time; the task returns how many failed.
fn spawn_replies(
    http: reqwest::Client,
    url: String,
    token: String,
    agent: String,
    tickets: Arc<Vec<(usize, String)>>,
    n: usize,
    rate: u32,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let mut errors = 0usize;
        let mut inflight = tokio::task::JoinSet::new();
        for k in 0..n {
            tick.tick().await;
            let (_, ticket) = &tickets[k % tickets.len()];
            let req = http
                .post(format!("{url}/v1/tickets/{ticket}/replies"))
                .bearer_auth(&token)
                .json(&json!({"agent_id": agent, "text": format!("t={}", now_micros())}));
            inflight.spawn(async move {
                req.send()
                    .await
                    .map(|r| r.status().as_u16() == 201)
                    .unwrap_or(false)
            });
            while let Some(Ok(ok)) = inflight.try_join_next() {
                errors += usize::from(!ok);
            }
        }
        while let Some(r) = inflight.join_next().await {
            errors += usize::from(!r.unwrap_or(false));
        }
        errors
    })
}

/// Duplicated replies, and conversations whose replies arrived out of order.
fn duplicates_and_disorder(per_conn: &HashMap<usize, Vec<i64>>) -> (usize, usize) {
    let duplicates: usize = per_conn
        .values()
        .map(|v| {
            let mut s = v.clone();
            s.sort_unstable();
            let before = s.len();
            s.dedup();
            before - s.len()
        })
        .sum();
    let out_of_order = per_conn
        .values()
        .filter(|v| v.windows(2).any(|w| w[0] >= w[1]))
        .count();
    (duplicates, out_of_order)
}

/// The ticket of each active conversation's customer (waiting up to 120 s in all).
async fn wait_tickets(
    http: &reqwest::Client,
    args: &ChatArgs,
    sinks: &[Option<Sink>],
    emails: &[String],
) -> Result<Vec<(usize, String)>> {
    let mut tickets: Vec<(usize, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..args.active {
        if sinks[i].is_none() {
            continue;
        }
        loop {
            let v: Value = http
                .get(format!(
                    "{}/v1/tickets?customer_email={}",
                    args.url, emails[i]
                ))
                .bearer_auth(&args.token)
                .send()
                .await?
                .json()
                .await?;
            if let Some(id) = v["tickets"][0]["id"].as_str() {
                tickets.push((i, id.to_string()));
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no ticket for {} within 120 s (are the processors running?)",
                    emails[i]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(tickets)
}

/// The first `active` conversations each send a message; their acks are measured and printed.
/// Returns what else arrived meanwhile (early replies).
async fn send_and_ack(
    sinks: &mut [Option<Sink>],
    seen_rx: &mut mpsc::UnboundedReceiver<Seen>,
    active: usize,
) -> Result<Vec<Seen>> {
    let mut ack_h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut sent_at: HashMap<usize, Instant> = HashMap::new();
    let t0 = Instant::now();
    for (i, sink) in sinks.iter_mut().enumerate().take(active) {
        if let Some(s) = sink.as_mut() {
            sent_at.insert(i, Instant::now());
            s.send(Message::Text(
                json!({"type": "message", "client_id": "m1", "text": "Where is my order? It has not arrived."})
                    .to_string()
                    .into(),
            ))
            .await?;
        }
    }
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut early = Vec::new();
    while acks < sent_at.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await {
            Ok(Some(Seen::Ack(i))) => {
                if let Some(t) = sent_at.get(&i) {
                    ack_h.record(t.elapsed().as_micros() as u64)?;
                    acks += 1;
                }
            }
            Ok(Some(other)) => early.push(other),
            _ => {}
        }
    }
    println!(
        "customer messages: {acks}/{} acked, {:.0} msgs/s, ack p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sent_at.len(),
        acks as f64 / t0.elapsed().as_secs_f64(),
        pct(&ack_h, 0.5),
        pct(&ack_h, 0.99),
        ack_h.max() as f64 / 1000.0
    );
    Ok(early)
}

/// Replies delivered to the customers' sockets (`early` ones first) until `replies` arrived or
/// none came for 30 s: their latency, the sequence numbers per conversation, the count.
async fn collect_deliveries(
    early: Vec<Seen>,
    seen_rx: &mut mpsc::UnboundedReceiver<Seen>,
    replies: usize,
) -> Result<(Histogram<u64>, HashMap<usize, Vec<i64>>, usize)> {
    let mut deliver_h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut per_conn: HashMap<usize, Vec<i64>> = HashMap::new();
    let mut delivered = 0usize;
    let t1 = Instant::now();
    for s in early {
        if let Seen::Reply {
            conn,
            seq,
            latency_us,
        } = s
        {
            deliver_h.record(latency_us.max(1))?;
            per_conn.entry(conn).or_default().push(seq);
            delivered += 1;
        }
    }
    let deadline_after = Duration::from_secs(30);
    let mut last = Instant::now();
    while delivered < replies && last.elapsed() < deadline_after {
        if let Ok(Some(Seen::Reply {
            conn,
            seq,
            latency_us,
        })) = tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await
        {
            deliver_h.record(latency_us.max(1))?;
            per_conn.entry(conn).or_default().push(seq);
            delivered += 1;
            last = Instant::now();
            if delivered.is_multiple_of(1000) {
                println!(
                    "  {delivered} replies delivered, {:.1} s",
                    t1.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok((deliver_h, per_conn, delivered))
}

pub(crate) async fn chat(args: ChatArgs) -> Result<()> {
    if args.active > args.connections || args.connections == 0 {
        bail!("--active must be at most --connections, which must be positive");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ws_base = args.url.replace("http://", "ws://");
    println!(
        "switchboard-sim bench chat: {} connections, {} active, {} replies at {}/s against {}",
        args.connections, args.active, args.replies, args.rate, args.url
    );

    // 1. Conversations and sockets, 128 at a time.
    let started = Instant::now();
    let (tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let mut sinks: Vec<Option<Sink>> = Vec::with_capacity(args.connections);
    let mut emails = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    for chunk_start in (0..args.connections).step_by(128) {
        let end = (chunk_start + 128).min(args.connections);
        let opened = futures::future::join_all((chunk_start..end).map(|i| {
            let (http, url, ws_base, tx) =
                (http.clone(), args.url.clone(), ws_base.clone(), tx.clone());
            let email = format!("chat-{run}-{i}@example.com");
            let signature = switchboard_ingest::chat::identity_hmac(&args.identity_secret, &email);
            open_one(http, url, ws_base, tx, i, email, signature)
        }))
        .await;
        for r in opened {
            match r {
                Ok((sink, email)) => {
                    sinks.push(Some(sink));
                    emails.push(email);
                }
                Err(e) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("connection failed: {e:#}");
                    }
                    sinks.push(None);
                    emails.push(String::new());
                }
            }
        }
        if end.is_multiple_of(2000) || end == args.connections {
            println!(
                "  {end} connections opened ({failed} failed), {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let held = sinks.iter().filter(|s| s.is_some()).count();
    println!(
        "held {held} connections ({failed} failed) after {:.1} s; client RSS {:.0} MiB{}",
        started.elapsed().as_secs_f64(),
        rss_mib("self").unwrap_or_default(),
        args.server_pid
            .and_then(|p| rss_mib(&p.to_string()))
            .map(|m| format!(
                ", server RSS {m:.0} MiB ({:.1} KiB per connection)",
                m * 1024.0 / held.max(1) as f64
            ))
            .unwrap_or_default()
    );

    // 2. The active conversations write; acks measured.
    let early = send_and_ack(&mut sinks, &mut seen_rx, args.active).await?;

    // 3. Their tickets.
    let tickets = wait_tickets(&http, &args, &sinks, &emails).await?;
    let agent: Value = http
        .post(format!("{}/v1/agents", args.url))
        .bearer_auth(&args.token)
        .json(&json!({"name": "Bench", "email": format!("bench-{run}@example.com"), "skills": ["orders", "shipping"], "languages": ["en"], "max_concurrent": 50}))
        .send()
        .await?
        .json()
        .await?;
    let agent = agent["id"].as_str().context("agent id")?.to_string();
    println!(
        "{} tickets ready; sending {} replies at {}/s",
        tickets.len(),
        args.replies,
        args.rate
    );

    // 4. Replies at a steady rate, through the agent API.
    let tickets = Arc::new(tickets);
    let sender = spawn_replies(
        http.clone(),
        args.url.clone(),
        args.token.clone(),
        agent.clone(),
        tickets.clone(),
        args.replies,
        args.rate.max(1),
    );
    let (deliver_h, per_conn, delivered) =
        collect_deliveries(early, &mut seen_rx, args.replies).await?;
    let errors = sender.await.unwrap_or(usize::MAX);
    let (duplicates, out_of_order) = duplicates_and_disorder(&per_conn);
    println!(
        "agent replies: {delivered}/{} delivered ({errors} API errors, {duplicates} duplicates, {out_of_order} conversations out of order) over {held} held connections",
        args.replies
    );
    println!(
        "delivery latency (agent API call to customer socket): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&deliver_h, 0.5),
        pct(&deliver_h, 0.99),
        deliver_h.max() as f64 / 1000.0
    );
    if let Some(m) = args.server_pid.and_then(|p| rss_mib(&p.to_string())) {
        println!("server RSS at the end: {m:.0} MiB");
    }
    Ok(())
}
