//! Collision detection: who is looking at a ticket and who is typing a reply on it.
//!
//! The console sends `PUT /v1/tickets/{id}/presence` (`viewing`, `typing`, `left`) when an agent
//! opens a ticket, starts or stops typing, and as a heartbeat every [`HEARTBEAT`]; a presence
//! counts while its last heartbeat is younger than [`TTL`] (a closed laptop drops out by itself).
//! A change (someone arrives, leaves, starts or stops typing) is announced with `pg_notify` on
//! [`CHANNEL`], so every serving instance hears it whichever instance took the request; each
//! instance's [`PresenceListener`] reads the ticket's viewers once and hands them to its
//! [`StreamHub`], and the `presence` event reaches the streams of the agents who hold the ticket
//! or are on it. A heartbeat that changes nothing announces nothing.
//!
//! Presence warns; the reply route enforces: a reply on a ticket assigned to someone else is
//! refused with 409 unless the sender takes the ticket over (`take_over: true`, recorded as an
//! assignment), see `work.rs`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use switchboard_core::http::{ApiError, ApiJson};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{forbidden, Principal};
use crate::stream::{Live, StreamHub};
use crate::{parse_id, Api};

/// How long a presence counts after its last heartbeat.
pub const TTL: Duration = Duration::from_secs(30);
/// How often a console repeats its presence (well inside [`TTL`]).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often lapsed presences are deleted.
const SWEEP: Duration = Duration::from_secs(60);
/// The Postgres notification channel; the payload is the ticket's id.
pub const CHANNEL: &str = "switchboard_presence";

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/tickets/{id}/presence", get(current).put(set))
}

/// What the agent is doing on the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Viewing,
    Typing,
    /// Closed the ticket (not stored).
    Left,
}

impl Activity {
    fn as_str(self) -> &'static str {
        match self {
            Activity::Viewing => "viewing",
            Activity::Typing => "typing",
            Activity::Left => "left",
        }
    }
}

/// `PUT /v1/tickets/{id}/presence` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceInput {
    pub state: Activity,
}

/// One agent on a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Viewer {
    pub agent_id: Uuid,
    pub name: String,
    /// `viewing` or `typing`.
    pub state: String,
    pub seen_at: DateTime<Utc>,
    /// When this presence lapses without another heartbeat (clients drop it then).
    pub expires_at: DateTime<Utc>,
}

/// Who is on a ticket now (the `presence` stream event and the routes' answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketPresence {
    pub ticket_id: Uuid,
    pub viewers: Vec<Viewer>,
}

/// Whether a heartbeat changes what others see: someone new (or back after lapsing), or a
/// different state. `left` is always announced when there was a presence to leave.
pub fn announce(old: Option<(&str, DateTime<Utc>)>, new: Activity, now: DateTime<Utc>) -> bool {
    let ttl = chrono::Duration::from_std(TTL).unwrap_or_default();
    match old {
        None => new != Activity::Left,
        Some((_, seen)) if now - seen >= ttl => new != Activity::Left,
        Some((state, _)) => new == Activity::Left || state != new.as_str(),
    }
}

/// The ticket's live viewers (404 when there is no such ticket).
pub async fn load(pool: &PgPool, ticket_id: Uuid) -> Result<TicketPresence, ApiError> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tickets WHERE id = $1")
        .bind(ticket_id)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("no such ticket"));
    }
    let viewers: Vec<Viewer> = sqlx::query_as(
        "SELECT p.agent_id, a.name, p.state, p.seen_at, p.seen_at + make_interval(secs => $2) AS expires_at
         FROM ticket_presence p JOIN agents a ON a.id = p.agent_id
         WHERE p.ticket_id = $1 AND p.seen_at > now() - make_interval(secs => $2)
         ORDER BY p.seen_at, p.agent_id",
    )
    .bind(ticket_id)
    .bind(TTL.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(TicketPresence { ticket_id, viewers })
}

#[utoipa::path(get, path = "/v1/tickets/{id}/presence", operation_id = "ticket_presence", tag = "tickets", params(("id" = Uuid, Path)), responses((status = 200, body = TicketPresence, description = "who is viewing or typing on the ticket now"), (status = 404, description = "no such ticket")), security(("bearer" = [])))]
async fn current(
    State(api): State<Api>,
    _any_role: Principal,
    Path(id): Path<String>,
) -> Result<Json<TicketPresence>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    Ok(Json(load(&api.pool, ticket_id).await?))
}

#[utoipa::path(put, path = "/v1/tickets/{id}/presence", operation_id = "set_presence", tag = "tickets", params(("id" = Uuid, Path)), request_body = PresenceInput, responses((status = 200, body = TicketPresence, description = "who is on the ticket after this"), (status = 400, description = "`state` is not viewing, typing or left"), (status = 403, description = "a token without an agent (presence is an agent's)"), (status = 404, description = "no such ticket")), security(("bearer" = [])))]
async fn set(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<PresenceInput>,
) -> Result<Json<TicketPresence>, ApiError> {
    let ticket_id = parse_id(&id, "id")?;
    let agent = who
        .agent_id
        .ok_or_else(|| forbidden("presence is an agent's: use an agent's token"))?;
    let mut tx = api.pool.begin().await?;
    // The ticket's row is not locked: presence never changes the ticket.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tickets WHERE id = $1")
        .bind(ticket_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("no such ticket"));
    }
    let old: Option<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT state, seen_at FROM ticket_presence WHERE ticket_id = $1 AND agent_id = $2 FOR UPDATE",
    )
    .bind(ticket_id)
    .bind(agent)
    .fetch_optional(&mut *tx)
    .await?;
    let now = Utc::now();
    let changed = announce(
        old.as_ref().map(|(s, t)| (s.as_str(), *t)),
        input.state,
        now,
    );
    if input.state == Activity::Left {
        sqlx::query("DELETE FROM ticket_presence WHERE ticket_id = $1 AND agent_id = $2")
            .bind(ticket_id)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO ticket_presence (ticket_id, agent_id, state, seen_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (ticket_id, agent_id) DO UPDATE SET state = EXCLUDED.state, seen_at = EXCLUDED.seen_at",
        )
        .bind(ticket_id)
        .bind(agent)
        .bind(input.state.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // Lapsed rows of this ticket go as someone touches it (the rest never count anyway).
    sqlx::query(
        "DELETE FROM ticket_presence WHERE ticket_id = $1 AND seen_at < now() - make_interval(secs => $2)",
    )
    .bind(ticket_id)
    .bind(TTL.as_secs_f64() * 2.0)
    .execute(&mut *tx)
    .await?;
    if changed {
        // Delivered to the listeners at commit.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(ticket_id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::debug!(ticket_id = %ticket_id, agent_id = %agent, state = input.state.as_str(), changed, "presence");
    Ok(Json(load(&api.pool, ticket_id).await?))
}

/// Hears presence changes from every instance and hands them to this instance's streams.
#[derive(Debug, Clone)]
pub struct PresenceListener {
    pub pool: PgPool,
    pub hub: StreamHub,
}

impl switchboard_core::runtime::Background for PresenceListener {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.listen(shutdown)
    }
}

impl PresenceListener {
    async fn listen(self, shutdown: CancellationToken) {
        loop {
            match self.listen_once(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    // Missed changes show at the next heartbeat's change or on reload.
                    tracing::warn!(error = %e, "presence notifications lost, reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn listen_once(&self, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let mut l = PgListener::connect_with(&self.pool).await?;
        l.listen(CHANNEL).await?;
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    // Presences nobody came back to (every instance sweeps; the delete is
                    // idempotent and uses the seen_at index).
                    if let Err(e) = sqlx::query(
                        "DELETE FROM ticket_presence WHERE seen_at < now() - make_interval(secs => $1)",
                    )
                    .bind(TTL.as_secs_f64() * 2.0)
                    .execute(&self.pool)
                    .await
                    {
                        tracing::warn!(error = %e, "cannot sweep lapsed presences");
                    }
                    continue;
                }
                n = l.recv() => n?,
            };
            let Ok(ticket_id) = Uuid::parse_str(n.payload()) else {
                continue;
            };
            match load(&self.pool, ticket_id).await {
                Ok(p) => self.hub.publish(Live::Presence(p)),
                // An erased ticket: nobody to tell.
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {}
                Err(e) => {
                    tracing::warn!(ticket_id = %ticket_id, error = %e.message, "cannot read a ticket's presence")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_announced() {
        let now = Utc::now();
        let recent = now - chrono::Duration::seconds(5);
        let lapsed = now - chrono::Duration::seconds(31);
        // Arriving, and coming back after lapsing.
        assert!(announce(None, Activity::Viewing, now));
        assert!(announce(Some(("viewing", lapsed)), Activity::Viewing, now));
        // A heartbeat in the same state.
        assert!(!announce(Some(("viewing", recent)), Activity::Viewing, now));
        assert!(!announce(Some(("typing", recent)), Activity::Typing, now));
        // Starting and stopping to type.
        assert!(announce(Some(("viewing", recent)), Activity::Typing, now));
        assert!(announce(Some(("typing", recent)), Activity::Viewing, now));
        // Leaving: only when there was a live presence.
        assert!(announce(Some(("viewing", recent)), Activity::Left, now));
        assert!(!announce(None, Activity::Left, now));
        assert!(!announce(Some(("typing", lapsed)), Activity::Left, now));
    }
}
