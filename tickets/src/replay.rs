//! A rule's dry run over history, without I/O: each ticket's recorded events (ticket events,
//! the models' readings, SLA events, the customers' messages) folded into what the rule would
//! have seen at each of them ([`Facts`]), the rule evaluated where it would have run, and what
//! it would have done reported ([`DryRun`]). Nothing is changed: a fire changes only the folded
//! state, so later events of the ticket see it as the live rule's would have.
//!
//! A trigger runs at each event of its kinds; an automation at every hour of the window (its
//! pass, at most hourly), once per ticket version. What the history does not record is named in
//! `caveats` when the rule reads it: custom field values (events carry their keys), business
//! hours (the calendars live with the processors), orders the shop sent (only the value a
//! connector said on the message).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use switchboard_contracts::{Direction, TicketChange, TicketEvent, AUTOMATIC};

use crate::rules::{Action, Compiled, Facts, Kind, MessageFacts, On};

/// The most fires a dry run lists (all are counted).
pub const MAX_SAMPLES: usize = 200;

/// One recorded thing that happened to a ticket.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// A ticket event, with the customer's message when it is about one.
    Ticket {
        event_id: Uuid,
        at: DateTime<Utc>,
        event: Box<TicketEvent>,
        message: Option<Value>,
    },
    /// The models' reading of the ticket (`enrichment_result`).
    Enrichment { at: DateTime<Utc>, payload: Value },
    /// An SLA warning or breach.
    Sla {
        event_id: Uuid,
        at: DateTime<Utc>,
        on: On,
    },
}

impl Recorded {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Recorded::Ticket { at, .. }
            | Recorded::Enrichment { at, .. }
            | Recorded::Sla { at, .. } => *at,
        }
    }
}

/// What the rule would have done once.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WouldFire {
    pub ticket_id: Uuid,
    pub ticket_number: String,
    pub at: DateTime<Utc>,
    /// The event it would have run on (`created`, ...), or `time` for an automation.
    pub on: String,
    pub actions: Vec<String>,
}

/// What a dry run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    pub events: u64,
    /// Tickets created in the window, replayed.
    pub tickets: u64,
    /// Tickets with events in the window but created before it: not replayed (what they were
    /// when the window began is not in it).
    pub tickets_before_window: u64,
    /// How many times the rule would have fired.
    pub fires: u64,
    /// On how many tickets.
    pub tickets_touched: u64,
    /// Fires per action, in words.
    pub by_action: BTreeMap<String, u64>,
    /// The first fires, in time order per ticket (at most 200).
    pub samples: Vec<WouldFire>,
    /// What the history cannot tell this rule.
    pub caveats: Vec<String>,
}

/// A dry run in progress: feed it each ticket's history, then [`Replay::finish`].
#[derive(Debug)]
pub struct Replay<'a> {
    rule: &'a Compiled,
    until: DateTime<Utc>,
    since: DateTime<Utc>,
    out: DryRun,
}

impl<'a> Replay<'a> {
    /// A dry run of `rule` over `since..until`.
    pub fn new(rule: &'a Compiled, since: DateTime<Utc>, until: DateTime<Utc>) -> Replay<'a> {
        let mut caveats = Vec::new();
        let reads = |prefix: &str| {
            rule.rule
                .conditions
                .all
                .iter()
                .chain(&rule.rule.conditions.any)
                .any(|c| c.field.starts_with(prefix))
        };
        if reads("fields.") {
            caveats.push("custom field values are not in the event history: conditions on them read them as unset".into());
        }
        if reads("business_hours") {
            caveats.push("business hours are not replayed: read as open".into());
        }
        if reads("order_value") {
            caveats.push("order values are the ones connectors stated on messages; orders from the shop are not replayed".into());
        }
        if reads("order.status") {
            caveats.push(
                "an order's status is known from the order_updated events in the window only"
                    .into(),
            );
        }
        if reads("customer.email") || reads("tier") {
            caveats.push("the customer is read from the ticket's messages (a profile changed since is not seen)".into());
        }
        Replay {
            rule,
            until,
            since,
            out: DryRun {
                caveats,
                ..DryRun::default()
            },
        }
    }

    /// Replays one ticket's history (in time order; a ticket's creation first among what
    /// happened in the same millisecond).
    pub fn ticket(&mut self, ticket_id: Uuid, history: &[Recorded]) {
        let created = |r: &Recorded| matches!(r, Recorded::Ticket { event, .. } if matches!(event.change, TicketChange::Created { .. }));
        if !history.iter().any(created) {
            self.out.tickets_before_window += 1;
            return;
        }
        let mut ordered: Vec<&Recorded> = history.iter().collect();
        ordered.sort_by_key(|r| (r.at(), !created(r)));
        self.out.tickets += 1;
        self.out.events += history.len() as u64;
        let mut st = State::new(ticket_id);
        let mut touched = false;
        // The first customer message, for `created` triggers (its message_added comes after).
        let first_message = ordered.iter().find_map(|r| match r {
            Recorded::Ticket {
                event,
                message: Some(m),
                ..
            } if matches!(
                event.change,
                TicketChange::MessageAdded {
                    direction: Direction::Inbound,
                    ..
                }
            ) =>
            {
                Some(m.clone())
            }
            _ => None,
        });
        let automation = self.rule.rule.kind == Kind::Automation;
        let mut next_tick = hour_after(self.since);
        for r in ordered {
            if automation {
                while next_tick <= r.at() && next_tick <= self.until {
                    touched |= self.tick(&mut st, next_tick);
                    next_tick += Duration::hours(1);
                }
            }
            touched |= self.apply(&mut st, r, first_message.as_ref());
        }
        if automation {
            while next_tick <= self.until {
                if !st.started || st.facts.status == "closed" {
                    break;
                }
                touched |= self.tick(&mut st, next_tick);
                next_tick += Duration::hours(1);
            }
        }
        if touched {
            self.out.tickets_touched += 1;
        }
    }

    /// What the dry run found.
    pub fn finish(self) -> DryRun {
        self.out
    }

    fn tick(&mut self, st: &mut State, at: DateTime<Utc>) -> bool {
        if !st.started || st.facts.status == "closed" || st.fired_at_version == Some(st.version) {
            return false;
        }
        st.facts.now = at;
        st.facts.actor = None;
        st.facts.message = None;
        st.facts.csat_rating = None;
        if !self.rule.matches(&st.facts) {
            return false;
        }
        st.fired_at_version = Some(st.version);
        self.fire(st, at, "time");
        true
    }

    /// Folds `r` into the state and runs a trigger on it: whether it fired.
    fn apply(&mut self, st: &mut State, r: &Recorded, first_message: Option<&Value>) -> bool {
        match r {
            Recorded::Enrichment { payload, .. } => {
                let s = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_string);
                if let Some(c) = s("category") {
                    st.facts.category = Some(c);
                }
                if let Some(i) = s("intent") {
                    st.facts.intent = Some(i);
                }
                if let Some(l) = s("language") {
                    st.facts.language = Some(l);
                }
                if let Some(v) = payload.get("sentiment").and_then(Value::as_f64) {
                    st.facts.sentiment = Some(v);
                }
                false
            }
            Recorded::Sla { on, at, .. } => {
                if !st.started {
                    return false;
                }
                st.facts.actor = Some("sla".into());
                st.facts.message = None;
                st.facts.csat_rating = None;
                self.trigger(st, *on, *at)
            }
            Recorded::Ticket {
                event, message, at, ..
            } => {
                let ev = event.as_ref();
                st.number.clone_from(&ev.ticket_number);
                st.fold(ev, message.as_ref(), *at);
                let Some(on) = On::of(&ev.change) else {
                    return false;
                };
                st.facts.actor = Some(crate::rules::actor_kind(ev.actor.as_deref(), &ev.change));
                st.facts.event(&ev.change);
                let m = match (&ev.change, message) {
                    (TicketChange::Created { .. }, _) => first_message,
                    (_, Some(m)) => Some(m),
                    _ => None,
                };
                st.facts.message = m.map(|m| message_facts(m, &ev.change));
                if let Some(m) = m {
                    st.customer(m);
                }
                self.trigger(st, on, *at)
            }
        }
    }

    fn trigger(&mut self, st: &mut State, on: On, at: DateTime<Utc>) -> bool {
        if self.rule.rule.kind != Kind::Trigger || !self.rule.rule.on.contains(&on) {
            return false;
        }
        st.facts.now = at;
        if !self.rule.matches(&st.facts) {
            return false;
        }
        self.fire(st, at, on.as_str());
        true
    }

    fn fire(&mut self, st: &mut State, at: DateTime<Utc>, on: &str) {
        let actions: Vec<String> = self
            .rule
            .rule
            .actions
            .iter()
            .map(Action::describe)
            .collect();
        self.out.fires += 1;
        for a in &actions {
            *self.out.by_action.entry(a.clone()).or_default() += 1;
        }
        if self.out.samples.len() < MAX_SAMPLES {
            self.out.samples.push(WouldFire {
                ticket_id: st.ticket_id,
                ticket_number: st.number.clone(),
                at,
                on: on.to_string(),
                actions,
            });
        }
        // What the rule would have changed, the rest of the ticket's history sees.
        let mut changed = false;
        for a in &self.rule.rule.actions {
            changed |= st.act(a, at);
        }
        if changed {
            st.version += 1;
        }
    }
}

fn hour_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(3600) + 3600, 0).unwrap_or(t)
}

fn message_facts(m: &Value, change: &TicketChange) -> MessageFacts {
    let meta = |k: &str| {
        m.get("metadata")
            .and_then(|x| x.get(k))
            .and_then(Value::as_str)
    };
    let automatic_event = matches!(
        change,
        TicketChange::MessageAdded {
            automatic: true,
            ..
        }
    );
    MessageFacts {
        text: m
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        to: meta("email_to").map(str::to_string),
        automatic: automatic_event || meta(AUTOMATIC).is_some(),
    }
}

/// A ticket as its history has built it so far.
#[derive(Debug)]
struct State {
    ticket_id: Uuid,
    number: String,
    facts: Facts,
    started: bool,
    version: u64,
    fired_at_version: Option<u64>,
}

impl State {
    fn new(ticket_id: Uuid) -> State {
        State {
            ticket_id,
            number: String::new(),
            facts: Facts {
                status: "open".into(),
                priority: "medium".into(),
                business_hours: true,
                ..Facts::default()
            },
            started: false,
            version: 0,
            fired_at_version: None,
        }
    }

    /// The customer facts a message states (the first one that says them).
    fn customer(&mut self, m: &Value) {
        let meta = |k: &str| {
            m.get("metadata")
                .and_then(|x| x.get(k))
                .and_then(Value::as_str)
        };
        if self.facts.customer_email.is_none() {
            self.facts.customer_email = m
                .get("customer")
                .and_then(|c| c.get("email"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if self.facts.tier.is_none() {
            self.facts.tier = meta("customer_tier").map(str::to_string);
        }
        if self.facts.order_value.is_none() {
            self.facts.order_value = meta("order_value")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite());
        }
    }

    fn fold(&mut self, ev: &TicketEvent, message: Option<&Value>, at: DateTime<Utc>) {
        let f = &mut self.facts;
        let mut changed = true;
        match &ev.change {
            TicketChange::Created {
                channel,
                subject,
                priority,
                category,
                language,
                ..
            } => {
                self.started = true;
                f.channel = channel.as_str().to_string();
                f.subject.clone_from(subject);
                f.priority = priority.as_str().to_string();
                f.category.clone_from(category);
                f.language.clone_from(language);
                f.created_at = at;
                f.status_since = Some(at);
            }
            TicketChange::StatusChanged { to, .. } => {
                f.status = to.as_str().to_string();
                f.status_since = Some(at);
                if matches!(to.as_str(), "resolved" | "closed") {
                    f.resolved_at = Some(at);
                }
            }
            TicketChange::Reopened => {
                f.status = "open".into();
                f.status_since = Some(at);
            }
            TicketChange::PriorityChanged { to, .. } => f.priority = to.as_str().to_string(),
            TicketChange::Assigned { agent_id } => f.assignee = Some(*agent_id),
            TicketChange::Unassigned { .. } => f.assignee = None,
            TicketChange::TeamChanged { to, .. } => f.team = *to,
            TicketChange::TagsChanged { added, removed } => {
                f.tags.retain(|t| !removed.contains(t));
                for t in added {
                    if !f.tags.contains(t) {
                        f.tags.push(t.clone());
                    }
                }
            }
            TicketChange::MessageAdded { .. } => {
                if let Some(m) = message {
                    self.customer(m);
                }
            }
            _ => changed = false,
        }
        if changed {
            self.version += 1;
            self.facts.updated_at = at;
        }
    }

    /// Applies a rule's action to the folded state: whether it changed something.
    fn act(&mut self, a: &Action, at: DateTime<Utc>) -> bool {
        let f = &mut self.facts;
        let changed = match a {
            Action::Status { status } if *status != f.status => {
                f.status.clone_from(status);
                f.status_since = Some(at);
                if matches!(status.as_str(), "resolved" | "closed") {
                    f.resolved_at = Some(at);
                }
                true
            }
            Action::Priority { priority } if *priority != f.priority => {
                f.priority.clone_from(priority);
                true
            }
            Action::Team { team_id } if f.team != Some(*team_id) => {
                f.team = Some(*team_id);
                true
            }
            Action::Assignee { agent_id } if f.assignee != *agent_id => {
                f.assignee = *agent_id;
                true
            }
            Action::Tags { add, remove } => {
                let add = crate::tags::normalise_all(add).unwrap_or_default();
                let remove = crate::tags::normalise_all(remove).unwrap_or_default();
                let before = f.tags.clone();
                f.tags.retain(|t| !remove.contains(t));
                for t in add {
                    if !f.tags.contains(&t) {
                        f.tags.push(t);
                    }
                }
                before != f.tags
            }
            Action::Fields { values } => {
                for (k, v) in values {
                    if v.is_null() {
                        f.fields.remove(k);
                    } else {
                        f.fields.insert(k.clone(), v.clone());
                    }
                }
                !values.is_empty()
            }
            _ => false,
        };
        if changed {
            f.updated_at = at;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_contracts::{Channel, Priority, TicketStatus};

    fn ev(ticket: Uuid, change: TicketChange, actor: Option<&str>) -> Box<TicketEvent> {
        Box::new(TicketEvent {
            ticket_id: ticket,
            ticket_number: "T-2026-000001".into(),
            customer_id: Uuid::nil(),
            change,
            actor: actor.map(str::to_string),
        })
    }

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 - 1_780_000_000 % 3600, 0).unwrap()
            + Duration::minutes(h * 60 + 5)
    }

    fn history(ticket: Uuid, text: &str) -> Vec<Recorded> {
        let mid = Uuid::now_v7();
        vec![
            Recorded::Ticket {
                event_id: Uuid::now_v7(),
                at: at(0),
                event: ev(
                    ticket,
                    TicketChange::Created {
                        channel: Channel::Email,
                        subject: Some("Refund".into()),
                        priority: Priority::Medium,
                        category: None,
                        required_skill: None,
                        language: None,
                    },
                    None,
                ),
                message: None,
            },
            Recorded::Ticket {
                event_id: Uuid::now_v7(),
                at: at(0),
                event: ev(
                    ticket,
                    TicketChange::MessageAdded {
                        message_id: mid,
                        direction: Direction::Inbound,
                        channel: Channel::Email,
                        automatic: false,
                    },
                    None,
                ),
                message: Some(
                    json!({"text": text, "metadata": {"email_to": "wholesale@shop.example", "order_value": "750"}, "customer": {"email": "a@b.c"}}),
                ),
            },
            Recorded::Ticket {
                event_id: Uuid::now_v7(),
                at: at(1),
                event: ev(
                    ticket,
                    TicketChange::StatusChanged {
                        from: TicketStatus::Open,
                        to: TicketStatus::Pending,
                    },
                    Some("agent:x"),
                ),
                message: None,
            },
        ]
    }

    fn compile(v: Value) -> Compiled {
        Compiled::new(Uuid::now_v7(), "draft", &serde_json::from_value(v).unwrap()).unwrap()
    }

    #[test]
    fn a_trigger_replays_where_it_would_have_run() {
        let rule = compile(json!({"kind": "trigger", "on": ["created"],
            "conditions": {"all": [{"field": "message.to", "op": "contains", "value": "wholesale@"},
                                   {"field": "order_value", "op": "gt", "value": 500}]},
            "actions": [{"type": "tags", "add": ["wholesale"]}]}));
        let mut r = Replay::new(&rule, at(-1), at(100));
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        r.ticket(a, &history(a, "Order for 50 units"));
        let mut other = history(b, "hello");
        if let Recorded::Ticket {
            message: Some(m), ..
        } = &mut other[1]
        {
            m["metadata"]["email_to"] = json!("help@shop.example");
        }
        r.ticket(b, &other);
        let out = r.finish();
        assert_eq!(
            (out.tickets, out.events, out.fires, out.tickets_touched),
            (2, 6, 1, 1)
        );
        assert_eq!(out.samples[0].ticket_id, a);
        assert_eq!(out.samples[0].on, "created");
        assert_eq!(out.by_action.get("tags +wholesale"), Some(&1));
        assert!(out.caveats.iter().any(|c| c.contains("order values")));
    }

    #[test]
    fn survey_answers_and_order_updates_replay_with_what_they_said() {
        let unhappy = compile(json!({"kind": "trigger", "on": ["csat_received"],
            "conditions": {"all": [{"field": "csat.rating", "op": "lte", "value": 2}]},
            "actions": [{"type": "status", "status": "open"}]}));
        let t = Uuid::now_v7();
        let mut h = history(t, "x");
        for (hour, rating) in [(2, 4u8), (3, 1), (4, 1)] {
            h.push(Recorded::Ticket {
                event_id: Uuid::now_v7(),
                at: at(hour),
                event: ev(
                    t,
                    TicketChange::CsatReceived {
                        rating,
                        previous: None,
                        commented: false,
                    },
                    Some("customer"),
                ),
                message: None,
            });
        }
        // An order update between: its event says nothing of a rating.
        h.push(Recorded::Ticket {
            event_id: Uuid::now_v7(),
            at: at(5),
            event: ev(
                t,
                TicketChange::OrderUpdated {
                    order_number: "#1".into(),
                    status: Some("fulfilled".into()),
                    financial_status: None,
                    fulfillment_status: Some("fulfilled".into()),
                },
                None,
            ),
            message: None,
        });
        let mut r = Replay::new(&unhappy, at(-1), at(100));
        r.ticket(t, &h);
        let out = r.finish();
        assert_eq!(out.fires, 2, "the two one-star answers: {out:?}");
        assert!(out.samples.iter().all(|s| s.on == "csat_received"));
        let shipped = compile(json!({"kind": "trigger", "on": ["order_updated"],
            "conditions": {"all": [{"field": "order.status", "op": "is", "value": "fulfilled"}]},
            "actions": [{"type": "tags", "add": ["shipped"]}]}));
        let mut r = Replay::new(&shipped, at(-1), at(100));
        r.ticket(t, &h);
        assert_eq!(r.finish().fires, 1);
    }

    #[test]
    fn an_automation_fires_once_per_version_on_the_hour() {
        let rule = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                   {"field": "hours_since_pending", "op": "gte", "value": 48},
                                   {"field": "tags", "op": "not_contains", "value": "reminded"}]},
            "actions": [{"type": "tags", "add": ["reminded"]}]}));
        let t = Uuid::now_v7();
        let mut r = Replay::new(&rule, at(-1), at(24 * 7));
        r.ticket(t, &history(t, "hi"));
        let out = r.finish();
        // Pending from hour 1: the first pass at or after 49 h fires, never again (the tag).
        assert_eq!(out.fires, 1, "{out:?}");
        let when = out.samples[0].at;
        assert!(
            when >= at(49) - Duration::minutes(5) && when <= at(50),
            "{when}"
        );
        assert_eq!(out.samples[0].on, "time");
    }

    #[test]
    fn a_fire_changes_what_later_events_see() {
        // Tagging on status change, conditioned on the tag not being there: fires once even if
        // the status changes twice.
        let rule = compile(json!({"kind": "trigger", "on": ["status_changed"],
            "conditions": {"all": [{"field": "tags", "op": "not_contains", "value": "seen"}]},
            "actions": [{"type": "tags", "add": ["seen"]}]}));
        let t = Uuid::now_v7();
        let mut h = history(t, "x");
        h.push(Recorded::Ticket {
            event_id: Uuid::now_v7(),
            at: at(2),
            event: ev(
                t,
                TicketChange::StatusChanged {
                    from: TicketStatus::Pending,
                    to: TicketStatus::Open,
                },
                None,
            ),
            message: None,
        });
        let mut r = Replay::new(&rule, at(-1), at(10));
        r.ticket(t, &h);
        assert_eq!(r.finish().fires, 1);
    }
}
