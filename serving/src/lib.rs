//! The agent and admin API over the ticket store.
//!
//! Agents (create, status, assignments), tickets (list, get with messages, SLA clocks and routing
//! decisions, attachments) and working them (accept, reply or note, status). Every route needs a bearer
//! token; status changes are published as `agent.presence` events so the router reacts at once.

pub mod agents;
pub mod tickets;
pub mod work;

use axum::Router;
use sqlx::PgPool;
use switchboard_core::kafka::Publisher;

/// Shared state of the API handlers.
#[derive(Debug, Clone)]
pub struct Api {
    pub pool: PgPool,
    pub publisher: Publisher,
    /// Where connectors store attachment contents (`data_dir`).
    pub data_dir: std::path::PathBuf,
}

impl Api {
    pub fn new(pool: PgPool, publisher: Publisher, data_dir: std::path::PathBuf) -> Self {
        Api {
            pool,
            publisher,
            data_dir,
        }
    }

    /// All routes of the serving role (auth is layered on by the caller).
    pub fn router(self) -> Router {
        agents::routes()
            .merge(tickets::routes())
            .merge(work::routes())
            .with_state(self)
    }
}

/// Parses a path id, naming it on failure.
pub(crate) fn parse_id(
    raw: &str,
    field: &str,
) -> Result<uuid::Uuid, switchboard_core::http::ApiError> {
    raw.parse().map_err(|_| {
        switchboard_core::http::ApiError::field(field, format!("{raw:?} is not a valid id"))
    })
}
