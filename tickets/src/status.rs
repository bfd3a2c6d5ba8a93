//! A ticket's status change, the one way every writer but the ticketing stage takes: the row,
//! `status_changed` and the derived `resolved` / `reopened` events, the satisfaction survey on
//! resolving, the reply example kept (withdrawn on reopening: see [`crate::drafts`]), and the
//! agent's slot freed. The agent API and the rules both call [`change`], in
//! their own transaction under the ticket's row lock.

use sqlx::Row;
use switchboard_contracts::{derived_id, TicketChange, TicketStatus};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

use crate::{fields, row, store};

/// Why a status change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    /// The ticket is at another version than the caller read.
    Version(i32),
    /// A required-to-resolve custom field is empty: its key.
    Required(String),
}

/// Sets `ticket_id`'s status to `to` (if `expected`, only from that version): `Ok((version,
/// changed))`. Resolving sends the survey with links under `public_url`.
pub async fn change(
    tx: &mut EventTx<'_>,
    public_url: &str,
    ticket_id: Uuid,
    to: TicketStatus,
    expected: Option<i32>,
) -> Result<Result<(i32, bool), Refused>, Error> {
    let Some(t) = sqlx::query(
        "SELECT number, customer_id, status, version, fields FROM tickets WHERE id = $1 FOR UPDATE",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(Err(Refused::NotFound));
    };
    let version: i32 = t.try_get("version")?;
    if expected.is_some_and(|v| v != version) {
        return Ok(Err(Refused::Version(version)));
    }
    let from = TicketStatus::parse(t.try_get::<String, _>("status")?.as_str())
        .unwrap_or(TicketStatus::Open);
    if from == to {
        return Ok(Ok((version, false)));
    }
    if matches!(to, TicketStatus::Resolved | TicketStatus::Closed) {
        let values: sqlx::types::Json<std::collections::BTreeMap<String, serde_json::Value>> =
            t.try_get("fields")?;
        let defs = fields::defs(&mut **tx).await?;
        if let Some(key) = fields::missing_to_resolve(&defs, &values.0).first() {
            return Ok(Err(Refused::Required(key.clone())));
        }
    }
    let number: String = t.try_get("number")?;
    let customer_id: Uuid = t.try_get("customer_id")?;
    let new_version = row::set_status(tx, ticket_id, to, switchboard_core::clock::now()).await?;
    // Every event of this change derives from the ticket and its new version.
    let cause = derived_id(ticket_id, &format!("status:{new_version}"));
    let event = |tag: &str| derived_id(cause, tag);
    store::add_ticket_event(
        tx,
        event("changed"),
        ticket_id,
        &number,
        customer_id,
        TicketChange::StatusChanged { from, to },
    )
    .await?;
    match to {
        TicketStatus::Resolved | TicketStatus::Closed => {
            if from != TicketStatus::Resolved {
                store::add_ticket_event(
                    tx,
                    event("resolved"),
                    ticket_id,
                    &number,
                    customer_id,
                    TicketChange::Resolved,
                )
                .await?;
            }
            if to == TicketStatus::Resolved && from != TicketStatus::Resolved {
                crate::survey::invite(tx, public_url, ticket_id).await?;
            }
            if !matches!(from, TicketStatus::Resolved | TicketStatus::Closed) {
                // What solved it becomes a draft for the next customer who asks the same.
                crate::drafts::record_solved(tx, ticket_id).await?;
            }
            // The agent's slot frees up at once.
            store::release(tx, ticket_id, &format!("ticket {}", to.as_str())).await?;
        }
        TicketStatus::Open if matches!(from, TicketStatus::Resolved | TicketStatus::Closed) => {
            store::add_ticket_event(
                tx,
                event("reopened"),
                ticket_id,
                &number,
                customer_id,
                TicketChange::Reopened,
            )
            .await?;
            // Its answer did not solve it after all.
            crate::drafts::withdraw(tx, &[ticket_id]).await?;
            crate::churn::reopened(tx, ticket_id).await?;
        }
        _ => {}
    }
    Ok(Ok((new_version, true)))
}
