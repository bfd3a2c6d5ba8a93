//! The agent, supervisor and admin API over the ticket store.
//!
//! Agents (create, status, assignments), teams, tickets (list, get with messages, SLA clocks and
//! routing decisions, attachments), views over them and working them (accept, reply or note,
//! status, tags); customers, the
//! knowledge base, canned replies, reports, and the pages. Every `/v1` route needs a
//! bearer token whose role allows it, and an agent acts only on the tickets assigned to it
//! ([`auth`]); status changes are published as `agent.presence` events so the router reacts at
//! once.

pub mod agents;
pub mod assign;
pub mod audit;
pub mod audit_export;
pub mod auth;
pub mod bulk;
pub mod canned;
pub mod churn;
pub mod console;
pub mod corrections;
pub mod csat;
pub mod customers;
pub mod dashboard;
pub mod drafts;
pub mod fields;
pub mod forecast;
pub mod kb;
pub mod macros;
pub mod notes;
pub mod notifications;
pub mod openapi;
pub mod orders;
pub mod pages;
pub mod presence;
pub mod privacy;
pub mod returns;
pub mod rules;
pub mod search;
pub mod search_window;
pub mod sessions;
pub mod split;
pub mod sso;
pub mod start;
pub mod stream;
pub mod tags;
pub mod teams;
pub mod telemetry;
pub mod tickets;
pub mod views;
pub mod webhooks;
pub mod work;

use axum::Router;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::kafka::Publisher;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct Api {
    pub pool: PgPool,
    pub publisher: Publisher,
    /// Where connectors store attachment contents and raw dead-lettered mail.
    pub blobs: switchboard_core::storage::BlobStore,
    pub auth: auth::Auth,
    /// The live stream's fan-out, when this instance follows the topics.
    pub stream: Option<stream::StreamHub>,
    /// Where customers reach this installation (links in surveys).
    pub public_url: String,
    /// The analytics store the dashboard's history comes from (none: live parts only).
    pub clickhouse: Option<clickhouse::Client>,
    /// The broker, for dry runs replayed from the topics.
    pub kafka: Option<switchboard_core::config::KafkaConfig>,
    /// Dry runs in progress on this instance (each may read a window of history into memory):
    /// at most [`rules::DRY_RUNS_AT_ONCE`].
    pub(crate) dry_runs: Arc<tokio::sync::Semaphore>,
    /// How search finds its newest matches (learnt from the database on first use).
    pub search_recency: Arc<tokio::sync::OnceCell<search::Recency>>,
    /// Where a handler's transaction publishes its events (a bulk action's defers them).
    pub(crate) outbox: switchboard_core::db::Outbox,
    /// How webhooks are checked (`webhooks:`; the ingest role delivers them).
    pub webhooks: switchboard_tickets::webhooks::WebhooksConfig,
    /// The shop: order actions through its Admin API, refund limits, the return policy.
    pub shop: Arc<switchboard_tickets::shop::ShopConfig>,
    /// The client order actions call the shop with (its timeout from `shop.admin_api`).
    pub(crate) shop_http: reqwest::Client,
    /// The demand forecast's settings and holidays (`forecast:`; the staffing plan's targets).
    pub forecasting: Arc<forecast::Forecasting>,
    /// The customers at risk, scored at most once a minute per window (the dashboard polls).
    pub(crate) at_risk: Arc<churn::AtRiskCache>,
}

impl Api {
    /// `admin_tokens`: the configured admin tokens (other callers use issued tokens).
    pub fn new(
        pool: PgPool,
        publisher: Publisher,
        blobs: switchboard_core::storage::BlobStore,
        admin_tokens: Vec<String>,
    ) -> Self {
        let auth = auth::Auth::new(pool.clone(), admin_tokens);
        let outbox = switchboard_core::db::Outbox::new(pool.clone(), publisher.clone());
        Api {
            outbox,
            pool,
            publisher,
            blobs,
            auth,
            stream: None,
            public_url: String::new(),
            clickhouse: None,
            kafka: None,
            dry_runs: Arc::new(tokio::sync::Semaphore::new(rules::DRY_RUNS_AT_ONCE)),
            search_recency: Arc::default(),
            webhooks: Default::default(),
            shop: Arc::default(),
            shop_http: reqwest::Client::new(),
            forecasting: Arc::default(),
            at_risk: Arc::default(),
        }
    }

    /// Order actions and returns follow `shop`.
    pub fn with_shop(mut self, shop: switchboard_tickets::shop::ShopConfig) -> Self {
        let timeout = shop
            .admin_api
            .as_ref()
            .map_or(10_000, |a| a.timeout_ms.max(1));
        self.shop_http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout))
            .connect_timeout(Duration::from_millis(timeout.min(5_000)))
            .build()
            .unwrap_or_default();
        self.shop = Arc::new(shop);
        self
    }

    /// Webhooks are checked with `config`.
    pub fn with_webhooks(mut self, config: switchboard_tickets::webhooks::WebhooksConfig) -> Self {
        self.webhooks = config;
        self
    }

    /// People also sign in through `sso` (sessions in cookies).
    pub fn with_sso(mut self, sso: sso::Sso) -> Self {
        self.auth = self.auth.with_sso(sso);
        self
    }

    /// Replays dry runs from the topics of `kafka`.
    pub fn with_kafka(mut self, kafka: switchboard_core::config::KafkaConfig) -> Self {
        self.kafka = Some(kafka);
        self
    }

    /// The forecast and the staffing plan follow `forecasting`.
    pub fn with_forecasting(mut self, forecasting: forecast::Forecasting) -> Self {
        self.forecasting = Arc::new(forecasting);
        self
    }

    /// Reads the dashboard's history from `client`.
    pub fn with_clickhouse(mut self, client: clickhouse::Client) -> Self {
        self.clickhouse = Some(client);
        self
    }

    /// Links sent to customers start with `url`.
    pub fn with_public_url(mut self, url: String) -> Self {
        self.public_url = url;
        self
    }

    /// Routes authenticated by something else than a token: customers' order tracking (their
    /// email and order number), surveys, the help center and the pages. Rate-limit them per
    /// address.
    pub fn public_router(self) -> Router {
        customers::public_routes()
            .merge(returns::public_routes())
            .merge(csat::public_routes())
            .merge(pages::routes())
            .merge(console::routes())
            .merge(kb::public_routes())
            .merge(sso::public_routes())
            .with_state(self)
    }

    /// Serves the agents' live streams from `hub` (whose consumer the caller runs).
    pub fn with_stream(mut self, hub: stream::StreamHub) -> Self {
        self.stream = Some(hub);
        self
    }

    /// All routes of the serving role, each needing a token ([`auth`]).
    pub fn router(self) -> Router {
        let auth = self.auth.clone();
        agents::routes()
            .merge(audit::routes())
            .merge(tickets::routes())
            .merge(work::routes())
            .merge(auth::routes())
            .merge(stream::routes())
            .merge(customers::routes())
            .merge(csat::routes())
            .merge(dashboard::routes())
            .merge(forecast::routes())
            .merge(drafts::routes())
            .merge(churn::routes())
            .merge(corrections::routes())
            .merge(privacy::routes())
            .merge(canned::routes())
            .merge(kb::routes())
            .merge(teams::routes())
            .merge(views::routes())
            .merge(tags::routes())
            .merge(search::routes())
            .merge(assign::routes())
            .merge(notes::routes())
            .merge(bulk::routes())
            .merge(fields::routes())
            .merge(presence::routes())
            .merge(macros::routes())
            .merge(rules::routes())
            .merge(webhooks::routes())
            .merge(orders::routes())
            .merge(returns::routes())
            .merge(notifications::routes())
            .merge(split::routes())
            .merge(sessions::routes())
            .layer(axum::middleware::from_fn_with_state(auth, auth::middleware))
            .with_state(self)
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("blobs", &self.blobs)
            .field("public_url", &self.public_url)
            .field("clickhouse", &self.clickhouse.is_some())
            .finish()
    }
}

/// Parses a path id, naming it on failure.
pub(crate) fn parse_id(
    raw: &str,
    field: &str,
) -> Result<uuid::Uuid, switchboard_core::http::ApiError> {
    raw.parse().map_err(|_| {
        switchboard_core::http::ApiError::field(field, format!("{raw:?} is not a valid id"))
    })
}
