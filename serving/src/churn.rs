//! Churn risk on the agent API: the customer's risk with its factors on every ticket
//! (`GET /v1/tickets/{id}`'s `churn_risk`, shown in the console's side panel) and the supervisors'
//! list of customers at risk (`GET /v1/customers/at-risk`). The score itself is
//! `switchboard_tickets::churn` (transparent, pure); the ticketing stage raises the priority of a
//! valuable customer at high risk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_core::http::{ApiError, ApiQuery};
use switchboard_tickets::churn::{score, signals, Factor, FitReport, Weights};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/customers/at-risk", get(at_risk))
        .route("/v1/customers/churn-model", get(churn_model))
}

/// `GET /v1/customers/at-risk` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AtRiskQuery {
    /// Customers who wrote within this many days are scored (1 to 365; default 30).
    pub days: Option<u32>,
    /// The lowest score listed (0 to 1; default 0.6, `high`).
    pub min_score: Option<f64>,
    /// At most this many, the riskiest first (1 to 5,000; default 50).
    pub limit: Option<u32>,
}

/// A customer at risk.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AtRisk {
    pub customer_id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub tier: String,
    pub score: f64,
    pub level: String,
    pub factors: Vec<Factor>,
    /// Their newest ticket's creation.
    pub last_contact_at: DateTime<Utc>,
    /// What their orders of the last 365 days came to (cents).
    pub value_365d_cents: i64,
}

/// The most customers scored for one list (the most recent contacts first).
const MAX_SCORED: i64 = 5_000;

/// Customers who wrote recently, scored, the riskiest first (supervisors). The scores are
/// computed at most once a minute per `days` on each instance.
#[utoipa::path(get, path = "/v1/customers/at-risk", operation_id = "customers_at_risk", tag = "customers", params(AtRiskQuery), responses((status = 200, body = [AtRisk]), (status = 400, description = "a parameter out of range, named"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn at_risk(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(q): ApiQuery<AtRiskQuery>,
) -> Result<Json<Vec<AtRisk>>, ApiError> {
    who.require(Role::Supervisor)?;
    let days = q.days.unwrap_or(30);
    if !(1..=365).contains(&days) {
        return Err(ApiError::field("days", "1 to 365"));
    }
    let min = q.min_score.unwrap_or(switchboard_tickets::churn::HIGH);
    if !(0.0..=1.0).contains(&min) {
        return Err(ApiError::field("min_score", "0 to 1"));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=5_000).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 5000"));
    }
    let scored = api.at_risk.scored(&api.pool, days).await?;
    // Sorted riskiest first: the list is a prefix of those at `min` or above.
    let out: Vec<AtRisk> = scored
        .iter()
        .take_while(|a| a.score >= min)
        .take(limit as usize)
        .cloned()
        .collect();
    Ok(Json(out))
}

/// The weights customers are scored with, and how they were judged.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChurnModel {
    /// `fitted` (a fit on outcomes scores customers) or `hand-set`.
    pub weights_from: String,
    pub weights: Weights,
    /// The hand-set weights, for comparison.
    pub hand_set: Weights,
    /// The active fit: its outcomes, held-out AUC beside the hand-set weights'.
    pub fit: Option<FitReport>,
}

/// The churn score's weights and, when a fit on outcomes is active, how it did on held-out
/// customers against the hand-set weights (`switchboard models fit-churn --activate`).
#[utoipa::path(get, path = "/v1/customers/churn-model", operation_id = "churn_model", tag = "customers", responses((status = 200, body = ChurnModel), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn churn_model(State(api): State<Api>, who: Principal) -> Result<Json<ChurnModel>, ApiError> {
    who.require(Role::Supervisor)?;
    let mut conn = api.pool.acquire().await?;
    let fit = switchboard_tickets::churn::active_fit(&mut conn).await?;
    Ok(Json(ChurnModel {
        weights_from: if fit.is_some() { "fitted" } else { "hand-set" }.into(),
        weights: fit.as_ref().map_or_else(Weights::default, |f| f.weights),
        hand_set: Weights::default(),
        fit,
    }))
}

/// How long a scored list is served before the customers are scored again.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// The last scoring per window (`days`), shared by the callers of one instance: the dashboard
/// polls every few seconds, the scores move by the hour. One caller scores at a time (the
/// others wait for its list instead of scoring too).
#[derive(Debug, Default)]
pub(crate) struct AtRiskCache {
    lists: tokio::sync::Mutex<HashMap<u32, Scored>>,
}

/// One window's list and when it was scored.
type Scored = (Instant, Arc<Vec<AtRisk>>);

impl AtRiskCache {
    /// Forgets every list (a customer was erased).
    pub(crate) async fn clear(&self) {
        self.lists.lock().await.clear();
    }

    /// Every recent customer of the last `days`, scored, the riskiest first.
    async fn scored(&self, pool: &sqlx::PgPool, days: u32) -> Result<Arc<Vec<AtRisk>>, ApiError> {
        let mut lists = self.lists.lock().await;
        if let Some((at, list)) = lists.get(&days) {
            if at.elapsed() < FRESH_FOR {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(score_recent(pool, days).await?);
        lists.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        lists.insert(days, (Instant::now(), list.clone()));
        Ok(list)
    }
}

/// The customers who wrote within `days` (the newest [`MAX_SCORED`]), scored, riskiest first.
async fn score_recent(pool: &sqlx::PgPool, days: u32) -> Result<Vec<AtRisk>, ApiError> {
    let now = switchboard_core::clock::now();
    #[derive(sqlx::FromRow)]
    struct Recent {
        id: Uuid,
        name: Option<String>,
        email: Option<String>,
        tier: String,
        last: DateTime<Utc>,
    }
    let recent: Vec<Recent> = sqlx::query_as(
        "SELECT c.id, c.name, c.email, c.tier, r.last FROM
               (SELECT customer_id, max(created_at) AS last FROM tickets
                WHERE created_at > $1 - make_interval(days => $2)
                GROUP BY customer_id ORDER BY max(created_at) DESC LIMIT $3) r
             JOIN customers c ON c.id = r.customer_id",
    )
    .bind(now)
    .bind(days as i32)
    .bind(MAX_SCORED)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = recent.iter().map(|r| r.id).collect();
    let mut conn = pool.acquire().await?;
    let scored: HashMap<Uuid, _> = signals(&mut conn, &ids, now).await?.into_iter().collect();
    let weights = switchboard_tickets::churn::active_weights(&mut conn).await?;
    let mut out: Vec<AtRisk> = recent
        .into_iter()
        .filter_map(|r| {
            let s = scored.get(&r.id)?;
            let risk = score(s, &weights);
            Some(AtRisk {
                customer_id: r.id,
                name: r.name,
                email: r.email,
                tier: r.tier,
                score: risk.score,
                level: risk.level,
                factors: risk.factors,
                last_contact_at: r.last,
                value_365d_cents: s.value_365d_cents,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.value_365d_cents.cmp(&a.value_365d_cents))
    });
    Ok(out)
}
