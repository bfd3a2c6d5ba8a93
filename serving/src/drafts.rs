//! Reply drafts on the agent API: the drafts a ticket carries (`GET /v1/tickets/{id}`'s
//! `drafts`, placeholders filled from the ticket for the agent reading it), what the agent did
//! with them (judged when a reply is sent: `draft_id` names the draft used; sent unchanged,
//! edited, or, for a reply without one, discarded), and the acceptance rate per category the
//! dashboard reports. The drafts themselves come from the processors (`switchboard_processors::
//! drafts`), scrubbed of other customers' data when the solved ticket was recorded
//! (`switchboard_tickets::drafts`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_core::db::EventTx;
use switchboard_core::http::ApiError;
use switchboard_tickets::drafts::{judge, Outcome, StoredDraft};
use switchboard_tickets::macros::render_known;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/drafts/acceptance", get(draft_acceptance))
}

/// Drafts' acceptance per category over the last `hours` (1 to 720, default 24): how many
/// replies answered offered drafts and how many sent one as offered, edited one, or passed them
/// over. The total comes first as category `all`.
#[utoipa::path(get, path = "/v1/drafts/acceptance", operation_id = "draft_acceptance", tag = "reports", params(crate::dashboard::Window), responses((status = 200, body = [DraftAcceptance]), (status = 400, description = "`hours` out of range"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
pub(crate) async fn draft_acceptance(
    State(api): State<Api>,
    who: Principal,
    switchboard_core::http::ApiQuery(w): switchboard_core::http::ApiQuery<crate::dashboard::Window>,
) -> Result<Json<Vec<DraftAcceptance>>, ApiError> {
    who.require(Role::Supervisor)?;
    let hours = crate::dashboard::window(&w)?;
    Ok(Json(acceptance(&api.pool, hours).await?))
}

/// A draft reply for the agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DraftView {
    /// The solved ticket whose reply it is: send it back as the reply's `draft_id`.
    pub id: Uuid,
    /// Filled from this ticket; a placeholder this ticket has no value for stays as written.
    pub text: String,
    /// How close the customer's message is to the solved ticket's question (cosine, 0 to 1).
    pub similarity: f32,
    pub category: Option<String>,
    pub intent: Option<String>,
    /// Placeholders left for the agent to fill (`order.address`, `order.date`, ...).
    pub unfilled: Vec<String>,
}

/// `ticket_id`'s drafts as stored, in order, less those whose example was withdrawn since it
/// was offered (its ticket reopened, erased or expired: the text must not be shown again).
async fn stored(
    conn: &mut sqlx::PgConnection,
    ticket_id: Uuid,
) -> Result<Vec<StoredDraft>, ApiError> {
    let rows: Vec<sqlx::types::Json<StoredDraft>> = sqlx::query_scalar(
        "SELECT d.value FROM tickets t, jsonb_array_elements(t.drafts) WITH ORDINALITY AS d(value, n)
         WHERE t.id = $1 AND jsonb_typeof(t.drafts) = 'array'
           AND EXISTS (SELECT 1 FROM reply_examples e
                       WHERE e.ticket_id = (d.value->>'id')::uuid AND e.deleted_at IS NULL)
         ORDER BY d.n",
    )
    .bind(ticket_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|j| j.0).collect())
}

/// `ticket_id`'s drafts, filled for `reader` (the agent's name in `{{agent.name}}`).
pub(crate) async fn drafts_of(
    pool: &sqlx::PgPool,
    ticket_id: Uuid,
    reader: Option<Uuid>,
) -> Result<Vec<DraftView>, ApiError> {
    let mut conn = pool.acquire().await?;
    let drafts = stored(&mut conn, ticket_id).await?;
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = crate::macros::context(&mut conn, ticket_id, reader).await?;
    Ok(drafts
        .into_iter()
        .map(|d| {
            let (text, unfilled) = render_known(&d.text, &ctx);
            DraftView {
                id: d.id,
                text,
                similarity: d.similarity,
                category: d.category,
                intent: d.intent,
                unfilled,
            }
        })
        .collect())
}

/// What a reply does with the drafts: read once, under the row lock, by [`check_draft`] and
/// used by [`record_outcome`].
#[derive(Debug, Default)]
pub(crate) struct DraftUse {
    /// The drafts the ticket offers now.
    offered: Vec<StoredDraft>,
    /// The draft the reply names, when its text is still to be had.
    used: Option<StoredDraft>,
    /// The reply named a draft.
    named: bool,
}

/// Checks a reply's `draft_id` before anything is stored: a UUID naming a draft the ticket
/// offers, one it offered before the customer's latest message replaced them, or one withdrawn
/// since the agent opened it (the agent started from it; a reply is never refused over those
/// races, the outcome is then not judged). 400 naming `draft_id` only for a UUID that never
/// was a draft.
pub(crate) async fn check_draft(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    draft_id: Option<&str>,
) -> Result<DraftUse, ApiError> {
    let offered = stored(tx, ticket_id).await?;
    let Some(raw) = draft_id else {
        return Ok(DraftUse {
            offered,
            ..DraftUse::default()
        });
    };
    let id = crate::parse_id(raw, "draft_id")?;
    let used = match offered.iter().find(|d| d.id == id) {
        Some(d) => Some(d.clone()),
        None => match example(tx, id).await? {
            Some(Example::Live(d)) => Some(d),
            Some(Example::Withdrawn) => None,
            None => {
                return Err(ApiError::field(
                    "draft_id",
                    "not a draft this ticket offers (see the ticket's drafts)",
                ))
            }
        },
    };
    Ok(DraftUse {
        offered,
        used,
        named: true,
    })
}

/// A reply example looked up by id.
enum Example {
    /// Its text, still with placeholders.
    Live(StoredDraft),
    /// Withdrawn: its tombstone.
    Withdrawn,
}

/// The reply example `id`, or that it was withdrawn.
async fn example(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<Option<Example>, ApiError> {
    let row = sqlx::query(
        "SELECT reply, category, intent, deleted_at IS NOT NULL AS withdrawn
         FROM reply_examples WHERE ticket_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    if r.try_get::<bool, _>("withdrawn")? {
        return Ok(Some(Example::Withdrawn));
    }
    Ok(Some(Example::Live(StoredDraft {
        id,
        text: r.try_get("reply")?,
        similarity: 0.0,
        category: r.try_get("category")?,
        intent: r.try_get("intent")?,
    })))
}

/// Judges reply `reply_id` (`text`, by `author`) against the drafts `ticket_id` offers and
/// records the outcome; the drafts are then used up (the next customer message brings new
/// ones). Nothing when none are offered, or the draft named was withdrawn. Called in the
/// reply's transaction, under the row lock, with what [`check_draft`] read there.
pub(crate) async fn record_outcome(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    reply_id: Uuid,
    author: Uuid,
    drafts: DraftUse,
    text: &str,
) -> Result<Option<Outcome>, ApiError> {
    let judged = match (drafts.used, drafts.named, drafts.offered.first()) {
        (Some(d), _, _) => {
            let ctx = crate::macros::context(tx, ticket_id, Some(author)).await?;
            let outcome = judge(&d.text, text, &ctx);
            Some((d, outcome))
        }
        // Named, but withdrawn since: not judged.
        (None, true, _) => None,
        (None, false, Some(top)) => Some((top.clone(), Outcome::Discarded)),
        (None, false, None) => None,
    };
    if drafts.named || !drafts.offered.is_empty() {
        sqlx::query("UPDATE tickets SET drafts = '[]' WHERE id = $1")
            .bind(ticket_id)
            .execute(&mut **tx)
            .await?;
    }
    let Some((draft, outcome)) = judged else {
        return Ok(None);
    };
    let category: Option<String> = sqlx::query_scalar("SELECT category FROM tickets WHERE id = $1")
        .bind(ticket_id)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO draft_outcomes (reply_id, ticket_id, draft_id, category, outcome, similarity, agent_id, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (reply_id) DO NOTHING",
    )
    .bind(reply_id)
    .bind(ticket_id)
    .bind(draft.id)
    .bind(category.or_else(|| draft.category.clone()))
    .bind(outcome.as_str())
    .bind(draft.similarity)
    .bind(author)
    .bind(switchboard_core::clock::now())
    .execute(&mut **tx)
    .await?;
    metrics::counter!(crate::telemetry::DRAFTS_TOTAL, "outcome" => outcome.as_str()).increment(1);
    Ok(Some(outcome))
}

/// Drafts' fate per category over the last `hours`: the dashboard's acceptance table.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DraftAcceptance {
    /// The ticket's category (`none` when it has none).
    pub category: String,
    /// Replies that answered offered drafts.
    pub offered: i64,
    pub sent: i64,
    pub edited: i64,
    pub discarded: i64,
    /// (sent + edited) / offered.
    pub acceptance: f64,
}

/// [`DraftAcceptance`] per category, the busiest first, and the total as category `all`.
pub(crate) async fn acceptance(
    pool: &sqlx::PgPool,
    hours: u32,
) -> Result<Vec<DraftAcceptance>, ApiError> {
    let rows = sqlx::query(
        "SELECT COALESCE(category, 'none') AS category, count(*) AS offered,
                count(*) FILTER (WHERE outcome = 'sent') AS sent,
                count(*) FILTER (WHERE outcome = 'edited') AS edited,
                count(*) FILTER (WHERE outcome = 'discarded') AS discarded
         FROM draft_outcomes WHERE at > $1 - make_interval(hours => $2)
         GROUP BY ROLLUP (COALESCE(category, 'none'))
         ORDER BY grouping(COALESCE(category, 'none')) DESC, count(*) DESC, 1",
    )
    .bind(switchboard_core::clock::now())
    .bind(hours as i32)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let offered: i64 = r.try_get("offered")?;
        let sent: i64 = r.try_get("sent")?;
        let edited: i64 = r.try_get("edited")?;
        let category: Option<String> = r.try_get("category")?;
        out.push(DraftAcceptance {
            // The rollup's total row comes first, its category NULL.
            category: category.unwrap_or_else(|| "all".into()),
            offered,
            sent,
            edited,
            discarded: r.try_get("discarded")?,
            acceptance: if offered > 0 {
                (sent + edited) as f64 / offered as f64
            } else {
                0.0
            },
        });
    }
    Ok(out)
}
