//! Reply drafts: the solved tickets' replies, indexed by their questions, offered on a new
//! customer message that asks the same.
//!
//! [`ReplySync`] keeps a vector collection (its own, beside the knowledge base's: embedded under
//! `data_dir/replies`, or `<prefix>replies` on a Qdrant server) in step with Postgres's
//! `reply_examples` (written scrubbed by `switchboard_tickets::drafts` when a ticket is
//! resolved). It follows the examples' `revision`: a new or changed example is embedded and
//! upserted, a tombstone (reopened, erased, expired) deleted. Revisions come from a sequence, so
//! one taken by a transaction that commits late can show up after higher ones: the sync keeps
//! the revisions it applied above its low watermark and waits for a missing one for
//! [`GAP_WAIT`] before taking it as rolled back. Examples older than `max_age_days` are retired
//! (tombstoned) by the same pass.
//!
//! [`Drafts::search`] runs for each customer message in the ticketing stage: the message's
//! embedding against the examples' questions (hybrid, as the knowledge base), hits at or above
//! `min_similarity`, one per distinct reply, at most `count`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use sqlx::Row;
use switchboard_core::Error;
use switchboard_tickets::drafts::{normalize, StoredDraft};
use uuid::Uuid;

use crate::kb::{Article, SharedKb};

/// `kb.drafts`: reply drafts from solved tickets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DraftsConfig {
    pub enabled: bool,
    /// Drafts offered per customer message.
    pub count: usize,
    /// A solved ticket's reply is offered when its question is at least this similar (cosine).
    pub min_similarity: f32,
    /// Examples older than this leave the index.
    pub max_age_days: u32,
    /// How often the index follows Postgres.
    pub sync_every_ms: u64,
}

impl Default for DraftsConfig {
    fn default() -> Self {
        DraftsConfig {
            enabled: true,
            count: 3,
            min_similarity: 0.75,
            max_age_days: 180,
            sync_every_ms: 2_000,
        }
    }
}

impl DraftsConfig {
    /// The values a running index can use.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=10).contains(&self.count) {
            return Err("kb.drafts.count must be 1 to 10".into());
        }
        if !(0.0..=1.0).contains(&self.min_similarity) {
            return Err("kb.drafts.min_similarity must be 0 to 1".into());
        }
        if self.max_age_days == 0 {
            return Err("kb.drafts.max_age_days must be at least 1".into());
        }
        Ok(())
    }
}

/// How long a missing revision is waited for before it counts as rolled back.
pub const GAP_WAIT: Duration = Duration::from_secs(60);

/// The most examples one sync step reads.
const PAGE: i64 = 256;

/// The drafts index and its settings, as the ticketing stage uses them.
#[derive(Debug, Clone)]
pub struct Drafts {
    pub index: SharedKb,
    pub config: DraftsConfig,
}

impl Drafts {
    /// Drafts for a customer message (its embedding and text): the closest solved tickets'
    /// replies, one per distinct reply; empty without hits. `None` when the store cannot be
    /// searched (logged: a draft is a help, never a reason to hold a message, and the drafts
    /// the ticket already has stay).
    pub async fn search(&self, embedding: &[f32], text: &str) -> Option<Vec<StoredDraft>> {
        let want = self.config.count.max(1);
        let hits = match self.index.search(embedding, text, want * 4).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "drafts search failed");
                return None;
            }
        };
        let mut hits: Vec<_> = hits
            .into_iter()
            .filter(|h| h.similarity >= self.config.min_similarity)
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        let mut out: Vec<StoredDraft> = Vec::with_capacity(want);
        let mut seen = std::collections::HashSet::new();
        for h in hits {
            if out.len() == want {
                break;
            }
            let example = match self.index.get(h.article_id).await {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "drafts index read failed");
                    continue;
                }
            };
            if example.body.trim().is_empty() || !seen.insert(normalize(&example.body)) {
                continue;
            }
            out.push(StoredDraft {
                id: example.id,
                text: example.body,
                similarity: h.similarity,
                category: example.category,
                intent: example.intent,
            });
        }
        Some(out)
    }
}

/// Where the index stands against Postgres.
#[derive(Debug, Default)]
struct Mark {
    encoder: String,
    /// Every revision at or below this is applied (or given up as rolled back).
    low: i64,
    /// Revisions above `low` already applied.
    applied: BTreeSet<i64>,
    /// Waits for missing revisions: every revision missing at or below the first field (the
    /// highest applied one when the gap was first seen) is given up once the wait that began at
    /// the second is over, so the gaps one pass finds expire together, not one a minute.
    waits: Vec<(i64, Instant)>,
}

impl Mark {
    /// Moves `low` over the applied revisions right above it and over the missing ones waited
    /// for long enough; starts the wait of newly seen gaps.
    fn advance(&mut self, now: Instant) {
        loop {
            let next = self.low + 1;
            if self.applied.remove(&next) {
                self.low = next;
                continue;
            }
            let Some(&highest) = self.applied.iter().next_back() else {
                break;
            };
            if highest < next {
                break;
            }
            // `next` is missing below an applied revision.
            match self.waits.iter().find(|(h, _)| *h >= next) {
                Some(&(h, since)) if now.duration_since(since) >= GAP_WAIT => {
                    // Give up the whole run of missing revisions up to the next applied one (as
                    // far as this wait covers).
                    let applied_next = self
                        .applied
                        .range(next..)
                        .next()
                        .copied()
                        .unwrap_or(highest);
                    self.low = (applied_next - 1).min(h).max(next);
                }
                Some(_) => break,
                None => {
                    self.waits.push((highest, now));
                    break;
                }
            }
        }
        let low = self.low;
        self.waits.retain(|(h, _)| *h > low);
    }
}

/// What one sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub embedded: usize,
    pub removed: usize,
    pub retired: u64,
}

/// Keeps the drafts index in step with `reply_examples`.
#[derive(Debug)]
pub struct ReplySync {
    index: SharedKb,
    pool: sqlx::PgPool,
    config: DraftsConfig,
    mark: tokio::sync::Mutex<Option<Mark>>,
    /// The last report, for the logs.
    last: Mutex<SyncReport>,
}

impl ReplySync {
    pub fn new(index: SharedKb, pool: sqlx::PgPool, config: DraftsConfig) -> Self {
        ReplySync {
            index,
            pool,
            config,
            mark: tokio::sync::Mutex::new(None),
            last: Mutex::new(SyncReport::default()),
        }
    }

    /// Where to start: after what the index already holds with this encoder (less a margin the
    /// examples committed late may sit in), or from scratch with a new encoder (a hot swap
    /// re-embeds every example).
    async fn start_mark(&self, encoder: &str) -> Result<Mark, Error> {
        let same = self.index.encoder().await?.as_deref() == Some(encoder);
        let held = self.index.all().await?;
        if !same {
            for a in &held {
                self.index.delete(a.id).await?;
            }
            return Ok(Mark {
                encoder: encoder.to_string(),
                ..Mark::default()
            });
        }
        let revisions: BTreeSet<i64> = held.iter().filter_map(|a| a.revision).collect();
        let top = revisions.iter().next_back().copied().unwrap_or(0);
        let low = (top - 1_000).max(0);
        Ok(Mark {
            encoder: encoder.to_string(),
            low,
            applied: revisions.into_iter().filter(|r| *r > low).collect(),
            waits: Vec::new(),
        })
    }

    /// Brings the index up to Postgres for `predictor`'s encoder.
    pub async fn sync(
        &self,
        predictor: &switchboard_models::predictor::Predictor,
    ) -> Result<SyncReport, Error> {
        let encoder = crate::kb::encoder_version(predictor);
        let mut report = SyncReport {
            retired: self.retire().await?,
            ..SyncReport::default()
        };
        let mut guard = self.mark.lock().await;
        if guard.as_ref().is_none_or(|m| m.encoder != encoder) {
            *guard = Some(self.start_mark(&encoder).await?);
        }
        let Some(mark) = guard.as_mut() else {
            return Ok(report);
        };
        let mut after = mark.low;
        loop {
            let rows = sqlx::query(
                "SELECT ticket_id, category, intent, question, reply, revision, deleted_at IS NOT NULL AS gone
                 FROM reply_examples WHERE revision > $1 ORDER BY revision LIMIT $2",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.try_get("revision")?;
            let full = rows.len() as i64 == PAGE;
            let mut fresh: Vec<Article> = Vec::new();
            for r in rows {
                let revision: i64 = r.try_get("revision")?;
                if mark.applied.contains(&revision) {
                    continue;
                }
                let id: Uuid = r.try_get("ticket_id")?;
                if r.try_get::<bool, _>("gone")? {
                    self.index.delete(id).await?;
                    report.removed += 1;
                    mark.applied.insert(revision);
                } else {
                    fresh.push(Article {
                        id,
                        title: String::new(),
                        category: r.try_get("category")?,
                        intent: r.try_get("intent")?,
                        question: Some(r.try_get("question")?),
                        body: r.try_get("reply")?,
                        source: Some("ticket".into()),
                        revision: Some(revision),
                    });
                }
            }
            report.embedded += crate::kb::embed_and_upsert(
                &*self.index,
                predictor,
                &fresh,
                |a| a.question.clone().unwrap_or_default(),
                &encoder,
            )
            .await?;
            // Applied once in the index: a failed embedding is tried again next pass.
            mark.applied.extend(fresh.iter().filter_map(|a| a.revision));
            if !full {
                break;
            }
        }
        mark.advance(Instant::now());
        if report != SyncReport::default() {
            tracing::info!(
                embedded = report.embedded,
                removed = report.removed,
                retired = report.retired,
                low = mark.low,
                encoder = encoder.as_str(),
                "drafts index synced"
            );
        }
        *self.last.lock() = report;
        Ok(report)
    }

    /// Tombstones up to 500 examples older than `max_age_days` (any instance may; the update is
    /// the same whoever makes it).
    async fn retire(&self) -> Result<u64, Error> {
        Ok(sqlx::query(
            "UPDATE reply_examples SET deleted_at = now(), question = '', reply = '',
                    revision = nextval('reply_example_revision_seq')
             WHERE ticket_id IN (SELECT ticket_id FROM reply_examples
                                 WHERE deleted_at IS NULL AND solved_at < $1 - make_interval(days => $2)
                                 LIMIT 500)",
        )
        .bind(switchboard_core::clock::now())
        .bind(self.config.max_age_days as i32)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Syncs every `sync_every_ms` until shutdown (failures are logged and retried).
    pub async fn run(
        self: Arc<Self>,
        predictor: switchboard_models::predictor::Predictor,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let every = Duration::from_millis(self.config.sync_every_ms.max(100));
        while switchboard_core::runtime::pause(every, &shutdown).await {
            if let Err(e) = self.sync(&predictor).await {
                tracing::warn!(error = %e, "drafts index sync failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(low: i64, applied: &[i64]) -> Mark {
        Mark {
            low,
            applied: applied.iter().copied().collect(),
            ..Mark::default()
        }
    }

    #[test]
    fn the_low_mark_moves_over_what_was_applied() {
        let mut m = mark(3, &[4, 5, 6]);
        m.advance(Instant::now());
        assert_eq!(m.low, 6);
        assert!(m.applied.is_empty());
    }

    #[test]
    fn a_gap_holds_the_mark_until_it_fills_or_times_out() {
        let t0 = Instant::now();
        let mut m = mark(3, &[5, 6]);
        m.advance(t0);
        assert_eq!(m.low, 3, "4 may still commit");
        m.advance(t0 + GAP_WAIT / 2);
        assert_eq!(m.low, 3);
        // 4 commits late and is applied: the mark moves over everything.
        m.applied.insert(4);
        m.advance(t0 + GAP_WAIT / 2);
        assert_eq!(m.low, 6);
        assert!(m.waits.is_empty());
        // A gap that never fills is given up after the wait.
        let mut m = mark(3, &[5]);
        m.advance(t0);
        m.advance(t0 + GAP_WAIT);
        assert_eq!(m.low, 5);
    }

    #[test]
    fn the_gaps_one_pass_finds_expire_together() {
        let t0 = Instant::now();
        // Four revisions missing between applied ones (upserts that took a number and
        // conflicted): one wait covers them all.
        let mut m = mark(0, &[2, 4, 6, 8, 9]);
        m.advance(t0);
        assert_eq!(m.low, 0);
        m.advance(t0 + GAP_WAIT);
        assert_eq!(m.low, 9);
        assert!(m.applied.is_empty() && m.waits.is_empty());
        // A gap above what the first wait covered waits on its own.
        let mut m = mark(0, &[2]);
        m.advance(t0);
        m.applied.extend([5]);
        m.advance(t0 + GAP_WAIT);
        assert_eq!(m.low, 2, "3 and 4 were not seen missing a minute ago");
        m.advance(t0 + GAP_WAIT * 2);
        assert_eq!(m.low, 5);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let bad = |f: fn(&mut DraftsConfig)| {
            let mut c = DraftsConfig::default();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(DraftsConfig::default().check().is_ok());
        assert!(bad(|c| c.count = 0).contains("count"));
        assert!(bad(|c| c.min_similarity = 1.5).contains("min_similarity"));
        assert!(bad(|c| c.max_age_days = 0).contains("max_age_days"));
    }
}
