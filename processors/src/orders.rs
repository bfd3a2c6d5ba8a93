//! The `orders` stage: stores every `order_update` of `inbound.orders` for its customer.
//!
//! Updates of one order share a partition (keyed by the shop's order id) and are applied in
//! order; the store keeps the newest (`updated_at`), so a redelivery after a crash, or a late
//! update the shop sent earlier, changes nothing (at-least-once in, idempotent write). A record
//! that is not an `order_update`, or whose customer cannot be stored, is dead-lettered with the
//! reason; a database outage is retried.

use sqlx::PgPool;
use switchboard_contracts::{decode, OrderUpdate};
use switchboard_core::db::{EventTx, Outbox};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use tracing::info;

/// The stage's runtime: the pool it writes through, the outbox its events leave by.
#[derive(Debug, Clone)]
pub struct Orders {
    pool: PgPool,
    outbox: Outbox,
}

impl Orders {
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        Orders { pool, outbox }
    }

    /// Stores one update in its own transaction, with an `order_updated` event on each open
    /// ticket naming the order when it changed; whether it changed the stored order.
    pub async fn apply(&self, order: &OrderUpdate) -> Result<bool, switchboard_core::Error> {
        let mut tx = EventTx::begin(&self.pool).await?;
        let done = switchboard_tickets::orders::apply(tx.tx(), order).await?;
        let told = if done.applied {
            switchboard_tickets::orders::tell_tickets(&mut tx, done.customer_id, order).await?
        } else {
            0
        };
        tx.commit(&self.outbox).await?;
        let outcome = if done.applied { "applied" } else { "unchanged" };
        metrics::counter!(crate::telemetry::ORDERS_TOTAL, "outcome" => outcome).increment(1);
        info!(order = order.external_id.as_str(), customer_id = %done.customer_id, outcome, tickets = told, "order stored");
        Ok(done.applied)
    }
}

impl Handler for Orders {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = decode::<OrderUpdate>(record.payload.as_deref())?;
        self.apply(&env.payload).await?;
        Ok(())
    }
}
