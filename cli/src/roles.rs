//! Runs roles: the explicit registry of what each role starts. Every crate has its own `start`
//! (`switchboard_ingest::start`, `switchboard_processors::start`, `switchboard_serving::start`,
//! `switchboard_analytics::sink::start`) taking its sections of pipelines.yaml and one
//! [`Ctx`]; this file maps the file's sources and stages to them, composes the HTTP routes and
//! serves them with the ops endpoints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::extract::DefaultBodyLimit;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use switchboard_core::http::{BearerAuth, Ops};
use switchboard_core::kafka::{self, Publisher};
use switchboard_core::runtime::{Ctx, Started};
use switchboard_core::storage::BlobStore;
use switchboard_ingest::limit;
use switchboard_ingest::start::Door;
use switchboard_processors::start::StageSpec;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::info;

use crate::config::{Config, Role, SourceType, StageType};
use crate::stack::Endpoints;

/// Everything a set of roles needs.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub endpoints: Endpoints,
    pub metrics: Option<PrometheusHandle>,
    pub admin_token: Option<String>,
}

impl Runtime {
    async fn postgres(&self) -> Result<PgPool> {
        let (url, max) = (
            &self.endpoints.postgres_url,
            self.config.services.postgres.max_connections,
        );
        let pool = switchboard_core::db::connect(url, max, Duration::from_secs(60))
            .await
            .context("cannot connect to postgres")?;
        switchboard_core::db::migrate(&pool).await?;
        Ok(pool)
    }

    /// The shared services every role starts from: topics, the publisher, Postgres when a role
    /// needs it, the retry relay when a role consumes.
    async fn ctx(&self, roles: &[Role], shutdown: &CancellationToken) -> Result<(Ctx, Started)> {
        let mut kafka = self.config.services.kafka.clone();
        kafka.brokers = self.endpoints.kafka_brokers.clone();
        let mut attempt = 0;
        while let Err(e) = kafka::ensure_topics(&kafka).await {
            if attempt >= 20 || !e.is_retryable() {
                return Err(e).context("cannot create topics");
            }
            attempt += 1;
            info!(error = %e, attempt, "waiting for kafka");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let publisher = Publisher::new(&kafka)?;
        let mut started = Started::default();
        started.ready(Arc::new(publisher.clone()));
        let needs_pg = roles
            .iter()
            .any(|r| matches!(r, Role::Processors | Role::Serving))
            || (roles.contains(&Role::Ingest)
                && self.config.stages_for(Role::Ingest).next().is_some());
        let pool = if needs_pg {
            Some(self.postgres().await?)
        } else {
            None
        };
        if let Some(p) = &pool {
            started.ready(Arc::new(p.clone()));
        }
        let ctx = Ctx {
            kafka,
            publisher,
            pool,
            data_dir: self.config.data_dir.clone(),
            shutdown: shutdown.clone(),
        };
        // Every role with consumer stages hands parked records back (one relay group; its
        // members split the retry topic) and reports stalled groups in /readyz.
        if roles
            .iter()
            .any(|r| matches!(r, Role::Processors | Role::Ingest | Role::Sink))
        {
            let (k, p, s) = (ctx.kafka.clone(), ctx.publisher.clone(), shutdown.clone());
            started.spawn("retry relay", async move {
                kafka::run_retry_relay(&k, p, s).await
            });
            started.ready(Arc::new(kafka::ConsumerGroups));
        }
        Ok((ctx, started))
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
        let (ctx, mut started) = self.ctx(roles, &shutdown).await?;
        let cfg = &self.config;
        // Attachments and raw dead-lettered mail: `storage`, else `data_dir`. One store for the
        // process, opened only where files are kept: serving, and ingest with an email door.
        let email = cfg.has_source(SourceType::Smtp) || cfg.has_source(SourceType::Imap);
        let blobs = if roles.contains(&Role::Serving) || (roles.contains(&Role::Ingest) && email) {
            let b = BlobStore::open(&cfg.storage, &cfg.data_dir)
                .context("cannot open the attachment store")?;
            info!(location = b.location(), "attachment store");
            Some(b)
        } else {
            None
        };
        let prefix = &ctx.kafka.topic_prefix;
        if roles.contains(&Role::Processors) {
            let stages = cfg.stages_for(Role::Processors).filter_map(|s| {
                let stage = s.kind.processor_stage()?;
                Some(StageSpec {
                    stage,
                    name: s.name.as_str().to_string(),
                    settings: s.consumer_settings(prefix),
                })
            });
            let public_url = public_url(cfg);
            let sections = switchboard_processors::start::Sections {
                routing: &cfg.routing,
                sla: &cfg.sla,
                kb: &cfg.kb,
                models: &cfg.models,
                qdrant: &cfg.services.qdrant,
                rules: &cfg.rules,
                public_url: &public_url,
                shop: &cfg.shop,
            };
            switchboard_processors::start::start(stages.collect(), sections, &ctx, &mut started)
                .await?;
        }
        let mut app = Router::new();
        if roles.contains(&Role::Ingest) {
            for s in cfg.stages_for(Role::Ingest) {
                if *s.kind == StageType::WebhookSender {
                    switchboard_ingest::webhook_out::start(
                        &cfg.webhooks,
                        s.name.as_str(),
                        s.consumer_settings(prefix),
                        &ctx,
                        &mut started,
                    )?;
                }
                if let Some(kind) = s.kind.sender() {
                    let settings = s.consumer_settings(prefix);
                    switchboard_ingest::start::start_sender(
                        kind,
                        s.name.as_str(),
                        settings,
                        &cfg.channels,
                        &ctx,
                        &mut started,
                    )?;
                }
            }
            // People's notifications by email and SMS, from the ledger their events fill.
            let email = &cfg.channels.email;
            switchboard_ingest::notify_out::start(
                &cfg.notifications,
                &email.outbound,
                &email.domain,
                &cfg.channels.sms,
                &public_url(cfg),
                &ctx,
                &mut started,
            )?;
            app = app.merge(
                self.ingest_routes(&ctx, &mut started, blobs.as_ref())
                    .await?,
            );
        }
        if roles.contains(&Role::Sink) {
            let stages = cfg
                .stages_for(Role::Sink)
                .map(|s| (s.name.as_str().to_string(), s.consumer_settings(prefix)));
            let (ch, url) = (&cfg.services.clickhouse, &self.endpoints.clickhouse_url);
            switchboard_analytics::sink::start(
                &cfg.sink,
                ch,
                url,
                stages.collect(),
                &ctx,
                &mut started,
            )
            .await?;
        }
        if roles.contains(&Role::Serving) {
            let blobs = blobs
                .clone()
                .context("serving needs the attachment store")?;
            app = app.merge(self.serving_routes(&ctx, &mut started, blobs)?);
        }
        let app = app.route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(crate::openapi_doc()) }),
        );
        self.serve(roles, app, ctx, started).await
    }

    /// The ingest role's front doors: the trusted API behind the admin token, the chat, the
    /// provider webhooks; the SMTP listener and the IMAP poller run beside them.
    async fn ingest_routes(
        &self,
        ctx: &Ctx,
        started: &mut Started,
        blobs: Option<&BlobStore>,
    ) -> Result<Router> {
        let cfg = &self.config;
        let doors: Vec<Door> = cfg.sources.iter().filter_map(|s| s.kind.door()).collect();
        let mut channels = cfg.channels.clone();
        if channels.chat.secret.is_empty() {
            tracing::warn!("channels.chat.secret is not set (SWITCHBOARD__CHANNELS__CHAT__SECRET): using a random one, chat tokens end with this process");
            channels.chat.secret = crate::stack::random_secret().into();
        }
        let sections = switchboard_ingest::start::Sections {
            ingest: &cfg.ingest,
            channels: &channels,
            http_listen: cfg.http.listen.as_str(),
        };
        let routes =
            switchboard_ingest::start::start_doors(&doors, sections, blobs, ctx, started).await?;
        // The inbound API is for trusted connectors: the admin token.
        let auth = BearerAuth::new(self.admin_token.clone().into_iter().collect());
        let trusted = routes.trusted.layer(axum::middleware::from_fn_with_state(
            auth,
            BearerAuth::middleware,
        ));
        Ok(trusted.merge(routes.customer).merge(routes.webhooks))
    }

    /// The agent/supervisor/admin API (it checks roles itself) and the customers' pages, each
    /// with its per-client rate limit.
    fn serving_routes(&self, ctx: &Ctx, started: &mut Started, blobs: BlobStore) -> Result<Router> {
        let cfg = &self.config;
        let rate = |name: &str| cfg.ingest.rate_limit(name);
        let clickhouse = (!self.endpoints.clickhouse_url.is_empty()).then(|| {
            switchboard_analytics::client(&cfg.services.clickhouse, &self.endpoints.clickhouse_url)
        });
        let public_url = public_url(cfg);
        let sections = switchboard_serving::start::Sections {
            retention: &cfg.retention,
            public_url,
            admin_tokens: self.admin_token.clone().into_iter().collect(),
            clickhouse,
            sso: &cfg.sso,
            webhooks: &cfg.webhooks,
            shop: &cfg.shop,
            forecasting: forecasting(cfg),
            search: &cfg.search,
        };
        let routes = switchboard_serving::start::start(sections, blobs, ctx, started)?;
        Ok(limit::limited_tokens(
            routes.api,
            "agent_api",
            rate("agent_api"),
            rate("unverified"),
        )
        .merge(limit::limited_by_ip(
            routes.public,
            "public",
            rate("public"),
        )))
    }

    /// Serves `app` with the ops routes, then runs until shutdown or the first task to end
    /// (which stops the rest).
    async fn serve(&self, roles: &[Role], app: Router, ctx: Ctx, started: Started) -> Result<()> {
        let Started { mut tasks, ready } = started;
        let ops = Ops {
            checks: ready,
            metrics: self.metrics.clone(),
        };
        let app = Router::new()
            .merge(ops.router())
            .merge(app)
            .fallback(switchboard_core::http::not_found)
            .layer(DefaultBodyLimit::max(self.config.http.max_body_bytes))
            .layer(TraceLayer::new_for_http());
        let addr = self.config.http.listen_addr().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(%addr, roles = ?roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "http listening");
        let limits = switchboard_core::http::ServeLimits::from_config(&self.config.http);
        let s = ctx.shutdown.clone();
        tasks.spawn("http", async move {
            switchboard_core::http::serve(listener, app, limits, s).await
        });
        let result = tasks
            .run_until_done(&ctx.shutdown, self.config.shutdown.drain())
            .await;
        ctx.publisher.flush();
        result.map_err(|e| anyhow::anyhow!(e))
    }
}

/// Where customers reach this installation: `http.public_url`, else the listen address.
fn public_url(cfg: &Config) -> String {
    if cfg.http.public_url.is_empty() {
        format!("http://{}", cfg.http.listen.as_str())
    } else {
        cfg.http.public_url.clone()
    }
}

/// The forecast's settings and every holiday it should know: the business calendars' and
/// `forecast.holidays`.
pub fn forecasting(cfg: &Config) -> switchboard_serving::forecast::Forecasting {
    let mut holidays: std::collections::BTreeSet<chrono::NaiveDate> =
        cfg.forecast.holidays.iter().copied().collect();
    for cal in cfg.sla.calendars.values() {
        holidays.extend(
            cal.holidays
                .iter()
                .filter_map(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
        );
    }
    switchboard_serving::forecast::Forecasting {
        config: cfg.forecast.clone(),
        holidays,
    }
}
