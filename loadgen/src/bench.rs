//! `switchboard-sim bench ingest`: what each front door costs over a raw produce.
//!
//! In one run, against one broker: (1) raw rdkafka produce with the same number of requests in
//! flight as the channel tests, (2) raw produce fully pipelined (the broker's ceiling here), and
//! then every channel's real connector: `POST /v1/messages`, the signed SMS, voice and WhatsApp
//! webhooks over HTTP, and email through the SMTP listener with a real SMTP client. Prints
//! rates, ack latency percentiles and each channel / raw.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use switchboard_cli::config::Config;
use switchboard_contracts::{encode, Channel, CustomerRef, Envelope, Event as _, InboundMessage};
use switchboard_core::http::BearerAuth;
use switchboard_core::kafka::{self, Publisher};
use switchboard_ingest::api::ApiSource;
use switchboard_ingest::IngestConfig;
use switchboard_models::engine::ModelSet;
use uuid::Uuid;

/// Arguments of `bench ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Messages per phase.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Requests in flight (HTTP connections, and raw sends in phase 1).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Broker to use; default: services.kafka.brokers, else a temporary embedded tansu.
    #[arg(long)]
    brokers: Option<String>,
    /// Storage of the temporary tansu broker.
    #[arg(long, value_parser = ["memory", "sqlite"], default_value = "sqlite")]
    storage: String,
}

struct Phase {
    name: &'static str,
    count: usize,
    errors: usize,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let (p50, p99, max) = match &self.latency {
            Some(h) => (
                format!("{:.2}", h.value_at_quantile(0.50) as f64 / 1000.0),
                format!("{:.2}", h.value_at_quantile(0.99) as f64 / 1000.0),
                format!("{:.2}", h.max() as f64 / 1000.0),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>9} {:>7} {:>11.0} {:>9} {:>9} {:>9}",
            self.name,
            self.count,
            self.errors,
            self.rate(),
            p50,
            p99,
            max
        );
    }
}

fn sample(i: usize) -> InboundMessage {
    InboundMessage {
        message_id: Uuid::now_v7(),
        channel: Channel::Api,
        external_id: Some(format!("bench-{i}")),
        conversation_key: format!("customer:bench{}@example.com", i % 1000),
        ticket_id: None,
        customer: CustomerRef { email: Some(format!("bench{}@example.com", i % 1000)), phone: None, name: Some("Bench".into()), handle: None },
        subject: Some("Where is my order?".into()),
        text: "Hi, I ordered a pair of shoes two weeks ago and the tracking page has not moved since Monday. Can you check?".into(),
        truncated: false,
        attachments: Vec::new(),
        metadata: Default::default(),
        received_at: Utc::now(),
        verified: true,
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

/// Runs the benchmark and prints the table.
pub(crate) async fn ingest(cfg: Config, args: IngestArgs) -> Result<()> {
    if args.messages == 0 || args.concurrency == 0 {
        bail!("--messages and --concurrency must be positive");
    }
    let tmp = tempfile::tempdir()?;
    let mut stack = switchboard_cli::stack::Stack::default();
    let brokers = match args
        .brokers
        .clone()
        .or_else(|| Some(cfg.services.kafka.brokers.clone()).filter(|b| !b.is_empty()))
    {
        Some(b) => b,
        None => {
            let port = free_port()?;
            stack
                .start_tansu(tmp.path(), port, args.storage == "memory")
                .await?
        }
    };
    let mut cfg = cfg;
    if stack.broker_started() {
        // The embedded broker takes no idempotent producer (see deploy/tansu/README.md).
        cfg.services.kafka.idempotent = false;
    }
    let result = run_phases(&cfg, &args, &brokers).await;
    stack.stop().await;
    result
}

async fn run_phases(cfg: &Config, args: &IngestArgs, brokers: &str) -> Result<()> {
    let mut kcfg = cfg.services.kafka.clone();
    kcfg.brokers = brokers.to_string();
    kcfg.topic_prefix = format!("bench-{}.", Uuid::now_v7().simple());
    kafka::ensure_topics(&kcfg).await?;
    let publisher = Publisher::new(&kcfg)?;
    // Warm up connections and metadata.
    let warm = Envelope::new(Uuid::now_v7(), Utc::now(), sample(0));
    publisher.publish(&warm).await?;

    println!(
        "switchboard-sim bench ingest: {} messages per phase, {} in flight, broker {brokers} ({} partitions)",
        args.messages, args.concurrency, kcfg.partitions
    );
    let payload_len = encode(&warm).len();
    println!("event size {payload_len} bytes (JSON envelope)\n");
    println!(
        "{:<34} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9}",
        "phase", "messages", "errors", "msgs/s", "p50 ms", "p99 ms", "max ms"
    );

    let raw_c = raw_concurrent(&publisher, args.messages, args.concurrency).await?;
    raw_c.print();
    let raw_p = raw_pipelined(&publisher, args.messages).await?;
    raw_p.print();
    let api = api_phase(
        &publisher,
        args.messages,
        args.concurrency,
        cfg.ingest.max_text_bytes,
    )
    .await?;
    api.print();
    let mut channels = webhook_phases(
        &publisher,
        args.messages,
        args.concurrency,
        cfg.ingest.max_text_bytes,
    )
    .await?;
    for p in &channels {
        p.print();
    }
    let smtp = smtp_phase(
        &publisher,
        args.messages,
        args.concurrency,
        cfg.ingest.max_text_bytes,
    )
    .await?;
    smtp.print();
    channels.push(smtp);
    hostile_mail_phase(&publisher, cfg.ingest.max_text_bytes).await?;
    println!();
    for p in &channels {
        println!(
            "{:<34} / raw produce at the same concurrency: {:.2}",
            p.name,
            p.rate() / raw_c.rate()
        );
    }
    println!(
        "api / raw produce at the same concurrency: {:.2}",
        api.rate() / raw_c.rate()
    );
    println!(
        "api / raw produce pipelined:               {:.2}",
        api.rate() / raw_p.rate()
    );
    if let (Some(a), Some(r)) = (&api.latency, &raw_c.latency) {
        println!(
            "ack latency added by the API path: p50 {:+.2} ms, p99 {:+.2} ms",
            (a.value_at_quantile(0.5) as f64 - r.value_at_quantile(0.5) as f64) / 1000.0,
            (a.value_at_quantile(0.99) as f64 - r.value_at_quantile(0.99) as f64) / 1000.0
        );
    }
    Ok(())
}

async fn raw_concurrent(publisher: &Publisher, n: usize, c: usize) -> Result<Phase> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..c {
        let p = publisher.clone();
        tasks.spawn(async move {
            let mut h = histogram()?;
            let mut errors = 0;
            let mut i = w;
            while i < n {
                let m = sample(i);
                let env = Envelope::new(m.message_id, m.received_at, m);
                let t = Instant::now();
                if p.publish(&env).await.is_err() {
                    errors += 1;
                }
                h.record(t.elapsed().as_micros() as u64)?;
                i += c;
            }
            anyhow::Ok((h, errors))
        });
    }
    let (all, errors) = gather(tasks).await?;
    Ok(Phase {
        name: "raw produce (same concurrency)",
        count: n,
        errors,
        elapsed: started.elapsed(),
        latency: Some(all),
    })
}

async fn raw_pipelined(publisher: &Publisher, n: usize) -> Result<Phase> {
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let m = sample(i);
            let key = m.key();
            (key, encode(&Envelope::new(m.message_id, m.received_at, m)))
        })
        .collect();
    let started = Instant::now();
    let sends = msgs
        .iter()
        .map(|(k, v)| publisher.publish_bytes(switchboard_contracts::Topic::InboundMessages, k, v));
    let results = futures::future::join_all(sends).await;
    let errors = results.iter().filter(|r| r.is_err()).count();
    Ok(Phase {
        name: "raw produce (pipelined, no limit)",
        count: n,
        errors,
        elapsed: started.elapsed(),
        latency: None,
    })
}

/// One request of an HTTP phase.
struct Req {
    path: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

type MakeReq = Arc<dyn Fn(usize) -> Req + Send + Sync>;

/// `n` requests made by `make`, `c` in flight, against `app` served on a local port; a request
/// counts when it is answered `expect`.
async fn http_phase(
    name: &'static str,
    app: axum::Router,
    n: usize,
    c: usize,
    expect: u16,
    make: MakeReq,
) -> Result<Phase> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = Arc::new(format!("http://{addr}"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .build()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..c {
        let (client, base, make) = (client.clone(), base.clone(), make.clone());
        tasks.spawn(async move {
            let mut h = histogram()?;
            let mut errors = 0;
            let mut i = w;
            while i < n {
                let req = make(i);
                let mut rb = client
                    .post(format!("{base}{}", req.path))
                    .header("content-type", req.content_type)
                    .body(req.body);
                for (k, v) in req.headers {
                    rb = rb.header(k, v);
                }
                let t = Instant::now();
                let ok = match rb.send().await {
                    Ok(r) => r.status().as_u16() == expect,
                    Err(_) => false,
                };
                h.record(t.elapsed().as_micros() as u64)?;
                if !ok {
                    errors += 1;
                }
                i += c;
            }
            anyhow::Ok((h, errors))
        });
    }
    let (all, errors) = gather(tasks).await?;
    let elapsed = started.elapsed();
    server.abort();
    Ok(Phase {
        name,
        count: n,
        errors,
        elapsed,
        latency: Some(all),
    })
}

const TEXT: &str = "Hi, I ordered a pair of shoes two weeks ago and the tracking page has not moved since Monday. Can you check?";

/// The `ingest` section with this text cap and no rate limits.
fn ingest_config(max_text_bytes: usize) -> IngestConfig {
    IngestConfig {
        max_text_bytes,
        ..IngestConfig::default()
    }
}

async fn api_phase(
    publisher: &Publisher,
    n: usize,
    c: usize,
    max_text_bytes: usize,
) -> Result<Phase> {
    let token = Uuid::now_v7().simple().to_string();
    let app = ApiSource::new(&ingest_config(max_text_bytes), publisher.clone())
        .router()
        .layer(axum::middleware::from_fn_with_state(
            BearerAuth::new(vec![token.clone()]),
            BearerAuth::middleware,
        ));
    let make: MakeReq = Arc::new(move |i| Req {
        path: "/v1/messages",
        content_type: "application/json",
        headers: vec![("authorization", format!("Bearer {token}"))],
        body: serde_json::to_vec(&serde_json::json!({
            "channel": "api",
            "customer": {"email": format!("bench{}@example.com", i % 1000), "name": "Bench"},
            "subject": "Where is my order?",
            "text": TEXT,
            "external_id": format!("api-bench-{i}"),
        }))
        .unwrap_or_default(),
    });
    http_phase("POST /v1/messages (HTTP API)", app, n, c, 202, make).await
}

/// The signed provider webhooks: SMS (Twilio form), voice transcript, WhatsApp.
async fn webhook_phases(
    publisher: &Publisher,
    n: usize,
    c: usize,
    max_text_bytes: usize,
) -> Result<Vec<Phase>> {
    use switchboard_ingest::{meta, sms, voice};
    const URL: &str = "https://bench.example/webhooks/sms";
    let mut out = Vec::new();
    let app = sms::SmsSource::new(
        sms::SmsConfig {
            auth_token: "bench-token".into(),
            public_url: URL.into(),
            ..sms::SmsConfig::default()
        },
        &ingest_config(max_text_bytes),
        publisher.clone(),
    )
    .router();
    let make: MakeReq = Arc::new(|i| {
        let params: Vec<(String, String)> = vec![
            ("MessageSid".into(), format!("SMbench{i}")),
            ("From".into(), format!("+1555{:07}", i % 1000)),
            ("To".into(), "+15550199999".into()),
            ("Body".into(), TEXT.into()),
            ("NumMedia".into(), "0".into()),
        ];
        let signature = sms::sign("bench-token", URL, &params);
        Req {
            path: sms::PATH,
            content_type: "application/x-www-form-urlencoded",
            headers: vec![("x-twilio-signature", signature)],
            body: form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish()
                .into_bytes(),
        }
    });
    out.push(http_phase("POST /webhooks/sms (signed form)", app, n, c, 200, make).await?);

    let app = voice::VoiceSource::new(
        voice::VoiceConfig {
            secret: "bench-secret".into(),
        },
        &ingest_config(max_text_bytes),
        publisher.clone(),
    )
    .router();
    let make: MakeReq = Arc::new(|i| {
        let body = serde_json::to_vec(&serde_json::json!({
            "call_id": format!("CAbench{i}"), "from": format!("+1555{:07}", i % 1000),
            "turns": [{"speaker": "customer", "text": TEXT}, {"speaker": "ivr", "text": "Thank you, an agent will call back."}]
        }))
        .unwrap_or_default();
        Req {
            path: voice::PATH,
            content_type: "application/json",
            headers: vec![("x-signature-256", voice::sign("bench-secret", &body))],
            body,
        }
    });
    out.push(http_phase("POST /webhooks/voice (signed JSON)", app, n, c, 202, make).await?);

    let app = meta::MetaSource::new(
        meta::MetaConfig {
            app_secret: "bench-app".into(),
            verify_token: "v".into(),
            ..meta::MetaConfig::default()
        },
        &ingest_config(max_text_bytes),
        publisher.clone(),
    )
    .router();
    let make: MakeReq = Arc::new(|i| {
        let body = serde_json::to_vec(&serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": "PN1"},
            "messages": [{"from": format!("1555{:07}", i % 1000), "id": format!("wamid.bench{i}"), "type": "text", "text": {"body": TEXT}}]}}]}]}))
        .unwrap_or_default();
        Req {
            path: meta::PATH,
            content_type: "application/json",
            headers: vec![("x-hub-signature-256", voice::sign("bench-app", &body))],
            body,
        }
    });
    out.push(http_phase("POST /webhooks/meta (WhatsApp)", app, n, c, 200, make).await?);
    Ok(out)
}

/// Email through the SMTP listener: `c` clients, each on one connection (TCP_NODELAY, as an MTA
/// writes: lettre's transport writes the body and the final dot separately, which Nagle's
/// algorithm and delayed ACKs turn into a 40 ms stall per message), one message per send.
/// The SMTP listener the bench's mail phases send to: on a free loopback port, attachments in a
/// temporary folder (kept while the returned guard lives), `connections` clients at once, all
/// from 127.0.0.1. Stop it with the token, then await the task.
async fn bench_smtp(
    publisher: &Publisher,
    max_text_bytes: usize,
    max_message_bytes: usize,
    connections: usize,
) -> Result<(
    u16,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
)> {
    use switchboard_ingest::{email, smtp};
    let dir = tempfile::tempdir()?;
    let ingest = ingest_config(max_text_bytes);
    let smtp = smtp::SmtpConfig {
        listen: "127.0.0.1:0".into(),
        hostname: "bench.example".into(),
        recipients: vec!["@bench.example".into()],
        max_message_bytes,
        max_connections: connections,
        max_connections_per_ip: connections,
        max_buffered_bytes: 256 << 20,
        max_recipients: 100,
        attachment_quota_bytes: 0,
    };
    let intake = email::EmailIntake::new(
        email::EmailConfig {
            domain: "bench.example".into(),
            max_attachment_bytes: 1 << 20,
            smtp: smtp.clone(),
            ..email::EmailConfig::default()
        },
        &ingest,
        switchboard_core::storage::BlobStore::local(dir.path())?,
        publisher.clone(),
    );
    let source = smtp::SmtpSource::new(smtp, &ingest, intake);
    let listener = source.bind().await?;
    let port = listener.local_addr()?.port();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(source.serve(listener, stop.clone()));
    Ok((port, stop, server, dir))
}

async fn smtp_phase(
    publisher: &Publisher,
    n: usize,
    c: usize,
    max_text_bytes: usize,
) -> Result<Phase> {
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;
    use lettre::Message;
    let (port, stop, server, _dir) = bench_smtp(publisher, max_text_bytes, 1 << 20, c * 2).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..c {
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let mut conn = AsyncSmtpConnection::connect_with_transport(
                Box::new(tcp),
                &ClientId::Domain("bench.example".into()),
            )
            .await?;
            let mut h = histogram()?;
            let mut errors = 0;
            let mut i = w;
            while i < n {
                let msg = Message::builder()
                    .from(format!("bench{}@example.com", i % 1000).parse()?)
                    .to("help@bench.example".parse()?)
                    .subject("Where is my order?")
                    .message_id(Some(format!("<bench-{i}@example.com>")))
                    .body(TEXT.to_string())?;
                let raw = msg.formatted();
                let started = Instant::now();
                if conn.send(msg.envelope(), &raw).await.is_err() {
                    errors += 1;
                }
                h.record(started.elapsed().as_micros() as u64)?;
                i += c;
            }
            let _ = conn.quit().await;
            anyhow::Ok((h, errors))
        });
    }
    let (all, errors) = gather(tasks).await?;
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = server.await;
    Ok(Phase {
        name: "SMTP (one connection per client)",
        count: n,
        errors,
        elapsed,
        latency: Some(all),
    })
}

/// Ten 1 MB adversarial mails (every shape of `email::HostileShape`) arrive over SMTP at once
/// while a client polls `/healthz` on the same runtime every 10 ms: prints the `/healthz` latency
/// with and without them side by side (the mails are parsed off the async workers, so it must stay
/// flat) and how long the mails took to be answered.
async fn hostile_mail_phase(publisher: &Publisher, max_text_bytes: usize) -> Result<()> {
    use lettre::address::Envelope as MailEnvelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;
    use std::sync::atomic::{AtomicBool, Ordering};
    use switchboard_ingest::email;
    let (smtp_port, stop, server, _dir) =
        bench_smtp(publisher, max_text_bytes, 4 << 20, 64).await?;
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let health_url = format!("http://{}/healthz", health.local_addr()?);
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let http_server = tokio::spawn(async move { axum::serve(health, app).await });

    // Polls /healthz until `done`, one request at a time.
    async fn poll(url: String, done: Arc<AtomicBool>) -> Result<Histogram<u64>> {
        let http = reqwest::Client::new();
        let mut h = histogram()?;
        while !done.load(Ordering::Relaxed) {
            let t = Instant::now();
            http.get(&url).send().await?.error_for_status()?;
            h.record(t.elapsed().as_micros() as u64)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(h)
    }
    let quiet_done = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(poll(health_url.clone(), quiet_done.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet_done.store(true, Ordering::Relaxed);
    let quiet = quiet.await??;

    let busy_done = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(poll(health_url, busy_done.clone()));
    let started = Instant::now();
    let mut mails = tokio::task::JoinSet::new();
    for i in 0..10 {
        let shape = email::HostileShape::ALL[i % email::HostileShape::ALL.len()];
        mails.spawn(async move {
            let raw = email::hostile_mail(shape, 1 << 20);
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", smtp_port)).await?;
            let mut conn = AsyncSmtpConnection::connect_with_transport(
                Box::new(tcp),
                &ClientId::Domain("bench.example".into()),
            )
            .await?;
            let envelope = MailEnvelope::new(
                Some("hostile@example.com".parse()?),
                vec!["help@bench.example".parse()?],
            )?;
            let answer = match conn.send(&envelope, &raw).await {
                Ok(r) => r.code().to_string(),
                Err(e) => e.status().map_or_else(|| e.to_string(), |c| c.to_string()),
            };
            let _ = conn.quit().await;
            anyhow::Ok((format!("{shape:?}"), answer, started.elapsed()))
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = mails.join_next().await {
        answers.push(r??);
    }
    let mails_took = started.elapsed();
    busy_done.store(true, Ordering::Relaxed);
    let busy = busy.await??;
    stop.cancel();
    let _ = server.await;
    http_server.abort();

    answers.sort();
    println!(
        "\nten 1 MB adversarial mails at once over SMTP, answered in {:.2} s:",
        mails_took.as_secs_f64()
    );
    for (shape, answer, at) in &answers {
        println!("  {shape:<12} {answer:<5} after {:.2} s", at.as_secs_f64());
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "/healthz on the same runtime, quiet: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quiet.len(),
        ms(&quiet, 0.5),
        ms(&quiet, 0.99),
        quiet.max() as f64 / 1000.0
    );
    println!(
        "/healthz while the mails arrive: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (p99 / quiet p99: {:.2})",
        busy.len(),
        ms(&busy, 0.5),
        ms(&busy, 0.99),
        busy.max() as f64 / 1000.0,
        ms(&busy, 0.99) / ms(&quiet, 0.99).max(0.001)
    );
    Ok(())
}

/// Merges the workers' latency histograms and error counts.
async fn gather(
    mut tasks: tokio::task::JoinSet<Result<(Histogram<u64>, usize)>>,
) -> Result<(Histogram<u64>, usize)> {
    let mut all = histogram()?;
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, e) = r??;
        all.add(h)?;
        errors += e;
    }
    Ok((all, errors))
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` distinct free ports (each held until all are found, so none is handed out twice).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Arguments of `bench models`.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelsArgs {
    /// Texts (from models/testsets/bitext_test.jsonl).
    #[arg(long, default_value_t = 1000)]
    texts: usize,
    /// Concurrent callers for the micro-batched phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Batch size of the raw ONNX Runtime and Python phases.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Python for the baseline (the training venv has onnxruntime and tokenizers).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Execution providers to run the full path on, side by side (`cpu,cuda`: the GPU build of
    /// ONNX Runtime in `models.onnxruntime` runs both; one that cannot start is reported).
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    providers: Vec<String>,
}

/// Texts/s of the Python pipeline (`models/training/bench_python.py` under `python`) on
/// `texts`; `None` when that interpreter is not installed or prints no rate.
fn python_rate(
    python: &std::path::Path,
    texts: &[String],
    batch: usize,
    threads: usize,
) -> Result<Option<f64>> {
    if !python.is_file() {
        return Ok(None);
    }
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), texts.join("\n"))?;
    let out = std::process::Command::new(python)
        .arg("models/training/bench_python.py")
        .arg(tmp.path())
        .arg(batch.to_string())
        .arg(threads.to_string())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<f64>()
        .ok())
}

/// The full predict path on `texts` one at a time: texts/s and the latency histogram (µs).
fn batch_one(set: &mut ModelSet, texts: &[String]) -> Result<(f64, Histogram<u64>)> {
    let mut h = histogram()?;
    let started = Instant::now();
    for t in texts {
        let s = Instant::now();
        set.predict(&[t.as_str()])?;
        h.record(s.elapsed().as_micros() as u64)?;
    }
    Ok((texts.len() as f64 / started.elapsed().as_secs_f64(), h))
}

/// The full predict path micro-batched across `concurrency` callers: texts/s, the latency
/// histogram (µs) and the mean batch size.
async fn micro_batched(
    set: ModelSet,
    mc: &switchboard_models::ModelsConfig,
    texts: Arc<Vec<String>>,
    concurrency: usize,
) -> Result<(f64, Histogram<u64>, f64)> {
    let predictor = switchboard_models::predictor::Predictor::start(set, mc);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (p, next, texts) = (predictor.clone(), next.clone(), texts.clone());
        tasks.spawn(async move {
            let mut h = histogram()?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(t) = texts.get(i) else {
                    return anyhow::Ok(h);
                };
                let s = Instant::now();
                p.predict(t.clone()).await?;
                h.record(s.elapsed().as_micros() as u64)?;
            }
        });
    }
    let mut h = histogram()?;
    while let Some(r) = tasks.join_next().await {
        h.add(r??)?;
    }
    let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
    let mean = texts.len() as f64 / predictor.batches().max(1) as f64;
    Ok((rate, h, mean))
}

/// `bench models`: full predict path at batch 1 and micro-batched, the raw encoder limit, and the
/// Python pipeline, on the same texts in one run; with `--providers cpu,cuda`, the full path on
/// each execution provider side by side (a provider that cannot start here is reported and
/// skipped: the same command runs unchanged where a GPU is).
pub(crate) async fn models(cfg: &Config, args: ModelsArgs) -> Result<()> {
    use switchboard_models::ExecutionProvider;
    let mc = switchboard_cli::models_cmd::models_config(cfg);
    let providers: Vec<ExecutionProvider> = args
        .providers
        .iter()
        .map(|p| match p.trim() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda),
            other => bail!("--providers: cpu or cuda, not {other:?}"),
        })
        .collect::<Result<_>>()?;
    let texts: Vec<String> = std::fs::read_to_string("models/testsets/bitext_test.jsonl")
        .context("models/testsets/bitext_test.jsonl (run from the repository root)")?
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["text"]
                .as_str()
                .map(str::to_string)
        })
        .take(args.texts)
        .collect();
    let n = texts.len();
    println!(
        "switchboard-sim bench models: {n} support texts, intra_threads {}, max_batch {}, max_wait {:?}, onnxruntime {}",
        mc.intra_threads,
        mc.max_batch,
        mc.max_wait(),
        mc.onnxruntime.display()
    );
    println!(
        "{:<52} {:>9} {:>9} {:>9}",
        "path", "texts/s", "p50 ms", "p99 ms"
    );
    let row = |name: &str, rate: f64, h: Option<&Histogram<u64>>| {
        let (p50, p99) = h.map_or(("-".to_string(), "-".to_string()), |h| {
            (
                format!("{:.2}", h.value_at_quantile(0.5) as f64 / 1000.0),
                format!("{:.2}", h.value_at_quantile(0.99) as f64 / 1000.0),
            )
        });
        println!("{name:<52} {rate:>9.1} {p50:>9} {p99:>9}");
    };
    let texts = Arc::new(texts);
    // Per provider that ran: (batch 1 texts/s, batch 1 p99 µs, micro texts/s, micro p99 µs).
    let mut ran: Vec<(ExecutionProvider, f64, u64, f64, u64)> = Vec::new();
    let mut raw_and_micro: Option<(f64, f64, f64)> = None;
    for (i, provider) in providers.iter().enumerate() {
        let pc = switchboard_models::ModelsConfig {
            execution_provider: *provider,
            ..mc.clone()
        };
        let name = provider.as_str();
        let mut set = match switchboard_cli::models_cmd::load_active(&pc) {
            Ok((_, set)) => set,
            Err(e) if *provider == ExecutionProvider::Cuda => {
                println!("{name}: not run here: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        // 1. Full path, one text at a time.
        let (batch1, h1) = batch_one(&mut set, &texts)?;
        row(
            &format!("{name}: full path, batch 1 (tokenize+encode+heads)"),
            batch1,
            Some(&h1),
        );
        // 2. Raw ONNX Runtime (the first provider only): the encoder alone on pre-tokenized
        // batches.
        let raw = if i == 0 {
            let chunks: Vec<Vec<&str>> = texts
                .chunks(args.batch.max(1))
                .map(|c| c.iter().map(String::as_str).collect())
                .collect();
            let batches = chunks
                .iter()
                .map(|c| set.encoder.tokenize(c))
                .collect::<Result<Vec<_>, _>>()?;
            let started = Instant::now();
            for b in &batches {
                set.encoder.run_raw(b)?;
            }
            Some(n as f64 / started.elapsed().as_secs_f64())
        } else {
            None
        };
        // 3. Full path, micro-batched across concurrent callers.
        let (micro, h3, mean) = micro_batched(set, &pc, texts.clone(), args.concurrency).await?;
        row(
            &format!(
                "{name}: full path, micro-batched ({} callers, mean batch {mean:.1})",
                args.concurrency
            ),
            micro,
            Some(&h3),
        );
        if let Some(raw) = raw {
            row(
                &format!(
                    "{name}: raw onnx runtime run, pre-tokenized, batch {}",
                    args.batch
                ),
                raw,
                None,
            );
            raw_and_micro = Some((raw, micro, batch1));
        }
        ran.push((
            *provider,
            batch1,
            h1.value_at_quantile(0.99),
            micro,
            h3.value_at_quantile(0.99),
        ));
    }

    // 4. The Python pipeline a data scientist would write (CPU).
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| switchboard_models::cache_dir().join("train-venv/bin/python"));
    let py = python_rate(&python, &texts, args.batch, mc.intra_threads)?;
    match py {
        Some(rate) => row(
            &format!("python onnxruntime + tokenizers, batch {}", args.batch),
            rate,
            None,
        ),
        None => println!(
            "python baseline skipped: {} not found (run models/training/train.sh once)",
            python.display()
        ),
    }
    println!();
    if let Some((raw, micro, batch1)) = raw_and_micro {
        println!(
            "micro-batched full path / raw onnx runtime: {:.2}",
            micro / raw
        );
        println!(
            "micro-batched full path / batch 1:          {:.2}",
            micro / batch1
        );
        if let Some(rate) = py {
            println!(
                "micro-batched full path / python pipeline:  {:.2}",
                micro / rate
            );
        }
    }
    let cpu = ran.iter().find(|r| r.0 == ExecutionProvider::Cpu);
    let cuda = ran.iter().find(|r| r.0 == ExecutionProvider::Cuda);
    if let (Some(c), Some(g)) = (cpu, cuda) {
        println!(
            "cuda / cpu: batch 1 texts/s {:.2}, p99 {:.2}; micro-batched texts/s {:.2}, p99 {:.2}",
            g.1 / c.1,
            g.2 as f64 / c.2.max(1) as f64,
            g.3 / c.3,
            g.4 as f64 / c.4.max(1) as f64
        );
    }
    Ok(())
}
