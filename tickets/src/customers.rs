//! One customer across channels: identities and the merge rule.
//!
//! Every way to reach a person is an identity (`email`, `phone`, `messenger`, `instagram`, the
//! shop's `external` id of a signed chat visitor, and the `chat` conversation of an unverified
//! one) pointing at one customer (`customer_identities`). A verified message is matched by all
//! the identities it carries:
//! - none known: a new customer with all of them;
//! - all known and the same customer: that customer (new identities are added to it);
//! - known for two or more customers: they are the same person, so they are **merged**: the
//!   oldest customer survives; the others' tickets, orders and identities move to it, their
//!   rows keep `merged_into`, and the survivor keeps a non-standard tier if either had one.
//!
//! Only the authenticated HTTP API and agents can put two identities on one message (every
//! channel connector sets exactly one: the address or number the message came from), so a
//! stranger cannot merge themselves into someone else's history by writing a phone number.
//!
//! An **unverified** message (the front door could not check who sent it: see
//! `InboundMessage::verified`) is matched by exactly one identity and never merges or links:
//! the chat conversation when it has one (an unsigned chat is its own customer, marked
//! `verified = false`, the address the visitor typed kept only as `claimed_email`), else the
//! channel's own address (an email's `From`: replies go to that mailbox, so a forger learns
//! nothing; threading in the processors' ticketing stage keeps them out of other customers' tickets).
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
                "external" => Some("external"),
                "chat" => Some("chat"),
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

/// The customer a verified message is from (creating or merging as the rule says) and its
/// tier. A `tier` given by a trusted caller replaces the stored one.
pub async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    c: &CustomerRef,
    tier: Option<&str>,
) -> Result<(Uuid, String), Error> {
    resolve_message(tx, c, tier, true, None).await
}

/// The identities an unverified message may be matched by: one, the chat conversation first.
pub fn unverified_identities(c: &CustomerRef) -> Vec<(&'static str, String)> {
    let ids = identities(c);
    let pick = ids
        .iter()
        .position(|(k, _)| *k == "chat")
        .or((!ids.is_empty()).then_some(0));
    pick.map(|i| vec![ids[i].clone()]).unwrap_or_default()
}

/// The customer a message is from. `verified`: as [`resolve`]. Unverified: matched by one
/// identity ([`unverified_identities`]), nothing merged, linked or tiered; a new customer of an
/// unverified chat is stored unverified with the `claimed_email`.
pub async fn resolve_message(
    tx: &mut Transaction<'_, Postgres>,
    c: &CustomerRef,
    tier: Option<&str>,
    verified: bool,
    claimed_email: Option<&str>,
) -> Result<(Uuid, String), Error> {
    let ids = if verified {
        identities(c)
    } else {
        unverified_identities(c)
    };
    if ids.is_empty() {
        return Err(Error::Invalid(
            "message has no customer email, phone or handle".into(),
        ));
    }
    let tier = tier.filter(|_| verified);
    // Only what identified the customer is written on a new or matched row.
    let only = |kind: &str, v: &Option<String>| {
        v.clone()
            .filter(|_| verified || ids.iter().any(|(k, _)| *k == kind))
    };
    let (email, phone) = (only("email", &c.email), only("phone", &c.phone));
    let handle = c.handle.clone().filter(|h| {
        verified
            || ids
                .iter()
                .any(|(k, v)| h.split_once(':') == Some((k, v.as_str())))
    });
    let chat_only = ids.iter().all(|(k, _)| *k == "chat");
    let claimed_email = claimed_email.filter(|_| !verified);
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
                "INSERT INTO customers (id, email, phone, handle, name, tier, verified, claimed_email)
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'standard'), $7, $8)",
            )
            .bind(id)
            .bind(&email)
            .bind(&phone)
            .bind(&handle)
            .bind(&c.name)
            .bind(tier)
            .bind(verified || !chat_only)
            .bind(claimed_email)
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
                handle = COALESCE(handle, $6), claimed_email = COALESCE(claimed_email, $7)
         WHERE id = $1 RETURNING tier",
    )
    .bind(customer)
    .bind(&c.name)
    .bind(tier)
    .bind(&email)
    .bind(&phone)
    .bind(&handle)
    .bind(claimed_email)
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
        "UPDATE customer_notes SET customer_id = $2 WHERE customer_id = $1",
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
    metrics::counter!(crate::telemetry::CUSTOMERS_MERGED_TOTAL).increment(1);
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

    #[test]
    fn an_unverified_message_is_matched_by_one_identity_only() {
        // An unsigned chat: only its conversation, never the address it names.
        let chat = CustomerRef {
            email: Some("victim@example.com".into()),
            handle: Some("chat:0190-c".into()),
            ..Default::default()
        };
        assert_eq!(
            unverified_identities(&chat),
            [("chat", "0190-c".to_string())]
        );
        // Several identities on an unverified message link nothing.
        let two = CustomerRef {
            email: Some("a@example.com".into()),
            phone: Some("+15550100001".into()),
            ..Default::default()
        };
        assert_eq!(unverified_identities(&two).len(), 1);
        assert!(unverified_identities(&CustomerRef::default()).is_empty());
        let signed = CustomerRef {
            handle: Some("external:shop:42".into()),
            ..Default::default()
        };
        assert_eq!(identities(&signed), [("external", "shop:42".to_string())]);
    }
}
