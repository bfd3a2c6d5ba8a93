//! Runs roles: the explicit registry that maps each pipelines.yaml stage and source to its
//! component, wires it to the services, and serves the HTTP API and ops endpoints.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Role, SourceType, StageConfig, StageType};
use anyhow::{Context as _, Result};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use switchboard_core::db::Outbox;
use switchboard_core::http::{BearerAuth, Ops, ReadyCheck};
use switchboard_core::kafka::{self, ConsumerSettings, Publisher};
use switchboard_processors::kb::{EdgeKb, ServerKb, SharedKb};
use switchboard_processors::router::Router as TicketRouter;
use switchboard_processors::sla::{Sla, SlaRules};
use switchboard_processors::ticketing::{Bot, Ticketing};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{error, info};

use crate::stack::Endpoints;

/// Consumer settings of a stage that handles records one by one: batches of up to 64 records
/// (waiting at most 5 ms for more), handled in lanes by key, `concurrency` at once.
fn keyed_settings(stage: &StageConfig, topic_prefix: &str) -> ConsumerSettings {
    ConsumerSettings {
        group: stage.group_id(topic_prefix),
        topics: stage.input_topics(),
        batch_max: 64,
        batch_wait: Duration::from_millis(5),
        concurrency: stage.concurrency.max(1),
        fetch_wait: stage.fetch_wait(),
        from_latest: false,
    }
}

/// What every role starts from: the broker settings, the publisher, Postgres (for the roles
/// that need it) and the shutdown signal.
struct Ctx {
    kafka: switchboard_core::config::KafkaConfig,
    publisher: Publisher,
    pool: Option<PgPool>,
    shutdown: CancellationToken,
}

/// What the roles started: their tasks (the first to fail stops the rest) and their readiness
/// checks for `/readyz`.
struct Started {
    tasks: JoinSet<Result<()>>,
    ready: Vec<Arc<dyn ReadyCheck>>,
}

/// Everything a set of roles needs.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub endpoints: Endpoints,
    pub metrics: Option<PrometheusHandle>,
    pub admin_token: Option<String>,
}

impl Runtime {
    /// Where attachments and raw dead-lettered mail are kept (`storage`, else `data_dir`).
    fn blobs(&self) -> Result<switchboard_core::storage::BlobStore> {
        let blobs =
            switchboard_core::storage::BlobStore::open(&self.config.storage, &self.config.data_dir)
                .context("cannot open the attachment store")?;
        tracing::info!(location = blobs.location(), "attachment store");
        Ok(blobs)
    }

    fn kafka(&self) -> switchboard_core::config::KafkaConfig {
        let mut k = self.config.services.kafka.clone();
        k.brokers = self.endpoints.kafka_brokers.clone();
        k
    }

    async fn postgres(&self) -> Result<PgPool> {
        let pool = switchboard_core::db::connect(
            &self.endpoints.postgres_url,
            self.config.services.postgres.max_connections,
            Duration::from_secs(60),
        )
        .await
        .context("cannot connect to postgres")?;
        switchboard_core::db::migrate(&pool).await?;
        Ok(pool)
    }

    /// Runs `roles` until `shutdown` fires or one of them fails.
    pub async fn run(self, roles: &[Role], shutdown: CancellationToken) -> Result<()> {
        if let Some(sim) = self
            .config
            .simulation
            .clock()
            .map_err(|e| anyhow::anyhow!(e))?
        {
            switchboard_core::clock::install(sim)?;
        }
        let kafka = self.kafka();
        let mut ready = Vec::new();
        let mut attempt = 0;
        loop {
            match kafka::ensure_topics(&kafka).await {
                Ok(()) => break,
                Err(e) if attempt < 20 && e.is_retryable() => {
                    attempt += 1;
                    info!(error = %e, attempt, "waiting for kafka");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("cannot create topics"),
            }
        }
        let publisher = Publisher::new(&kafka)?;
        ready.push(Arc::new(publisher.clone()) as Arc<dyn ReadyCheck>);

        let needs_pg = roles
            .iter()
            .any(|r| matches!(r, Role::Processors | Role::Serving))
            || (roles.contains(&Role::Ingest)
                && self.config.stages_for(Role::Ingest).next().is_some());
        let pool = if needs_pg {
            let p = self.postgres().await?;
            ready.push(Arc::new(p.clone()));
            Some(p)
        } else {
            None
        };
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        // Every role with consumer stages hands parked records back (one relay group; its
        // members split the retry topic) and reports stalled groups in /readyz.
        if roles
            .iter()
            .any(|r| matches!(r, Role::Processors | Role::Ingest | Role::Sink))
        {
            let (k, p, s) = (kafka.clone(), publisher.clone(), shutdown.clone());
            tasks.spawn(async move { Ok(kafka::run_retry_relay(&k, p, s).await?) });
            ready.push(Arc::new(kafka::ConsumerGroups));
        }

        let ctx = Ctx {
            kafka: kafka.clone(),
            publisher: publisher.clone(),
            pool: pool.clone(),
            shutdown: shutdown.clone(),
        };
        let mut started = Started { tasks, ready };
        if roles.contains(&Role::Processors) {
            self.start_processors(&ctx, &mut started).await?;
        }
        if roles.contains(&Role::Ingest) {
            self.start_reply_senders(&ctx, &mut started).await?;
        }
        if roles.contains(&Role::Sink) {
            self.start_sink(&ctx, &mut started).await?;
        }
        let api = self.http_api(roles, &ctx, &mut started)?;
        let Started { mut tasks, ready } = started;
        let ops = Ops {
            checks: ready,
            metrics: self.metrics.clone(),
        };
        let app = Router::new()
            .merge(ops.router())
            .merge(api)
            .fallback(switchboard_core::http::not_found)
            .layer(DefaultBodyLimit::max(self.config.http.max_body_bytes))
            .layer(TraceLayer::new_for_http());
        let addr = self.config.http.listen_addr().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(%addr, roles = ?roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "http listening");
        let (s, limits) = (
            shutdown.clone(),
            switchboard_core::http::ServeLimits::from_config(&self.config.http),
        );
        tasks.spawn(async move {
            switchboard_core::http::serve(listener, app, limits, s).await?;
            Ok(())
        });

        // Run until shutdown or the first failure (which stops the rest).
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            let r = match done {
                Ok(r) => r,
                Err(e) => Err(anyhow::Error::new(e)),
            };
            if let Err(e) = r {
                error!(error = %e, "a role task failed, stopping");
                if result.is_ok() {
                    result = Err(e);
                }
            }
            shutdown.cancel();
        }
        publisher.flush();
        result
    }
}

impl Runtime {
    /// The processors: the outbox left over, the models, the knowledge base and its bot, and the
    /// ticketing, router and SLA stages with their sweeps.
    async fn start_processors(&self, ctx: &Ctx, started: &mut Started) -> Result<()> {
        let (kafka, publisher, shutdown) = (&ctx.kafka, &ctx.publisher, &ctx.shutdown);
        let pool = &ctx.pool;
        let tasks = &mut started.tasks;
        let pool = pool.clone().context("processors need postgres")?;
        let outbox = Outbox::new(pool.clone(), publisher.clone());
        let n = outbox.publish_pending().await?;
        if n > 0 {
            info!(events = n, "published events left in the outbox");
        }
        // One model service per process, shared by every ticketing stage; it follows the
        // registry so an activation swaps models without a restart.
        let predictor = if self.config.models.enabled {
            let mc = crate::models_cmd::models_config(&self.config);
            let (registry, set) = tokio::task::spawn_blocking({
                let mc = mc.clone();
                move || crate::models_cmd::load_active(&mc)
            })
            .await??;
            info!(versions = ?set.versions(), "models loaded");
            let predictor = switchboard_models::predictor::Predictor::start(set, &mc);
            let (p, s) = (predictor.clone(), shutdown.clone());
            let every = Duration::from_millis(self.config.models.reload_interval_ms.max(100));
            tasks.spawn(async move {
                p.follow_registry(registry, mc, every, async move { s.cancelled().await })
                    .await;
                Ok(())
            });
            Some(predictor)
        } else {
            None
        };
        let sla_rules = SlaRules::compile(&self.config.sla)
            .map_err(|e| anyhow::anyhow!("invalid sla settings:\n  {}", e.join("\n  ")))?;
        // Postgres holds the articles (the API edits them); each instance's vector index
        // follows it. The index needs the encoder: no models, no bot.
        if self.config.kb.enabled {
            let seeded =
                switchboard_processors::kb::seed_articles(&pool, &self.config.kb.seed_file)
                    .await
                    .context("cannot seed the knowledge base")?;
            if seeded > 0 {
                tracing::info!(articles = seeded, "knowledge base seeded");
            }
        }
        let bot = self
            .start_bot(ctx, tasks, &pool, predictor.as_ref())
            .await?;
        for stage in self.config.stages_for(Role::Processors) {
            let settings = keyed_settings(stage, &kafka.topic_prefix);
            let (k, p, s) = (kafka.clone(), publisher.clone(), shutdown.clone());
            match *stage.kind {
                StageType::Ticketing => {
                    let h = Ticketing::new(
                        pool.clone(),
                        outbox.clone(),
                        self.config.routing.clone(),
                        predictor.clone(),
                        bot.clone(),
                    );
                    let (sweep, s2) = (h.clone(), shutdown.clone());
                    let every = Duration::from_secs(
                        (self.config.kb.bot_resolve_after_secs / 2).clamp(1, 10),
                    );
                    tasks.spawn(async move {
                        sweep.sweep_loop(every, s2).await;
                        Ok(())
                    });
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::Router => {
                    let cfg = self.config.routing.clone();
                    let h = TicketRouter::new(pool.clone(), outbox.clone(), cfg);
                    let sweep = h.clone();
                    let s2 = shutdown.clone();
                    tasks.spawn(async move {
                        sweep.sweep_loop(s2).await;
                        Ok(())
                    });
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::Sla => {
                    let h = Sla::new(pool.clone(), outbox.clone(), sla_rules.clone());
                    let (timer, s2) = (h.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        timer.timer_loop(s2).await;
                        Ok(())
                    });
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::ClickhouseSink
                | StageType::SmsSender
                | StageType::EmailSender
                | StageType::ChatSender
                | StageType::SocialSender => {}
            }
            info!(stage = stage.name.as_str(), "stage started");
        }
        Ok(())
    }

    /// The knowledge-base bot: the vector index (embedded, or a Qdrant server) synced from
    /// Postgres and kept in sync; none without models or with `kb.enabled` off.
    async fn start_bot(
        &self,
        ctx: &Ctx,
        tasks: &mut JoinSet<Result<()>>,
        pool: &PgPool,
        predictor: Option<&switchboard_models::predictor::Predictor>,
    ) -> Result<Option<Bot>> {
        let shutdown = &ctx.shutdown;
        let bot = match (predictor, self.config.kb.enabled) {
            (Some(p), true) => {
                let dim = p
                    .predict("dimension probe".into())
                    .await
                    .context("cannot embed with the models")?
                    .embedding
                    .len();
                let q = &self.config.services.qdrant;
                let kb: SharedKb = if q.url.is_empty() {
                    let path = self.config.data_dir.join("kb");
                    Arc::new(tokio::task::spawn_blocking(move || EdgeKb::open(&path, dim)).await??)
                } else {
                    let collection = format!(
                        "{}kb",
                        self.config.services.kafka.topic_prefix.replace('.', "_")
                    );
                    let key = Some(q.api_key.expose().to_string()).filter(|k| !k.is_empty());
                    Arc::new(
                        ServerKb::connect(&q.url, key, &collection, dim)
                            .await
                            .with_context(|| {
                                format!("cannot use the qdrant server at {}", q.url)
                            })?,
                    )
                };
                let sync = Arc::new(switchboard_processors::kb::IndexSync::new(
                    kb.clone(),
                    pool.clone(),
                ));
                sync.sync(p)
                    .await
                    .context("cannot index the knowledge base")?;
                let (p2, s2) = (p.clone(), shutdown.clone());
                tasks.spawn(async move {
                    sync.run(p2, Duration::from_secs(2), s2).await;
                    Ok(())
                });
                Some(Bot {
                    kb,
                    config: self.config.kb.clone(),
                })
            }
            _ => None,
        };
        Ok(bot)
    }

    /// The ingest role's consumer stages: the reply senders of each channel.
    async fn start_reply_senders(&self, ctx: &Ctx, started: &mut Started) -> Result<()> {
        let (kafka, publisher, shutdown) = (&ctx.kafka, &ctx.publisher, &ctx.shutdown);
        let pool = &ctx.pool;
        let tasks = &mut started.tasks;
        for stage in self.config.stages_for(Role::Ingest) {
            let settings = keyed_settings(stage, &kafka.topic_prefix);
            let (k, p, s) = (kafka.clone(), publisher.clone(), shutdown.clone());
            let pool = pool.clone().context("the reply senders need postgres")?;
            match *stage.kind {
                StageType::SmsSender => {
                    let cfg = self.config.channels.sms.clone();
                    let h = switchboard_ingest::ledger::Replies(
                        switchboard_ingest::sms_out::SmsSender::new(cfg, pool)?,
                    );
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::EmailSender => {
                    let email = &self.config.channels.email;
                    if email.outbound.host.is_empty() {
                        tracing::warn!("channels.email.outbound.host is not set: email replies are dead-lettered");
                    }
                    let h = switchboard_ingest::ledger::Replies(
                        switchboard_ingest::email_out::EmailSender::new(
                            email.outbound.clone(),
                            email.domain.clone(),
                            pool,
                        )?,
                    );
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::SocialSender => {
                    let cfg = self.config.channels.meta.clone();
                    let h = switchboard_ingest::ledger::Replies(
                        switchboard_ingest::social_out::SocialSender::new(cfg, pool)?,
                    );
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                StageType::ChatSender => {
                    let h = switchboard_ingest::ledger::Replies(
                        switchboard_ingest::chat::ChatSender::new(pool),
                    );
                    tasks.spawn(
                        async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) },
                    );
                }
                _ => continue,
            }
            info!(stage = stage.name.as_str(), "stage started");
        }
        self.start_email(tasks, publisher, shutdown).await?;
        Ok(())
    }

    /// The sink: the ClickHouse schema, then one consumer per sink stage.
    async fn start_sink(&self, ctx: &Ctx, started: &mut Started) -> Result<()> {
        let (kafka, publisher, shutdown) = (&ctx.kafka, &ctx.publisher, &ctx.shutdown);
        let tasks = &mut started.tasks;
        let ready = &mut started.ready;
        let ch = &self.config.services.clickhouse;
        let mut attempt = 0;
        loop {
            match switchboard_analytics::migrate(ch, &self.endpoints.clickhouse_url).await {
                Ok(()) => break,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    info!(error = %e, attempt, "waiting for clickhouse");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("cannot prepare clickhouse"),
            }
        }
        let client = switchboard_analytics::client(ch, &self.endpoints.clickhouse_url);
        ready.push(Arc::new(switchboard_analytics::ClickHouseCheck(
            client.clone(),
        )));
        for stage in self.config.stages_for(Role::Sink) {
            let settings = ConsumerSettings {
                group: stage.group_id(&kafka.topic_prefix),
                topics: stage.input_topics(),
                batch_max: self.config.sink.batch_max_rows.max(1),
                batch_wait: Duration::from_millis(self.config.sink.batch_max_wait_ms),
                concurrency: 1,
                fetch_wait: stage.fetch_wait(),
                from_latest: false,
            };
            let h = switchboard_analytics::sink::ClickHouseSink::new(client.clone());
            let (k, p, s) = (kafka.clone(), publisher.clone(), shutdown.clone());
            tasks.spawn(async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) });
            info!(stage = stage.name.as_str(), "stage started");
        }
        Ok(())
    }

    /// The HTTP APIs of the roles that have them (the ops routes come on top).
    fn http_api(&self, roles: &[Role], ctx: &Ctx, started: &mut Started) -> Result<Router> {
        let publisher = &ctx.publisher;
        let mut api = Router::new();
        if roles.contains(&Role::Ingest) && self.config.has_source(SourceType::HttpApi) {
            api = api.merge(switchboard_ingest::limit::limited(
                switchboard_ingest::api::ApiSource::new(&self.config.ingest, publisher.clone())
                    .router(),
                "api",
                self.config.ingest.rate_limits.get("api").copied(),
            ));
        }
        let mut customer_routes = Router::new();
        if roles.contains(&Role::Ingest) && self.config.has_source(SourceType::Chat) {
            customer_routes = customer_routes.merge(self.chat_routes(ctx, started)?);
        }
        // The inbound API is for trusted connectors: the admin token.
        let auth = BearerAuth::new(self.admin_token.clone().into_iter().collect());
        let mut api = api.layer(axum::middleware::from_fn_with_state(
            auth,
            BearerAuth::middleware,
        ));
        if roles.contains(&Role::Serving) {
            let (agent_api, pages) = self.serving_routes(ctx, started)?;
            api = api.merge(agent_api);
            customer_routes = customer_routes.merge(pages);
        }
        let api = api.merge(self.webhook_routes(roles, publisher));
        Ok(api.merge(customer_routes).route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(crate::openapi_doc()) }),
        ))
    }

    /// The customer chat (its credential is the conversation token, not the bearer token).
    fn chat_routes(&self, ctx: &Ctx, started: &mut Started) -> Result<Router> {
        let (publisher, shutdown, pool) = (&ctx.publisher, &ctx.shutdown, &ctx.pool);
        let tasks = &mut started.tasks;
        let pool = pool.clone().context("the chat needs postgres")?;
        let mut chat = self.config.channels.chat.clone();
        if chat.secret.is_empty() {
            tracing::warn!("channels.chat.secret is not set (SWITCHBOARD__CHANNELS__CHAT__SECRET): using a random one, chat tokens end with this process");
            chat.secret = crate::stack::random_secret().into();
        }
        let hub = Arc::new(switchboard_ingest::chat::ChatHub::default());
        let (h, p, s) = (hub.clone(), pool.clone(), shutdown.clone());
        tasks.spawn(async move {
            h.listen(p, s).await;
            Ok(())
        });
        let source = switchboard_ingest::chat::ChatSource::new(
            chat,
            &self.config.ingest,
            publisher.clone(),
            pool,
            hub,
        );
        Ok(switchboard_ingest::limit::limited(
            source.router(),
            "chat",
            self.config.ingest.rate_limits.get("chat").copied(),
        ))
    }

    /// The agent/supervisor/admin API (it checks roles itself), the agents' live stream, the
    /// retention job, and the customers' pages and the order webhook.
    fn serving_routes(&self, ctx: &Ctx, started: &mut Started) -> Result<(Router, Router)> {
        let (kafka, publisher, shutdown, pool) =
            (&ctx.kafka, &ctx.publisher, &ctx.shutdown, &ctx.pool);
        let tasks = &mut started.tasks;
        let pool = pool.clone().context("serving needs postgres")?;
        // The agents' live streams follow the topics from their end, in a group of this
        // instance's own (every instance sees every event).
        let hub = switchboard_serving::stream::StreamHub::default();
        let settings = ConsumerSettings {
            group: format!(
                "{}serving-stream-{}",
                kafka.topic_prefix,
                uuid::Uuid::now_v7().simple()
            ),
            topics: switchboard_serving::stream::StreamHub::TOPICS.to_vec(),
            batch_max: 64,
            batch_wait: Duration::from_millis(5),
            concurrency: 1,
            fetch_wait: Duration::from_millis(25),
            from_latest: true,
        };
        let (k, p, s, h) = (
            kafka.clone(),
            publisher.clone(),
            shutdown.clone(),
            hub.clone(),
        );
        tasks.spawn(async move { Ok(kafka::run_consumer(&k, p, settings, h, s).await?) });
        let orders_secret = self.config.channels.orders.secret.clone();
        if orders_secret.is_empty() {
            tracing::warn!("channels.orders.secret is not set (SWITCHBOARD__CHANNELS__ORDERS__SECRET): every order webhook is refused");
        }
        let serving = switchboard_serving::Api::new(
            pool,
            publisher.clone(),
            self.blobs()?,
            self.admin_token.clone().into_iter().collect(),
        )
        .with_stream(hub)
        .with_orders_secret(
            orders_secret,
            self.config.ingest.rate_limits.get("orders").copied(),
        )
        .with_public_url(if self.config.http.public_url.is_empty() {
            format!("http://{}", self.config.http.listen.as_str())
        } else {
            self.config.http.public_url.clone()
        });
        // Customers' pages per address; the order webhook per shop once its signature holds.
        let customer_routes = Router::new()
            .merge(switchboard_ingest::limit::limited(
                serving.clone().public_router(),
                "public",
                self.config.ingest.rate_limits.get("public").copied(),
            ))
            .merge(serving.clone().webhook_router());
        let serving = if self.endpoints.clickhouse_url.is_empty() {
            serving
        } else {
            serving.with_clickhouse(switchboard_analytics::client(
                &self.config.services.clickhouse,
                &self.endpoints.clickhouse_url,
            ))
        };
        let r = switchboard_serving::privacy::Retention::from_config(&self.config.retention);
        let (a, s) = (serving.clone(), shutdown.clone());
        tasks.spawn(async move {
            switchboard_serving::privacy::retention_loop(a, r, s).await;
            Ok(())
        });
        let api = switchboard_ingest::limit::limited_tokens(
            serving.router(),
            "agent_api",
            self.config.ingest.rate_limits.get("agent_api").copied(),
            self.config.ingest.rate_limits.get("unverified").copied(),
        );
        Ok((api, customer_routes))
    }

    /// Provider webhooks: they authenticate by their signature, not the bearer token.
    fn webhook_routes(&self, roles: &[Role], publisher: &Publisher) -> Router {
        let mut api = Router::new();
        if roles.contains(&Role::Ingest) && self.config.has_source(SourceType::TwilioSms) {
            let sms = &self.config.channels.sms;
            if sms.auth_token.is_empty() {
                tracing::warn!("channels.sms.auth_token is not set (SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN): every SMS webhook call is refused");
            }
            let mut cfg = sms.clone();
            if cfg.public_url.is_empty() {
                cfg.public_url = format!(
                    "http://{}{}",
                    self.config.http.listen.as_str(),
                    switchboard_ingest::sms::PATH
                );
            }
            let ingest = &self.config.ingest;
            api = api.merge(
                switchboard_ingest::sms::SmsSource::new(cfg, ingest, publisher.clone()).router(),
            );
        }
        if roles.contains(&Role::Ingest) && self.config.has_source(SourceType::MetaWebhook) {
            let meta = &self.config.channels.meta;
            if meta.app_secret.is_empty() {
                tracing::warn!("channels.meta.app_secret is not set (SWITCHBOARD__CHANNELS__META__APP_SECRET): every meta webhook is refused");
            }
            let (cfg, ingest) = (meta.clone(), &self.config.ingest);
            api = api.merge(
                switchboard_ingest::meta::MetaSource::new(cfg, ingest, publisher.clone()).router(),
            );
        }
        if roles.contains(&Role::Ingest) && self.config.has_source(SourceType::VoiceWebhook) {
            let cfg = self.config.channels.voice.clone();
            if cfg.secret.is_empty() {
                tracing::warn!("channels.voice.secret is not set (SWITCHBOARD__CHANNELS__VOICE__SECRET): every call-transcript webhook is refused");
            }
            let ingest = &self.config.ingest;
            api = api.merge(
                switchboard_ingest::voice::VoiceSource::new(cfg, ingest, publisher.clone())
                    .router(),
            );
        }
        api
    }

    /// The email front doors of the ingest role: the SMTP listener and the IMAP poller.
    async fn start_email(
        &self,
        tasks: &mut JoinSet<Result<()>>,
        publisher: &Publisher,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let smtp = self.config.has_source(SourceType::Smtp);
        let imap = self.config.has_source(SourceType::Imap);
        if !smtp && !imap {
            return Ok(());
        }
        let email = &self.config.channels.email;
        let intake = switchboard_ingest::email::EmailIntake::new(
            email.clone(),
            &self.config.ingest,
            self.blobs()?,
            publisher.clone(),
        );
        if smtp {
            let source = switchboard_ingest::smtp::SmtpSource::new(
                email.smtp.clone(),
                &self.config.ingest,
                intake.clone(),
            );
            let listener = source
                .bind()
                .await
                .with_context(|| format!("cannot listen for smtp on {}", email.smtp.listen))?;
            let s = shutdown.clone();
            tasks.spawn(async move {
                source.serve(listener, s).await;
                Ok(())
            });
        }
        if imap {
            let cfg = &email.imap;
            if cfg.host.is_empty() {
                anyhow::bail!("an imap source is configured but channels.email.imap.host is empty");
            }
            let poller = switchboard_ingest::imap::ImapPoller::new(cfg.clone(), intake);
            let s = shutdown.clone();
            tasks.spawn(async move {
                poller.run(s).await;
                Ok(())
            });
        }
        Ok(())
    }
}
