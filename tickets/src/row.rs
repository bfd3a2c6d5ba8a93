//! The ticket row's writes: every `UPDATE tickets` of the workspace is one of these functions,
//! each in the caller's transaction, with the business time bound by the caller (`now`). The
//! events that announce a change are the caller's to add (see [`crate::store`]).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use switchboard_contracts::TicketStatus;
use uuid::Uuid;

/// The ticket is `agent_id`'s.
pub async fn assign(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    agent_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tickets SET assigned_agent_id = $2, updated_at = $3 WHERE id = $1")
        .bind(ticket_id)
        .bind(agent_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The ticket is nobody's again.
pub async fn unassign(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tickets SET assigned_agent_id = NULL, updated_at = $2 WHERE id = $1")
        .bind(ticket_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// An agent moved the ticket to `to`: a new version; resolved and closed tickets carry when.
/// Returns the new version.
pub async fn set_status(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    to: TicketStatus,
    now: DateTime<Utc>,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tickets SET status = $2, version = version + 1, updated_at = $3,
                resolved_at = CASE WHEN $2 IN ('resolved', 'closed') THEN $3 ELSE NULL END
         WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(to.as_str())
    .bind(now)
    .fetch_one(conn)
    .await
}

/// An agent's reply: the first response (once) and a new version.
pub async fn responded(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets SET first_response_at = COALESCE(first_response_at, $2), updated_at = $2, version = version + 1
         WHERE id = $1",
    )
    .bind(ticket_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// `source` is closed into `target`, and `target` gets a new version.
pub async fn merge(
    conn: &mut PgConnection,
    source: Uuid,
    target: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets SET merged_into = $2, status = 'closed', resolved_at = $3, version = version + 1, updated_at = $3
         WHERE id = $1",
    )
    .bind(source)
    .bind(target)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tickets SET updated_at = $2, version = version + 1 WHERE id = $1")
        .bind(target)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Tickets merged into any of `tickets` point nowhere (before those are erased).
pub async fn unmerge_from(conn: &mut PgConnection, tickets: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tickets SET merged_into = NULL WHERE merged_into = ANY($1)")
        .bind(tickets)
        .execute(conn)
        .await?;
    Ok(())
}

/// A customer wrote again on the ticket: open again when `reopen` (it was not open), no longer
/// resolved; the bot's state moves on when there is a new one.
pub async fn customer_wrote(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    reopen: bool,
    bot_state: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let sql = if reopen {
        "UPDATE tickets SET status = 'open', bot_state = COALESCE($2, bot_state), resolved_at = NULL, updated_at = $3 WHERE id = $1"
    } else {
        "UPDATE tickets SET bot_state = COALESCE($2, bot_state), updated_at = $3 WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(ticket_id)
        .bind(bot_state)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The bot answered (at `answered`): pending on the customer, the first response (once).
pub async fn bot_answered(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    answered: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets SET status = 'pending', bot_state = 'answered', first_response_at = COALESCE(first_response_at, $2),
                updated_at = $3 WHERE id = $1",
    )
    .bind(ticket_id)
    .bind(answered)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The customer did not write back after the bot's answer: resolved by the bot.
pub async fn bot_resolved(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets SET status = 'resolved', bot_state = 'resolved', resolved_at = $2, updated_at = $2 WHERE id = $1",
    )
    .bind(ticket_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the models read in a message: its sentiment, and its intent when it opened the ticket.
pub async fn enrich(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    sentiment: Option<f32>,
    intent: Option<&str>,
    opened: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets SET sentiment = COALESCE($2, sentiment), intent = CASE WHEN $3 THEN $4 ELSE intent END WHERE id = $1",
    )
    .bind(ticket_id)
    .bind(sentiment)
    .bind(opened)
    .bind(intent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ticket's SLA columns from its clocks: `next_due_at` (the queue's second sort key) is the
/// earliest running deadline; `sla_warned` / `sla_breached`, whether a clock not stopped (running
/// or paused) has warned / breached (the "SLA at risk" view counts from them). The row is written
/// only when one of them changes.
pub async fn refresh_sla(conn: &mut PgConnection, ticket_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tickets t SET next_due_at = c.due, sla_warned = c.warned, sla_breached = c.breached
         FROM (SELECT min(due_at) FILTER (WHERE running_since IS NOT NULL) AS due,
                      coalesce(bool_or(warned_at IS NOT NULL), false) AS warned,
                      coalesce(bool_or(breached_at IS NOT NULL), false) AS breached
               FROM sla_clocks WHERE ticket_id = $1 AND stopped_at IS NULL) c
         WHERE t.id = $1
           AND (t.next_due_at, t.sla_warned, t.sla_breached) IS DISTINCT FROM (c.due, c.warned, c.breached)",
    )
    .bind(ticket_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ticket's tags are `tags` (normalised, sorted; see [`crate::tags`]): a new version.
pub async fn set_tags(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    tags: &[String],
    now: DateTime<Utc>,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tickets SET tags = $2, version = version + 1, updated_at = $3 WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(tags)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// The ticket is with `team` (none: no team's): a new version.
pub async fn set_team(
    conn: &mut PgConnection,
    ticket_id: Uuid,
    team: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tickets SET team_id = $2, version = version + 1, updated_at = $3 WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(team)
    .bind(now)
    .fetch_one(conn)
    .await
}
