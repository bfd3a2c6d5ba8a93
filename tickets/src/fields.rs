//! Custom fields: what an admin defines (a pure core with property tests: a value is checked
//! and normalised against its definition) and the one change that sets them on a ticket, in the
//! caller's transaction with its `fields_changed` event.
//!
//! Kinds: `text` (up to 1,000 characters), `number` (finite), `dropdown` (one of its options),
//! `multi_select` (some of its options, each once, in the options' order), `date`
//! (`YYYY-MM-DD`), `checkbox` (true or false). A field marked `required_to_resolve` must hold a
//! value before its ticket is resolved or closed. Values live in `tickets.fields` (JSON, keyed by
//! the field's key); `null` clears one.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_contracts::{derived_id, TicketChange};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// The longest text value, in characters.
pub const MAX_TEXT: usize = 1_000;
/// The most options a dropdown or multi-select has.
pub const MAX_OPTIONS: usize = 200;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Text,
    Number,
    Dropdown,
    MultiSelect,
    Date,
    Checkbox,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "number",
            Kind::Dropdown => "dropdown",
            Kind::MultiSelect => "multi_select",
            Kind::Date => "date",
            Kind::Checkbox => "checkbox",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Text,
            Kind::Number,
            Kind::Dropdown,
            Kind::MultiSelect,
            Kind::Date,
            Kind::Checkbox,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A field as defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Def {
    pub key: String,
    pub kind: Kind,
    pub options: Vec<String>,
    pub required_to_resolve: bool,
}

/// Whether `key` may name a field: 1 to 64 of `a-z 0-9 _`, starting with a letter.
pub fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a definition's options: what a dropdown offers, each once, each 1 to 100 characters.
pub fn check_options(kind: Kind, options: &[String]) -> Result<(), (Option<usize>, String)> {
    let choosing = matches!(kind, Kind::Dropdown | Kind::MultiSelect);
    if !choosing {
        return if options.is_empty() {
            Ok(())
        } else {
            Err((None, format!("a {} field has no options", kind.as_str())))
        };
    }
    if options.is_empty() || options.len() > MAX_OPTIONS {
        return Err((None, format!("1 to {MAX_OPTIONS} options")));
    }
    for (i, o) in options.iter().enumerate() {
        if o.trim().is_empty() || o.chars().count() > 100 || o.chars().any(char::is_control) {
            return Err((Some(i), "1 to 100 characters, no control characters".into()));
        }
        if options[..i].contains(o) {
            return Err((Some(i), "listed twice".into()));
        }
    }
    Ok(())
}

impl Def {
    /// The stored form of `value` for this field, or why it is not one (`null` clears).
    pub fn check(&self, value: &Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        match self.kind {
            Kind::Text => {
                let s = value.as_str().ok_or("a text field takes a string")?.trim();
                if s.chars().count() > MAX_TEXT {
                    return Err(format!("at most {MAX_TEXT} characters"));
                }
                if s.chars().any(|c| c.is_control() && c != '\n') {
                    return Err("no control characters".into());
                }
                Ok(if s.is_empty() {
                    Value::Null
                } else {
                    Value::String(s.to_string())
                })
            }
            Kind::Number => {
                let n = value.as_f64().ok_or("a number field takes a number")?;
                if !n.is_finite() {
                    return Err("a finite number".into());
                }
                Ok(value.clone())
            }
            Kind::Dropdown => {
                let s = value
                    .as_str()
                    .ok_or("a dropdown takes one of its options")?;
                if self.options.iter().any(|o| o == s) {
                    Ok(Value::String(s.to_string()))
                } else {
                    Err(format!("{s:?} is not one of its options"))
                }
            }
            Kind::MultiSelect => {
                let list = value
                    .as_array()
                    .ok_or("a multi-select takes a list of its options")?;
                if list.len() > self.options.len() {
                    return Err("more values than options".into());
                }
                let mut chosen = Vec::with_capacity(list.len());
                for v in list {
                    let s = v
                        .as_str()
                        .ok_or("a multi-select takes a list of its options")?;
                    if !self.options.iter().any(|o| o == s) {
                        return Err(format!("{s:?} is not one of its options"));
                    }
                    chosen.push(s);
                }
                // In the options' order, each once.
                let ordered: Vec<Value> = self
                    .options
                    .iter()
                    .filter(|o| chosen.contains(&o.as_str()))
                    .map(|o| Value::String(o.clone()))
                    .collect();
                Ok(if ordered.is_empty() {
                    Value::Null
                } else {
                    Value::Array(ordered)
                })
            }
            Kind::Date => {
                let s = value.as_str().ok_or("a date field takes YYYY-MM-DD")?;
                let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
                Ok(Value::String(d.format("%Y-%m-%d").to_string()))
            }
            Kind::Checkbox => value
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| "a checkbox takes true or false".into()),
        }
    }
}

/// Why values were refused: the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("no such field")]
    Unknown(String),
    #[error("{1}")]
    Invalid(String, String),
}

impl FieldError {
    /// The key it is about.
    pub fn key(&self) -> &str {
        match self {
            FieldError::Unknown(k) | FieldError::Invalid(k, _) => k,
        }
    }
}

/// `current` with `changes` applied (checked against `defs`): the new values and the keys that
/// changed. `null` removes a value.
pub fn apply(
    defs: &[Def],
    current: &BTreeMap<String, Value>,
    changes: &BTreeMap<String, Value>,
) -> Result<(BTreeMap<String, Value>, Vec<String>), FieldError> {
    let mut next = current.clone();
    let mut changed = Vec::new();
    for (key, raw) in changes {
        let def = defs
            .iter()
            .find(|d| &d.key == key)
            .ok_or_else(|| FieldError::Unknown(key.clone()))?;
        let v = def
            .check(raw)
            .map_err(|why| FieldError::Invalid(key.clone(), why))?;
        let before = next.get(key).cloned().unwrap_or(Value::Null);
        if before != v {
            changed.push(key.clone());
            if v.is_null() {
                next.remove(key);
            } else {
                next.insert(key.clone(), v);
            }
        }
    }
    Ok((next, changed))
}

/// The required-to-resolve fields `values` leaves empty.
pub fn missing_to_resolve(defs: &[Def], values: &BTreeMap<String, Value>) -> Vec<String> {
    defs.iter()
        .filter(|d| d.required_to_resolve && values.get(&d.key).is_none_or(Value::is_null))
        .map(|d| d.key.clone())
        .collect()
}

#[derive(sqlx::FromRow)]
struct DefRow {
    key: String,
    kind: String,
    options: Vec<String>,
    required_to_resolve: bool,
}

/// The active definitions.
pub async fn defs<'e, E: sqlx::PgExecutor<'e>>(db: E) -> Result<Vec<Def>, Error> {
    let rows: Vec<DefRow> = sqlx::query_as(
        "SELECT key, kind, options, required_to_resolve FROM fields WHERE active ORDER BY position, key",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Def {
                kind: Kind::parse(&r.kind)?,
                key: r.key,
                options: r.options,
                required_to_resolve: r.required_to_resolve,
            })
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct Current {
    fields: sqlx::types::Json<BTreeMap<String, Value>>,
    number: String,
    customer_id: Uuid,
    version: i32,
}

/// Sets `changes` on `ticket_id` under its row lock with a `fields_changed` event: the values
/// after it, the keys changed and the version. `None`: no such ticket.
pub async fn set(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    changes: &BTreeMap<String, Value>,
    now: DateTime<Utc>,
) -> Result<Option<Result<(BTreeMap<String, Value>, Vec<String>, i32), FieldError>>, Error> {
    let row: Option<Current> = sqlx::query_as(
        "SELECT fields, number, customer_id, version FROM tickets WHERE id = $1 FOR UPDATE",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(Current {
        fields: current,
        number,
        customer_id,
        version,
    }) = row
    else {
        return Ok(None);
    };
    let defs = defs(&mut **tx).await?;
    let (next, changed) = match apply(&defs, &current.0, changes) {
        Ok(x) => x,
        Err(e) => return Ok(Some(Err(e))),
    };
    if changed.is_empty() {
        return Ok(Some(Ok((next, changed, version))));
    }
    let version: i32 = sqlx::query_scalar(
        "UPDATE tickets SET fields = $2, version = version + 1, updated_at = $3 WHERE id = $1 RETURNING version",
    )
    .bind(ticket_id)
    .bind(sqlx::types::Json(&next))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    crate::store::add_ticket_event(
        tx,
        derived_id(ticket_id, &format!("fields:{version}")),
        ticket_id,
        &number,
        customer_id,
        TicketChange::FieldsChanged {
            changed: changed.clone(),
        },
    )
    .await?;
    Ok(Some(Ok((next, changed, version))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn def(key: &str, kind: Kind, options: &[&str]) -> Def {
        Def {
            key: key.into(),
            kind,
            options: options.iter().map(|o| o.to_string()).collect(),
            required_to_resolve: false,
        }
    }

    #[test]
    fn each_kind_checks_and_normalises() {
        let text = def("note", Kind::Text, &[]);
        assert_eq!(text.check(&json!("  hi ")), Ok(json!("hi")));
        assert_eq!(text.check(&json!("   ")), Ok(Value::Null));
        assert!(text.check(&json!(3)).is_err());
        assert!(text.check(&json!("a\u{0}b")).is_err());
        assert!(text.check(&json!("x".repeat(1_001))).is_err());
        let n = def("amount", Kind::Number, &[]);
        assert_eq!(n.check(&json!(12.5)), Ok(json!(12.5)));
        assert!(n.check(&json!("12")).is_err());
        let d = def("reason", Kind::Dropdown, &["damaged", "late"]);
        assert_eq!(d.check(&json!("late")), Ok(json!("late")));
        assert!(d.check(&json!("LATE")).is_err());
        let m = def("items", Kind::MultiSelect, &["a", "b", "c"]);
        assert_eq!(m.check(&json!(["c", "a", "c"])), Ok(json!(["a", "c"])));
        assert_eq!(m.check(&json!([])), Ok(Value::Null));
        assert!(m.check(&json!(["a", "z"])).is_err());
        assert!(
            m.check(&json!(["a", "a", "a", "a"])).is_err(),
            "more values than options"
        );
        let date = def("due", Kind::Date, &[]);
        assert_eq!(date.check(&json!("2026-02-28")), Ok(json!("2026-02-28")));
        assert!(date.check(&json!("2026-02-30")).is_err());
        assert!(date.check(&json!("yesterday")).is_err());
        let c = def("gift", Kind::Checkbox, &[]);
        assert_eq!(c.check(&json!(true)), Ok(json!(true)));
        assert!(c.check(&json!("true")).is_err());
        for d in [&text, &n, &d, &m, &date, &c] {
            assert_eq!(
                d.check(&Value::Null),
                Ok(Value::Null),
                "null clears {}",
                d.key
            );
        }
    }

    #[test]
    fn apply_reports_what_changed_and_names_the_bad_key() {
        let defs = vec![
            def("reason", Kind::Dropdown, &["late"]),
            def("gift", Kind::Checkbox, &[]),
        ];
        let cur = BTreeMap::from([("gift".to_string(), json!(true))]);
        let changes = BTreeMap::from([
            ("reason".to_string(), json!("late")),
            ("gift".to_string(), json!(true)),
        ]);
        let (next, changed) = apply(&defs, &cur, &changes).unwrap();
        assert_eq!(changed, vec!["reason"]);
        assert_eq!(next.get("reason"), Some(&json!("late")));
        let cleared = apply(
            &defs,
            &next,
            &BTreeMap::from([("gift".to_string(), Value::Null)]),
        )
        .unwrap();
        assert_eq!(
            (cleared.0.contains_key("gift"), cleared.1),
            (false, vec!["gift".to_string()])
        );
        let bad = apply(
            &defs,
            &cur,
            &BTreeMap::from([("nope".to_string(), json!(1))]),
        )
        .unwrap_err();
        assert_eq!(bad.key(), "nope");
        let bad = apply(
            &defs,
            &cur,
            &BTreeMap::from([("gift".to_string(), json!(1))]),
        )
        .unwrap_err();
        assert_eq!(bad.key(), "gift");
    }

    #[test]
    fn required_fields_block_resolving_until_filled() {
        let mut reason = def("reason", Kind::Dropdown, &["late"]);
        reason.required_to_resolve = true;
        let defs = vec![reason, def("gift", Kind::Checkbox, &[])];
        assert_eq!(missing_to_resolve(&defs, &BTreeMap::new()), vec!["reason"]);
        let filled = BTreeMap::from([("reason".to_string(), json!("late"))]);
        assert!(missing_to_resolve(&defs, &filled).is_empty());
    }

    #[test]
    fn keys_and_options_are_checked() {
        assert!(valid_key("order_number") && valid_key("a1"));
        assert!(
            !valid_key("1a")
                && !valid_key("Order")
                && !valid_key("")
                && !valid_key(&"a".repeat(65))
        );
        assert!(check_options(Kind::Dropdown, &["a".into(), "b".into()]).is_ok());
        assert_eq!(
            check_options(Kind::Dropdown, &["a".into(), "a".into()])
                .unwrap_err()
                .0,
            Some(1)
        );
        assert!(check_options(Kind::Dropdown, &[]).is_err());
        assert!(check_options(Kind::Text, &["a".into()]).is_err());
        assert!(check_options(Kind::Text, &[]).is_ok());
    }

    proptest! {
        #[test]
        fn checking_never_panics_and_is_idempotent(s in "\\PC{0,60}", n in proptest::num::f64::ANY, b: bool) {
            let defs = [
                def("t", Kind::Text, &[]),
                def("n", Kind::Number, &[]),
                def("d", Kind::Dropdown, &["x", "y"]),
                def("m", Kind::MultiSelect, &["x", "y"]),
                def("date", Kind::Date, &[]),
                def("c", Kind::Checkbox, &[]),
            ];
            let values = [json!(s), json!(n), json!(b), json!([s.clone(), "x"]), Value::Null];
            for d in &defs {
                for v in &values {
                    if let Ok(stored) = d.check(v) {
                        prop_assert_eq!(d.check(&stored), Ok(stored.clone()), "{} {}", d.key, v);
                    }
                }
            }
        }
    }
}
