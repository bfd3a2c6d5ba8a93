//! Ticket-store transitions shared by the processors and the agent API: releasing an
//! assignment and escalating a ticket. Each runs inside the caller's transaction (which holds
//! the ticket row lock) and adds its events to the outbox, with ids derived from what caused
//! them, so a retried transition publishes nothing twice.

use sqlx::Row;
use switchboard_contracts::{
    derived_id, Assignment, AssignmentAction, Envelope, Priority, TicketChange, TicketEvent,
};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use tracing::info;
use uuid::Uuid;

/// What an escalation does (`sla.on_warning`, `sla.on_breach`, auto-escalation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RaisePriority,
    MoveToSenior,
    MoveToSupervisor,
    NotifySupervisor,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "raise_priority" => Some(Action::RaisePriority),
            "move_to_senior" => Some(Action::MoveToSenior),
            "move_to_supervisor" => Some(Action::MoveToSupervisor),
            "notify_supervisor" => Some(Action::NotifySupervisor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::RaisePriority => "raise_priority",
            Action::MoveToSenior => "move_to_senior",
            Action::MoveToSupervisor => "move_to_supervisor",
            Action::NotifySupervisor => "notify_supervisor",
        }
    }

    /// Parses a configured list, naming the bad entry.
    pub fn parse_all(field: &str, items: &[String]) -> Result<Vec<Action>, String> {
        items
            .iter()
            .map(|s| {
                Action::parse(s).ok_or_else(|| {
                    format!("{field}: {s:?} is not one of raise_priority, move_to_senior, move_to_supervisor, notify_supervisor")
                })
            })
            .collect()
    }
}

fn queue_rank(q: &str) -> u8 {
    match q {
        "supervisor" => 2,
        "senior" => 1,
        _ => 0,
    }
}

/// Adds a ticket event to the outbox, happening now.
pub async fn add_ticket_event(
    tx: &mut EventTx<'_>,
    event_id: Uuid,
    ticket_id: Uuid,
    number: &str,
    customer_id: Uuid,
    change: TicketChange,
) -> Result<(), Error> {
    add_ticket_event_at(
        tx,
        event_id,
        ticket_id,
        number,
        customer_id,
        change,
        switchboard_core::clock::now(),
    )
    .await
}

/// Adds a ticket event that happened at `at` (a split ticket's history, replayed so its SLA
/// clocks start when the customer asked).
pub async fn add_ticket_event_at(
    tx: &mut EventTx<'_>,
    event_id: Uuid,
    ticket_id: Uuid,
    number: &str,
    customer_id: Uuid,
    change: TicketChange,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), Error> {
    let actor = tx.actor().cloned();
    if let Some(a) = actor.as_ref().filter(|a| a.person) {
        if let Some((before, after)) = audited(&change) {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor, role, action, subject, ticket_id, before, after)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(Uuid::now_v7())
            .bind(at)
            .bind(&a.name)
            .bind(&a.role)
            .bind(format!("ticket.{}", change.kind()))
            .bind(format!("ticket:{ticket_id}"))
            .bind(ticket_id)
            .bind(before)
            .bind(after)
            .execute(&mut **tx)
            .await?;
        }
    }
    let ev = TicketEvent {
        ticket_id,
        ticket_number: number.to_string(),
        customer_id,
        change,
        actor: actor.map(|a| a.name),
    };
    tx.add(&Envelope::new(event_id, at, ev)).await
}

/// What the audit log keeps of a change a person made: before and after. `None` for what is
/// not a change of the ticket's state (its creation, a message, a mention, the bot's answer).
fn audited(
    change: &TicketChange,
) -> Option<(Option<serde_json::Value>, Option<serde_json::Value>)> {
    use serde_json::json;
    let whole = || {
        let mut v = serde_json::to_value(change).ok()?;
        if let Some(m) = v.as_object_mut() {
            m.remove("kind");
        }
        Some(v)
    };
    Some(match change {
        TicketChange::Created { .. }
        | TicketChange::MessageAdded { .. }
        | TicketChange::Mentioned { .. }
        | TicketChange::Notified { .. }
        | TicketChange::RulesHalted { .. }
        | TicketChange::CsatReceived { .. }
        | TicketChange::OrderUpdated { .. }
        | TicketChange::BotAnswered { .. } => return None,
        TicketChange::StatusChanged { from, to } => (
            Some(json!({ "status": from.as_str() })),
            Some(json!({ "status": to.as_str() })),
        ),
        TicketChange::PriorityChanged { from, to, reason } => (
            Some(json!({ "priority": from.as_str() })),
            Some(json!({ "priority": to.as_str(), "reason": reason })),
        ),
        TicketChange::TeamChanged { from, to, reason } => (
            Some(json!({ "team_id": from })),
            Some(json!({ "team_id": to, "reason": reason })),
        ),
        _ => (None, whole()),
    })
}

/// Releases the ticket's active assignment, if any: the agent's counters go down (overall and
/// on the ticket's channel) and `unassigned` plus a released assignment are published. The
/// caller holds the ticket row lock. Returns the released agent, if there was one.
pub async fn release(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    reason: &str,
) -> Result<Option<Uuid>, Error> {
    let row = sqlx::query(
        "SELECT a.id, a.agent_id, COALESCE(a.channel, t.channel) AS channel, t.number, t.customer_id
         FROM assignments a JOIN tickets t ON t.id = a.ticket_id
         WHERE a.ticket_id = $1 AND a.released_at IS NULL",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let assignment_id: Uuid = row.try_get("id")?;
    let agent_id: Uuid = row.try_get("agent_id")?;
    let channel: String = row.try_get("channel")?;
    let number: String = row.try_get("number")?;
    let customer_id: Uuid = row.try_get("customer_id")?;
    sqlx::query("UPDATE assignments SET released_at = $3, release_reason = $2 WHERE id = $1")
        .bind(assignment_id)
        .bind(reason)
        .bind(switchboard_core::clock::now())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE agents SET active_count = GREATEST(active_count - 1, 0),
                channel_active = jsonb_set(channel_active, ARRAY[$2],
                    to_jsonb(GREATEST(COALESCE((channel_active->>$2)::int, 0) - 1, 0)))
         WHERE id = $1",
    )
    .bind(agent_id)
    .bind(&channel)
    .execute(&mut **tx)
    .await?;
    crate::row::unassign(tx, ticket_id, switchboard_core::clock::now()).await?;
    add_ticket_event(
        tx,
        derived_id(assignment_id, "unassigned"),
        ticket_id,
        &number,
        customer_id,
        TicketChange::Unassigned {
            agent_id,
            reason: reason.to_string(),
        },
    )
    .await?;
    let a = Assignment {
        assignment_id,
        ticket_id,
        ticket_number: number,
        agent_id,
        action: AssignmentAction::Released,
        reason: reason.to_string(),
        candidates: Vec::new(),
    };
    tx.add(&Envelope::new(
        derived_id(assignment_id, "released"),
        switchboard_core::clock::now(),
        a,
    ))
    .await?;
    metrics::counter!(crate::telemetry::ASSIGNMENTS_RELEASED_TOTAL).increment(1);
    info!(ticket_id = %ticket_id, agent_id = %agent_id, reason, "assignment released");
    Ok(Some(agent_id))
}

/// Escalates a ticket: raises its priority, moves it to a senior or supervisor queue (taking it
/// from an agent below that level) and notifies the supervisor, as `actions` say. `cause`
/// seeds the event ids (the SLA clock or message that escalated). The caller holds the ticket
/// row lock.
pub async fn escalate(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    actions: &[Action],
    reason: &str,
    cause: Uuid,
) -> Result<(), Error> {
    let Some(row) = sqlx::query(
        "SELECT t.number, t.customer_id, t.priority, t.queue, t.status, a.level AS agent_level
         FROM tickets t LEFT JOIN agents a ON a.id = t.assigned_agent_id WHERE t.id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(());
    };
    let number: String = row.try_get("number")?;
    let customer_id: Uuid = row.try_get("customer_id")?;
    let priority =
        Priority::parse(row.try_get::<String, _>("priority")?.as_str()).unwrap_or(Priority::Medium);
    let mut queue: String = row.try_get("queue")?;
    let agent_level: Option<String> = row.try_get("agent_level")?;
    for action in actions {
        match action {
            Action::RaisePriority => {
                let to = priority.raised();
                if to != priority {
                    sqlx::query("UPDATE tickets SET priority = $2, priority_rank = $3, updated_at = $4 WHERE id = $1")
                        .bind(ticket_id)
                        .bind(to.as_str())
                        .bind(to as i16)
                        .bind(switchboard_core::clock::now())
                        .execute(&mut **tx)
                        .await?;
                    add_ticket_event(
                        tx,
                        derived_id(cause, "escalate:priority"),
                        ticket_id,
                        &number,
                        customer_id,
                        TicketChange::PriorityChanged {
                            from: priority,
                            to,
                            reason: reason.to_string(),
                        },
                    )
                    .await?;
                }
            }
            Action::MoveToSenior | Action::MoveToSupervisor => {
                let target = if *action == Action::MoveToSenior {
                    "senior"
                } else {
                    "supervisor"
                };
                if queue_rank(target) > queue_rank(&queue) {
                    queue = target.to_string();
                    sqlx::query("UPDATE tickets SET queue = $2, updated_at = $3 WHERE id = $1")
                        .bind(ticket_id)
                        .bind(&queue)
                        .bind(switchboard_core::clock::now())
                        .execute(&mut **tx)
                        .await?;
                    let level_ok = agent_level
                        .as_deref()
                        .and_then(switchboard_contracts::Level::parse)
                        .is_some_and(|l| {
                            switchboard_contracts::Level::for_queue(&queue)
                                .is_none_or(|min| l >= min)
                        });
                    if agent_level.is_some() && !level_ok {
                        release(tx, ticket_id, &format!("escalated to the {queue} queue")).await?;
                    }
                }
            }
            Action::NotifySupervisor => {}
        }
    }
    sqlx::query("UPDATE tickets SET escalated_at = COALESCE(escalated_at, $3), escalation_reason = $2 WHERE id = $1")
        .bind(ticket_id)
        .bind(reason)
        .bind(switchboard_core::clock::now())
        .execute(&mut **tx)
        .await?;
    // Who is told: the ticket's team's supervisor; without one, the desk's supervisors.
    let notified: Vec<Uuid> = if actions.contains(&Action::NotifySupervisor) {
        sqlx::query_scalar::<_, Option<Vec<Uuid>>>(
            "SELECT coalesce(
                 (SELECT array_agg(s.supervisor_id) FROM tickets t JOIN teams s ON s.id = t.team_id
                  WHERE t.id = $1 AND s.supervisor_id IS NOT NULL),
                 (SELECT array_agg(id) FROM (SELECT id FROM agents
                                             WHERE level = 'supervisor' AND deactivated_at IS NULL
                                             ORDER BY id LIMIT 20) a))",
        )
        .bind(ticket_id)
        .fetch_one(&mut **tx)
        .await?
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    if !notified.is_empty() {
        let text = format!("{number} escalated: {reason}");
        crate::notify::enqueue(
            tx,
            &crate::notify::Outgoing {
                event_id: derived_id(cause, "escalated"),
                ticket_id,
                ticket_number: &number,
                topic: "sla",
                text: &text,
                via: &["email", "sms"],
                people: &notified,
            },
            switchboard_core::clock::now(),
        )
        .await?;
    }
    if actions.contains(&Action::NotifySupervisor) || queue != "general" {
        add_ticket_event(
            tx,
            derived_id(cause, "escalated"),
            ticket_id,
            &number,
            customer_id,
            TicketChange::Escalated {
                reason: reason.to_string(),
                queue: queue.clone(),
                notified,
            },
        )
        .await?;
    }
    metrics::counter!(crate::telemetry::ESCALATIONS_TOTAL).increment(1);
    info!(ticket_id = %ticket_id, reason, queue = queue.as_str(), "ticket escalated");
    Ok(())
}

/// An automatic reply to `ticket_id`'s customer on the ticket's channel (the closed-hours
/// reply, a rule's template), by `author` and marked `automatic: kind` on the message: it is no
/// response, so no clock stops for it, and mail carries `Auto-Submitted: auto-replied`. Sent
/// only on a channel with a way back and when a person wrote the ticket's latest customer
/// message, never to a machine. `false`: not sent (no way back, a machine, or `reply_id` was
/// sent before).
#[allow(clippy::too_many_arguments)]
pub async fn automatic_reply(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    reply_id: Uuid,
    author: &str,
    kind: &str,
    text: String,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<bool, Error> {
    let Some(row) = sqlx::query(
        "SELECT t.number, t.customer_id, t.channel, c.email, c.phone, c.name, c.handle, m.external_id,
                coalesce(m.metadata ? 'automatic', true) AS automatic
         FROM tickets t JOIN customers c ON c.id = t.customer_id
         LEFT JOIN LATERAL (SELECT external_id, metadata FROM messages
                            WHERE ticket_id = t.id AND direction = 'inbound'
                            ORDER BY received_at DESC, id DESC LIMIT 1) m ON true
         WHERE t.id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let channel = switchboard_contracts::Channel::parse(&row.try_get::<String, _>("channel")?);
    let Some(channel) = channel.filter(|c| c.answerable()) else {
        return Ok(false);
    };
    if row.try_get::<bool, _>("automatic")? {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at, metadata)
         VALUES ($1, $2, $3, 'outbound', $4, $5, $6, jsonb_build_object('automatic', $7::text))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(reply_id)
    .bind(ticket_id)
    .bind(channel.as_str())
    .bind(author)
    .bind(&text)
    .bind(at)
    .bind(kind)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    let number: String = row.try_get("number")?;
    let customer_id: Uuid = row.try_get("customer_id")?;
    add_ticket_event_at(
        tx,
        derived_id(reply_id, "message_added"),
        ticket_id,
        &number,
        customer_id,
        TicketChange::MessageAdded {
            message_id: reply_id,
            direction: switchboard_contracts::Direction::Outbound,
            channel,
            automatic: true,
        },
        at,
    )
    .await?;
    let reply = switchboard_contracts::OutboundReply {
        reply_id,
        ticket_id,
        channel,
        to: switchboard_contracts::CustomerRef {
            email: row.try_get("email")?,
            phone: row.try_get("phone")?,
            name: row.try_get("name")?,
            handle: row.try_get("handle")?,
        },
        text,
        author_agent_id: None,
        in_reply_to: row.try_get("external_id")?,
    };
    tx.add(&Envelope::new(reply_id, at, reply)).await?;
    Ok(true)
}

/// Sets `ticket_id`'s priority to `to` with its `priority_changed` event saying `why`: `false`
/// when it was already `to` or there is no such ticket.
pub async fn set_priority(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    to: Priority,
    why: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, Error> {
    let row: Option<(String, Uuid, String)> = sqlx::query_as(
        "SELECT number, customer_id, priority FROM tickets WHERE id = $1 FOR UPDATE",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((number, customer_id, from)) = row else {
        return Ok(false);
    };
    let from = Priority::parse(&from).unwrap_or(Priority::Medium);
    if from == to {
        return Ok(false);
    }
    let version: i32 = sqlx::query_scalar(
        "UPDATE tickets SET priority = $2, priority_rank = $3, version = version + 1, updated_at = $4
         WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(to.as_str())
    .bind(to as i16)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    add_ticket_event(
        tx,
        derived_id(ticket_id, &format!("priority:{version}")),
        ticket_id,
        &number,
        customer_id,
        TicketChange::PriorityChanged {
            from,
            to,
            reason: why.to_string(),
        },
    )
    .await?;
    Ok(true)
}
