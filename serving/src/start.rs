//! What the serving role starts: the agent/supervisor/admin API, the agents' live streams (a
//! consumer of this instance's own), the retention job, search's recent window, and the
//! customers' pages.

use std::time::Duration;

use axum::Router;
use switchboard_core::kafka::ConsumerSettings;
use switchboard_core::runtime::{Ctx, StartError, Started};
use switchboard_core::storage::BlobStore;

use crate::privacy::{RetentionConfig, RetentionJob};
use crate::stream::StreamHub;
use crate::Api;

/// What the serving role reads.
#[derive(Debug, Clone)]
pub struct Sections<'a> {
    pub retention: &'a RetentionConfig,
    /// Where links sent to customers point (`http.public_url`, else `http://<http.listen>`).
    pub public_url: String,
    /// The configured admin tokens.
    pub admin_tokens: Vec<String>,
    /// The dashboard's history, when ClickHouse is configured.
    pub clickhouse: Option<clickhouse::Client>,
    /// Single sign-on (`sso:`; off when its issuer is empty).
    pub sso: &'a crate::sso::SsoConfig,
    /// Outbound webhooks (`webhooks:`): what a subscription's URL may be.
    pub webhooks: &'a switchboard_tickets::webhooks::WebhooksConfig,
    /// The shop (`shop:`): its Admin API, refund limits, return policy.
    pub shop: &'a switchboard_tickets::shop::ShopConfig,
    /// The demand forecast (`forecast:`) and the holidays it knows.
    pub forecasting: crate::forecast::Forecasting,
    /// Search (`search:`): its recent window.
    pub search: &'a crate::search_window::SearchConfig,
}

/// The serving role's routes; the composition root adds the per-client rate limits.
#[derive(Debug)]
pub struct Routes {
    /// Every route needs a token (the API checks roles itself).
    pub api: Router,
    /// Customers' pages: tracking, surveys, the help center.
    pub public: Router,
}

/// Starts the serving role.
pub fn start(
    cfg: Sections<'_>,
    blobs: BlobStore,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<Routes, StartError> {
    let pool = ctx.pool("serving")?;
    // The agents' live streams follow the topics from their end, in a group of this instance's
    // own (every instance sees every event).
    let hub = StreamHub::default();
    let settings = ConsumerSettings {
        group: ctx.group(&format!("serving-stream-{}", uuid::Uuid::now_v7().simple())),
        topics: StreamHub::TOPICS.to_vec(),
        batch_max: 64,
        batch_wait: Duration::from_millis(5),
        concurrency: 1,
        fetch_wait: None,
        from_latest: true,
    };
    started.spawn_consumer(ctx, "serving-stream", settings, hub.clone());
    started.spawn_loop(
        ctx,
        crate::presence::PresenceListener {
            pool: pool.clone(),
            hub: hub.clone(),
        },
    );
    let mut api = Api::new(pool, ctx.publisher.clone(), blobs, cfg.admin_tokens)
        .with_stream(hub)
        .with_public_url(cfg.public_url)
        .with_webhooks(cfg.webhooks.clone())
        .with_shop(cfg.shop.clone())
        .with_forecasting(cfg.forecasting.clone())
        .with_kafka(ctx.kafka.clone());
    if let Some(client) = cfg.clickhouse {
        // The audit log goes to ClickHouse beside the events (one instance at a time).
        started.spawn_loop(
            ctx,
            crate::audit_export::AuditExport {
                pool: api.pool.clone(),
                clickhouse: client.clone(),
                every: Duration::from_secs(10),
            },
        );
        if cfg.forecasting.config.enabled {
            // The demand forecast, fitted again every `forecast.every_secs` (one instance).
            started.spawn_loop(
                ctx,
                crate::forecast::ForecastJob {
                    pool: api.pool.clone(),
                    clickhouse: client.clone(),
                    forecasting: cfg.forecasting.clone(),
                },
            );
        }
        api = api.with_clickhouse(client);
    }
    // Search's recent window, built again every `search.window_every_secs` (one instance).
    started.spawn_loop(
        ctx,
        crate::search_window::WindowJob {
            pool: api.pool.clone(),
            config: *cfg.search,
        },
    );
    if cfg.sso.enabled() {
        let sso = crate::sso::Sso::new(cfg.sso.clone(), &api.public_url)
            .map_err(|e| StartError::Config(e.to_string()))?;
        api = api.with_sso(sso);
    }
    // The order actions the team's rules ask for.
    started.spawn_loop(
        ctx,
        crate::orders::RuleOrders {
            api: api.clone(),
            every: Duration::from_secs(1),
        },
    );
    started.spawn_loop(
        ctx,
        RetentionJob {
            api: api.clone(),
            config: *cfg.retention,
        },
    );
    Ok(Routes {
        public: api.clone().public_router(),
        api: api.router(),
    })
}
