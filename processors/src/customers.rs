//! One customer across channels: identities and the merge rule.
//!
//! Every way to reach a person is an identity (`email`, `phone`, `messenger`, `instagram`)
//! pointing at one customer (`customer_identities`). A message is matched by all the identities
//! it carries:
//! - none known: a new customer with all of them;
//! - all known and the same customer: that customer (new identities are added to it);
//! - known for two or more customers: they are the same person, so they are **merged**: the
//!   oldest customer survives; the others' tickets, orders and identities move to it, their
//!   rows keep `merged_into`, and the survivor keeps a non-standard tier if either had one.
//!
//! Only the authenticated HTTP API and agents can put two identities on one message (every
//! channel connector sets exactly one: the address or number the message came from), so a
//! stranger cannot merge themselves into someone else's history by writing a phone number.
//! Identities are locked (transaction advisory locks, in sorted order) before they are read,
//! so two messages of a new customer on different partitions never create two customers.

use sqlx::{Postgres, Row, Transaction};
use switchboard_contracts::CustomerRef;
use tracing::info;
use uuid::Uuid;

use switchboard_core::Error;

/// The identities a message names, `(kind, value)`, sorted and deduplicated.
pub fn identities(c: &CustomerRef) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(e) = &c.email {
        out.push(("email", e.clone()));
    }
    if let Some(p) = &c.phone {
        out.push(("phone", p.clone()));
    }
    if let Some(h) = &c.handle {
        if let Some((kind, id)) = h.split_once(':') {
            let kind = match kind {
                "messenger" => Some("messenger"),
                "instagram" => Some("instagram"),
                _ => None,
            };
            if let Some(kind) = kind.filter(|_| !id.is_empty()) {
                out.push((kind, id.to_string()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The customer a message is from (creating or merging as the rule says) and its tier. A
/// `tier` given by a trusted caller replaces the stored one.
pub async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    c: &CustomerRef,
    tier: Option<&str>,
) -> Result<(Uuid, String), Error> {
    let ids = identities(c);
    if ids.is_empty() {
        return Err(Error::Invalid(
            "message has no customer email, phone or handle".into(),
        ));
    }
    for (kind, value) in &ids {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("customer:{kind}:{value}"))
            .execute(&mut **tx)
            .await?;
    }
    let kinds: Vec<&str> = ids.iter().map(|(k, _)| *k).collect();
    let values: Vec<&str> = ids.iter().map(|(_, v)| v.as_str()).collect();
    let rows = sqlx::query(
        "SELECT DISTINCT c.id, c.created_at, c.tier FROM customer_identities i
           JOIN customers c ON c.id = i.customer_id
         WHERE (i.kind, i.value) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY c.created_at, c.id",
    )
    .bind(&kinds)
    .bind(&values)
    .fetch_all(&mut **tx)
    .await?;
    let found: Vec<(Uuid, String)> = rows
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("tier")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let customer = match found.first() {
        None => {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO customers (id, email, phone, handle, name, tier)
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'standard'))",
            )
            .bind(id)
            .bind(&c.email)
            .bind(&c.phone)
            .bind(&c.handle)
            .bind(&c.name)
            .bind(tier)
            .execute(&mut **tx)
            .await?;
            id
        }
        Some((survivor, _)) => {
            for (other, other_tier) in &found[1..] {
                merge(tx, *other, *survivor, other_tier).await?;
            }
            *survivor
        }
    };
    for (kind, value) in &ids {
        sqlx::query(
            "INSERT INTO customer_identities (kind, value, customer_id) VALUES ($1, $2, $3)
             ON CONFLICT (kind, value) DO NOTHING",
        )
        .bind(kind)
        .bind(value)
        .bind(customer)
        .execute(&mut **tx)
        .await?;
    }
    // The email and phone columns are unique and show the customer's main address and number
    // (the identities table is the truth): a value another customer row holds is left out.
    let row = sqlx::query(
        "UPDATE customers SET name = COALESCE(name, $2), tier = COALESCE($3, tier),
                email = COALESCE(email, CASE WHEN NOT EXISTS (SELECT 1 FROM customers o WHERE o.email = $4 AND o.id <> $1) THEN $4 END),
                phone = COALESCE(phone, CASE WHEN NOT EXISTS (SELECT 1 FROM customers o WHERE o.phone = $5 AND o.id <> $1) THEN $5 END),
                handle = COALESCE(handle, $6)
         WHERE id = $1 RETURNING tier",
    )
    .bind(customer)
    .bind(&c.name)
    .bind(tier)
    .bind(&c.email)
    .bind(&c.phone)
    .bind(&c.handle)
    .fetch_one(&mut **tx)
    .await?;
    Ok((customer, row.try_get("tier")?))
}

/// Folds `other` into `survivor`.
async fn merge(
    tx: &mut Transaction<'_, Postgres>,
    other: Uuid,
    survivor: Uuid,
    other_tier: &str,
) -> Result<(), Error> {
    for sql in [
        "UPDATE tickets SET customer_id = $2 WHERE customer_id = $1",
        "UPDATE orders SET customer_id = $2 WHERE customer_id = $1",
        "UPDATE customer_identities SET customer_id = $2 WHERE customer_id = $1",
    ] {
        sqlx::query(sql)
            .bind(other)
            .bind(survivor)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "UPDATE customers SET merged_into = $2, email = NULL, phone = NULL, handle = NULL WHERE id = $1",
    )
    .bind(other)
    .bind(survivor)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE customers SET tier = CASE WHEN tier = 'standard' THEN $2 ELSE tier END WHERE id = $1",
    )
    .bind(survivor)
    .bind(other_tier)
    .execute(&mut **tx)
    .await?;
    metrics::counter!("switchboard_customers_merged_total").increment(1);
    info!(%other, %survivor, "customers merged");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_of_a_message() {
        let c = CustomerRef {
            email: Some("a@example.com".into()),
            phone: Some("+15550100001".into()),
            name: None,
            handle: Some("messenger:123".into()),
        };
        assert_eq!(
            identities(&c),
            [
                ("email", "a@example.com".to_string()),
                ("messenger", "123".to_string()),
                ("phone", "+15550100001".to_string())
            ]
        );
        let odd = CustomerRef {
            handle: Some("myspace:1".into()),
            ..Default::default()
        };
        assert!(identities(&odd).is_empty());
        let empty = CustomerRef {
            handle: Some("instagram:".into()),
            ..Default::default()
        };
        assert!(identities(&empty).is_empty());
    }
}
