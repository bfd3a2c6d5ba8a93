//! Orders: a shop's order stored for its customer. The one writer of the `orders` table (the
//! processors' `orders` stage calls it for every `order_update`; erasure and retention delete).

use switchboard_contracts::{OrderUpdate, TicketChange};
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
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
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
                             fulfillment_status, fulfillments, line_items, created_at, updated_at,
                             shipping_address, tags, cancelled_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (external_id) DO UPDATE SET
             customer_id = EXCLUDED.customer_id, number = EXCLUDED.number, total_cents = EXCLUDED.total_cents,
             currency = EXCLUDED.currency, status = EXCLUDED.status, financial_status = EXCLUDED.financial_status,
             fulfillment_status = EXCLUDED.fulfillment_status, fulfillments = EXCLUDED.fulfillments,
             line_items = EXCLUDED.line_items, updated_at = EXCLUDED.updated_at,
             shipping_address = EXCLUDED.shipping_address, tags = EXCLUDED.tags, cancelled_at = EXCLUDED.cancelled_at
           WHERE orders.updated_at < EXCLUDED.updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(&order.external_id)
    .bind(&order.number)
    .bind(order.total_cents)
    .bind(&order.currency)
    .bind(if order.cancelled_at.is_some() {
        Some("cancelled")
    } else {
        order
            .fulfillment_status
            .as_deref()
            .or(order.financial_status.as_deref())
    })
    .bind(&order.financial_status)
    .bind(&order.fulfillment_status)
    .bind(sqlx::types::Json(&order.fulfillments))
    .bind(sqlx::types::Json(&order.line_items))
    .bind(order.created_at)
    .bind(order.updated_at)
    .bind(order.shipping_address.as_ref().map(sqlx::types::Json))
    .bind(&order.tags)
    .bind(order.cancelled_at)
    .execute(&mut **tx)
    .await?;
    Ok(Applied {
        customer_id,
        applied: stored.rows_affected() == 1,
    })
}

/// Tells the customer's open tickets that name `order` (their `order_number` field, compared as
/// order numbers are: no `#`, any case) that it changed: one `order_updated` event each, in
/// `tx`. The event id derives from the ticket, the order and its `updated_at`, so a redelivered
/// update adds nothing. Returns how many tickets were told.
pub async fn tell_tickets(
    tx: &mut switchboard_core::db::EventTx<'_>,
    customer_id: Uuid,
    order: &OrderUpdate,
) -> Result<usize, Error> {
    let Some(key) = switchboard_contracts::order_key(&order.number) else {
        return Ok(0);
    };
    let tickets: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, number FROM tickets
         WHERE customer_id = $1 AND status NOT IN ('resolved', 'closed')
           AND lower(ltrim(btrim(fields->>'order_number'), E'# \t\r\n')) = $2
         ORDER BY id LIMIT 100",
    )
    .bind(customer_id)
    .bind(&key)
    .fetch_all(&mut **tx)
    .await?;
    let status = order
        .fulfillment_status
        .clone()
        .or_else(|| order.financial_status.clone());
    for (ticket_id, number) in &tickets {
        let id = switchboard_contracts::derived_id(
            *ticket_id,
            &format!(
                "order:{}:{}",
                order.external_id,
                order.updated_at.timestamp_micros()
            ),
        );
        crate::store::add_ticket_event(
            tx,
            id,
            *ticket_id,
            number,
            customer_id,
            TicketChange::OrderUpdated {
                order_number: order.number.clone(),
                status: status.clone(),
                financial_status: order.financial_status.clone(),
                fulfillment_status: order.fulfillment_status.clone(),
            },
        )
        .await?;
    }
    Ok(tickets.len())
}

/// The most order references one message is checked for.
pub const MAX_NAMED: usize = 10;

/// The order numbers a customer's text may name, as `order_key`s (`#1001`, `order 1001` and
/// `1001` alike): words of 3 to 20 characters that start with `#` or hold a digit, made of ASCII
/// letters, digits and `-`. At most [`MAX_NAMED`], in order of appearance; one pass over the
/// text, whatever its size.
pub fn named_order_keys(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for word in text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | '.' | ';' | ':' | '(' | ')' | '!' | '?' | '"' | '\''
            )
    }) {
        if keys.len() >= MAX_NAMED {
            break;
        }
        let hashed = word.starts_with('#');
        let bare = word.trim_start_matches('#');
        if !(3..=20).contains(&bare.len())
            || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || !(hashed || bare.chars().any(|c| c.is_ascii_digit()))
        {
            continue;
        }
        if let Some(k) = switchboard_contracts::order_key(bare) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

/// The number of the customer's order that `text` names, if it names one the shop sent us
/// (the newest, if it names several).
pub async fn named_order(
    conn: &mut sqlx::PgConnection,
    customer_id: Uuid,
    text: &str,
) -> Result<Option<String>, sqlx::Error> {
    let keys = named_order_keys(text);
    if keys.is_empty() {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT number FROM orders WHERE customer_id = $1 AND number IS NOT NULL
           AND lower(ltrim(btrim(number), '#')) = ANY($2)
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(customer_id)
    .bind(&keys)
    .fetch_optional(conn)
    .await
}

#[cfg(test)]
mod named_tests {
    use super::*;

    #[test]
    fn order_references_are_found_in_a_text() {
        assert_eq!(
            named_order_keys("Where is order #1001? Also 1002, and ORD-77X."),
            vec!["1001", "1002", "ord-77x"]
        );
        // Plain words, short numbers, non-ASCII and huge tokens are not orders.
        assert!(named_order_keys("hello there 12 Привет #ab").is_empty());
        assert!(named_order_keys(&"9".repeat(100_000)).is_empty());
        // Bounded however many the text lists.
        let many: String = (1000..5000).map(|n| format!("#{n} ")).collect();
        assert_eq!(named_order_keys(&many).len(), MAX_NAMED);
    }
}
