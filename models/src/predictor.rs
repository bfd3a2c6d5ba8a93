//! Micro-batching and hot swap.
//!
//! Callers submit texts from any task; one inference thread collects up to `max_batch` of them
//! (waiting at most `max_wait` for company), runs the active [`ModelSet`] once, and answers each.
//! [`Predictor::swap`] replaces the set atomically: a batch holds the set it started with, so
//! in-flight work finishes on the old version and nothing is dropped. A shadow set, when present,
//! runs on the same batches after the answers went out, and agreement is counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::engine::{ModelSet, Prediction};
use crate::registry::Registry;
use crate::{ModelError, ModelsConfig};

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Prediction, String>>,
}

/// Agreement between the active set and the shadow candidate.
#[derive(Debug, Default)]
struct ShadowCounters {
    compared: AtomicU64,
    category: AtomicU64,
    intent: AtomicU64,
    sentiment: AtomicU64,
}

/// Shadow-mode agreement so far.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub candidate: BTreeMap<String, String>,
    pub compared: u64,
    pub category_agreement: f64,
    pub intent_agreement: f64,
    pub sentiment_label_agreement: f64,
}

type Shared = Arc<Mutex<ModelSet>>;

/// The shared, micro-batching model service. Cheap to clone.
#[derive(Clone)]
pub struct Predictor {
    tx: mpsc::Sender<Job>,
    current: Arc<ArcSwap<Mutex<ModelSet>>>,
    shadow: Arc<ArcSwapOption<Mutex<ModelSet>>>,
    counters: Arc<ShadowCounters>,
    batches: Arc<AtomicU64>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("versions", &self.versions())
            .finish()
    }
}

fn lock(set: &Shared) -> std::sync::MutexGuard<'_, ModelSet> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Predictor {
    /// Starts the inference thread with `set` active.
    pub fn start(set: ModelSet, cfg: &ModelsConfig) -> Predictor {
        let (tx, rx) = mpsc::channel::<Job>();
        let current = Arc::new(ArcSwap::from_pointee(Mutex::new(set)));
        let shadow: Arc<ArcSwapOption<Mutex<ModelSet>>> = Arc::new(ArcSwapOption::empty());
        let counters = Arc::new(ShadowCounters::default());
        let batches = Arc::new(AtomicU64::new(0));
        let (c, s, k, b) = (
            current.clone(),
            shadow.clone(),
            counters.clone(),
            batches.clone(),
        );
        let (max_batch, max_wait) = (cfg.max_batch.max(1), cfg.max_wait());
        std::thread::Builder::new()
            .name("switchboard-models".into())
            .spawn(move || worker(rx, c, s, k, b, max_batch, max_wait))
            .map(|_| ())
            .unwrap_or_else(|e| warn!(error = %e, "cannot start the inference thread"));
        Predictor {
            tx,
            current,
            shadow,
            counters,
            batches,
        }
    }

    /// Predicts one text (batched with whatever else is waiting).
    pub async fn predict(&self, text: String) -> Result<Prediction, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { text, reply })
            .map_err(|_| ModelError::Stopped)?;
        rx.await
            .map_err(|_| ModelError::Stopped)?
            .map_err(ModelError::Runtime)
    }

    /// Predicts many texts, in order.
    pub async fn predict_many(&self, texts: Vec<String>) -> Result<Vec<Prediction>, ModelError> {
        let mut waits = Vec::with_capacity(texts.len());
        for text in texts {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Job { text, reply })
                .map_err(|_| ModelError::Stopped)?;
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(
                w.await
                    .map_err(|_| ModelError::Stopped)?
                    .map_err(ModelError::Runtime)?,
            );
        }
        Ok(out)
    }

    /// Makes `set` active; batches already running finish on the previous set.
    pub fn swap(&self, set: ModelSet) {
        let versions = set.versions();
        self.current.store(Arc::new(Mutex::new(set)));
        info!(versions = ?versions, "model set swapped");
    }

    /// Runs `set` in shadow beside the active one (or stops shadowing with `None`).
    pub fn set_shadow(&self, set: Option<ModelSet>) {
        for c in [
            &self.counters.compared,
            &self.counters.category,
            &self.counters.intent,
            &self.counters.sentiment,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.shadow.store(set.map(|s| Arc::new(Mutex::new(s))));
    }

    /// Active versions.
    pub fn versions(&self) -> BTreeMap<String, String> {
        lock(&self.current.load_full()).versions()
    }

    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Shadow agreement, when a shadow set runs.
    pub fn shadow_report(&self) -> Option<ShadowReport> {
        let set = self.shadow.load_full()?;
        let n = self.counters.compared.load(Ordering::Relaxed);
        let share = |c: &AtomicU64| {
            if n == 0 {
                0.0
            } else {
                c.load(Ordering::Relaxed) as f64 / n as f64
            }
        };
        let candidate = lock(&set).versions();
        Some(ShadowReport {
            candidate,
            compared: n,
            category_agreement: share(&self.counters.category),
            intent_agreement: share(&self.counters.intent),
            sentiment_label_agreement: share(&self.counters.sentiment),
        })
    }

    /// Follows the registry's active set: when `active.json` changes, loads and checks the new set
    /// off the inference thread, then swaps. A set that fails to load is refused and logged; the
    /// running one stays.
    pub async fn follow_registry(
        self,
        registry: Registry,
        cfg: ModelsConfig,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let file: PathBuf = registry.state_file();
        let mut seen: Option<SystemTime> = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            if now == seen {
                continue;
            }
            seen = now;
            let (reg, c) = (registry.clone(), cfg.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                let state = reg.state()?;
                ModelSet::load(&reg, &state.active, &c)
            })
            .await;
            match loaded {
                Ok(Ok(set)) if set.versions() != self.versions() => self.swap(set),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "new active model set refused, keeping the running one")
                }
                Err(e) => warn!(error = %e, "model reload failed"),
            }
        }
    }
}

fn worker(
    rx: mpsc::Receiver<Job>,
    current: Arc<ArcSwap<Mutex<ModelSet>>>,
    shadow: Arc<ArcSwapOption<Mutex<ModelSet>>>,
    counters: Arc<ShadowCounters>,
    batches: Arc<AtomicU64>,
    max_batch: usize,
    max_wait: Duration,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The set this batch runs on, whatever a concurrent swap does.
        let set = current.load_full();
        let (texts, replies): (Vec<String>, Vec<_>) =
            jobs.drain(..).map(|j| (j.text, j.reply)).unzip();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let result = lock(&set).predict(&texts);
        batches.fetch_add(1, Ordering::Relaxed);
        let active = match &result {
            Ok(p) => Some(p.clone()),
            Err(_) => None,
        };
        match result {
            Ok(preds) => {
                for (reply, p) in replies.into_iter().zip(preds) {
                    let _ = reply.send(Ok(p));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
        }
        if let (Some(shadow_set), Some(active)) = (shadow.load_full(), active) {
            if let Ok(candidate) = lock(&shadow_set).predict(&texts) {
                for (a, c) in active.iter().zip(&candidate) {
                    counters.compared.fetch_add(1, Ordering::Relaxed);
                    if a.category == c.category {
                        counters.category.fetch_add(1, Ordering::Relaxed);
                    }
                    if a.intent == c.intent {
                        counters.intent.fetch_add(1, Ordering::Relaxed);
                    }
                    if a.sentiment.as_ref().map(|s| &s.label)
                        == c.sentiment.as_ref().map(|s| &s.label)
                    {
                        counters.sentiment.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
