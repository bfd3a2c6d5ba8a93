//! What every component starts from ([`Ctx`]), what the started components hand back
//! ([`Started`]: their tasks and readiness checks), and one lifecycle for the background loops
//! ([`Background`]: sweeps, pollers, retention, index sync, listeners).
//!
//! Each crate's `start` takes its own sections of pipelines.yaml and a `&Ctx`, and spawns into
//! `Started`; the composition root (`cli/src/roles.rs`) only says which crate starts what. The
//! first task to end (failing or not) stops the process: every loop runs until shutdown, so an
//! early end is a fault, and fail-fast lets the orchestrator restart a clean process.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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

/// The tasks of a process, each with its name (for the logs of a stop).
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<Result<(), TaskError>>,
    names: HashMap<tokio::task::Id, String>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names.values()).finish()
    }
}

impl Tasks {
    /// Runs `task`, called `name` in logs, beside the others; its error stops the process.
    pub fn spawn<F, E>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError>,
    {
        let handle = self
            .set
            .spawn(async move { task.await.map_err(Into::into) });
        self.names.insert(handle.id(), name.into());
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits until every task has ended; the first to end (failing or not) cancels `shutdown`,
    /// which stops the rest. Once `shutdown` fires, the rest get `drain` to finish what they
    /// hold (the request, the batch, the final commit); any still running then is named in the
    /// log and aborted, so a stop always ends: what it held is redelivered (records whose
    /// offsets were not committed, leases that lapse). Returns the first error.
    pub async fn run_until_done(
        mut self,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> Result<(), TaskError> {
        let mut result = Ok(());
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let done = match deadline {
                None => tokio::select! {
                    d = self.set.join_next_with_id() => d,
                    () = shutdown.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + drain);
                        info!(tasks = self.set.len(), drain_ms = drain.as_millis() as u64, "stopping");
                        continue;
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, self.set.join_next_with_id()).await {
                    Ok(d) => d,
                    Err(_) => {
                        let mut left: Vec<&str> = self.names.values().map(String::as_str).collect();
                        left.sort_unstable();
                        warn!(tasks = ?left, drain_ms = drain.as_millis() as u64, "still running after the drain, aborting them");
                        self.set.abort_all();
                        // Dropping an aborted task may block (a Kafka client's drop waits for
                        // the broker): the wait for them is bounded too.
                        let settle = async { while self.set.join_next().await.is_some() {} };
                        if tokio::time::timeout(Duration::from_secs(5), settle)
                            .await
                            .is_err()
                        {
                            warn!("aborted tasks did not end within 5 s, leaving them");
                        }
                        break;
                    }
                },
            };
            let Some(done) = done else { break };
            let r = match done {
                Ok((id, r)) => {
                    self.names.remove(&id);
                    r
                }
                Err(e) => {
                    self.names.remove(&e.id());
                    Err(Box::new(e) as TaskError)
                }
            };
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
}

/// What the started components hand back: their tasks and their `/readyz` checks.
#[derive(Default)]
pub struct Started {
    pub tasks: Tasks,
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
    /// Runs `task`, called `name` in logs, beside the others; its error stops the process.
    pub fn spawn<F, E>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError>,
    {
        self.tasks.spawn(name, task);
    }

    /// Starts a background loop under the lifecycle: logged when it starts and stops, stopped
    /// by `ctx.shutdown`; one that ends before shutdown is an error.
    pub fn spawn_loop<B: Background>(&mut self, ctx: &Ctx, background: B) {
        let shutdown = ctx.shutdown.clone();
        let name = background.name();
        info!(r#loop = name, "loop started");
        self.tasks.spawn(format!("loop {name}"), async move {
            background.run(shutdown.clone()).await;
            if shutdown.is_cancelled() {
                info!(r#loop = name, "loop stopped");
                Ok::<(), TaskError>(())
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
        self.tasks.spawn(format!("stage {stage}"), async move {
            Ok::<(), TaskError>(kafka::run_consumer(&k, p, settings, handler, s).await?)
        });
    }

    /// Adds a `/readyz` check.
    pub fn ready(&mut self, check: Arc<dyn ReadyCheck>) {
        self.ready.push(check);
    }
}

/// Waits `every`, or less when `shutdown` fires: whether a periodic loop goes on (false: it is
/// shut down).
pub async fn pause(every: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// Runs `pass` after `first` and then every `interval` until `shutdown` fires. A pass still in
/// flight then is dropped, not waited for: only for jobs whose next pass (on this instance or
/// another, after a restart) finishes what a dropped one left, such as an index build, a
/// forecast fit or an export that starts from what is already there.
pub async fn every<F, Fut>(
    shutdown: &CancellationToken,
    first: Duration,
    interval: Duration,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut wait = first;
    while pause(wait, shutdown).await {
        wait = interval;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = pass() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_periodic_job_runs_its_passes_in_turn_and_a_stop_drops_the_one_in_flight() {
        let shutdown = CancellationToken::new();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let job = {
            let (shutdown, finished) = (shutdown.clone(), finished.clone());
            tokio::spawn(async move {
                let mut n = 0;
                every(&shutdown, Duration::ZERO, Duration::from_millis(1), || {
                    n += 1;
                    let (started_tx, finished, n) = (started_tx.clone(), finished.clone(), n);
                    async move {
                        started_tx.send(n).unwrap();
                        if n == 3 {
                            // A pass that never ends by itself.
                            std::future::pending::<()>().await;
                        }
                        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
                .await;
            })
        };
        for want in 1..=3 {
            assert_eq!(started_rx.recv().await, Some(want));
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), job)
            .await
            .expect("the stop waited for the stuck pass")
            .unwrap();
        // Each pass started after the one before had finished; the stuck one was dropped.
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(started_rx.recv().await, None);

        // Stopped before the first wait is over: no pass at all.
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut passes = 0;
        every(
            &shutdown,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            || {
                passes += 1;
                async {}
            },
        )
        .await;
        assert_eq!(passes, 0);
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_drain_then_aborts_what_is_left() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::default();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = finished.clone();
        let s = shutdown.clone();
        // Finishes what it holds after the signal, within the drain.
        tasks.spawn("polite", async move {
            s.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), TaskError>(())
        });
        // Never looks at the signal.
        tasks.spawn("stuck", async move {
            std::future::pending::<()>().await;
            Ok::<(), TaskError>(())
        });
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.cancel();
        });
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tasks.run_until_done(&shutdown, Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(r, Ok(Ok(()))), "the stop ends, without an error");
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_first_task_to_fail_stops_the_others_and_is_the_result() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::default();
        let s = shutdown.clone();
        tasks.spawn("waits", async move {
            s.cancelled().await;
            Ok::<(), TaskError>(())
        });
        tasks.spawn(
            "fails",
            async move { Err::<(), TaskError>("broken".into()) },
        );
        let r = tasks
            .run_until_done(&shutdown, Duration::from_secs(5))
            .await;
        assert!(shutdown.is_cancelled());
        assert_eq!(r.map_err(|e| e.to_string()), Err("broken".to_string()));
    }
}
