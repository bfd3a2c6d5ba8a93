//! Macros: what a macro may do and how its texts are filled in, without I/O.
//!
//! A macro is an ordered list of [`Action`]s (at most [`MAX_ACTIONS`], at most one reply). Its
//! texts carry placeholders in double braces, checked when the macro is saved (an unknown one is
//! refused, named) and filled from the ticket when it is applied ([`render`]: one pass over the
//! text, so a value that itself looks like a placeholder is never expanded again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use switchboard_contracts::{Priority, TicketStatus};

/// The most actions in one macro.
pub const MAX_ACTIONS: usize = 20;
/// The longest reply or note text.
pub const MAX_TEXT: usize = 16 * 1024;

/// One thing a macro does, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = MacroAction)]
pub enum Action {
    /// A reply to the customer on the ticket's channel (placeholders filled).
    Reply { text: String },
    /// An internal note (placeholders filled).
    Note { text: String },
    /// `open`, `pending`, `resolved` or `closed`.
    Status { status: String },
    /// `low`, `medium`, `high`, `urgent` or `critical`.
    Priority { priority: String },
    Tags {
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Custom field values (null clears), validated as `PUT /v1/tickets/{id}/fields`.
    Fields {
        #[schema(value_type = Object)]
        values: BTreeMap<String, Value>,
    },
    /// Hand the ticket to a team's queue.
    Team { team_id: Uuid },
}

/// The placeholders a text may use. `{{name}}` and `{{ticket}}` are the canned replies' older
/// spellings of `{{customer.first_name}}` and `{{ticket.number}}`.
pub const PLACEHOLDERS: [&str; 8] = [
    "customer.name",
    "customer.first_name",
    "customer.email",
    "ticket.number",
    "agent.name",
    "order.name",
    "name",
    "ticket",
];

/// What placeholders are filled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub ticket_number: String,
    pub agent_name: Option<String>,
    /// The ticket's order (`Order #1001`), when it names one.
    pub order_name: Option<String>,
    /// The rest only drafts use (see [`render_known`]).
    pub customer_phone: Option<String>,
    /// The ticket's order's newest shipment's tracking link and number, and when it was placed.
    pub order_tracking_url: Option<String>,
    pub order_tracking_number: Option<String>,
    pub order_date: Option<String>,
}

impl Context {
    fn value(&self, key: &str) -> Option<String> {
        let first = || {
            self.customer_name
                .as_deref()
                .and_then(|n| n.split_whitespace().next())
                .map(str::to_string)
        };
        Some(match key {
            "customer.name" => self.customer_name.clone().unwrap_or_else(|| "there".into()),
            "customer.first_name" | "name" => first().unwrap_or_else(|| "there".into()),
            "customer.email" => self.customer_email.clone().unwrap_or_default(),
            "ticket.number" | "ticket" => self.ticket_number.clone(),
            "agent.name" => self.agent_name.clone().unwrap_or_default(),
            "order.name" => self.order_name.clone().unwrap_or_default(),
            _ => return None,
        })
    }

    /// The value of a draft's placeholder, only when this ticket has one.
    pub fn known(&self, key: &str) -> Option<String> {
        let known = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
        match key {
            "customer.name" => known(&self.customer_name),
            "customer.first_name" | "name" => known(&self.customer_name)
                .and_then(|n| n.split_whitespace().next().map(str::to_string)),
            "customer.email" => known(&self.customer_email),
            "customer.phone" => known(&self.customer_phone),
            "ticket.number" | "ticket" => Some(self.ticket_number.clone()),
            "agent.name" => known(&self.agent_name),
            "order.name" => known(&self.order_name),
            "order.tracking_url" => known(&self.order_tracking_url),
            "order.tracking_number" => known(&self.order_tracking_number),
            "order.date" => known(&self.order_date),
            _ => None,
        }
    }
}

/// Where `text` is a placeholder: `(start, end, key)` with `start..end` spanning the braces.
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let open = from + text.get(from..)?.find("{{")?;
        let close = open + 2 + text.get(open + 2..)?.find("}}")?;
        from = close + 2;
        Some((open, close + 2, text.get(open + 2..close)?.trim()))
    })
}

/// The first placeholder of `text` that is not one of [`PLACEHOLDERS`].
pub fn unknown_placeholder(text: &str) -> Option<String> {
    placeholders(text)
        .map(|(_, _, key)| key)
        .find(|key| !PLACEHOLDERS.contains(key))
        .map(str::to_string)
}

/// `text` with its placeholders filled from `ctx` (unknown ones left as written).
pub fn render(text: &str, ctx: &Context) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, key) in placeholders(text) {
        if let Some(v) = ctx.value(key) {
            out.push_str(&text[last..start]);
            out.push_str(&v);
            last = end;
        }
    }
    out.push_str(&text[last..]);
    out
}

/// A draft's `text` filled from `ctx`: the placeholders this ticket has a value for are filled
/// (in one pass, as [`render`]), the others are left as written for the agent and listed, each
/// once, in the order they first appear.
pub fn render_known(text: &str, ctx: &Context) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unfilled: Vec<String> = Vec::new();
    let mut last = 0;
    for (start, end, key) in placeholders(text) {
        match ctx.known(key) {
            Some(v) => {
                out.push_str(&text[last..start]);
                out.push_str(&v);
                last = end;
            }
            None => {
                if !unfilled.iter().any(|u| u == key) {
                    unfilled.push(key.to_string());
                }
            }
        }
    }
    out.push_str(&text[last..]);
    (out, unfilled)
}

/// Checks a macro's actions: `Err((field, why))` naming the first bad one (`actions[2].text`).
pub fn check(actions: &[Action]) -> Result<(), (String, String)> {
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(("actions".into(), format!("1 to {MAX_ACTIONS} actions")));
    }
    let at = |i: usize, f: &str| format!("actions[{i}].{f}");
    let mut replies = 0;
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::Reply { text } | Action::Note { text } => {
                if matches!(a, Action::Reply { .. }) {
                    replies += 1;
                    if replies > 1 {
                        return Err((at(i, "type"), "at most one reply".into()));
                    }
                }
                if text.trim().is_empty() || text.len() > MAX_TEXT {
                    return Err((at(i, "text"), "1 byte to 16 KiB".into()));
                }
                if text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                {
                    return Err((at(i, "text"), "no control characters".into()));
                }
                if let Some(k) = unknown_placeholder(text) {
                    return Err((
                        at(i, "text"),
                        format!(
                            "unknown placeholder {{{{{k}}}}}; known: {}",
                            PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
            }
            Action::Status { status } => {
                if TicketStatus::parse(status).is_none() {
                    return Err((
                        at(i, "status"),
                        "one of open, pending, resolved, closed".into(),
                    ));
                }
            }
            Action::Priority { priority } => {
                if Priority::parse(priority).is_none() {
                    return Err((
                        at(i, "priority"),
                        "one of low, medium, high, urgent, critical".into(),
                    ));
                }
            }
            Action::Tags { add, remove } => {
                if add.is_empty() && remove.is_empty() {
                    return Err((at(i, "add"), "name a tag to add or remove".into()));
                }
                for (list, name) in [(add, "add"), (remove, "remove")] {
                    crate::tags::normalise_all(list)
                        .map_err(|(j, e)| (format!("actions[{i}].{name}[{j}]"), e.to_string()))?;
                }
            }
            Action::Fields { values } => {
                if values.is_empty() || values.len() > 100 {
                    return Err((at(i, "values"), "1 to 100 fields".into()));
                }
            }
            Action::Team { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> Context {
        Context {
            customer_name: Some("Zoë Dupont".into()),
            customer_email: Some("zoe@example.com".into()),
            ticket_number: "T-2026-000042".into(),
            agent_name: Some("Ann".into()),
            order_name: Some("#1001".into()),
            ..Context::default()
        }
    }

    #[test]
    fn drafts_fill_what_the_ticket_has_and_list_the_rest() {
        let ctx = Context {
            customer_name: Some("Zoë Quinn".into()),
            ticket_number: "T-2026-000001".into(),
            order_name: Some("#1001".into()),
            order_tracking_url: Some("https://ups.example/1Z".into()),
            order_date: Some("".into()),
            ..Context::default()
        };
        let (text, unfilled) = render_known(
            "Hi {{customer.first_name}}, {{order.name}} is at {{order.tracking_url}}; placed \
             {{order.date}} to {{order.address}} ({{order.date}}), {{customer.name}}",
            &ctx,
        );
        assert_eq!(
            text,
            "Hi Zoë, #1001 is at https://ups.example/1Z; placed {{order.date}} to \
             {{order.address}} ({{order.date}}), Zoë Quinn"
        );
        assert_eq!(unfilled, vec!["order.date", "order.address"]);
        // A value that looks like a placeholder is not expanded again.
        let sneaky = Context {
            customer_name: Some("{{agent.name}}".into()),
            agent_name: Some("Ben".into()),
            ..Context::default()
        };
        assert_eq!(
            render_known("{{customer.name}}", &sneaky).0,
            "{{agent.name}}"
        );
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_named() {
        assert_eq!(
            render(
                "Hi {{ customer.first_name }}, about {{ticket.number}} ({{order.name}}) - {{agent.name}}",
                &ctx()
            ),
            "Hi Zoë, about T-2026-000042 (#1001) - Ann"
        );
        // The canned replies' spellings.
        assert_eq!(
            render("Hi {{name}}, {{ticket}}", &ctx()),
            "Hi Zoë, T-2026-000042"
        );
        // No name: a greeting still reads.
        assert_eq!(render("Hi {{name}}", &Context::default()), "Hi there");
        // Unknown and unclosed placeholders stay as written.
        assert_eq!(render("{{nope}} {{name", &ctx()), "{{nope}} {{name");
        assert_eq!(
            unknown_placeholder("Hi {{customer.nmae}}"),
            Some("customer.nmae".into())
        );
        assert_eq!(unknown_placeholder("Hi {{name}} {{ticket}}"), None);
        // A value that looks like a placeholder is not expanded again.
        let sneaky = Context {
            customer_name: Some("{{agent.name}}".into()),
            ..ctx()
        };
        assert_eq!(render("{{customer.name}}", &sneaky), "{{agent.name}}");
    }

    #[test]
    fn bad_actions_are_named() {
        let reply = |t: &str| Action::Reply { text: t.into() };
        assert!(check(&[
            reply("Hi {{name}}"),
            Action::Status {
                status: "pending".into()
            }
        ])
        .is_ok());
        let field = |a: Vec<Action>| check(&a).err().map(|(f, _)| f);
        assert_eq!(field(vec![]), Some("actions".into()));
        assert_eq!(
            field(vec![reply("a"), reply("b")]),
            Some("actions[1].type".into())
        );
        assert_eq!(field(vec![reply("{{x}}")]), Some("actions[0].text".into()));
        assert_eq!(field(vec![reply("a\u{0}")]), Some("actions[0].text".into()));
        assert_eq!(
            field(vec![Action::Status {
                status: "done".into()
            }]),
            Some("actions[0].status".into())
        );
        assert_eq!(
            field(vec![Action::Priority {
                priority: "p1".into()
            }]),
            Some("actions[0].priority".into())
        );
        assert_eq!(
            field(vec![Action::Tags {
                add: vec!["ok".into(), " ".into()],
                remove: vec![]
            }]),
            Some("actions[0].add[1]".into())
        );
        assert_eq!(
            field(vec![Action::Fields {
                values: BTreeMap::new()
            }]),
            Some("actions[0].values".into())
        );
    }

    proptest! {
        // Whatever the text, rendering ends, never panics on a char boundary, and keeps every
        // byte outside the placeholders it filled.
        #[test]
        fn render_is_total(text in ".{0,200}", name in ".{0,20}") {
            let c = Context { customer_name: Some(name), ..ctx() };
            let out = render(&text, &c);
            if !text.contains("{{") {
                prop_assert_eq!(out, text);
            }
        }

        #[test]
        fn render_is_linear_on_brace_floods(n in 0usize..20_000) {
            let text = "{{".repeat(n);
            prop_assert_eq!(render(&text, &ctx()), text.clone());
            prop_assert_eq!(unknown_placeholder(&text), None);
        }
    }
}
