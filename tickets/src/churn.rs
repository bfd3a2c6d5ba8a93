//! Churn risk: how likely a customer is to stop buying, from what Switchboard already holds
//! about them, with every contributing factor named.
//!
//! The score is a logistic model over transparent signals ([`Signals`], loaded from Postgres by
//! [`signals`]): the sentiment of their recent messages and its fall against the earlier ones,
//! contacts in the last 30 days, the longest wait for a first answer, SLA breaches, reopened tickets, poor satisfaction ratings,
//! returns and refunds, how long since their last order and how many they placed in a year. Each
//! signal becomes a feature ([`features`]); the score is `sigmoid(intercept + Σ weight ×
//! feature)`, and each term is reported as a [`Factor`] with what it says, so an agent sees why
//! (the largest first). The hand-set weights ([`Weights::default`]) follow the support
//! literature's ordering of churn drivers (unresolved problems and poor service over product
//! returns). Where outcomes exist (orders placed again or not, from the shop's webhooks),
//! [`evaluate`] fits them ([`fit`]: a logistic regression held to the hand-set weights by a prior,
//! every weight keeping its sign) on 7 in 10 customers and reports the AUC of both on the other
//! 3 in 10; a stored, activated fit ([`store_fit`]) scores customers from then on.
//!
//! [`score`] is pure and monotone in every risk signal (property-tested); [`signals`] reads one
//! set-based query for many customers at once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

/// What Switchboard holds about one customer, at a moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Mean sentiment (-1 to 1) of the last 5 messages they wrote in 90 days.
    pub sentiment_recent: Option<f64>,
    /// Mean sentiment of their messages in 90 days before those 5.
    pub sentiment_before: Option<f64>,
    /// Tickets they opened in the last 30 days.
    pub contacts_30d: i64,
    /// The longest any ticket of theirs in 90 days waited for a first answer, in hours (one
    /// still waiting counts until now, at most a day).
    pub max_wait_hours: Option<f64>,
    /// SLA clocks breached on their tickets in 90 days.
    pub sla_breaches_90d: i64,
    /// Times their tickets were reopened, on tickets of the last 90 days.
    pub reopened_90d: i64,
    /// Satisfaction ratings of 1 or 2 in 90 days.
    pub csat_low_90d: i64,
    /// Returns requested in 90 days.
    pub returns_90d: i64,
    /// Refunds made in 90 days.
    pub refunds_90d: i64,
    /// Days since their newest order (none: no order known).
    pub days_since_order: Option<f64>,
    /// Orders in the last 365 days.
    pub orders_365d: i64,
    /// What those orders came to (cents).
    pub value_365d_cents: i64,
}

/// One feature's weight (what a unit of it adds to the log-odds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Weights {
    pub intercept: f64,
    pub negative_sentiment: f64,
    pub falling_sentiment: f64,
    pub repeat_contacts: f64,
    pub slow_answer: f64,
    pub sla_breaches: f64,
    pub reopened: f64,
    pub poor_ratings: f64,
    pub returns: f64,
    pub refunds: f64,
    pub order_lapse: f64,
    /// Negative: a frequent buyer is less likely to leave.
    pub loyalty: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            intercept: -2.2,
            negative_sentiment: 1.6,
            falling_sentiment: 0.8,
            repeat_contacts: 0.7,
            slow_answer: 0.6,
            sla_breaches: 0.9,
            reopened: 0.8,
            poor_ratings: 1.3,
            returns: 0.5,
            refunds: 0.4,
            order_lapse: 0.9,
            loyalty: -0.5,
        }
    }
}

/// One contribution to a customer's risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Factor {
    /// `negative_sentiment`, `falling_sentiment`, `repeat_contacts`, `slow_answer`, `sla_breaches`,
    /// `reopened`, `poor_ratings`, `returns`, `refunds`, `order_lapse`, `loyalty`.
    pub name: String,
    /// What it adds to the log-odds (negative: it lowers the risk).
    pub contribution: f64,
    /// In words, for the agent (`3 SLA breaches in 90 days`).
    pub says: String,
}

/// A customer's churn risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Risk {
    /// 0 to 1.
    pub score: f64,
    /// `low` (< 0.3), `medium`, `high` (>= 0.6).
    pub level: String,
    /// The factors that moved it, the largest first (those that add nothing are left out).
    pub factors: Vec<Factor>,
}

/// The score at and above which a risk is `high`.
pub const HIGH: f64 = 0.6;
/// The score below which a risk is `low`.
pub const LOW: f64 = 0.3;

/// Each feature with its value (non-negative; larger is riskier except `loyalty`) and what it
/// says, in [`Weights`] order after the intercept.
pub fn features(s: &Signals) -> Vec<(&'static str, f64, String)> {
    let ln = |n: i64| (n.max(0) as f64).ln_1p();
    let mut out = Vec::with_capacity(10);
    let recent = s.sentiment_recent.filter(|v| v.is_finite());
    let before = s.sentiment_before.filter(|v| v.is_finite());
    let negative = recent.map_or(0.0, |r| (-r).clamp(0.0, 1.0));
    out.push((
        "negative_sentiment",
        negative,
        format!("recent messages' sentiment {:.2}", recent.unwrap_or(0.0)),
    ));
    let falling = match (recent, before) {
        (Some(r), Some(b)) => (b - r).clamp(0.0, 2.0),
        _ => 0.0,
    };
    out.push((
        "falling_sentiment",
        falling,
        format!("sentiment fell by {falling:.2} against earlier messages"),
    ));
    out.push((
        "repeat_contacts",
        ln(s.contacts_30d.saturating_sub(1)),
        format!("{} tickets in 30 days", s.contacts_30d.max(0)),
    ));
    let wait = s
        .max_wait_hours
        .filter(|w| w.is_finite())
        .map_or(0.0, |w| w.clamp(0.0, 24.0));
    out.push((
        "slow_answer",
        wait.ln_1p(),
        format!("waited up to {wait:.1} h for a first answer"),
    ));
    out.push((
        "sla_breaches",
        ln(s.sla_breaches_90d),
        format!("{} SLA breaches in 90 days", s.sla_breaches_90d.max(0)),
    ));
    out.push((
        "reopened",
        ln(s.reopened_90d),
        format!("reopened {} times in 90 days", s.reopened_90d.max(0)),
    ));
    out.push((
        "poor_ratings",
        ln(s.csat_low_90d),
        format!("{} ratings of 1 or 2 in 90 days", s.csat_low_90d.max(0)),
    ));
    out.push((
        "returns",
        ln(s.returns_90d),
        format!("{} returns in 90 days", s.returns_90d.max(0)),
    ));
    out.push((
        "refunds",
        ln(s.refunds_90d),
        format!("{} refunds in 90 days", s.refunds_90d.max(0)),
    ));
    let lapse = s
        .days_since_order
        .filter(|d| d.is_finite())
        .map_or(0.0, |d| (d / 90.0).clamp(0.0, 2.0));
    out.push((
        "order_lapse",
        lapse,
        match s.days_since_order.filter(|d| d.is_finite()) {
            Some(d) => format!("last order {d:.0} days ago"),
            None => "no order known".into(),
        },
    ));
    out.push((
        "loyalty",
        ln(s.orders_365d),
        format!(
            "{} orders in a year ({:.2} in all)",
            s.orders_365d.max(0),
            s.value_365d_cents.max(0) as f64 / 100.0
        ),
    ));
    out
}

fn weight(w: &Weights, name: &str) -> f64 {
    match name {
        "negative_sentiment" => w.negative_sentiment,
        "falling_sentiment" => w.falling_sentiment,
        "repeat_contacts" => w.repeat_contacts,
        "slow_answer" => w.slow_answer,
        "sla_breaches" => w.sla_breaches,
        "reopened" => w.reopened,
        "poor_ratings" => w.poor_ratings,
        "returns" => w.returns,
        "refunds" => w.refunds,
        "order_lapse" => w.order_lapse,
        "loyalty" => w.loyalty,
        _ => 0.0,
    }
}

/// The risk `s` shows under `w`.
pub fn score(s: &Signals, w: &Weights) -> Risk {
    let mut logit = w.intercept;
    let mut factors: Vec<Factor> = features(s)
        .into_iter()
        .map(|(name, x, says)| {
            let contribution = weight(w, name) * x;
            logit += contribution;
            Factor {
                name: name.to_string(),
                contribution,
                says,
            }
        })
        .filter(|f| f.contribution.abs() > 1e-9)
        .collect();
    factors.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
    let score = 1.0 / (1.0 + (-logit).exp());
    let level = if score >= HIGH {
        "high"
    } else if score < LOW {
        "low"
    } else {
        "medium"
    };
    Risk {
        score,
        level: level.into(),
        factors,
    }
}

/// The signals of `customers` at `now`, one set-based query (customers without any history
/// come back with empty signals). Only what happened up to `now` counts, so a fit can read the
/// signals as they stood at a moment in the past.
pub async fn signals(
    conn: &mut sqlx::PgConnection,
    customers: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, Signals)>, sqlx::Error> {
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH c AS (SELECT unnest($1::uuid[]) AS id),
         recent_msgs AS (
             SELECT t.customer_id, m.sentiment,
                    row_number() OVER (PARTITION BY t.customer_id ORDER BY m.received_at DESC) AS k
             FROM messages m JOIN tickets t ON t.id = m.ticket_id
             WHERE t.customer_id IN (SELECT id FROM c) AND m.direction = 'inbound'
               AND m.sentiment IS NOT NULL AND m.received_at > $2 - interval '90 days'
               AND m.received_at <= $2),
         trend AS (
             SELECT customer_id, avg(sentiment) FILTER (WHERE k <= 5)::float8 AS recent,
                    avg(sentiment) FILTER (WHERE k > 5)::float8 AS before
             FROM recent_msgs GROUP BY customer_id)
         SELECT c.id, trend.recent AS sentiment_recent, trend.before AS sentiment_before,
            (SELECT count(*) FROM tickets t WHERE t.customer_id = c.id AND t.created_at > $2 - interval '30 days' AND t.created_at <= $2) AS contacts_30d,
            (SELECT max(extract(epoch FROM LEAST(COALESCE(t.first_response_at, $2), $2, t.created_at + interval '1 day')
                                   - t.created_at))::float8 / 3600
               FROM tickets t WHERE t.customer_id = c.id AND t.created_at > $2 - interval '90 days'
                 AND t.created_at <= $2 AND (t.first_response_at IS NOT NULL OR t.status IN ('open', 'pending'))) AS max_wait_hours,
            (SELECT count(*) FROM sla_clocks s JOIN tickets t ON t.id = s.ticket_id
               WHERE t.customer_id = c.id AND s.breached_at > $2 - interval '90 days' AND s.breached_at <= $2) AS sla_breaches_90d,
            (SELECT COALESCE(sum(t.reopen_count), 0)::int8 FROM tickets t
               WHERE t.customer_id = c.id AND t.created_at > $2 - interval '90 days' AND t.created_at <= $2) AS reopened_90d,
            (SELECT count(*) FROM csat s JOIN tickets t ON t.id = s.ticket_id
               WHERE t.customer_id = c.id AND s.rating <= 2 AND s.answered_at > $2 - interval '90 days'
                 AND s.answered_at <= $2) AS csat_low_90d,
            (SELECT count(*) FROM returns r WHERE r.customer_id = c.id AND r.created_at > $2 - interval '90 days'
               AND r.created_at <= $2) AS returns_90d,
            (SELECT count(*) FROM order_actions a JOIN orders o ON o.id = a.order_id
               WHERE o.customer_id = c.id AND a.kind = 'refund' AND a.state = 'done'
                 AND a.created_at > $2 - interval '90 days' AND a.created_at <= $2) AS refunds_90d,
            (SELECT extract(epoch FROM $2 - max(o.created_at))::float8 / 86400 FROM orders o WHERE o.customer_id = c.id AND o.created_at <= $2) AS days_since_order,
            (SELECT count(*) FROM orders o WHERE o.customer_id = c.id AND o.created_at > $2 - interval '365 days'
               AND o.created_at <= $2) AS orders_365d,
            (SELECT COALESCE(sum(o.total_cents), 0)::int8 FROM orders o
               WHERE o.customer_id = c.id AND o.created_at > $2 - interval '365 days'
                 AND o.created_at <= $2) AS value_365d_cents
         FROM c LEFT JOIN trend ON trend.customer_id = c.id",
    )
    .bind(customers)
    .bind(now)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((
            r.try_get("id")?,
            Signals {
                sentiment_recent: r.try_get("sentiment_recent")?,
                sentiment_before: r.try_get("sentiment_before")?,
                contacts_30d: r.try_get("contacts_30d")?,
                max_wait_hours: r.try_get("max_wait_hours")?,
                sla_breaches_90d: r.try_get("sla_breaches_90d")?,
                reopened_90d: r.try_get("reopened_90d")?,
                csat_low_90d: r.try_get("csat_low_90d")?,
                returns_90d: r.try_get("returns_90d")?,
                refunds_90d: r.try_get("refunds_90d")?,
                days_since_order: r.try_get("days_since_order")?,
                orders_365d: r.try_get("orders_365d")?,
                value_365d_cents: r.try_get("value_365d_cents")?,
            },
        ));
    }
    Ok(out)
}

/// The features' names, in [`features`] order (and [`Weights`] order after the intercept).
pub const FEATURE_NAMES: [&str; 11] = [
    "negative_sentiment",
    "falling_sentiment",
    "repeat_contacts",
    "slow_answer",
    "sla_breaches",
    "reopened",
    "poor_ratings",
    "returns",
    "refunds",
    "order_lapse",
    "loyalty",
];

impl Weights {
    /// The intercept, then each feature's weight in [`FEATURE_NAMES`] order.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(FEATURE_NAMES.len() + 1);
        v.push(self.intercept);
        v.extend(FEATURE_NAMES.iter().map(|n| weight(self, n)));
        v
    }

    /// The inverse of [`Weights::to_vec`] (missing values are the hand-set ones).
    pub fn from_vec(v: &[f64]) -> Weights {
        let d = Weights::default();
        let at = |i: usize, or: f64| v.get(i).copied().filter(|x| x.is_finite()).unwrap_or(or);
        Weights {
            intercept: at(0, d.intercept),
            negative_sentiment: at(1, d.negative_sentiment),
            falling_sentiment: at(2, d.falling_sentiment),
            repeat_contacts: at(3, d.repeat_contacts),
            slow_answer: at(4, d.slow_answer),
            sla_breaches: at(5, d.sla_breaches),
            reopened: at(6, d.reopened),
            poor_ratings: at(7, d.poor_ratings),
            returns: at(8, d.returns),
            refunds: at(9, d.refunds),
            order_lapse: at(10, d.order_lapse),
            loyalty: at(11, d.loyalty),
        }
    }
}

/// How strongly a fit is held to the hand-set weights (the precision of the Gaussian prior
/// centred on them): with a few hundred outcomes the data moves them a little, with many
/// thousands it decides.
pub const PRIOR_STRENGTH: f64 = 1.0;

/// Fits the weights to outcomes (`(signals, churned)` per customer): the maximum a-posteriori
/// logistic regression with a Gaussian prior of precision `strength` centred on `prior`, by
/// Newton's method (convex: a few steps converge). Every weight keeps the sign the score
/// promises (risk signals never lower the risk, loyalty never raises it), so a fitted score is
/// as monotone and as explainable as the hand-set one.
pub fn fit(examples: &[(Signals, bool)], prior: &Weights, strength: f64) -> Weights {
    use nalgebra::{DMatrix, DVector};
    let p = FEATURE_NAMES.len() + 1;
    let strength = if strength.is_finite() && strength > 0.0 {
        strength
    } else {
        PRIOR_STRENGTH
    };
    let rows: Vec<(Vec<f64>, f64)> = examples
        .iter()
        .map(|(s, churned)| {
            let mut x = Vec::with_capacity(p);
            x.push(1.0);
            x.extend(features(s).into_iter().map(|f| f.1));
            (x, if *churned { 1.0 } else { 0.0 })
        })
        .collect();
    let mu = prior.to_vec();
    let mut w = mu.clone();
    // The sign each weight must keep (index 0, the intercept, is free).
    let sign = |j: usize| -> f64 {
        match FEATURE_NAMES.get(j.wrapping_sub(1)) {
            Some(&"loyalty") => -1.0,
            Some(_) => 1.0,
            None => 0.0,
        }
    };
    for _ in 0..50 {
        let mut g = DVector::from_iterator(p, (0..p).map(|j| strength * (w[j] - mu[j])));
        let mut h = DMatrix::<f64>::identity(p, p) * strength;
        for (x, y) in &rows {
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let q = 1.0 / (1.0 + (-z).exp());
            let (r, s) = (q - y, q * (1.0 - q));
            for j in 0..p {
                g[j] += r * x[j];
                for k in 0..p {
                    h[(j, k)] += s * x[j] * x[k];
                }
            }
        }
        let Some(step) = h.cholesky().map(|c| c.solve(&g)) else {
            break;
        };
        for j in 0..p {
            w[j] -= step[j];
            let sg = sign(j);
            if sg != 0.0 && w[j] * sg < 0.0 {
                w[j] = 0.0;
            }
        }
        if step.norm() < 1e-9 {
            break;
        }
    }
    Weights::from_vec(&w)
}

/// The area under the ROC curve of a score telling the positives apart (the Mann-Whitney
/// statistic, ties counted half); none without both classes.
pub fn auc(pairs: &[(f64, bool)]) -> Option<f64> {
    let mut sorted: Vec<(f64, bool)> = pairs.iter().copied().filter(|p| p.0.is_finite()).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|p| p.1).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of the positives' ranks, ties given their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mean_rank * sorted[i..=j].iter().filter(|p| p.1).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Whether a customer is in the held-out share (3 in 10) a fit is judged on: a stable hash of
/// the id, so the same customers are held out on every fit.
pub fn held_out(customer: Uuid) -> bool {
    let h = customer
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    h % 10 < 3
}

/// The most customers one fit reads (the most recent contacts first).
pub const MAX_FIT_CUSTOMERS: i64 = 100_000;

/// Who churned: every customer who wrote in the 90 days up to `as_of` (the newest
/// [`MAX_FIT_CUSTOMERS`]) and whether they placed no order in the `horizon_days` after it (the
/// order webhooks' `created_at`).
/// `among`: only these customers (none: all).
pub async fn outcomes(
    conn: &mut sqlx::PgConnection,
    as_of: DateTime<Utc>,
    horizon_days: u32,
    among: Option<&[Uuid]>,
) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.customer_id,
                NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
                              AND o.created_at > $1 AND o.created_at <= $1 + make_interval(days => $2))
         FROM (SELECT customer_id, max(created_at) AS last FROM tickets
               WHERE created_at > $1 - interval '90 days' AND created_at <= $1
                 AND ($4::uuid[] IS NULL OR customer_id = ANY($4))
               GROUP BY customer_id ORDER BY max(created_at) DESC LIMIT $3) c",
    )
    .bind(as_of)
    .bind(i32::try_from(horizon_days).unwrap_or(i32::MAX))
    .bind(MAX_FIT_CUSTOMERS)
    .bind(among)
    .fetch_all(conn)
    .await
}

/// How much better a fit's held-out AUC must be than the hand-set weights' to be activated.
pub const MIN_GAIN: f64 = 0.02;

/// A fit of the weights on outcomes and how it does on customers it never saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FitReport {
    /// The moment the signals were read at; outcomes are the `horizon_days` after it.
    pub as_of: DateTime<Utc>,
    pub horizon_days: u32,
    pub train_customers: usize,
    pub train_churned: usize,
    pub held_out_customers: usize,
    pub held_out_churned: usize,
    /// The hand-set weights' AUC on the held-out customers (none: one class only).
    pub auc_hand_set: Option<f64>,
    /// The fitted weights' AUC there.
    pub auc_fitted: Option<f64>,
    /// The fitted weights, in [`FEATURE_NAMES`] order after the intercept.
    pub weights: Weights,
}

impl FitReport {
    /// Whether the fitted weights should replace the hand-set ones: enough of both outcomes
    /// held out (20 each) and a held-out AUC better by [`MIN_GAIN`] at least (a noise-sized gain
    /// is no reason to change how customers are scored).
    pub fn better(&self) -> bool {
        let churned = self.held_out_churned;
        let stayed = self.held_out_customers.saturating_sub(churned);
        churned >= 20
            && stayed >= 20
            && matches!((self.auc_fitted, self.auc_hand_set), (Some(f), Some(h)) if f >= h + MIN_GAIN)
    }
}

/// Fits the weights on the outcomes after `as_of` (7 in 10 customers; `among`: only these) and
/// judges them against the hand-set ones on the other 3 in 10.
pub async fn evaluate(
    conn: &mut sqlx::PgConnection,
    as_of: DateTime<Utc>,
    horizon_days: u32,
    among: Option<&[Uuid]>,
) -> Result<FitReport, sqlx::Error> {
    let outcomes = outcomes(conn, as_of, horizon_days, among).await?;
    let ids: Vec<Uuid> = outcomes.iter().map(|o| o.0).collect();
    let by_id: std::collections::HashMap<Uuid, Signals> =
        signals(conn, &ids, as_of).await?.into_iter().collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (id, churned) in outcomes {
        let s = by_id.get(&id).cloned().unwrap_or_default();
        if held_out(id) {
            test.push((s, churned));
        } else {
            train.push((s, churned));
        }
    }
    let hand = Weights::default();
    let fitted = fit(&train, &hand, PRIOR_STRENGTH);
    let judged = |w: &Weights| {
        auc(&test
            .iter()
            .map(|(s, c)| (score(s, w).score, *c))
            .collect::<Vec<_>>())
    };
    Ok(FitReport {
        as_of,
        horizon_days,
        train_customers: train.len(),
        train_churned: train.iter().filter(|e| e.1).count(),
        held_out_customers: test.len(),
        held_out_churned: test.iter().filter(|e| e.1).count(),
        auc_hand_set: judged(&hand),
        auc_fitted: judged(&fitted),
        weights: fitted,
    })
}

/// Keeps a fit (`churn_models`); it scores customers from now on when `activate` (the newest
/// active fit wins; none: the hand-set weights).
pub async fn store_fit(
    conn: &mut sqlx::PgConnection,
    report: &FitReport,
    activate: bool,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO churn_models (id, fitted_at, report, active) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(switchboard_core::clock::now())
        .bind(sqlx::types::Json(report))
        .bind(activate)
        .execute(conn)
        .await?;
    Ok(id)
}

/// The weights customers are scored with: the newest active fit's, else the hand-set ones.
/// A stored fit that cannot be read as weights (edited by hand, written by another version)
/// falls back to the hand-set ones with a warning: a score is never a reason to refuse a
/// message.
pub async fn active_weights(conn: &mut sqlx::PgConnection) -> Result<Weights, sqlx::Error> {
    let w: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT report->'weights' FROM churn_models WHERE active ORDER BY fitted_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(match w.map(serde_json::from_value::<Weights>) {
        None => Weights::default(),
        Some(Ok(w)) if w.to_vec().iter().all(|x| x.is_finite()) => w,
        Some(_) => {
            tracing::warn!(
                "the active churn fit's weights cannot be read; scoring with the hand-set ones"
            );
            Weights::default()
        }
    })
}

/// The newest active fit, if any (none when it cannot be read).
pub async fn active_fit(conn: &mut sqlx::PgConnection) -> Result<Option<FitReport>, sqlx::Error> {
    let r: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT report FROM churn_models WHERE active ORDER BY fitted_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(r.and_then(|v| serde_json::from_value(v).ok()))
}

/// Counts a reopening of `ticket_id` (a churn signal).
pub async fn reopened(conn: &mut sqlx::PgConnection, ticket_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tickets SET reopen_count = reopen_count + 1 WHERE id = $1")
        .bind(ticket_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// One customer's risk at `now`.
pub async fn risk_of(
    conn: &mut sqlx::PgConnection,
    customer: Uuid,
    now: DateTime<Utc>,
) -> Result<Risk, sqlx::Error> {
    let s = signals(conn, &[customer], now)
        .await?
        .pop()
        .map(|(_, s)| s)
        .unwrap_or_default();
    let w = active_weights(conn).await?;
    Ok(score(&s, &w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_quiet_loyal_customer_is_low_and_a_badly_served_one_high() {
        let w = Weights::default();
        let quiet = Signals {
            sentiment_recent: Some(0.4),
            contacts_30d: 1,
            days_since_order: Some(10.0),
            orders_365d: 6,
            value_365d_cents: 60_000,
            ..Signals::default()
        };
        let r = score(&quiet, &w);
        assert_eq!(r.level, "low", "{r:?}");
        let angry = Signals {
            max_wait_hours: Some(5.0),
            sentiment_recent: Some(-0.8),
            sentiment_before: Some(0.3),
            contacts_30d: 4,
            sla_breaches_90d: 3,
            reopened_90d: 2,
            csat_low_90d: 2,
            days_since_order: Some(120.0),
            orders_365d: 1,
            ..Signals::default()
        };
        let r = score(&angry, &w);
        assert_eq!(r.level, "high", "{r:?}");
        // The factors are named, the largest first, and add up to the score.
        let names: Vec<&str> = r.factors.iter().map(|f| f.name.as_str()).collect();
        assert!(names.contains(&"sla_breaches") && names.contains(&"poor_ratings"));
        assert!(r
            .factors
            .windows(2)
            .all(|p| p[0].contribution.abs() >= p[1].contribution.abs()));
        let logit = w.intercept + r.factors.iter().map(|f| f.contribution).sum::<f64>();
        assert!((1.0 / (1.0 + (-logit).exp()) - r.score).abs() < 1e-12);
        assert!(r
            .factors
            .iter()
            .any(|f| f.says == "3 SLA breaches in 90 days"));
    }

    #[test]
    fn nonsense_signals_give_a_score_not_a_panic() {
        let s = Signals {
            sentiment_recent: Some(f64::NAN),
            sentiment_before: Some(f64::INFINITY),
            contacts_30d: i64::MIN,
            sla_breaches_90d: i64::MAX,
            days_since_order: Some(-5.0),
            value_365d_cents: i64::MIN,
            ..Signals::default()
        };
        let r = score(&s, &Weights::default());
        assert!((0.0..=1.0).contains(&r.score), "{r:?}");
    }

    fn signals() -> impl Strategy<Value = Signals> {
        (
            (
                proptest::option::of(-1.0f64..=1.0),
                proptest::option::of(-1.0f64..=1.0),
                0i64..50,
                0i64..50,
                0i64..50,
                0i64..50,
            ),
            (
                0i64..50,
                0i64..50,
                proptest::option::of(0.0f64..1000.0),
                0i64..100,
            ),
        )
            .prop_map(|((sr, sb, c, b, ro, cl), (rt, rf, d, o))| Signals {
                sentiment_recent: sr,
                sentiment_before: sb,
                contacts_30d: c,
                max_wait_hours: d.map(|d| d / 40.0),
                sla_breaches_90d: b,
                reopened_90d: ro,
                csat_low_90d: cl,
                returns_90d: rt,
                refunds_90d: rf,
                days_since_order: d,
                orders_365d: o,
                value_365d_cents: o * 5_000,
            })
    }

    #[test]
    fn auc_is_the_share_of_pairs_ranked_right() {
        // Perfect, reversed, and every score tied.
        let perfect = [(0.9, true), (0.8, true), (0.2, false), (0.1, false)];
        assert_eq!(auc(&perfect), Some(1.0));
        let reversed: Vec<_> = perfect.iter().map(|(s, p)| (*s, !p)).collect();
        assert_eq!(auc(&reversed), Some(0.0));
        assert_eq!(auc(&[(0.5, true), (0.5, false), (0.5, false)]), Some(0.5));
        // Three of the four pairs right.
        let mixed = [(0.9, true), (0.3, true), (0.5, false), (0.1, false)];
        assert_eq!(auc(&mixed), Some(0.75));
        assert_eq!(auc(&[(0.2, true)]), None);
        assert_eq!(auc(&[(f64::NAN, true), (0.1, false)]), None);
    }

    /// Customers whose leaving is driven by SLA breaches alone (returns say nothing), drawn
    /// from a seeded generator.
    fn breach_driven(n: usize, seed: u64) -> Vec<(Signals, bool)> {
        let mut x = seed.max(1);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let s = Signals {
                    sla_breaches_90d: (next() * 4.0) as i64,
                    returns_90d: (next() * 4.0) as i64,
                    orders_365d: 1 + (next() * 5.0) as i64,
                    days_since_order: Some(next() * 120.0),
                    ..Signals::default()
                };
                let z = -2.0 + 2.5 * (s.sla_breaches_90d as f64).ln_1p();
                let churned = next() < 1.0 / (1.0 + (-z).exp());
                (s, churned)
            })
            .collect()
    }

    #[test]
    fn a_fit_learns_what_drives_leaving_and_judges_better_on_customers_it_never_saw() {
        let hand = Weights::default();
        let train = breach_driven(4_000, 7);
        let test = breach_driven(2_000, 99);
        let fitted = fit(&train, &hand, PRIOR_STRENGTH);
        assert!(fitted.sla_breaches > hand.sla_breaches, "{fitted:?}");
        assert!(fitted.returns < hand.returns, "{fitted:?}");
        assert!(
            fitted.returns >= 0.0 && fitted.loyalty <= 0.0,
            "signs kept: {fitted:?}"
        );
        let judged = |w: &Weights| {
            auc(&test
                .iter()
                .map(|(s, c)| (score(s, w).score, *c))
                .collect::<Vec<_>>())
            .unwrap()
        };
        assert!(
            judged(&fitted) > judged(&hand),
            "{} vs {}",
            judged(&fitted),
            judged(&hand)
        );
        // No outcomes: the prior alone, the hand-set weights.
        let none = fit(&[], &hand, PRIOR_STRENGTH);
        for (a, b) in none.to_vec().iter().zip(hand.to_vec()) {
            assert!((a - b).abs() < 1e-9);
        }
        assert_eq!(Weights::from_vec(&hand.to_vec()), hand);
        assert_eq!(Weights::from_vec(&[f64::NAN]), hand);
    }

    #[test]
    fn the_held_out_share_is_stable_and_about_three_in_ten() {
        let ids: Vec<Uuid> = (0..10_000u128)
            .map(|i| Uuid::from_u128(i * 7_919 + 13))
            .collect();
        let held = ids.iter().filter(|i| held_out(**i)).count();
        assert!((2_700..3_300).contains(&held), "{held}");
        assert!(ids.iter().all(|i| held_out(*i) == held_out(*i)));
    }

    proptest! {
        // Whatever the outcomes, a fitted score stays monotone: no weight changes sign.
        #[test]
        fn fitted_weights_keep_their_signs(
            data in proptest::collection::vec((signals(), any::<bool>()), 0..60),
        ) {
            let w = fit(&data, &Weights::default(), PRIOR_STRENGTH);
            let v = w.to_vec();
            for (i, name) in FEATURE_NAMES.iter().enumerate() {
                let x = v[i + 1];
                prop_assert!(x.is_finite());
                if *name == "loyalty" { prop_assert!(x <= 0.0) } else { prop_assert!(x >= 0.0) }
            }
        }

        #[test]
        fn a_score_is_a_probability(s in signals()) {
            let r = score(&s, &Weights::default());
            prop_assert!((0.0..=1.0).contains(&r.score));
        }

        // One more bad experience never makes a customer look safer.
        #[test]
        fn more_trouble_never_lowers_the_risk(s in signals(), which in 0usize..7) {
            let w = Weights::default();
            let mut worse = s.clone();
            match which {
                0 => worse.contacts_30d += 1,
                1 => worse.sla_breaches_90d += 1,
                2 => worse.reopened_90d += 1,
                3 => worse.csat_low_90d += 1,
                4 => worse.returns_90d += 1,
                5 => worse.max_wait_hours = Some(worse.max_wait_hours.unwrap_or(0.0) + 1.0),
                _ => worse.refunds_90d += 1,
            }
            prop_assert!(score(&worse, &w).score >= score(&s, &w).score);
        }
    }
}
