//! Orders: a shop's order stored for its customer. The one writer of the `orders` table (the
//! processors' `orders` stage calls it for every `order_update`; erasure and retention delete).

use sqlx::{Postgres, Transaction};
use switchboard_contracts::OrderUpdate;
use switchboard_core::Error;
use uuid::Uuid;

/// What storing an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The buyer (found or created by email: the same customer as their tickets).
    pub customer_id: Uuid,
    /// False when the stored order is as new or newer (`updated_at`): a redelivered or late
    /// update changes nothing.
    pub applied: bool,
}

/// Stores `order` for its customer in `tx`, keeping the newest version of each order; a buyer
/// the shop tags VIP becomes a `vip` customer.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    order: &OrderUpdate,
) -> Result<Applied, Error> {
    let (customer_id, _) = crate::customers::resolve(tx, &order.customer, None).await?;
    if order.vip {
        sqlx::query("UPDATE customers SET tier = 'vip' WHERE id = $1 AND tier <> 'vip'")
            .bind(customer_id)
            .execute(&mut **tx)
            .await?;
    }
    let stored = sqlx::query(
        "INSERT INTO orders (id, customer_id, external_id, number, total_cents, currency, status, financial_status,
                             fulfillment_status, fulfillments, line_items, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (external_id) DO UPDATE SET
             customer_id = EXCLUDED.customer_id, number = EXCLUDED.number, total_cents = EXCLUDED.total_cents,
             currency = EXCLUDED.currency, status = EXCLUDED.status, financial_status = EXCLUDED.financial_status,
             fulfillment_status = EXCLUDED.fulfillment_status, fulfillments = EXCLUDED.fulfillments,
             line_items = EXCLUDED.line_items, updated_at = EXCLUDED.updated_at
           WHERE orders.updated_at < EXCLUDED.updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(&order.external_id)
    .bind(&order.number)
    .bind(order.total_cents)
    .bind(&order.currency)
    .bind(
        order
            .fulfillment_status
            .as_deref()
            .or(order.financial_status.as_deref()),
    )
    .bind(&order.financial_status)
    .bind(&order.fulfillment_status)
    .bind(sqlx::types::Json(&order.fulfillments))
    .bind(sqlx::types::Json(&order.line_items))
    .bind(order.created_at)
    .bind(order.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(Applied {
        customer_id,
        applied: stored.rows_affected() == 1,
    })
}
