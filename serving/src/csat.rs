//! Customer satisfaction: a survey after resolution, the answer, the report.
//!
//! When an agent resolves a ticket, the customer gets one survey on the ticket's channel (a
//! reply with a link; not on `api` or `voice`, which have no way back): `<public_url>/csat/<token>`
//! with a random token stored for the ticket. `GET /csat/{token}` is a small page with the five
//! ratings; `POST /csat/{token} {rating: 1-5, comment?}` stores the answer (changing it later
//! replaces it) and moves the agent's satisfaction sums, which routing scores on.
//! `GET /v1/reports/csat` (supervisor): count, mean and distribution overall and per agent.
//!
//! A rating is the customer's alone: the token is the only credential of the survey, so no one
//! else may read it. It goes out only in the reply to the customer; the ticket's stored copy of
//! the survey keeps the link without its token, and every message shown through the API has
//! survey tokens redacted ([`redact_survey_links`]; a customer's reply may quote the survey).
//! No `/v1` route reads a token or writes a rating.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::Row;
use switchboard_contracts::TicketChange;
use switchboard_core::db::{ChangeActor, CommitError, EventTx};
use switchboard_core::http::{ApiError, ApiJson};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::Api;

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/reports/csat", get(report))
}

pub(crate) fn public_routes() -> Router<Api> {
    Router::new().route("/csat/{token}", get(page).post(answer))
}

pub use switchboard_tickets::survey::{invite, redact_survey_links, REDACTED_TOKEN};

/// The survey page (the answer is posted back as JSON).
#[utoipa::path(get, path = "/csat/{token}", tag = "self-service", params(("token" = String, Path, description = "the survey's token, from the link sent to the customer")), responses((status = 200, description = "the survey page"), (status = 404, description = "no such survey")))]
async fn page(State(api): State<Api>, Path(token): Path<String>) -> Result<Response, ApiError> {
    let number: Option<String> = sqlx::query_scalar(
        "SELECT t.number FROM csat s JOIN tickets t ON t.id = s.ticket_id WHERE s.token = $1",
    )
    .bind(&token)
    .fetch_optional(&api.pool)
    .await?;
    let number = number.ok_or_else(|| ApiError::not_found("no such survey"))?;
    // Only the ticket number (letters, digits, dashes) and the token (hex) reach the page. Its
    // script (console/src/pages/csat.ts, built with the console) posts the rating of the button
    // clicked in `#r` (`data-r`) with the comment `#c`, and says how it went in `#done`.
    let safe = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
    };
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>How did we do?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/console/pages.css"><script type="module" src="/console/assets/csat.js"></script></head>
<body><section class="panel chat"><h2>How did we do?</h2><p>About your request {number}.</p>
<div id="r">{buttons}</div><p><textarea id="c" placeholder="Anything to add? (optional)"></textarea></p>
<p id="done" role="status"></p></section></body></html>"#,
        number = safe(&number),
        buttons = (1..=5)
            .map(|r| format!(
                r#"<button type="button" data-r="{r}" aria-label="{r} of 5">{r}</button> "#
            ))
            .collect::<String>(),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, crate::pages::CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response())
}

/// `POST /csat/{token}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub rating: i16,
    #[serde(default)]
    pub comment: Option<String>,
}

#[utoipa::path(post, path = "/csat/{token}", tag = "self-service", params(("token" = String, Path, description = "the survey's token, from the link sent to the customer")), request_body = Answer, responses((status = 204, description = "stored"), (status = 400, description = "rating not 1-5"), (status = 404, description = "no such survey")))]
async fn answer(
    State(api): State<Api>,
    Path(token): Path<String>,
    ApiJson(a): ApiJson<Answer>,
) -> Result<StatusCode, ApiError> {
    if !(1..=5).contains(&a.rating) {
        return Err(ApiError::field("rating", "a whole number from 1 to 5"));
    }
    if a.comment.as_ref().is_some_and(|c| c.len() > 4000) {
        return Err(ApiError::field("comment", "at most 4000 bytes"));
    }
    // The customer answered: the `csat_received` event (rules, webhooks, analytics) goes in the
    // same transaction as the answer.
    let mut tx = EventTx::begin(&api.pool)
        .await?
        .by(ChangeActor::rule("customer"));
    let row = sqlx::query(
        "SELECT s.agent_id, s.rating, s.ticket_id, t.number, t.customer_id
         FROM csat s JOIN tickets t ON t.id = s.ticket_id WHERE s.token = $1 FOR UPDATE OF s",
    )
    .bind(&token)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such survey"))?;
    let agent: Option<Uuid> = row.try_get("agent_id")?;
    let before: Option<i16> = row.try_get("rating")?;
    let ticket_id: Uuid = row.try_get("ticket_id")?;
    // Free text from anyone holding the link: control characters (NUL, which Postgres text
    // cannot hold, escapes) go; line breaks and tabs stay.
    let comment: Option<String> = a
        .comment
        .as_deref()
        .map(|c| {
            c.chars()
                .filter(|ch| !ch.is_control() || matches!(ch, '\n' | '\t'))
                .collect::<String>()
        })
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let now = switchboard_core::clock::now();
    sqlx::query("UPDATE csat SET rating = $2, comment = $3, answered_at = $4 WHERE token = $1")
        .bind(&token)
        .bind(a.rating)
        .bind(comment.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    if let Some(agent) = agent {
        // A changed answer replaces the earlier one in the agent's sums.
        sqlx::query(
            "UPDATE agents SET csat_sum = csat_sum + $2 - COALESCE($3, 0), csat_count = csat_count + CASE WHEN $3 IS NULL THEN 1 ELSE 0 END
             WHERE id = $1",
        )
        .bind(agent)
        .bind(f64::from(a.rating))
        .bind(before.map(f64::from))
        .execute(&mut *tx)
        .await?;
    }
    // The same rating posted again (a second click) is no new answer.
    if before != Some(a.rating) {
        let rating = u8::try_from(a.rating).unwrap_or(0);
        switchboard_tickets::store::add_ticket_event(
            &mut tx,
            Uuid::now_v7(),
            ticket_id,
            &row.try_get::<String, _>("number")?,
            row.try_get("customer_id")?,
            TicketChange::CsatReceived {
                rating,
                previous: before.and_then(|b| u8::try_from(b).ok()),
                commented: comment.is_some(),
            },
        )
        .await?;
    }
    match tx.commit(&api.outbox).await {
        Ok(()) => {}
        Err(CommitError::Commit(e)) => return Err(e.into()),
        // Stored: the outbox sweep sends the event; the customer's answer is not refused.
        Err(CommitError::Publish(e)) => {
            tracing::warn!(error = %e, ticket_id = %ticket_id, "csat answer stored, its event waits in the outbox");
        }
    }
    metrics::counter!(crate::telemetry::CSAT_ANSWERS_TOTAL, "rating" => a.rating.to_string())
        .increment(1);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/reports/csat", tag = "reports", responses((status = 200, description = "sent, answered, mean, distribution, per agent"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn report(
    State(api): State<Api>,
    who: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    who.require(Role::Supervisor)?;
    let overall = sqlx::query(
        "SELECT count(*) FILTER (WHERE rating IS NOT NULL) AS answered, count(*) AS sent, avg(rating)::float8 AS mean,
                count(*) FILTER (WHERE rating = 1) AS r1, count(*) FILTER (WHERE rating = 2) AS r2,
                count(*) FILTER (WHERE rating = 3) AS r3, count(*) FILTER (WHERE rating = 4) AS r4,
                count(*) FILTER (WHERE rating = 5) AS r5
         FROM csat",
    )
    .fetch_one(&api.pool)
    .await?;
    let per_agent: Vec<(Uuid, String, i64, Option<f64>)> = sqlx::query_as(
        "SELECT a.id, a.name, count(s.rating), avg(s.rating)::float8 FROM csat s JOIN agents a ON a.id = s.agent_id
         WHERE s.rating IS NOT NULL GROUP BY a.id, a.name ORDER BY a.name",
    )
    .fetch_all(&api.pool)
    .await?;
    let n = |k: &str| overall.try_get::<i64, _>(k);
    Ok(Json(serde_json::json!({
        "sent": n("sent")?, "answered": n("answered")?, "mean": overall.try_get::<Option<f64>, _>("mean")?,
        "distribution": [n("r1")?, n("r2")?, n("r3")?, n("r4")?, n("r5")?],
        "agents": per_agent.into_iter().map(|(id, name, count, mean)| serde_json::json!({"agent_id": id, "name": name, "answered": count, "mean": mean})).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survey_tokens_are_redacted_wherever_they_appear() {
        let token = "0123456789abcdef".repeat(4);
        let text = format!("Rate us: https://help.example.com/csat/{token} thanks");
        let r = redact_survey_links(&text);
        assert!(!r.contains(&token), "{r}");
        assert_eq!(
            r,
            format!("Rate us: https://help.example.com/csat/{REDACTED_TOKEN} thanks")
        );
        // Quoted twice in a reply, next to multi-byte text: both go, the rest stays.
        let quoted = format!("Спасибо 👍\n> /csat/{token}\n> >/csat/{token}é");
        let r = redact_survey_links(&quoted);
        assert!(!r.contains(&token), "{r}");
        assert!(r.starts_with("Спасибо 👍") && r.ends_with('é'), "{r}");
        // Nothing to redact: the text itself, not a copy.
        for plain in ["no link", "/csat/", "/csat/xyz", "/csat/é"] {
            assert!(matches!(
                redact_survey_links(plain),
                std::borrow::Cow::Borrowed(_)
            ));
        }
    }
}
