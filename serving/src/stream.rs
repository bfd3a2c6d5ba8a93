//! The agent's live stream: `GET /v1/agents/{id}/stream` (Server-Sent Events).
//!
//! Each serving instance follows `assignments` and `ticket.events` with a consumer group of its
//! own, starting at the end (a live view, not a stage: state comes from Postgres), and fans the
//! records out to its open streams ([`StreamHub`]). A stream starts with `snapshot` (the agent's
//! active assignments from Postgres), then sends `assignment` when a ticket is assigned to or
//! released from the agent and `ticket` for every event of a ticket the agent holds (a new
//! customer message, status, priority...), and `mention` when a note names the agent. The browser's `EventSource` reconnects by itself;
//! every reconnect begins with a fresh snapshot, so nothing is missed.
//!
//! `counts` carries every view's count (as `GET /v1/views/counts`) after the snapshot and then
//! whenever one changed: at most every [`COUNTS_EVERY`], and only after some ticket moved.
//! Views that do not depend on the agent are counted once per change on an instance, however
//! many streams show them ([`CountCache`]: a count begun after a stream saw the change serves it).
//!
//! An agent opens its own stream, a supervisor or admin any agent's. This is the one route that
//! takes its token as `?access_token=` too (`EventSource` sends no headers); a stream opened
//! with an issued token ends within seconds of the token's revocation or expiry.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Serialize;
use switchboard_contracts::{
    decode, Assignment, AssignmentAction, TicketChange, TicketEvent, Topic,
};
use switchboard_core::http::ApiError;
use switchboard_core::kafka::{Handler, HandlerError, Record};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::Principal;
use crate::views::{CountCache, ViewCount};
use crate::{parse_id, Api};

/// One record of the followed topics, as the streams see it.
#[derive(Debug, Clone)]
pub enum Live {
    Assignment(Assignment),
    Ticket(TicketEvent),
    /// Who is on a ticket now (from any instance, through Postgres: [`crate::presence`]).
    Presence(crate::presence::TicketPresence),
}

/// Fans the followed topics out to this instance's streams.
#[derive(Debug, Clone)]
pub struct StreamHub {
    tx: broadcast::Sender<Arc<Live>>,
    /// View counts the streams share.
    counts: CountCache,
}

impl Default for StreamHub {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        StreamHub {
            tx,
            counts: CountCache::default(),
        }
    }
}

impl StreamHub {
    /// The topics the hub's consumer follows.
    pub const TOPICS: [Topic; 2] = [Topic::Assignments, Topic::TicketEvents];

    fn subscribe(&self) -> broadcast::Receiver<Arc<Live>> {
        self.tx.subscribe()
    }

    /// Hands `live` to this instance's open streams (none open: dropped).
    pub fn publish(&self, live: Live) {
        let _ = self.tx.send(Arc::new(live));
    }
}

impl Handler for StreamHub {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let live = if record.topic == Topic::Assignments {
            Live::Assignment(decode::<Assignment>(record.payload.as_deref())?.payload)
        } else {
            Live::Ticket(decode::<TicketEvent>(record.payload.as_deref())?.payload)
        };
        self.publish(live);
        Ok(())
    }
}

pub(crate) fn routes() -> Router<Api> {
    Router::new().route("/v1/agents/{id}/stream", get(stream))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Held {
    assignment_id: Uuid,
    ticket_id: Uuid,
    ticket_number: String,
    subject: Option<String>,
    status: String,
    priority: String,
    channel: String,
}

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

#[utoipa::path(get, path = "/v1/agents/{id}/stream", tag = "agents", params(("id" = Uuid, Path), ("access_token" = Option<String>, Query, description = "the bearer token, for clients that cannot send headers (EventSource); taken on this route only")), responses((status = 200, description = "text/event-stream: snapshot, assignment, ticket events; ends when the token is revoked or expires"), (status = 403, description = "another agent's stream"), (status = 503, description = "the live stream does not run on this instance")), security(("bearer" = [])))]
async fn stream(
    State(api): State<Api>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let agent = parse_id(&id, "id")?;
    who.require_self_or(agent)?;
    let hub = api
        .stream
        .clone()
        .ok_or_else(|| ApiError::unavailable("the live stream is not running on this instance"))?;
    // Subscribed before the snapshot: what happens meanwhile arrives after it (at worst twice).
    let rx = hub.subscribe();
    let held: Vec<Held> = sqlx::query_as(
        "SELECT a.id AS assignment_id, t.id AS ticket_id, t.number AS ticket_number, t.subject, t.status, t.priority, t.channel
         FROM assignments a JOIN tickets t ON t.id = a.ticket_id
         WHERE a.agent_id = $1 AND a.released_at IS NULL ORDER BY a.assigned_at",
    )
    .bind(agent)
    .fetch_all(&api.pool)
    .await?;
    metrics::gauge!(crate::telemetry::AGENT_STREAMS).increment(1.0);
    let credential = match (who.token_id, who.session_id) {
        (Some(id), _) => Some(Credential::Token(id)),
        (None, Some(id)) => Some(Credential::Session(id)),
        (None, None) => None,
    };
    let token = credential.map(|credential| TokenCheck {
        auth: api.auth.clone(),
        credential,
        agent,
        watcher: who.agent_id,
        every: tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_CHECK, TOKEN_CHECK),
    });
    // Counted as the stream's agent sees its views (a supervisor watching an agent's stream
    // sees that agent's counts).
    let counts = LiveCounts {
        api: api.clone(),
        who: Principal {
            agent_id: Some(agent),
            ..who
        },
        cache: hub.counts.clone(),
        every: {
            let mut every = tokio::time::interval(COUNTS_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every
        },
        dirty: Some(std::time::Instant::now()),
        last: None,
    };
    let s = async_stream(agent, held, rx, token, counts);
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// How often an open stream asks whether its token or session is still valid.
const TOKEN_CHECK: Duration = Duration::from_secs(5);

/// What a stream was opened with.
#[derive(Debug, Clone, Copy)]
enum Credential {
    Token(Uuid),
    Session(Uuid),
}

/// The issued token or session a stream was opened with, checked now and then: a revoked or
/// expired one (a session also: idle, or no longer granted a role by the IdP) ends the stream
/// (the configured admin token has none to check).
struct TokenCheck {
    auth: crate::auth::Auth,
    credential: Credential,
    /// The stream's agent, and the agent of whoever watches it.
    agent: Uuid,
    watcher: Option<Uuid>,
    every: tokio::time::Interval,
}

impl TokenCheck {
    /// Whether the stream may go on: the token still valid, or the session still live with a
    /// role that may watch this stream (a supervisor demoted at the IdP stops watching others).
    async fn still_valid(&self) -> Result<bool, switchboard_core::http::ApiError> {
        match self.credential {
            Credential::Token(id) => self.auth.still_valid(id).await,
            Credential::Session(id) => Ok(self.auth.session_role(id).await?.is_some_and(|role| {
                role >= crate::auth::Role::Supervisor || self.watcher == Some(self.agent)
            })),
        }
    }
}

/// How often a stream may send `counts`.
pub const COUNTS_EVERY: Duration = Duration::from_secs(2);

/// A stream's view counts: recounted on the next tick after any ticket moved, sent when they
/// changed.
struct LiveCounts {
    api: Api,
    who: Principal,
    cache: CountCache,
    every: tokio::time::Interval,
    /// When the first change not yet counted arrived (none: the counts sent are current).
    dirty: Option<std::time::Instant>,
    last: Option<Vec<ViewCount>>,
}

impl LiveCounts {
    /// The next `counts` event, if the counts changed.
    async fn refresh(&mut self) -> Option<Event> {
        let since = self.dirty.take()?;
        match crate::views::counts_for(&self.api, &self.who, Some((&self.cache, since))).await {
            Ok(counts) if self.last.as_ref() != Some(&counts) => {
                let e = event("counts", &counts);
                self.last = Some(counts);
                Some(e)
            }
            Ok(_) => None,
            // The store is away: try again on the next tick.
            Err(e) => {
                tracing::warn!(agent = ?self.who.agent_id, error = %e.message, "cannot count the views");
                self.dirty = Some(since);
                None
            }
        }
    }
}

/// What one stream carries between events.
struct Open {
    first: Option<Event>,
    rx: broadcast::Receiver<Arc<Live>>,
    agent: Uuid,
    mine: HashSet<Uuid>,
    /// Tickets the agent has open in its console (from the presence it sent).
    watching: HashSet<Uuid>,
    token: Option<TokenCheck>,
    counts: LiveCounts,
    _guard: Guard,
}

/// Waits for the next tick of `check` (forever without one).
async fn next_check(check: &mut Option<TokenCheck>) {
    match check {
        Some(c) => {
            c.every.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The events of one agent's stream: the snapshot, then what concerns the agent. A stream that
/// falls too far behind ends (the client reconnects and gets a fresh snapshot).
fn async_stream(
    agent: Uuid,
    held: Vec<Held>,
    rx: broadcast::Receiver<Arc<Live>>,
    token: Option<TokenCheck>,
    counts: LiveCounts,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let open = Open {
        first: Some(event(
            "snapshot",
            &serde_json::json!({ "agent_id": agent, "assignments": held }),
        )),
        mine: held.iter().map(|h| h.ticket_id).collect(),
        watching: HashSet::new(),
        rx,
        agent,
        token,
        counts,
        _guard: Guard,
    };
    futures::stream::unfold(open, |mut st| async move {
        if let Some(e) = st.first.take() {
            return Some((Ok(e), st));
        }
        loop {
            let received = tokio::select! {
                r = st.rx.recv() => r,
                _ = next_check(&mut st.token) => {
                    let Some(c) = &st.token else { continue };
                    match c.still_valid().await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::info!(agent = %st.agent, credential = ?c.credential, "token or session revoked or expired, ending the agent stream");
                            return None;
                        }
                        // The store is away: the stream goes on, the next check decides.
                        Err(e) => tracing::warn!(agent = %st.agent, error = %e.message, "cannot check the stream's token"),
                    }
                    continue;
                }
                _ = st.counts.every.tick() => {
                    if let Some(e) = st.counts.refresh().await {
                        return Some((Ok(e), st));
                    }
                    continue;
                }
            };
            match received {
                Ok(live) => {
                    // Any ticket that moved may have moved between views.
                    if !matches!(*live, Live::Presence(_)) {
                        st.counts.dirty.get_or_insert_with(std::time::Instant::now);
                    }
                    if let Some(e) = route(st.agent, &mut st.mine, &mut st.watching, &live) {
                        return Some((Ok(e), st));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(agent = %st.agent, missed, "agent stream fell behind, ending it");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Counts open streams down when one ends.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::AGENT_STREAMS).decrement(1.0);
    }
}

/// Whether an event belongs on `agent`'s stream, updating the sets of tickets it holds and
/// has open.
pub fn route(
    agent: Uuid,
    mine: &mut HashSet<Uuid>,
    watching: &mut HashSet<Uuid>,
    live: &Live,
) -> Option<Event> {
    match live {
        Live::Presence(p) => {
            // The agent's own presence says whether it has the ticket open.
            let here = p.viewers.iter().any(|v| v.agent_id == agent);
            let was = if here {
                !watching.insert(p.ticket_id)
            } else {
                watching.remove(&p.ticket_id)
            };
            (here || was || mine.contains(&p.ticket_id)).then(|| event("presence", p))
        }
        Live::Assignment(a) if a.agent_id == agent => {
            match a.action {
                AssignmentAction::Assigned => {
                    mine.insert(a.ticket_id);
                }
                _ => {
                    mine.remove(&a.ticket_id);
                }
            }
            Some(event("assignment", a))
        }
        Live::Assignment(_) => None,
        Live::Ticket(t) => {
            // A mention reaches the agents it names, whoever holds the ticket.
            if let TicketChange::Mentioned { agent_ids, .. } = &t.change {
                return agent_ids.contains(&agent).then(|| event("mention", t));
            }
            // So does a rule's notification, and an escalation's to the supervisors it names.
            if let TicketChange::Notified { agent_ids, .. } = &t.change {
                return agent_ids.contains(&agent).then(|| event("notification", t));
            }
            if let TicketChange::Escalated { notified, .. } = &t.change {
                if notified.contains(&agent) {
                    return Some(event("notification", t));
                }
            }
            let held = mine.contains(&t.ticket_id);
            if let TicketChange::Assigned { agent_id } = &t.change {
                if *agent_id == agent {
                    mine.insert(t.ticket_id);
                    return Some(event("ticket", t));
                }
                if held {
                    mine.remove(&t.ticket_id);
                    return Some(event("ticket", t));
                }
            }
            held.then(|| event("ticket", t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(agent: Uuid, ticket: Uuid, action: AssignmentAction) -> Live {
        Live::Assignment(Assignment {
            assignment_id: Uuid::now_v7(),
            ticket_id: ticket,
            ticket_number: "T-2026-000001".into(),
            agent_id: agent,
            action,
            reason: "test".into(),
            candidates: Vec::new(),
        })
    }

    fn ticket(ticket: Uuid, change: TicketChange) -> Live {
        Live::Ticket(TicketEvent {
            ticket_id: ticket,
            ticket_number: "T-2026-000001".into(),
            customer_id: Uuid::nil(),
            change,
            actor: None,
        })
    }

    #[test]
    fn a_stream_carries_its_agents_tickets_only() {
        let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
        let mut mine = HashSet::new();
        let mut watching = HashSet::new();
        assert!(route(
            me,
            &mut mine,
            &mut watching,
            &assignment(other, t2, AssignmentAction::Assigned)
        )
        .is_none());
        assert!(route(
            me,
            &mut mine,
            &mut watching,
            &assignment(me, t1, AssignmentAction::Assigned)
        )
        .is_some());
        let status = TicketChange::StatusChanged {
            from: switchboard_contracts::TicketStatus::Open,
            to: switchboard_contracts::TicketStatus::Pending,
        };
        assert!(route(me, &mut mine, &mut watching, &ticket(t1, status.clone())).is_some());
        assert!(route(me, &mut mine, &mut watching, &ticket(t2, status.clone())).is_none());
        assert!(route(
            me,
            &mut mine,
            &mut watching,
            &assignment(me, t1, AssignmentAction::Released)
        )
        .is_some());
        assert!(route(me, &mut mine, &mut watching, &ticket(t1, status)).is_none());
        // A mention reaches the agents it names only, held ticket or not.
        let mention = |ids: Vec<Uuid>| {
            ticket(
                t2,
                TicketChange::Mentioned {
                    message_id: Uuid::now_v7(),
                    agent_ids: ids,
                    by: Some(other),
                },
            )
        };
        assert!(route(me, &mut mine, &mut watching, &mention(vec![other, me])).is_some());
        assert!(route(me, &mut mine, &mut watching, &mention(vec![other])).is_none());
    }
}
