//! Churn risk: how likely a customer is to stop buying, from what Switchboard already holds
//! about them, with every contributing factor named.
//!
//! The score is a logistic model over transparent signals ([`Signals`], loaded from Postgres by
//! [`signals`]): the sentiment of their recent messages and its fall against the earlier ones,
//! contacts in the last 30 days, the longest wait for a first answer, SLA breaches, reopened tickets, poor satisfaction ratings,
//! returns and refunds, how long since their last order and how many they placed in a year. Each
//! signal becomes a feature ([`features`]); the score is `sigmoid(intercept + Σ weight ×
//! feature)`, and each term is reported as a [`Factor`] with what it says, so an agent sees why
//! (the largest first). The weights ([`Weights::default`]) are set by hand from the support
//! literature's ordering of churn drivers (unresolved problems and poor service over product
//! returns), not fitted on outcomes yet.
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
/// come back with empty signals).
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
               AND m.sentiment IS NOT NULL AND m.received_at > $2 - interval '90 days')
         SELECT c.id,
            (SELECT avg(sentiment)::float8 FROM recent_msgs r WHERE r.customer_id = c.id AND r.k <= 5) AS sentiment_recent,
            (SELECT avg(sentiment)::float8 FROM recent_msgs r WHERE r.customer_id = c.id AND r.k > 5) AS sentiment_before,
            (SELECT count(*) FROM tickets t WHERE t.customer_id = c.id AND t.created_at > $2 - interval '30 days') AS contacts_30d,
            (SELECT max(extract(epoch FROM LEAST(COALESCE(t.first_response_at, $2), t.created_at + interval '1 day')
                                   - t.created_at))::float8 / 3600
               FROM tickets t WHERE t.customer_id = c.id AND t.created_at > $2 - interval '90 days'
                 AND t.created_at <= $2 AND (t.first_response_at IS NOT NULL OR t.status IN ('open', 'pending'))) AS max_wait_hours,
            (SELECT count(*) FROM sla_clocks s JOIN tickets t ON t.id = s.ticket_id
               WHERE t.customer_id = c.id AND s.breached_at > $2 - interval '90 days') AS sla_breaches_90d,
            (SELECT COALESCE(sum(t.reopen_count), 0)::int8 FROM tickets t
               WHERE t.customer_id = c.id AND t.created_at > $2 - interval '90 days') AS reopened_90d,
            (SELECT count(*) FROM csat s JOIN tickets t ON t.id = s.ticket_id
               WHERE t.customer_id = c.id AND s.rating <= 2 AND s.answered_at > $2 - interval '90 days') AS csat_low_90d,
            (SELECT count(*) FROM returns r WHERE r.customer_id = c.id AND r.created_at > $2 - interval '90 days') AS returns_90d,
            (SELECT count(*) FROM order_actions a JOIN orders o ON o.id = a.order_id
               WHERE o.customer_id = c.id AND a.kind = 'refund' AND a.state = 'done'
                 AND a.created_at > $2 - interval '90 days') AS refunds_90d,
            (SELECT extract(epoch FROM $2 - max(o.created_at))::float8 / 86400 FROM orders o WHERE o.customer_id = c.id) AS days_since_order,
            (SELECT count(*) FROM orders o WHERE o.customer_id = c.id AND o.created_at > $2 - interval '365 days') AS orders_365d,
            (SELECT COALESCE(sum(o.total_cents), 0)::int8 FROM orders o
               WHERE o.customer_id = c.id AND o.created_at > $2 - interval '365 days') AS value_365d_cents
         FROM c",
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
    Ok(score(&s, &Weights::default()))
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

    proptest! {
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
