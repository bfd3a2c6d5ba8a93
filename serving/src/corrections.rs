//! Agents correct the models' triage: `PUT /v1/tickets/{id}/triage` changes a ticket's category
//! or intent, or flags the sentiment the model read in the customer's message, and records each
//! change beside what the model had said and which model versions said it
//! (`triage_corrections`). `switchboard models export-training-data` turns them into the next
//! training round's labelled examples with a data card.
//!
//! Who may: an agent on a ticket assigned to it, a supervisor or admin on any (403 otherwise).
//! The customer message the models read is the ticket's first one that no machine sent; a later
//! correction of the same field replaces an earlier one in the export. Each correction is a
//! `triage_corrected` ticket event (in the audit log, ClickHouse and webhooks like the rest).

use axum::extract::{Path, State};
use axum::routing::put;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_core::db::EventTx;
use switchboard_core::http::{ApiError, ApiJson};
use uuid::Uuid;

use crate::auth::Principal;
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/{id}/triage", put(correct))
}

/// `PUT /v1/tickets/{id}/triage` body: at least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriageCorrection {
    /// The right category (a label: a letter, then letters, digits or `_`, at most 48).
    #[serde(default)]
    pub category: Option<String>,
    /// The right intent (same form).
    #[serde(default)]
    pub intent: Option<String>,
    /// The sentiment the message really has: `negative`, `neutral` or `positive`.
    #[serde(default)]
    pub sentiment: Option<String>,
}

/// What was corrected.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Corrected {
    pub ticket_id: Uuid,
    /// The fields recorded, in the order category, intent, sentiment.
    pub corrected: Vec<String>,
    pub version: i32,
}

/// Whether `s` is a label: a letter, then letters, digits or `_`, at most 48.
fn label(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 48
        && c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Checks a correction: the fields to record `(field, value)`, or 400 naming the bad one.
fn check(c: &TriageCorrection) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut out = Vec::new();
    for (field, v) in [("category", &c.category), ("intent", &c.intent)] {
        if let Some(v) = v {
            if !label(v) {
                return Err(ApiError::field(
                    field,
                    "a label: a letter, then letters, digits or '_', at most 48",
                ));
            }
            out.push((field, v.clone()));
        }
    }
    if let Some(s) = &c.sentiment {
        if !["negative", "neutral", "positive"].contains(&s.as_str()) {
            return Err(ApiError::field(
                "sentiment",
                "negative, neutral or positive",
            ));
        }
        out.push(("sentiment", s.clone()));
    }
    if out.is_empty() {
        return Err(ApiError::field(
            "category",
            "name at least one of category, intent, sentiment",
        ));
    }
    Ok(out)
}

/// Corrects the models' triage of a ticket (its category, intent, or the sentiment of the
/// customer's message), recorded with what the model said for the next training round.
#[utoipa::path(put, path = "/v1/tickets/{id}/triage", operation_id = "correct_triage", tag = "tickets", params(("id" = Uuid, Path)), request_body = TriageCorrection, responses((status = 200, body = Corrected), (status = 400, description = "a field is invalid, named"), (status = 403, description = "an agent on a ticket not assigned to it"), (status = 404, description = "no such ticket"), (status = 409, description = "the ticket has no customer message the models read")), security(("bearer" = [])))]
async fn correct(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TriageCorrection>,
) -> Result<Json<Corrected>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    let fields = check(&req)?;
    let mut tx = EventTx::begin(&api.pool).await?.by(who.change_actor());
    let assignee = Principal::locked_assignee(&mut tx, ticket_id).await?;
    who.check_assignee(assignee)?;
    let t = sqlx::query(
        "SELECT channel, number, customer_id, category, intent FROM tickets WHERE id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such ticket"))?;
    let channel: String = t.try_get("channel")?;
    // The message the models read: the customer's first, not a machine's (an auto-reply or a
    // bounce is no example of what customers ask).
    let Some(m) = sqlx::query(
        "SELECT id, category, intent, sentiment_label, model_versions FROM messages
         WHERE ticket_id = $1 AND direction = 'inbound' AND NOT (metadata ? 'automatic')
         ORDER BY received_at, id LIMIT 1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Err(crate::work::conflict(
            "id",
            "the ticket has no customer message to correct",
        ));
    };
    let now = switchboard_core::clock::now();
    let message_id: Uuid = m.try_get("id")?;
    let versions: Option<serde_json::Value> = m.try_get("model_versions")?;
    for (field, value) in &fields {
        let model_value: Option<String> = match *field {
            "category" => m.try_get("category")?,
            "intent" => m.try_get("intent")?,
            _ => m.try_get("sentiment_label")?,
        };
        sqlx::query(
            "INSERT INTO triage_corrections (id, ticket_id, message_id, field, model_value, corrected,
                                             model_versions, channel, corrected_by, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(Uuid::now_v7())
        .bind(ticket_id)
        .bind(message_id)
        .bind(field)
        .bind(model_value)
        .bind(value)
        .bind(versions.clone().unwrap_or_else(|| serde_json::json!({})))
        .bind(&channel)
        .bind(who.name())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let get = |f: &str| fields.iter().find(|(k, _)| *k == f).map(|(_, v)| v.clone());
    let version: i32 = sqlx::query_scalar(
        "UPDATE tickets SET category = COALESCE($2, category), intent = COALESCE($3, intent),
                updated_at = $4, version = version + 1
         WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(get("category"))
    .bind(get("intent"))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    switchboard_tickets::store::add_ticket_event(
        &mut tx,
        Uuid::now_v7(),
        ticket_id,
        &t.try_get::<String, _>("number")?,
        t.try_get("customer_id")?,
        switchboard_contracts::TicketChange::TriageCorrected {
            corrected: fields.iter().map(|(f, _)| f.to_string()).collect(),
            category: get("category"),
            intent: get("intent"),
            sentiment: get("sentiment"),
            previous_category: t.try_get("category")?,
            previous_intent: t.try_get("intent")?,
        },
    )
    .await?;
    crate::work::committed(tx.commit(&api.outbox).await, "corrected, events delayed")?;
    tracing::info!(ticket_id = %ticket_id, fields = fields.len(), "triage corrected");
    Ok(Json(Corrected {
        ticket_id,
        corrected: fields.iter().map(|(f, _)| f.to_string()).collect(),
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(
        category: Option<&str>,
        intent: Option<&str>,
        sentiment: Option<&str>,
    ) -> TriageCorrection {
        TriageCorrection {
            category: category.map(str::to_string),
            intent: intent.map(str::to_string),
            sentiment: sentiment.map(str::to_string),
        }
    }

    #[test]
    fn labels_and_sentiments_are_checked_by_name() {
        let ok = check(&c(Some("ORDER"), Some("cancel_order"), Some("negative"))).unwrap();
        assert_eq!(ok.len(), 3);
        let field = |x: TriageCorrection| check(&x).unwrap_err().field;
        assert_eq!(field(c(None, None, None)), Some("category".into()));
        assert_eq!(field(c(Some("1abc"), None, None)), Some("category".into()));
        assert_eq!(
            field(c(None, Some("drop; table"), None)),
            Some("intent".into())
        );
        assert_eq!(
            field(c(None, Some(&"a".repeat(49)), None)),
            Some("intent".into())
        );
        assert_eq!(field(c(None, Some("é"), None)), Some("intent".into()));
        assert_eq!(
            field(c(None, None, Some("furious"))),
            Some("sentiment".into())
        );
    }
}
