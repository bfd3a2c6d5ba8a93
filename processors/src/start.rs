//! What the processors role starts: the outbox left over, the models (following the registry),
//! the knowledge base and its bot, and the `ticketing`, `router`, `sla` and `orders` stages named by
//! `stages:` in pipelines.yaml (and `rules`, the team's own rules), each with its background loop.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::config::QdrantConfig;
use switchboard_core::db::Outbox;
use switchboard_core::kafka::ConsumerSettings;
use switchboard_core::runtime::{Background, Ctx, StartError, Started};
use switchboard_models::predictor::Predictor;
use switchboard_models::registry::Registry;
use switchboard_models::ModelsConfig;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::automation::{RulesConfig, RulesStage};
use crate::drafts::{Drafts, ReplySync};
use crate::kb::{EdgeKb, IndexSync, KbConfig, ServerKb, SharedKb};
use crate::router::{Router, RoutingConfig};
use crate::sla::{Sla, SlaConfig, SlaRules};
use crate::ticketing::{Bot, Ticketing};

/// A consumer stage of the processors role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Ticketing,
    Router,
    Sla,
    /// Stores the shops' order updates.
    Orders,
    /// The team's rules: triggers on `ticket.events` and `sla.events`, automations on time.
    Rules,
}

/// The sections the processors read.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub routing: &'a RoutingConfig,
    pub sla: &'a SlaConfig,
    pub kb: &'a KbConfig,
    pub models: &'a ModelsConfig,
    /// `services.qdrant`: empty URL, the embedded index under `data_dir/kb`.
    pub qdrant: &'a QdrantConfig,
    pub rules: &'a RulesConfig,
    /// Where customers reach this installation (links in surveys the rules send).
    pub public_url: &'a str,
    /// The shop: facts for the articles, when a shipment is late.
    pub shop: &'a switchboard_tickets::shop::ShopConfig,
}

/// One stage to start: what it is, its name, its consumer settings.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub stage: Stage,
    pub name: String,
    pub settings: ConsumerSettings,
}

/// Starts the processors: `stages` and what they share.
pub async fn start(
    stages: Vec<StageSpec>,
    cfg: Sections<'_>,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<(), StartError> {
    let pool = ctx.pool("the processors")?;
    let outbox = Outbox::new(pool.clone(), ctx.publisher.clone());
    let n = outbox
        .publish_pending()
        .await
        .map_err(|e| StartError::failed("cannot publish the outbox", e))?;
    if n > 0 {
        info!(events = n, "published events left in the outbox");
    }
    let predictor = start_models(cfg.models, ctx, started).await?;
    let sla_rules = SlaRules::compile(cfg.sla)
        .map_err(|e| StartError::Config(format!("invalid sla settings:\n  {}", e.join("\n  "))))?;
    // Postgres holds the articles (the API edits them); each instance's vector index follows
    // it. The index needs the encoder: no models, no bot.
    if cfg.kb.enabled {
        let seeded = crate::kb::seed_articles(&pool, &cfg.kb.seed_file)
            .await
            .map_err(|e| StartError::failed("cannot seed the knowledge base", e))?;
        if seeded > 0 {
            info!(articles = seeded, "knowledge base seeded");
        }
    }
    let bot = match (&predictor, cfg.kb.enabled) {
        (Some(p), true) => Some(start_bot(p, cfg, ctx, started).await?),
        _ => None,
    };
    for spec in stages {
        let StageSpec {
            stage,
            name,
            settings,
        } = spec;
        match stage {
            Stage::Ticketing => {
                let h = Ticketing::new(
                    pool.clone(),
                    outbox.clone(),
                    cfg.routing.clone(),
                    predictor.clone(),
                    bot.clone(),
                );
                let every = Duration::from_secs((cfg.kb.bot_resolve_after_secs / 2).clamp(1, 10));
                started.spawn_loop(
                    ctx,
                    BotSweep {
                        ticketing: h.clone(),
                        every,
                    },
                );
                started.spawn_consumer(ctx, &name, settings, h);
            }
            Stage::Router => {
                let h = Router::new(pool.clone(), outbox.clone(), cfg.routing.clone());
                started.spawn_loop(ctx, h.clone());
                started.spawn_consumer(ctx, &name, settings, h);
            }
            Stage::Orders => {
                started.spawn_consumer(
                    ctx,
                    &name,
                    settings,
                    crate::orders::Orders::new(pool.clone(), outbox.clone()),
                );
            }
            Stage::Rules => {
                let h = RulesStage::new(
                    pool.clone(),
                    outbox.clone(),
                    cfg.rules.clone(),
                    sla_rules.clone(),
                    cfg.public_url.to_string(),
                );
                started.spawn_loop(ctx, h.clone());
                started.spawn_consumer(ctx, &name, settings, h);
            }
            Stage::Sla => {
                let h = Sla::new(pool.clone(), outbox.clone(), sla_rules.clone());
                started.spawn_loop(ctx, h.clone());
                started.spawn_consumer(ctx, &name, settings, h);
            }
        }
    }
    Ok(())
}

/// One model service per process, shared by every ticketing stage; it follows the registry so
/// an activation swaps models without a restart. `None` when `models.enabled` is off.
async fn start_models(
    cfg: &ModelsConfig,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<Option<Predictor>, StartError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let mc = cfg.clone();
    let (registry, set) = tokio::task::spawn_blocking(move || switchboard_models::load_active(&mc))
        .await
        .map_err(|e| StartError::failed("cannot load the models", e))?
        .map_err(|e| StartError::failed("cannot load the active models", e))?;
    info!(versions = ?set.versions(), "models loaded");
    let predictor = Predictor::start(set, cfg);
    started.spawn_loop(
        ctx,
        ModelFollower {
            predictor: predictor.clone(),
            registry,
            cfg: cfg.clone(),
        },
    );
    Ok(Some(predictor))
}

/// The knowledge-base bot: the vector index (embedded under `data_dir/kb`, or a Qdrant server)
/// synced from Postgres and kept in sync.
async fn start_bot(
    predictor: &Predictor,
    cfg: Sections<'_>,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<Bot, StartError> {
    let pool = ctx.pool("the knowledge base")?;
    let dim = predictor
        .predict("dimension probe".into())
        .await
        .map_err(|e| StartError::failed("cannot embed with the models", e))?
        .embedding
        .len();
    let kb = open_index(cfg.qdrant, ctx, "kb", dim).await?;
    let sync = Arc::new(IndexSync::new(kb.clone(), pool));
    sync.sync(predictor)
        .await
        .map_err(|e| StartError::failed("cannot index the knowledge base", e))?;
    started.spawn_loop(
        ctx,
        KbSync {
            sync,
            predictor: predictor.clone(),
        },
    );
    let drafts = if cfg.kb.drafts.enabled {
        let index = open_index(cfg.qdrant, ctx, "replies", dim).await?;
        let pool = ctx.pool("the drafts index")?;
        let sync = Arc::new(ReplySync::new(index.clone(), pool, cfg.kb.drafts.clone()));
        // A first pass before the stage starts, so drafts are there from the first message; a
        // failure here is retried by the loop (drafts are a help, not a reason to stay down).
        if let Err(e) = sync.sync(predictor).await {
            tracing::warn!(error = %e, "drafts index not synced yet");
        }
        started.spawn_loop(
            ctx,
            DraftsSync {
                sync,
                predictor: predictor.clone(),
            },
        );
        Some(Drafts {
            index,
            config: cfg.kb.drafts.clone(),
        })
    } else {
        None
    };
    Ok(Bot {
        kb,
        drafts,
        config: cfg.kb.clone(),
        shop: std::sync::Arc::new(cfg.shop.clone()),
        track_url: format!("{}/track", cfg.public_url.trim_end_matches('/')),
        returns_url: format!("{}/returns", cfg.public_url.trim_end_matches('/')),
    })
}

/// A vector index named `name`: embedded under `data_dir/<name>`, or the collection
/// `<prefix><name>` of the configured Qdrant server.
async fn open_index(
    q: &QdrantConfig,
    ctx: &Ctx,
    name: &str,
    dim: usize,
) -> Result<SharedKb, StartError> {
    if q.url.is_empty() {
        let path = ctx.data_dir.join(name);
        let kb = tokio::task::spawn_blocking(move || EdgeKb::open(&path, dim))
            .await
            .map_err(|e| StartError::failed("cannot open the embedded index", e))?
            .map_err(|e| StartError::failed("cannot open the embedded index", e))?;
        Ok(Arc::new(kb))
    } else {
        let collection = format!("{}{name}", ctx.kafka.topic_prefix.replace('.', "_"));
        let key = Some(q.api_key.expose().to_string()).filter(|k| !k.is_empty());
        let kb = ServerKb::connect(&q.url, key, &collection, dim)
            .await
            .map_err(|e| {
                StartError::failed(format!("cannot use the qdrant server at {}", q.url), e)
            })?;
        Ok(Arc::new(kb))
    }
}

/// Keeps the drafts index in step with Postgres's reply examples.
struct DraftsSync {
    sync: Arc<ReplySync>,
    predictor: Predictor,
}

impl Background for DraftsSync {
    fn name(&self) -> &'static str {
        "drafts-sync"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.sync.run(self.predictor, shutdown)
    }
}

/// Resolves quiet bot answers every `every`.
struct BotSweep {
    ticketing: Ticketing,
    every: Duration,
}

impl Background for BotSweep {
    fn name(&self) -> &'static str {
        "bot-sweep"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.ticketing.sweep_loop(self.every, shutdown)
    }
}

/// Keeps the vector index in step with Postgres's articles.
struct KbSync {
    sync: Arc<IndexSync>,
    predictor: Predictor,
}

impl Background for KbSync {
    fn name(&self) -> &'static str {
        "kb-sync"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.sync
            .run(self.predictor, Duration::from_secs(2), shutdown)
    }
}

/// Swaps the models when the registry's active set changes.
struct ModelFollower {
    predictor: Predictor,
    registry: Registry,
    cfg: ModelsConfig,
}

impl Background for ModelFollower {
    fn name(&self) -> &'static str {
        "model-follower"
    }

    async fn run(self, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.cfg.reload_interval_ms.max(100));
        self.predictor
            .follow_registry(self.registry, self.cfg, every, shutdown.cancelled_owned())
            .await;
    }
}
