//! Assignment by hand: a ticket given to an agent, handed to a team, or released back to the
//! queue, in one transaction with its events; and the capacity claim the router and a manual
//! assignment share.
//!
//! An agent's constraints (online, room overall and on the ticket's channel, the ticket's skill)
//! are checked under the agent's row lock; a supervisor may override them, and the assignment's
//! reason says which were overridden, as the router's reason says why it picked. A ticket goes
//! to a team's queue: the router then picks among the team's members only.

use chrono::{DateTime, Utc};
use switchboard_contracts::{
    derived_id, Assignment, AssignmentAction, Candidate, Envelope, TicketChange,
};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// A released assignment's reason when the agent handed the ticket back: the router does not
/// give it to that agent again.
pub const HANDED_BACK: &str = "handed back";
/// A released assignment's reason when the ticket was given to someone else.
pub const TRANSFERRED: &str = "transferred";

/// Where a ticket goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Agent(Uuid),
    /// The team's queue: released, and routed among the team's members.
    Team(Uuid),
    /// The general queue.
    Queue,
}

/// A manual assignment.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    /// Why, as the person said it (kept in the assignment's reason).
    pub reason: String,
    /// Who did it (`agent:<id>`, `token:<id>`, `admin`).
    pub by: String,
    /// The agent doing it, when an agent does: handing back its own ticket keeps it from
    /// getting the ticket again.
    pub by_agent: Option<Uuid>,
    /// Assign even if the agent is offline, full or lacks the skill (supervisors).
    pub override_constraints: bool,
}

/// Why an assignment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such ticket")]
    NoTicket,
    #[error("the ticket is {0}: reopen it before assigning it")]
    Solved(String),
    #[error("the ticket was merged into another")]
    Merged,
    #[error("no such agent, or the agent is deactivated")]
    NoAgent,
    #[error("no such team")]
    NoTeam,
    /// The agent's constraints, each named; a supervisor may override them.
    #[error("the agent cannot take it: {}", .0.join(", "))]
    Constraints(Vec<String>),
}

/// What an assignment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The agent the ticket was taken from.
    pub released: Option<Uuid>,
    /// The new assignment and its agent.
    pub assigned: Option<(Uuid, Uuid)>,
    /// The ticket's team after it.
    pub team_id: Option<Uuid>,
    /// The recorded reason.
    pub reason: String,
    /// The constraints overridden.
    pub overridden: Vec<String>,
}

/// What an agent's row says about taking a ticket on `channel` needing `skill`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Capacity {
    pub status: String,
    pub active_count: i32,
    pub max_concurrent: i32,
    /// Tickets held on the channel, and the channel's cap (none: `max_concurrent`).
    pub channel_active: i32,
    pub channel_cap: Option<i32>,
    pub has_skill: bool,
}

impl Capacity {
    /// The constraints the agent fails, named (empty: it can take the ticket).
    pub fn violations(&self, channel: &str, skill: Option<&str>) -> Vec<String> {
        let mut v = Vec::new();
        if self.status != "online" {
            v.push(format!("agent is {}", self.status));
        }
        if self.active_count >= self.max_concurrent {
            v.push(format!(
                "at capacity ({} of {})",
                self.active_count, self.max_concurrent
            ));
        }
        let cap = self.channel_cap.unwrap_or(self.max_concurrent);
        if self.channel_active >= cap {
            v.push(format!(
                "at capacity on {channel} ({} of {cap})",
                self.channel_active
            ));
        }
        if let (Some(skill), false) = (skill, self.has_skill) {
            v.push(format!("lacks skill {skill}"));
        }
        v
    }
}

/// Counts a ticket on `channel` against the agent: `enforce` takes it only while the agent is
/// online with room (overall and on the channel); without, it takes it regardless (an override).
/// Returns whether the agent took it.
pub async fn claim(
    tx: &mut EventTx<'_>,
    agent_id: Uuid,
    channel: &str,
    now: DateTime<Utc>,
    enforce: bool,
) -> Result<bool, Error> {
    let got: Option<Uuid> = sqlx::query_scalar(
        "UPDATE agents SET active_count = active_count + 1, last_assigned_at = $3,
                channel_active = jsonb_set(channel_active, ARRAY[$2],
                    to_jsonb(COALESCE((channel_active->>$2)::int, 0) + 1))
         WHERE id = $1 AND (NOT $4 OR (status = 'online' AND active_count < max_concurrent
           AND COALESCE((channel_active->>$2)::int, 0) < COALESCE((channel_capacity->>$2)::int, max_concurrent)))
         RETURNING id",
    )
    .bind(agent_id)
    .bind(channel)
    .bind(now)
    .bind(enforce)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(got.is_some())
}

/// Records an assignment of `ticket_id` to `agent_id` (already claimed): the row, the ticket's
/// assignee, `assigned` and the assignment record, all in `tx`.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    number: &str,
    customer_id: Uuid,
    agent_id: Uuid,
    channel: &str,
    reason: &str,
    candidates: Vec<Candidate>,
    now: DateTime<Utc>,
) -> Result<Uuid, Error> {
    let assignment_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO assignments (id, ticket_id, agent_id, reason, candidates, channel, assigned_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(assignment_id)
    .bind(ticket_id)
    .bind(agent_id)
    .bind(reason)
    .bind(serde_json::to_value(&candidates).unwrap_or_default())
    .bind(channel)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    crate::row::assign(tx, ticket_id, agent_id, now).await?;
    crate::store::add_ticket_event(
        tx,
        derived_id(assignment_id, "ticket_event"),
        ticket_id,
        number,
        customer_id,
        TicketChange::Assigned { agent_id },
    )
    .await?;
    let a = Assignment {
        assignment_id,
        ticket_id,
        ticket_number: number.to_string(),
        agent_id,
        action: AssignmentAction::Assigned,
        reason: reason.to_string(),
        candidates,
    };
    tx.add(&Envelope::new(assignment_id, now, a)).await?;
    Ok(assignment_id)
}

#[derive(Debug, sqlx::FromRow)]
struct Ticket {
    number: String,
    customer_id: Uuid,
    status: String,
    channel: String,
    required_skill: Option<String>,
    assigned_agent_id: Option<Uuid>,
    team_id: Option<Uuid>,
    merged_into: Option<Uuid>,
}

/// The reason an assignment records: what was done, why, by whom, and what was overridden.
pub fn reason_text(target: Target, reason: &str, by: &str, overridden: &[String]) -> String {
    let what = match target {
        Target::Agent(_) => "assigned by hand",
        Target::Team(_) => "handed to a team",
        Target::Queue => "released to the queue",
    };
    let mut s = format!("{what} by {by}");
    if !reason.is_empty() {
        s.push_str(": ");
        s.push_str(reason);
    }
    if !overridden.is_empty() {
        s.push_str(" (overrode: ");
        s.push_str(&overridden.join(", "));
        s.push(')');
    }
    s
}

/// Gives `ticket_id` to `req.target` under the ticket's row lock (and the agent's), releasing
/// whoever held it; every change is an event in `tx`. `Ok(Err(_))`: refused, nothing changed.
pub async fn assign(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Result<Outcome, Refusal>, Error> {
    let ticket: Option<Ticket> = sqlx::query_as(
        "SELECT number, customer_id, status, channel, required_skill, assigned_agent_id, team_id, merged_into
         FROM tickets WHERE id = $1 FOR UPDATE",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(t) = ticket else {
        return Ok(Err(Refusal::NoTicket));
    };
    if t.merged_into.is_some() {
        return Ok(Err(Refusal::Merged));
    }
    if t.status == "resolved" || t.status == "closed" {
        return Ok(Err(Refusal::Solved(t.status)));
    }
    let mut outcome = Outcome {
        released: None,
        assigned: None,
        team_id: t.team_id,
        reason: String::new(),
        overridden: Vec::new(),
    };
    match req.target {
        Target::Agent(agent) => {
            // The new agent's row and the holder's (released below) in id order, so two
            // transfers the other way round wait for each other instead of deadlocking.
            if let Some(holder) = t.assigned_agent_id.filter(|h| *h != agent) {
                sqlx::query("SELECT 1 FROM agents WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                    .bind(vec![agent, holder])
                    .execute(&mut **tx)
                    .await?;
            }
            let cap: Option<Capacity> = sqlx::query_as(
                "SELECT status, active_count, max_concurrent,
                        COALESCE((channel_active->>$2)::int, 0) AS channel_active,
                        (channel_capacity->>$2)::int AS channel_cap,
                        ($3::text IS NULL OR skills @> ARRAY[$3::text]) AS has_skill
                 FROM agents WHERE id = $1 AND deactivated_at IS NULL FOR UPDATE",
            )
            .bind(agent)
            .bind(&t.channel)
            .bind(&t.required_skill)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(cap) = cap else {
                return Ok(Err(Refusal::NoAgent));
            };
            if t.assigned_agent_id == Some(agent) {
                outcome.reason = "already assigned to this agent".into();
                return Ok(Ok(outcome));
            }
            let violations = cap.violations(&t.channel, t.required_skill.as_deref());
            if !violations.is_empty() && !req.override_constraints {
                return Ok(Err(Refusal::Constraints(violations)));
            }
            outcome.overridden = violations;
            outcome.reason = reason_text(req.target, &req.reason, &req.by, &outcome.overridden);
            if t.assigned_agent_id.is_some() {
                outcome.released = crate::store::release(
                    tx,
                    ticket_id,
                    &format!("{TRANSFERRED}: {}", outcome.reason),
                )
                .await?;
            }
            claim(tx, agent, &t.channel, now, false).await?;
            let candidates = vec![Candidate {
                agent_id: agent,
                score: 0.0,
                excluded: None,
            }];
            let id = record(
                tx,
                ticket_id,
                &t.number,
                t.customer_id,
                agent,
                &t.channel,
                &outcome.reason,
                candidates,
                now,
            )
            .await?;
            outcome.assigned = Some((id, agent));
        }
        Target::Team(team) => {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM teams WHERE id = $1)")
                    .bind(team)
                    .fetch_one(&mut **tx)
                    .await?;
            if !exists {
                return Ok(Err(Refusal::NoTeam));
            }
            outcome.reason = reason_text(req.target, &req.reason, &req.by, &[]);
            outcome.released = release_for(tx, ticket_id, &t, req, &outcome.reason).await?;
            if t.team_id != Some(team) {
                set_team(tx, ticket_id, &t, Some(team), &outcome.reason, now).await?;
            }
            outcome.team_id = Some(team);
        }
        Target::Queue => {
            outcome.reason = reason_text(req.target, &req.reason, &req.by, &[]);
            outcome.released = release_for(tx, ticket_id, &t, req, &outcome.reason).await?;
        }
    }
    Ok(Ok(outcome))
}

/// Releases the ticket's assignee: "handed back" when the assignee itself let go (the router
/// then passes it over), "transferred" otherwise.
async fn release_for(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    t: &Ticket,
    req: &Request,
    reason: &str,
) -> Result<Option<Uuid>, Error> {
    if t.assigned_agent_id.is_none() {
        return Ok(None);
    }
    let kind = if req.by_agent.is_some() && req.by_agent == t.assigned_agent_id {
        HANDED_BACK
    } else {
        TRANSFERRED
    };
    crate::store::release(tx, ticket_id, &format!("{kind}: {reason}")).await
}

async fn set_team(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    t: &Ticket,
    team: Option<Uuid>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let version = crate::row::set_team(tx, ticket_id, team, now).await?;
    crate::store::add_ticket_event(
        tx,
        derived_id(ticket_id, &format!("team:{version}")),
        ticket_id,
        &t.number,
        t.customer_id,
        TicketChange::TeamChanged {
            from: t.team_id,
            to: team,
            reason: reason.to_string(),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(
        status: &str,
        active: i32,
        max: i32,
        on_channel: i32,
        cap: Option<i32>,
        skill: bool,
    ) -> Capacity {
        Capacity {
            status: status.into(),
            active_count: active,
            max_concurrent: max,
            channel_active: on_channel,
            channel_cap: cap,
            has_skill: skill,
        }
    }

    #[test]
    fn every_failed_constraint_is_named() {
        assert!(cap("online", 1, 3, 1, None, true)
            .violations("email", Some("billing"))
            .is_empty());
        assert_eq!(
            cap("offline", 3, 3, 1, Some(1), false).violations("chat", Some("billing")),
            vec![
                "agent is offline".to_string(),
                "at capacity (3 of 3)".into(),
                "at capacity on chat (1 of 1)".into(),
                "lacks skill billing".into(),
            ]
        );
        // No skill needed: none lacking.
        assert!(cap("online", 0, 1, 0, None, false)
            .violations("sms", None)
            .is_empty());
        // The channel's cap defaults to the overall one.
        assert_eq!(
            cap("online", 1, 2, 2, None, true).violations("sms", None),
            vec!["at capacity on sms (2 of 2)".to_string()]
        );
    }

    #[test]
    fn reasons_say_what_why_who_and_what_was_overridden() {
        let a = Uuid::nil();
        assert_eq!(
            reason_text(Target::Agent(a), "speaks Portuguese", "agent:x", &[]),
            "assigned by hand by agent:x: speaks Portuguese"
        );
        assert_eq!(
            reason_text(Target::Agent(a), "", "admin", &["agent is offline".into()]),
            "assigned by hand by admin (overrode: agent is offline)"
        );
        assert_eq!(
            reason_text(Target::Team(a), "refund", "token:t", &[]),
            "handed to a team by token:t: refund"
        );
        assert!(reason_text(Target::Queue, "", "agent:y", &[]).starts_with("released to the queue"));
    }
}
