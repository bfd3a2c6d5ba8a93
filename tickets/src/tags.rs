//! Tags on a ticket: what a tag may be (a pure core with property tests) and the one change that
//! adds and removes them, in the caller's transaction with its `tags_changed` event.
//!
//! A tag is normalised before it is stored or matched: trimmed, lowercased, inner whitespace
//! turned into `_`; what remains is 1 to 50 characters of letters, digits (any script) and
//! `_ - : . /`. A ticket carries at most [`MAX_PER_TICKET`] tags, kept sorted.

use chrono::{DateTime, Utc};
use switchboard_contracts::{derived_id, TicketChange};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// The most tags one ticket carries.
pub const MAX_PER_TICKET: usize = 50;
/// The longest tag, in characters.
pub const MAX_CHARS: usize = 50;

/// Why a tag is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("a tag is 1 to {MAX_CHARS} characters")]
    Length,
    #[error("{0:?} is not allowed in a tag (letters, digits and _ - : . / only)")]
    Char(char),
    #[error("a ticket carries at most {MAX_PER_TICKET} tags")]
    TooMany,
}

/// The stored form of `raw`: trimmed, lowercase, whitespace runs as one `_`.
pub fn normalise(raw: &str) -> Result<String, TagError> {
    let mut out = String::with_capacity(raw.len().min(4 * MAX_CHARS));
    let mut chars = 0usize;
    let mut gap = false;
    for c in raw.trim().chars() {
        if c.is_whitespace() {
            gap = true;
            continue;
        }
        if gap {
            out.push('_');
            chars += 1;
            gap = false;
        }
        if !(c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/')) {
            return Err(TagError::Char(c));
        }
        for l in c.to_lowercase() {
            out.push(l);
            chars += 1;
        }
        if chars > MAX_CHARS {
            return Err(TagError::Length);
        }
    }
    if out.is_empty() || chars > MAX_CHARS {
        return Err(TagError::Length);
    }
    Ok(out)
}

/// Normalises every tag of a request, naming the first bad one by its position.
pub fn normalise_all(raw: &[String]) -> Result<Vec<String>, (usize, TagError)> {
    if raw.len() > MAX_PER_TICKET {
        return Err((MAX_PER_TICKET, TagError::TooMany));
    }
    raw.iter()
        .enumerate()
        .map(|(i, t)| normalise(t).map_err(|e| (i, e)))
        .collect()
}

/// What a change did: the new set (sorted, unique) and what it added and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tags: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Change {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// `current` with `add` added and `remove` removed (both normalised); a tag in both is added.
pub fn apply(current: &[String], add: &[String], remove: &[String]) -> Result<Change, TagError> {
    use std::collections::BTreeSet;
    let before: BTreeSet<&String> = current.iter().collect();
    let mut after = before.clone();
    for r in remove {
        after.remove(r);
    }
    after.extend(add.iter());
    if after.len() > MAX_PER_TICKET && after.len() > before.len() {
        return Err(TagError::TooMany);
    }
    Ok(Change {
        added: after.difference(&before).map(|t| t.to_string()).collect(),
        removed: before.difference(&after).map(|t| t.to_string()).collect(),
        tags: after.into_iter().cloned().collect(),
    })
}

/// Adds and removes tags on `ticket_id` (normalised already) under its row lock, with a
/// `tags_changed` event; returns the change and the ticket's version after it (unchanged when
/// nothing changed). `None`: no such ticket.
pub async fn change(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    add: &[String],
    remove: &[String],
    now: DateTime<Utc>,
) -> Result<Option<Result<(Change, i32), TagError>>, Error> {
    let row: Option<(Vec<String>, String, Uuid, i32)> = sqlx::query_as(
        "SELECT tags, number, customer_id, version FROM tickets WHERE id = $1 FOR UPDATE",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((tags, number, customer_id, version)) = row else {
        return Ok(None);
    };
    let change = match apply(&tags, add, remove) {
        Ok(c) => c,
        Err(e) => return Ok(Some(Err(e))),
    };
    if change.is_noop() {
        return Ok(Some(Ok((change, version))));
    }
    let version = crate::row::set_tags(tx, ticket_id, &change.tags, now).await?;
    let event_id = derived_id(ticket_id, &format!("tags:{version}"));
    crate::store::add_ticket_event(
        tx,
        event_id,
        ticket_id,
        &number,
        customer_id,
        TicketChange::TagsChanged {
            added: change.added.clone(),
            removed: change.removed.clone(),
        },
    )
    .await?;
    Ok(Some(Ok((change, version))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_space_and_script() {
        assert_eq!(normalise("  VIP ").unwrap(), "vip");
        assert_eq!(normalise("Wholesale \t Order").unwrap(), "wholesale_order");
        assert_eq!(normalise("Возврат").unwrap(), "возврат");
        assert_eq!(
            normalise("shop:eu/returns.v2").unwrap(),
            "shop:eu/returns.v2"
        );
        assert_eq!(normalise(""), Err(TagError::Length));
        assert_eq!(normalise("   "), Err(TagError::Length));
        assert_eq!(normalise("a\u{0}b"), Err(TagError::Char('\u{0}')));
        assert_eq!(normalise("<script>"), Err(TagError::Char('<')));
        assert_eq!(normalise(&"x".repeat(51)), Err(TagError::Length));
        assert_eq!(normalise(&"x".repeat(50)).unwrap().len(), 50);
    }

    #[test]
    fn a_huge_tag_is_refused_without_reading_it_all() {
        // Stops at the 51st character, not at the end of a megabyte.
        assert_eq!(normalise(&"x".repeat(1 << 20)), Err(TagError::Length));
    }

    #[test]
    fn apply_adds_removes_and_reports() {
        let cur = vec!["a".to_string(), "b".to_string()];
        let c = apply(&cur, &["c".into(), "a".into()], &["b".into(), "zz".into()]).unwrap();
        assert_eq!(c.tags, vec!["a", "c"]);
        assert_eq!(c.added, vec!["c"]);
        assert_eq!(c.removed, vec!["b"]);
        assert!(apply(&cur, &["a".into()], &[]).unwrap().is_noop());
    }

    #[test]
    fn too_many_tags_are_refused_but_removing_from_too_many_is_not() {
        let full: Vec<String> = (0..MAX_PER_TICKET).map(|i| format!("t{i}")).collect();
        assert_eq!(
            apply(&full, &["one_more".into()], &[]),
            Err(TagError::TooMany)
        );
        let c = apply(&full, &["one_more".into()], &["t0".into()]).unwrap();
        assert_eq!(c.tags.len(), MAX_PER_TICKET);
    }

    proptest! {
        #[test]
        fn normalised_tags_are_stable_and_bounded(raw in "\\PC{0,80}") {
            if let Ok(t) = normalise(&raw) {
                prop_assert_eq!(normalise(&t), Ok(t.clone()));
                prop_assert!(t.chars().count() <= MAX_CHARS);
                prop_assert!(!t.chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn apply_is_set_arithmetic(
            cur in proptest::collection::btree_set("[a-e]", 0..5),
            add in proptest::collection::vec("[a-e]", 0..5),
            remove in proptest::collection::vec("[a-e]", 0..5),
        ) {
            let cur: Vec<String> = cur.into_iter().collect();
            let c = apply(&cur, &add, &remove).unwrap();
            for t in &add { prop_assert!(c.tags.contains(t)); }
            for t in &remove { prop_assert!(add.contains(t) || !c.tags.contains(t)); }
            let mut sorted = c.tags.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &c.tags);
            for t in &c.added { prop_assert!(!cur.contains(t) && c.tags.contains(t)); }
            for t in &c.removed { prop_assert!(cur.contains(t) && !c.tags.contains(t)); }
        }
    }
}
