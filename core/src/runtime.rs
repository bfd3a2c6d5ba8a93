//! What every component starts from ([`Ctx`]), what the started components hand back
//! ([`Started`]: their tasks and readiness checks), and one lifecycle for the background loops
//! ([`Background`]: sweeps, pollers, retention, index sync, listeners).
//!
//! Each crate's `start` takes its own sections of pipelines.yaml and a `&Ctx`, and spawns into
//! `Started`; the composition root (`cli/src/roles.rs`) only says which crate starts what. The
//! first task to end (failing or not) stops the process: every loop runs until shutdown, so an
//! early end is a fault, and fail-fast lets the orchestrator restart a clean process.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::KafkaConfig;
use crate::http::ReadyCheck;
use crate::kafka::{self, ConsumerSettings, Handler, Publisher};

/// Why a task ended with an error (any component's error type).
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Why a component could not start. Not retryable within the process: the settings or a
/// service it needs are wrong or missing, and the process exits to be restarted.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A role needs Postgres and none is configured.
    #[error("{0} needs postgres (services.postgres.url)")]
    NoPostgres(&'static str),
    /// Settings that cannot run (named in the message).
    #[error("{0}")]
    Config(String),
    /// A service or resource failed while starting.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: TaskError,
    },
}

impl StartError {
    /// `what` failed with `source`.
    pub fn failed(what: impl Into<String>, source: impl Into<TaskError>) -> Self {
        StartError::Failed {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// What every role starts from: the broker settings (brokers filled in), the publisher, Postgres
/// for the roles that need it, the data folder and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub kafka: KafkaConfig,
    pub publisher: Publisher,
    pub pool: Option<PgPool>,
    pub data_dir: PathBuf,
    pub shutdown: CancellationToken,
}

impl Ctx {
    /// Postgres, or the error naming `who` needs it.
    pub fn pool(&self, who: &'static str) -> Result<PgPool, StartError> {
        self.pool.clone().ok_or(StartError::NoPostgres(who))
    }

    /// A consumer group name for `stage` (replicas of a stage share it).
    pub fn group(&self, stage: &str) -> String {
        format!("{}{stage}", self.kafka.topic_prefix)
    }
}

/// A loop that runs beside the consumers until shutdown: a sweep, a poller, a listener, the
/// retention job, the index sync. Starting it is [`Started::spawn_loop`]; it stops gracefully
/// when `shutdown` fires (finishing the pass it is in); its health is its being alive: one that
/// ends before shutdown is logged and stops the process.
pub trait Background: Send + 'static {
    /// The name in logs (`loop = ...`).
    fn name(&self) -> &'static str;
    /// Runs until `shutdown` fires.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// What the started components hand back: their tasks and their `/readyz` checks.
#[derive(Default)]
pub struct Started {
    pub tasks: JoinSet<Result<(), TaskError>>,
    pub ready: Vec<Arc<dyn ReadyCheck>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("tasks", &self.tasks.len())
            .field(
                "ready",
                &self.ready.iter().map(|r| r.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Started {
    /// Runs `task` beside the others; its error stops the process.
    pub fn spawn<F, E>(&mut self, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError>,
    {
        self.tasks
            .spawn(async move { task.await.map_err(Into::into) });
    }

    /// Starts a background loop under the lifecycle: logged when it starts and stops, stopped
    /// by `ctx.shutdown`; one that ends before shutdown is an error.
    pub fn spawn_loop<B: Background>(&mut self, ctx: &Ctx, background: B) {
        let shutdown = ctx.shutdown.clone();
        let name = background.name();
        info!(r#loop = name, "loop started");
        self.tasks.spawn(async move {
            background.run(shutdown.clone()).await;
            if shutdown.is_cancelled() {
                info!(r#loop = name, "loop stopped");
                Ok(())
            } else {
                error!(r#loop = name, "loop ended before shutdown");
                Err(format!("the {name} loop ended before shutdown").into())
            }
        });
    }

    /// Starts a consumer of `settings.topics` feeding `handler`, stopped by `ctx.shutdown`.
    pub fn spawn_consumer<H: Handler + 'static>(
        &mut self,
        ctx: &Ctx,
        stage: &str,
        settings: ConsumerSettings,
        handler: H,
    ) {
        let (k, p, s) = (
            ctx.kafka.clone(),
            ctx.publisher.clone(),
            ctx.shutdown.clone(),
        );
        info!(stage, group = settings.group.as_str(), "stage started");
        self.tasks
            .spawn(async move { Ok(kafka::run_consumer(&k, p, settings, handler, s).await?) });
    }

    /// Adds a `/readyz` check.
    pub fn ready(&mut self, check: Arc<dyn ReadyCheck>) {
        self.ready.push(check);
    }
}

/// Waits for `tasks` until all have ended; the first to end (failing or not) cancels
/// `shutdown`, which stops the rest. Returns the first error.
pub async fn run_until_done(
    mut tasks: JoinSet<Result<(), TaskError>>,
    shutdown: &CancellationToken,
) -> Result<(), TaskError> {
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let r = done.map_err(|e| Box::new(e) as TaskError).and_then(|r| r);
        if let Err(e) = r {
            error!(error = %e, "a role task failed, stopping");
            if result.is_ok() {
                result = Err(e);
            }
        }
        shutdown.cancel();
    }
    result
}

/// Waits `every`, or less when `shutdown` fires: whether a periodic loop goes on (false: it is
/// shut down).
pub async fn pause(every: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}
