//! Rules a support team edits itself, without I/O: triggers (on a ticket's events) and
//! automations (on time over open tickets), their conditions over what is known of a ticket
//! ([`Facts`]), their actions, and the checks a rule passes before it is stored.
//!
//! A rule is data ([`Rule`]), checked ([`check`]) and compiled ([`Compiled`]) once; evaluating
//! a compiled rule is linear in its conditions and in the text it looks at: `matches` uses the
//! `regex` crate, whose matching is guaranteed linear in the input, with a bounded program size.
//! The API checks a rule on save (the first bad part named: `conditions.all[2].value`); the
//! processors compile the enabled rules and evaluate them per event ([`Compiled::matches`]).
//! [`find_loop`] refuses, at save time, the rule sets whose own changes would trigger each other
//! for ever; what it cannot see is cut at run time by the ticket's fire budget.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use regex_automata::meta::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use switchboard_contracts::{Direction, TicketChange};

use crate::macros;

/// The most conditions in one rule (both groups together).
pub const MAX_CONDITIONS: usize = 50;
/// The most actions in one rule.
pub const MAX_ACTIONS: usize = 20;
/// The longest pattern of a `matches` condition, in bytes.
pub const MAX_PATTERN: usize = 1024;
/// The most values a list condition takes.
pub const MAX_VALUES: usize = 100;
/// The compiled program of one pattern may take this much memory.
const REGEX_SIZE: usize = 256 * 1024;

/// The most memory the enabled rules' pattern automata may take together (each is at most
/// `REGEX_SIZE`, and its lazy DFA's cache as much again per thread): a set past it is refused
/// when a rule is enabled, and the processors skip the rules past it.
pub const SET_PATTERN_BUDGET: usize = 64 * 1024 * 1024;

/// A pattern with linear-time matching and bounded memory (`case_insensitive` for the texts
/// of `is` and `contains`).
fn pattern(
    p: &str,
    case_insensitive: bool,
) -> Result<Regex, Box<regex_automata::meta::BuildError>> {
    use regex_automata::meta;
    meta::Builder::new()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(REGEX_SIZE))
                .onepass_size_limit(Some(REGEX_SIZE))
                .dfa_size_limit(Some(REGEX_SIZE))
                .hybrid_cache_capacity(REGEX_SIZE),
        )
        .syntax(regex_automata::util::syntax::Config::new().case_insensitive(case_insensitive))
        .build(p)
        .map_err(Box::new)
}

/// Triggers run on events; automations on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Trigger,
    Automation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trigger => "trigger",
            Kind::Automation => "automation",
        }
    }
}

/// What a trigger runs on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// A new ticket.
    Created,
    /// A message from the customer (or a machine writing as one: `message.automatic`).
    MessageReceived,
    /// A reply from an agent, the bot or a rule.
    MessageSent,
    StatusChanged,
    PriorityChanged,
    /// Assigned to an agent or released.
    AssigneeChanged,
    TeamChanged,
    TagsChanged,
    FieldsChanged,
    /// An SLA clock reached its warning.
    SlaWarning,
    /// An SLA clock breached.
    SlaBreached,
    /// The customer answered the satisfaction survey (`csat.rating`).
    CsatReceived,
    /// The shop changed the order the ticket names (`order.status`).
    OrderUpdated,
}

impl On {
    pub const ALL: [On; 13] = [
        On::Created,
        On::MessageReceived,
        On::MessageSent,
        On::StatusChanged,
        On::PriorityChanged,
        On::AssigneeChanged,
        On::TeamChanged,
        On::TagsChanged,
        On::FieldsChanged,
        On::SlaWarning,
        On::SlaBreached,
        On::CsatReceived,
        On::OrderUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            On::Created => "created",
            On::MessageReceived => "message_received",
            On::MessageSent => "message_sent",
            On::StatusChanged => "status_changed",
            On::PriorityChanged => "priority_changed",
            On::AssigneeChanged => "assignee_changed",
            On::TeamChanged => "team_changed",
            On::TagsChanged => "tags_changed",
            On::FieldsChanged => "fields_changed",
            On::SlaWarning => "sla_warning",
            On::SlaBreached => "sla_breached",
            On::CsatReceived => "csat_received",
            On::OrderUpdated => "order_updated",
        }
    }

    /// What a ticket event triggers (internal notes, mentions and the derived `resolved` /
    /// `reopened` events trigger nothing: `status_changed` says it).
    pub fn of(change: &TicketChange) -> Option<On> {
        Some(match change {
            TicketChange::Created { .. } => On::Created,
            TicketChange::MessageAdded { direction, .. } => match direction {
                Direction::Inbound => On::MessageReceived,
                Direction::Outbound => On::MessageSent,
                Direction::Note => return None,
            },
            TicketChange::StatusChanged { .. } => On::StatusChanged,
            TicketChange::PriorityChanged { .. } => On::PriorityChanged,
            TicketChange::Assigned { .. } | TicketChange::Unassigned { .. } => On::AssigneeChanged,
            TicketChange::TeamChanged { .. } => On::TeamChanged,
            TicketChange::TagsChanged { .. } => On::TagsChanged,
            TicketChange::FieldsChanged { .. } => On::FieldsChanged,
            TicketChange::CsatReceived { .. } => On::CsatReceived,
            TicketChange::OrderUpdated { .. } => On::OrderUpdated,
            _ => return None,
        })
    }

    /// Whether the event carries a message the conditions may read (`message.*`).
    fn has_message(self) -> bool {
        matches!(self, On::Created | On::MessageReceived | On::MessageSent)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (text: ignoring case); a list value: any of them.
    Is,
    IsNot,
    /// Text: holds the value (ignoring case; a list: any of them). Tags: carries the tag (a
    /// list: all of them). A multi-select field: holds the option.
    Contains,
    NotContains,
    /// Text matches a regular expression (the `regex` crate's syntax, linear time).
    Matches,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Has a value (tags: at least one).
    Present,
    Absent,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Is => "is",
            Op::IsNot => "is_not",
            Op::Contains => "contains",
            Op::NotContains => "not_contains",
            Op::Matches => "matches",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Present => "present",
            Op::Absent => "absent",
        }
    }
}

/// One condition: `field op value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleCondition)]
pub struct Condition {
    /// A ticket field (see `GET /v1/rules/fields`), `fields.<key>` for a custom field.
    pub field: String,
    pub op: Op,
    /// A string, number, boolean or list of strings, as the field and op take; none for
    /// `present`/`absent`.
    #[serde(default)]
    pub value: Value,
}

/// Every condition of `all` holds, and one of `any` when it has any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleConditions)]
pub struct Conditions {
    #[serde(default)]
    pub all: Vec<Condition>,
    #[serde(default)]
    pub any: Vec<Condition>,
}

/// One thing a rule does, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = RuleAction)]
pub enum Action {
    /// A reply to the customer on the ticket's channel (placeholders filled); never to a
    /// machine, and it stops no response clock.
    Reply {
        text: String,
    },
    /// An internal note (placeholders filled).
    Note {
        text: String,
    },
    /// `open`, `pending`, `resolved` or `closed`.
    Status {
        status: String,
    },
    Priority {
        priority: String,
    },
    Tags {
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Custom field values (null clears).
    Fields {
        #[schema(value_type = Object)]
        values: BTreeMap<String, Value>,
    },
    /// Hand the ticket to a team's queue.
    Team {
        team_id: Uuid,
    },
    /// Assign to this agent (its constraints apply); none: back to the queue.
    Assignee {
        #[serde(default)]
        agent_id: Option<Uuid>,
    },
    /// Tell people on their live stream: `assignee`, `team_supervisor`, or `agent:<id>`; and
    /// by `email` and `sms` where `via` says so and each one's preferences accept the `rule`
    /// topic.
    Notify {
        to: Vec<String>,
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        via: Vec<String>,
    },
    /// Apply a shared macro's actions.
    Macro {
        macro_id: Uuid,
    },
    /// Send the satisfaction survey (once per ticket, never to a machine).
    Survey {},
    /// Call a webhook (`/v1/webhooks`) with the rule, the event and the ticket (`rule.fired`),
    /// signed and delivered at least once like every webhook.
    Webhook {
        webhook_id: Uuid,
    },
    /// An action on the order the ticket names (its `order_number` field, an order of the
    /// ticket's customer) through the shop's Admin API, as an agent's: `cancel` (refunding what
    /// was paid), `refund` (`amount_cents`, or all that is left) or `resend` (a replacement of
    /// every line not sent again yet). Queued in the fire's transaction and run by the serving
    /// role; above `shop.refund_limits.rules_cents` (money refunded or goods sent) it waits for
    /// a supervisor's approval.
    Order {
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        amount_cents: Option<i64>,
    },
}

/// What an [`Action::Order`] may do.
pub const ORDER_ACTIONS: &[&str] = &["cancel", "refund", "resend"];

impl Action {
    /// The macro action this is, for the checks and the work both share.
    pub fn as_macro(&self) -> Option<macros::Action> {
        Some(match self {
            Action::Reply { text } => macros::Action::Reply { text: text.clone() },
            Action::Note { text } => macros::Action::Note { text: text.clone() },
            Action::Status { status } => macros::Action::Status {
                status: status.clone(),
            },
            Action::Priority { priority } => macros::Action::Priority {
                priority: priority.clone(),
            },
            Action::Tags { add, remove } => macros::Action::Tags {
                add: add.clone(),
                remove: remove.clone(),
            },
            Action::Fields { values } => macros::Action::Fields {
                values: values.clone(),
            },
            Action::Team { team_id } => macros::Action::Team { team_id: *team_id },
            _ => return None,
        })
    }

    /// A macro's action as a rule's.
    pub fn from_macro(a: &macros::Action) -> Action {
        match a.clone() {
            macros::Action::Reply { text } => Action::Reply { text },
            macros::Action::Note { text } => Action::Note { text },
            macros::Action::Status { status } => Action::Status { status },
            macros::Action::Priority { priority } => Action::Priority { priority },
            macros::Action::Tags { add, remove } => Action::Tags { add, remove },
            macros::Action::Fields { values } => Action::Fields { values },
            macros::Action::Team { team_id } => Action::Team { team_id },
        }
    }

    /// In words, for dry runs and the ticket's history.
    pub fn describe(&self) -> String {
        match self {
            Action::Reply { .. } => "reply to the customer".into(),
            Action::Note { .. } => "internal note".into(),
            Action::Status { status } => format!("status: {status}"),
            Action::Priority { priority } => format!("priority: {priority}"),
            Action::Tags { add, remove } => {
                let mut parts = Vec::new();
                if !add.is_empty() {
                    parts.push(format!("tags +{}", add.join(" +")));
                }
                if !remove.is_empty() {
                    parts.push(format!("tags -{}", remove.join(" -")));
                }
                parts.join(", ")
            }
            Action::Fields { values } => format!(
                "fields: {}",
                values.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Action::Team { team_id } => format!("team: {team_id}"),
            Action::Assignee { agent_id: Some(a) } => format!("assignee: {a}"),
            Action::Assignee { agent_id: None } => "back to the queue".into(),
            Action::Notify { to, .. } => format!("notify: {}", to.join(", ")),
            Action::Macro { macro_id } => format!("macro: {macro_id}"),
            Action::Survey {} => "satisfaction survey".into(),
            Action::Webhook { webhook_id } => format!("webhook: {webhook_id}"),
            Action::Order {
                action,
                amount_cents: Some(c),
            } => format!("order: {action} {c} cents"),
            Action::Order { action, .. } => format!("order: {action}"),
        }
    }
}

/// A rule as stored and as the API takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub kind: Kind,
    /// The events a trigger runs on (at least one); none for an automation.
    #[serde(default)]
    pub on: Vec<On>,
    #[serde(default)]
    pub conditions: Conditions,
    pub actions: Vec<Action>,
}

/// The kind of value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    /// One of a fixed set (compared ignoring case).
    Word(&'static [&'static str]),
    /// Free text.
    Text,
    /// An agent or team id, or `none`.
    Id,
    Tags,
    Number,
    Bool,
    /// A custom field's JSON value.
    Custom,
}

const STATUSES: &[&str] = &["open", "pending", "resolved", "closed"];
const PRIORITIES: &[&str] = &["low", "medium", "high", "urgent", "critical"];
const CHANNELS: &[&str] = &[
    "email",
    "chat",
    "sms",
    "whatsapp",
    "messenger",
    "instagram",
    "voice",
    "api",
];
const ACTORS: &[&str] = &[
    "customer", "agent", "admin", "token", "rule", "router", "sla", "bot", "system",
];

/// Which field a condition names, and where it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Status,
    Priority,
    Channel,
    Category,
    Intent,
    Language,
    Tier,
    Subject,
    Team,
    Assignee,
    Tags,
    Sentiment,
    OrderValue,
    CustomerEmail,
    MessageText,
    MessageTo,
    MessageAutomatic,
    Actor,
    BusinessHours,
    HoursSinceCreated,
    HoursSinceUpdated,
    HoursSincePending,
    HoursSinceSolved,
    CsatRating,
    OrderStatus,
    Custom(String),
}

/// The fields a condition may name, with their kinds (what `GET /v1/rules/fields` lists).
pub const FIELDS: [(&str, &str); 25] = [
    ("status", "one of open, pending, resolved, closed"),
    (
        "priority",
        "one of low, medium, high, urgent, critical (ordered: gt, lt)",
    ),
    ("channel", "the ticket's channel"),
    (
        "category",
        "the classifier's or the keyword rules' category",
    ),
    ("intent", "the classifier's intent"),
    ("language", "the ticket's language"),
    ("tier", "the customer's tier (standard, vip, ...)"),
    ("subject", "text"),
    ("team", "a team id or none"),
    ("assignee", "an agent id or none"),
    ("tags", "the ticket's tags"),
    ("sentiment", "number, -1 to 1"),
    (
        "order_value",
        "number: the total of the order the ticket names, in currency units",
    ),
    ("customer.email", "text"),
    (
        "message.text",
        "text of the event's message (created, message_received, message_sent)",
    ),
    (
        "message.to",
        "the mailbox an email was sent to (created, message_received)",
    ),
    (
        "message.automatic",
        "true when a machine wrote the message (auto-reply, bounce, list)",
    ),
    (
        "actor",
        "who caused the event: customer, agent, admin, token, rule, router, sla, bot, system",
    ),
    (
        "business_hours",
        "true inside the business hours of the ticket's calendar",
    ),
    ("hours_since_created", "number (automations)"),
    ("hours_since_updated", "number (automations)"),
    (
        "hours_since_pending",
        "number: hours the ticket has been pending (automations)",
    ),
    (
        "hours_since_solved",
        "number: hours since it was resolved or closed (automations)",
    ),
    (
        "csat.rating",
        "number, 1 to 5: the survey answer (csat_received triggers)",
    ),
    (
        "order.status",
        "text: the status of the order the ticket names, as the shop last said (fulfilment, else payment)",
    ),
];

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "status" => Field::Status,
            "priority" => Field::Priority,
            "channel" => Field::Channel,
            "category" => Field::Category,
            "intent" => Field::Intent,
            "language" => Field::Language,
            "tier" => Field::Tier,
            "subject" => Field::Subject,
            "team" => Field::Team,
            "assignee" => Field::Assignee,
            "tags" => Field::Tags,
            "sentiment" => Field::Sentiment,
            "order_value" => Field::OrderValue,
            "customer.email" => Field::CustomerEmail,
            "message.text" => Field::MessageText,
            "message.to" => Field::MessageTo,
            "message.automatic" => Field::MessageAutomatic,
            "actor" => Field::Actor,
            "business_hours" => Field::BusinessHours,
            "hours_since_created" => Field::HoursSinceCreated,
            "hours_since_updated" => Field::HoursSinceUpdated,
            "hours_since_pending" => Field::HoursSincePending,
            "hours_since_solved" => Field::HoursSinceSolved,
            "csat.rating" => Field::CsatRating,
            "order.status" => Field::OrderStatus,
            _ => {
                let key = s.strip_prefix("fields.")?;
                if !crate::fields::valid_key(key) {
                    return None;
                }
                Field::Custom(key.to_string())
            }
        })
    }

    fn kind(&self) -> Type {
        match self {
            Field::Status => Type::Word(STATUSES),
            Field::Priority => Type::Word(PRIORITIES),
            Field::Channel => Type::Word(CHANNELS),
            Field::Actor => Type::Word(ACTORS),
            Field::Category
            | Field::Intent
            | Field::Language
            | Field::Tier
            | Field::Subject
            | Field::CustomerEmail
            | Field::MessageText
            | Field::MessageTo
            | Field::OrderStatus => Type::Text,
            Field::Team | Field::Assignee => Type::Id,
            Field::Tags => Type::Tags,
            Field::Sentiment
            | Field::OrderValue
            | Field::HoursSinceCreated
            | Field::HoursSinceUpdated
            | Field::HoursSincePending
            | Field::HoursSinceSolved
            | Field::CsatRating => Type::Number,
            Field::MessageAutomatic | Field::BusinessHours => Type::Bool,
            Field::Custom(_) => Type::Custom,
        }
    }

    fn is_message(&self) -> bool {
        matches!(
            self,
            Field::MessageText | Field::MessageTo | Field::MessageAutomatic
        )
    }

    /// The trigger whose event carries this field (`csat.rating`: csat_received), if it is
    /// one of those.
    fn event(&self) -> Option<On> {
        match self {
            Field::CsatRating => Some(On::CsatReceived),
            _ => None,
        }
    }

    fn is_time(&self) -> bool {
        matches!(
            self,
            Field::HoursSinceCreated
                | Field::HoursSinceUpdated
                | Field::HoursSincePending
                | Field::HoursSinceSolved
        )
    }
}

/// What is known of a ticket when a rule looks at it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub status: String,
    pub priority: String,
    pub channel: String,
    pub category: Option<String>,
    pub intent: Option<String>,
    pub language: Option<String>,
    pub tier: Option<String>,
    pub subject: Option<String>,
    pub team: Option<Uuid>,
    pub assignee: Option<Uuid>,
    pub tags: Vec<String>,
    pub sentiment: Option<f64>,
    pub order_value: Option<f64>,
    pub customer_email: Option<String>,
    pub fields: BTreeMap<String, Value>,
    pub message: Option<MessageFacts>,
    /// Who caused the event (`customer`, `agent`, `rule`, ...), for triggers.
    pub actor: Option<String>,
    pub business_hours: bool,
    pub now: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the status last changed.
    pub status_since: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The rating of a `csat_received` event.
    pub csat_rating: Option<f64>,
    /// The status of the order the ticket names (an `order_updated` event's own).
    pub order_status: Option<String>,
}

impl Facts {
    /// Sets what the event itself says: `csat.rating` (cleared by any other event) and the
    /// order's status (kept until the next `order_updated`).
    pub fn event(&mut self, change: &TicketChange) {
        self.csat_rating = None;
        match change {
            TicketChange::CsatReceived { rating, .. } => {
                self.csat_rating = Some(f64::from(*rating))
            }
            TicketChange::OrderUpdated { status, .. } => self.order_status.clone_from(status),
            _ => {}
        }
    }
}

/// The event's message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageFacts {
    pub text: String,
    pub to: Option<String>,
    pub automatic: bool,
}

impl Facts {
    fn hours(&self, since: Option<DateTime<Utc>>) -> Option<f64> {
        since.map(|s| (self.now - s).num_seconds().max(0) as f64 / 3600.0)
    }

    fn number(&self, f: &Field) -> Option<f64> {
        match f {
            Field::Sentiment => self.sentiment,
            Field::OrderValue => self.order_value,
            Field::HoursSinceCreated => self.hours(Some(self.created_at)),
            Field::HoursSinceUpdated => self.hours(Some(self.updated_at)),
            Field::HoursSincePending => (self.status == "pending")
                .then(|| self.hours(self.status_since.or(Some(self.updated_at))))
                .flatten(),
            Field::HoursSinceSolved => matches!(self.status.as_str(), "resolved" | "closed")
                .then(|| self.hours(self.resolved_at))
                .flatten(),
            Field::CsatRating => self.csat_rating,
            _ => None,
        }
    }

    fn text(&self, f: &Field) -> Option<&str> {
        match f {
            Field::Status => Some(&self.status),
            Field::Priority => Some(&self.priority),
            Field::Channel => Some(&self.channel),
            Field::Category => self.category.as_deref(),
            Field::Intent => self.intent.as_deref(),
            Field::Language => self.language.as_deref(),
            Field::Tier => self.tier.as_deref(),
            Field::Subject => self.subject.as_deref(),
            Field::CustomerEmail => self.customer_email.as_deref(),
            Field::MessageText => self.message.as_ref().map(|m| m.text.as_str()),
            Field::MessageTo => self.message.as_ref().and_then(|m| m.to.as_deref()),
            Field::Actor => self.actor.as_deref(),
            Field::OrderStatus => self.order_status.as_deref(),
            _ => None,
        }
    }
}

/// A bad part of a rule: where (`conditions.all[1].value`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub why: String,
}

impl Invalid {
    fn new(field: impl Into<String>, why: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            why: why.into(),
        }
    }
}

/// What a condition compares with, compiled.
#[derive(Debug, Clone)]
enum Test {
    /// One of these words (lowercase).
    Words(Vec<String>),
    /// Text: one of these patterns finds (`contains`, `is` as an anchored literal, `matches`).
    Pattern(Regex),
    Ids(Vec<Option<Uuid>>),
    Tags(Vec<String>),
    Number(f64),
    Bool(bool),
    /// A custom field: one of these values (a multi-select: holding one).
    Json(Vec<Value>),
    Exists,
}

#[derive(Debug, Clone)]
struct Compiled1 {
    field: Field,
    op: Op,
    test: Test,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub id: Uuid,
    pub name: String,
    pub rule: Rule,
    all: Vec<Compiled1>,
    any: Vec<Compiled1>,
    /// Whether a condition reads the event's message (the caller loads it only then).
    pub reads_message: bool,
    /// Whether a condition reads `order_value` or `order.status` (the caller looks the order up
    /// only then).
    pub reads_order: bool,
    /// What its patterns' automata take in memory, in bytes (the set's budget counts it).
    pub pattern_bytes: usize,
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() && items.len() <= MAX_VALUES => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

fn compile1(c: &Condition, at: &str) -> Result<Compiled1, Invalid> {
    let field = Field::parse(&c.field).ok_or_else(|| {
        Invalid::new(
            format!("{at}.field"),
            format!(
                "unknown field {:?}; known: {}, fields.<key>",
                c.field.chars().take(64).collect::<String>(),
                FIELDS.map(|f| f.0).join(", ")
            ),
        )
    })?;
    let bad_op = || {
        Invalid::new(
            format!("{at}.op"),
            format!("{} does not apply to {}", c.op.as_str(), c.field),
        )
    };
    let bad_value = |why: &str| Invalid::new(format!("{at}.value"), why.to_string());
    if matches!(c.op, Op::Present | Op::Absent) {
        if !c.value.is_null() {
            return Err(bad_value("present and absent take no value"));
        }
        if matches!(field.kind(), Type::Bool) {
            return Err(bad_op());
        }
        return Ok(Compiled1 {
            field,
            op: c.op,
            test: Test::Exists,
        });
    }
    let test = match (field.kind(), c.op) {
        (Type::Word(allowed), Op::Is | Op::IsNot | Op::Gt | Op::Gte | Op::Lt | Op::Lte) => {
            let words =
                strings(&c.value).ok_or_else(|| bad_value("a word or a list of 1 to 100 words"))?;
            let mut out = Vec::new();
            for w in words {
                let w = w.to_ascii_lowercase();
                if !allowed.contains(&w.as_str()) {
                    return Err(bad_value(&format!(
                        "{w:?} is not one of {}",
                        allowed.join(", ")
                    )));
                }
                out.push(w);
            }
            if matches!(c.op, Op::Gt | Op::Gte | Op::Lt | Op::Lte) && out.len() != 1 {
                return Err(bad_value("compare with one priority"));
            }
            if matches!(c.op, Op::Gt | Op::Gte | Op::Lt | Op::Lte) && allowed != PRIORITIES {
                return Err(bad_op());
            }
            Test::Words(out)
        }
        (Type::Text, Op::Is | Op::IsNot | Op::Contains | Op::NotContains) => {
            let words =
                strings(&c.value).ok_or_else(|| bad_value("a text or a list of 1 to 100 texts"))?;
            if words.iter().any(|w| w.is_empty() || w.len() > MAX_PATTERN) {
                return Err(bad_value("each text 1 to 1024 bytes"));
            }
            let alts: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
            let body = alts.join("|");
            let pattern_text = if matches!(c.op, Op::Is | Op::IsNot) {
                format!("^(?:{body})$")
            } else {
                format!("(?:{body})")
            };
            Test::Pattern(
                pattern(&pattern_text, true)
                    .map_err(|_| bad_value("the texts make too large a pattern"))?,
            )
        }
        (Type::Text, Op::Matches) => {
            let p = c
                .value
                .as_str()
                .ok_or_else(|| bad_value("a regular expression"))?;
            if p.is_empty() || p.len() > MAX_PATTERN {
                return Err(bad_value("a pattern of 1 to 1024 bytes"));
            }
            Test::Pattern(
                pattern(p, false).map_err(|e| match e.size_limit() {
                    Some(limit) => bad_value(&format!(
                        "too large a pattern: its automaton passes {} KiB (a repetition of a wide class like \\w{{1000}} does)",
                        limit / 1024
                    )),
                    None => bad_value(&format!(
                        "not a regular expression: {}",
                        e.syntax_error()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| e.to_string())
                            .lines()
                            .last()
                            .unwrap_or("invalid")
                    )),
                })?,
            )
        }
        (Type::Id, Op::Is | Op::IsNot) => {
            let words =
                strings(&c.value).ok_or_else(|| bad_value("an id, none, or a list of them"))?;
            let ids = words
                .iter()
                .map(|w| match w.as_str() {
                    "none" => Ok(None),
                    s => Uuid::parse_str(s).map(Some),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad_value("an id, none, or a list of them"))?;
            Test::Ids(ids)
        }
        (Type::Tags, Op::Contains | Op::NotContains) => {
            let tags = strings(&c.value).ok_or_else(|| bad_value("a tag or a list of tags"))?;
            let tags = crate::tags::normalise_all(&tags)
                .map_err(|(i, e)| Invalid::new(format!("{at}.value[{i}]"), e.to_string()))?;
            Test::Tags(tags)
        }
        (Type::Number, Op::Is | Op::IsNot | Op::Gt | Op::Gte | Op::Lt | Op::Lte) => {
            let n = c
                .value
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| bad_value("a number"))?;
            if field.is_time() && matches!(c.op, Op::Is | Op::IsNot) {
                return Err(bad_op());
            }
            if field.is_time() && !(0.0..=87_600.0).contains(&n) {
                return Err(bad_value("hours from 0 to 87600 (ten years)"));
            }
            Test::Number(n)
        }
        (Type::Bool, Op::Is) => Test::Bool(
            c.value
                .as_bool()
                .ok_or_else(|| bad_value("true or false"))?,
        ),
        (Type::Custom, Op::Is | Op::IsNot | Op::Contains | Op::NotContains) => {
            let values = match &c.value {
                Value::Array(items) if !items.is_empty() && items.len() <= MAX_VALUES => {
                    items.clone()
                }
                Value::Null | Value::Array(_) | Value::Object(_) => {
                    return Err(bad_value("a value or a list of 1 to 100 values"))
                }
                v => vec![v.clone()],
            };
            Test::Json(values)
        }
        (Type::Custom, Op::Gt | Op::Gte | Op::Lt | Op::Lte) => Test::Number(
            c.value
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| bad_value("a number"))?,
        ),
        _ => return Err(bad_op()),
    };
    Ok(Compiled1 {
        field,
        op: c.op,
        test,
    })
}

fn rank(p: &str) -> usize {
    PRIORITIES.iter().position(|x| *x == p).unwrap_or(0)
}

fn compare(a: f64, op: Op, b: f64) -> bool {
    match op {
        Op::Is => a == b,
        Op::IsNot => a != b,
        Op::Gt => a > b,
        Op::Gte => a >= b,
        Op::Lt => a < b,
        Op::Lte => a <= b,
        _ => false,
    }
}

impl Compiled1 {
    fn holds(&self, f: &Facts) -> bool {
        let negated = matches!(self.op, Op::IsNot | Op::NotContains);
        let found = match &self.test {
            Test::Exists => {
                let present = match &self.field {
                    Field::Team => f.team.is_some(),
                    Field::Assignee => f.assignee.is_some(),
                    Field::Tags => !f.tags.is_empty(),
                    Field::Custom(k) => f.fields.get(k).is_some_and(|v| !v.is_null()),
                    Field::Sentiment
                    | Field::OrderValue
                    | Field::HoursSinceCreated
                    | Field::HoursSinceUpdated
                    | Field::HoursSincePending
                    | Field::HoursSinceSolved => f.number(&self.field).is_some(),
                    other => f.text(other).is_some_and(|t| !t.is_empty()),
                };
                return present == (self.op == Op::Present);
            }
            Test::Words(words) => {
                let Some(v) = f.text(&self.field) else {
                    return negated;
                };
                match self.op {
                    Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                        let (a, b) = (rank(&v.to_ascii_lowercase()), rank(&words[0]));
                        return compare(a as f64, self.op, b as f64);
                    }
                    _ => words.iter().any(|w| w.eq_ignore_ascii_case(v)),
                }
            }
            Test::Pattern(re) => match f.text(&self.field) {
                Some(v) => re.is_match(v),
                None => false,
            },
            Test::Ids(ids) => {
                let v = match self.field {
                    Field::Team => f.team,
                    _ => f.assignee,
                };
                ids.contains(&v)
            }
            Test::Tags(tags) => {
                if negated {
                    // not_contains: carries none of them.
                    return !tags.iter().any(|t| f.tags.contains(t));
                }
                return tags.iter().all(|t| f.tags.contains(t));
            }
            Test::Number(n) => {
                let v = match &self.field {
                    Field::Custom(k) => f.fields.get(k).and_then(Value::as_f64),
                    other => f.number(other),
                };
                return v.is_some_and(|v| compare(v, self.op, *n));
            }
            Test::Bool(b) => {
                let v = match self.field {
                    Field::MessageAutomatic => f.message.as_ref().is_some_and(|m| m.automatic),
                    _ => f.business_hours,
                };
                return v == *b;
            }
            Test::Json(values) => {
                let Field::Custom(k) = &self.field else {
                    return false;
                };
                match f.fields.get(k) {
                    None | Some(Value::Null) => false,
                    Some(Value::Array(held)) => values.iter().any(|v| held.contains(v)),
                    Some(Value::String(s)) if matches!(self.op, Op::Contains | Op::NotContains) => {
                        values.iter().any(|v| {
                            v.as_str()
                                .is_some_and(|v| s.to_lowercase().contains(&v.to_lowercase()))
                        })
                    }
                    Some(held) => values.contains(held),
                }
            }
        };
        found != negated
    }
}

impl Compiled {
    /// Checks `rule` and compiles it: the first bad part named.
    pub fn new(id: Uuid, name: &str, rule: &Rule) -> Result<Compiled, Invalid> {
        check_shape(rule)?;
        let mut all = Vec::with_capacity(rule.conditions.all.len());
        let mut any = Vec::with_capacity(rule.conditions.any.len());
        for (group, list, out) in [
            ("all", &rule.conditions.all, &mut all),
            ("any", &rule.conditions.any, &mut any),
        ] {
            for (i, c) in list.iter().enumerate() {
                let at = format!("conditions.{group}[{i}]");
                let c1 = compile1(c, &at)?;
                if c1.field.is_message() && rule.kind == Kind::Automation {
                    return Err(Invalid::new(
                        format!("{at}.field"),
                        "an automation has no event message to read",
                    ));
                }
                if c1.field.is_message() && !rule.on.iter().all(|o| o.has_message()) {
                    return Err(Invalid::new(
                        format!("{at}.field"),
                        "message fields need triggers on created, message_received or message_sent only",
                    ));
                }
                if let Some(on) = c1.field.event() {
                    if rule.kind == Kind::Automation || rule.on.iter().any(|o| *o != on) {
                        return Err(Invalid::new(
                            format!("{at}.field"),
                            format!("{} is read on {} triggers only", c.field, on.as_str()),
                        ));
                    }
                }
                if c1.field.is_time() && rule.kind == Kind::Trigger {
                    return Err(Invalid::new(
                        format!("{at}.field"),
                        "hours_since_* conditions are for automations",
                    ));
                }
                if c1.field == Field::Actor && rule.kind == Kind::Automation {
                    return Err(Invalid::new(
                        format!("{at}.field"),
                        "an automation runs on no event: no actor",
                    ));
                }
                out.push(c1);
            }
        }
        let reads_message = all.iter().chain(&any).any(|c| c.field.is_message());
        let reads_order = all
            .iter()
            .chain(&any)
            .any(|c| matches!(c.field, Field::OrderValue | Field::OrderStatus));
        let pattern_bytes = all
            .iter()
            .chain(&any)
            .map(|c| match &c.test {
                Test::Pattern(re) => re.memory_usage(),
                _ => 0,
            })
            .sum();
        let compiled = Compiled {
            id,
            name: name.to_string(),
            rule: rule.clone(),
            all,
            any,
            reads_message,
            reads_order,
            pattern_bytes,
        };
        if rule.kind == Kind::Automation {
            compiled.check_automation()?;
        }
        Ok(compiled)
    }

    /// Whether the rule's conditions hold for `facts`.
    pub fn matches(&self, facts: &Facts) -> bool {
        self.all.iter().all(|c| c.holds(facts))
            && (self.any.is_empty() || self.any.iter().any(|c| c.holds(facts)))
    }

    /// An automation waits for time (a `hours_since_*` lower bound) and its own actions end it
    /// (a condition they make false), or it would act on the same tickets on every pass.
    fn check_automation(&self) -> Result<(), Invalid> {
        let waits = self
            .all
            .iter()
            .any(|c| c.field.is_time() && matches!(c.op, Op::Gt | Op::Gte | Op::Is));
        if !waits {
            return Err(Invalid::new(
                "conditions.all",
                "an automation needs an hours_since_* condition with gt or gte in all",
            ));
        }
        let ends = self.all.iter().any(|c| {
            self.rule
                .actions
                .iter()
                .any(|a| effect(a).is_some_and(|e| !e.consistent_with(c)))
        });
        if !ends {
            return Err(Invalid::new(
                "actions",
                "an automation must change something one of its all conditions tests (status, priority, team, assignee, a tag or a field), or it would act on the same tickets on every pass",
            ));
        }
        Ok(())
    }

    /// The statuses, tags and time bounds the automation needs, for the caller's query.
    pub fn prefilter(&self) -> Prefilter {
        let mut p = Prefilter::default();
        for c in &self.all {
            match (&c.field, &c.test, c.op) {
                (Field::Status, Test::Words(w), Op::Is) => p.statuses = Some(w.clone()),
                (Field::Tags, Test::Tags(t), Op::Contains) => p.tags_all.extend(t.clone()),
                (Field::Tags, Test::Tags(t), Op::NotContains) => p.tags_none.extend(t.clone()),
                (f, Test::Number(n), Op::Gt | Op::Gte) if f.is_time() => {
                    let key = match f {
                        Field::HoursSinceCreated => "created",
                        Field::HoursSinceUpdated => "updated",
                        Field::HoursSincePending => "pending",
                        _ => "solved",
                    };
                    let e = p.older_than_hours.entry(key).or_insert(*n);
                    *e = e.max(*n);
                }
                _ => {}
            }
        }
        p
    }
}

/// What an automation's ticket must be, as far as an index can tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prefilter {
    pub statuses: Option<Vec<String>>,
    pub tags_all: Vec<String>,
    pub tags_none: Vec<String>,
    /// `created`, `updated`, `pending`, `solved`: at least this many hours ago.
    pub older_than_hours: BTreeMap<&'static str, f64>,
}

/// The checks that need no compiling: sizes, texts, triggers against actions.
fn check_shape(rule: &Rule) -> Result<(), Invalid> {
    match rule.kind {
        Kind::Trigger if rule.on.is_empty() => {
            return Err(Invalid::new(
                "on",
                format!(
                    "a trigger runs on at least one event: {}",
                    On::ALL.map(On::as_str).join(", ")
                ),
            ))
        }
        Kind::Automation if !rule.on.is_empty() => {
            return Err(Invalid::new(
                "on",
                "an automation runs on time, not on events",
            ))
        }
        _ => {}
    }
    let n = rule.conditions.all.len() + rule.conditions.any.len();
    if n > MAX_CONDITIONS {
        return Err(Invalid::new(
            "conditions",
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    if rule.actions.is_empty() || rule.actions.len() > MAX_ACTIONS {
        return Err(Invalid::new(
            "actions",
            format!("1 to {MAX_ACTIONS} actions"),
        ));
    }
    let shared: Vec<macros::Action> = rule.actions.iter().filter_map(Action::as_macro).collect();
    if !shared.is_empty() {
        // The macro checks name the shared actions by their place among them: map it back.
        let places: Vec<usize> = rule
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.as_macro().is_some())
            .map(|(i, _)| i)
            .collect();
        macros::check(&shared).map_err(|(field, why)| {
            let field = field
                .strip_prefix("actions[")
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(i, tail)| {
                    let i: usize = i.parse().ok()?;
                    Some(format!("actions[{}]{tail}", places.get(i)?))
                })
                .unwrap_or(field);
            Invalid::new(field, why)
        })?;
    }
    for (i, a) in rule.actions.iter().enumerate() {
        let at = |f: &str| format!("actions[{i}].{f}");
        match a {
            Action::Reply { .. } if rule.on.contains(&On::MessageSent) => {
                return Err(Invalid::new(
                    at("type"),
                    "a reply is not allowed on message_sent: it would answer the desk's own replies",
                ))
            }
            Action::Survey {}
                if rule.kind == Kind::Trigger && rule.on.iter().any(|o| *o != On::StatusChanged) =>
            {
                return Err(Invalid::new(
                    at("type"),
                    "the survey is sent by automations or status_changed triggers only",
                ))
            }
            Action::Order {
                action,
                amount_cents,
            } => {
                if !ORDER_ACTIONS.contains(&action.as_str()) {
                    return Err(Invalid::new(at("action"), "cancel, refund or resend"));
                }
                match (action.as_str(), amount_cents) {
                    ("refund", Some(c)) if !(1..=100_000_000_000).contains(c) => {
                        return Err(Invalid::new(at("amount_cents"), "1 to 100000000000"))
                    }
                    ("cancel" | "resend", Some(_)) => {
                        return Err(Invalid::new(
                            at("amount_cents"),
                            "only a refund takes an amount",
                        ))
                    }
                    _ => {}
                }
            }
            Action::Notify { to, text, via } => {
                for (j, v) in via.iter().enumerate() {
                    if !matches!(v.as_str(), "in_app" | "email" | "sms") || via[..j].contains(v) {
                        return Err(Invalid::new(
                            format!("actions[{i}].via[{j}]"),
                            "in_app, email or sms, each once",
                        ));
                    }
                }
                if to.is_empty() || to.len() > 20 {
                    return Err(Invalid::new(at("to"), "1 to 20 recipients"));
                }
                for (j, r) in to.iter().enumerate() {
                    let ok = matches!(r.as_str(), "assignee" | "team_supervisor")
                        || r.strip_prefix("agent:")
                            .is_some_and(|id| Uuid::parse_str(id).is_ok());
                    if !ok {
                        return Err(Invalid::new(
                            format!("actions[{i}].to[{j}]"),
                            "assignee, team_supervisor or agent:<id>",
                        ));
                    }
                }
                if text.trim().is_empty() || text.len() > 2000 {
                    return Err(Invalid::new(at("text"), "1 byte to 2000 bytes"));
                }
                if text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                {
                    return Err(Invalid::new(at("text"), "no control characters"));
                }
                if let Some(k) = macros::unknown_placeholder(text) {
                    return Err(Invalid::new(at("text"), format!("unknown placeholder {{{{{k}}}}}")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What an action leaves on the ticket, as far as a condition can see it.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Status(String),
    Priority(String),
    Team(Option<Uuid>),
    Assignee(Option<Uuid>),
    Tags {
        add: Vec<String>,
        remove: Vec<String>,
    },
    Fields(BTreeMap<String, Value>),
}

fn effect(a: &Action) -> Option<Effect> {
    Some(match a {
        Action::Status { status } => Effect::Status(status.clone()),
        Action::Priority { priority } => Effect::Priority(priority.clone()),
        Action::Team { team_id } => Effect::Team(Some(*team_id)),
        Action::Assignee { agent_id } => Effect::Assignee(*agent_id),
        Action::Tags { add, remove } => Effect::Tags {
            add: crate::tags::normalise_all(add).unwrap_or_default(),
            remove: crate::tags::normalise_all(remove).unwrap_or_default(),
        },
        Action::Fields { values } => Effect::Fields(values.clone()),
        _ => return None,
    })
}

impl Effect {
    /// Whether condition `c` can still hold after this effect (false: the effect ends it).
    fn consistent_with(&self, c: &Compiled1) -> bool {
        match (self, &c.field, &c.test) {
            (Effect::Status(s), Field::Status, Test::Words(w))
            | (Effect::Priority(s), Field::Priority, Test::Words(w)) => match c.op {
                Op::Is => w.contains(s),
                Op::IsNot => !w.contains(s),
                Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                    compare(rank(s) as f64, c.op, rank(&w[0]) as f64)
                }
                _ => true,
            },
            (Effect::Team(t), Field::Team, Test::Ids(ids))
            | (Effect::Assignee(t), Field::Assignee, Test::Ids(ids)) => match c.op {
                Op::Is => ids.contains(t),
                Op::IsNot => !ids.contains(t),
                _ => true,
            },
            (Effect::Team(t), Field::Team, Test::Exists)
            | (Effect::Assignee(t), Field::Assignee, Test::Exists) => {
                t.is_some() == (c.op == Op::Present)
            }
            (Effect::Tags { add, remove }, Field::Tags, Test::Tags(tags)) => match c.op {
                Op::Contains => !tags.iter().any(|t| remove.contains(t)),
                Op::NotContains => !tags.iter().any(|t| add.contains(t)),
                _ => true,
            },
            (Effect::Fields(values), Field::Custom(k), test) => match (values.get(k), test) {
                (Some(Value::Null), Test::Exists) => c.op == Op::Absent,
                (Some(_), Test::Exists) => c.op == Op::Present,
                (Some(v), Test::Json(expected)) => match c.op {
                    Op::Is => expected.contains(v),
                    Op::IsNot => !expected.contains(v),
                    _ => true,
                },
                _ => true,
            },
            _ => true,
        }
    }

    /// The events this effect causes when it changes something (a status that resolves or
    /// closes, and a team, free the agent too).
    fn causes(&self) -> &'static [On] {
        match self {
            Effect::Status(_) => &[On::StatusChanged, On::AssigneeChanged],
            Effect::Priority(_) => &[On::PriorityChanged],
            Effect::Team(_) => &[On::TeamChanged, On::AssigneeChanged],
            Effect::Assignee(_) => &[On::AssigneeChanged],
            Effect::Tags { .. } => &[On::TagsChanged],
            Effect::Fields(_) => &[On::FieldsChanged],
        }
    }

    /// Whether this effect can make condition `c` hold again (it sets what `c` tests, to a
    /// value `c` allows; tags: removes one `not_contains` names, adds one `contains` names).
    fn reopens(&self, c: &Compiled1) -> bool {
        if let (Effect::Tags { add, remove }, Test::Tags(tags)) = (self, &c.test) {
            return match c.op {
                Op::NotContains => tags.iter().any(|t| remove.contains(t)),
                Op::Contains => tags.iter().any(|t| add.contains(t)),
                _ => false,
            };
        }
        self.touches(c) && self.consistent_with(c)
    }

    /// Whether this effect sets the field condition `c` tests.
    fn touches(&self, c: &Compiled1) -> bool {
        matches!(
            (self, &c.field),
            (Effect::Status(_), Field::Status)
                | (Effect::Priority(_), Field::Priority)
                | (Effect::Team(_), Field::Team)
                | (Effect::Assignee(_), Field::Assignee)
                | (Effect::Tags { .. }, Field::Tags)
        ) || matches!((self, &c.field), (Effect::Fields(v), Field::Custom(k)) if v.contains_key(k))
    }

    /// Whether two effects undo each other (set one thing two ways): a loop of rules holding
    /// both never settles.
    fn conflicts(&self, other: &Effect) -> bool {
        match (self, other) {
            (Effect::Status(a), Effect::Status(b)) | (Effect::Priority(a), Effect::Priority(b)) => {
                a != b
            }
            (Effect::Team(a), Effect::Team(b)) | (Effect::Assignee(a), Effect::Assignee(b)) => {
                a != b
            }
            (
                Effect::Tags { add, remove },
                Effect::Tags {
                    add: add2,
                    remove: remove2,
                },
            ) => add.iter().any(|t| remove2.contains(t)) || remove.iter().any(|t| add2.contains(t)),
            (Effect::Fields(a), Effect::Fields(b)) => {
                a.iter().any(|(k, v)| b.get(k).is_some_and(|w| w != v))
            }
            _ => false,
        }
    }
}

/// Whether one rule's changes can set off another. A trigger: the first causes an event the
/// other runs on, in a state the other's `all` conditions still allow. An automation: the first
/// undoes what ends the automation (it changes a field of a condition the automation's own
/// actions make false, in a way that condition allows again), so the automation acts again on
/// its next pass. A rule never runs on its own changes.
fn sets_off(a: &Compiled, a_effects: &[Effect], b: &Compiled, b_effects: &[Effect]) -> bool {
    if a.id == b.id {
        return false;
    }
    let macro_any = a
        .rule
        .actions
        .iter()
        .any(|x| matches!(x, Action::Macro { .. }));
    if b.rule.kind == Kind::Automation {
        let ends = |c: &Compiled1| b_effects.iter().any(|e| !e.consistent_with(c));
        return macro_any
            || b.all
                .iter()
                .filter(|c| ends(c))
                .any(|c| a_effects.iter().any(|e| e.reopens(c)));
    }
    let replies = a
        .rule
        .actions
        .iter()
        .any(|x| matches!(x, Action::Reply { .. } | Action::Macro { .. }));
    let allowed = || {
        a_effects
            .iter()
            .all(|e2| b.all.iter().all(|c| e2.consistent_with(c)))
    };
    let by_effect = a_effects
        .iter()
        .any(|e| e.causes().iter().any(|on| b.rule.on.contains(on)))
        && allowed();
    // A rule's reply is no agent's: a trigger that needs an agent (or anyone but a rule) as the
    // actor is not set off by it.
    let by_reply = replies && b.rule.on.contains(&On::MessageSent) && !needs_person(b);
    by_effect || by_reply || macro_any
}

/// Whether a rule's `all` conditions exclude events caused by rules (`actor`).
fn needs_person(r: &Compiled) -> bool {
    r.all.iter().any(|c| match (&c.field, &c.test, c.op) {
        (Field::Actor, Test::Words(w), Op::Is) => !w.iter().any(|x| x == "rule"),
        (Field::Actor, Test::Words(w), Op::IsNot) => w.iter().any(|x| x == "rule"),
        _ => false,
    })
}

/// A loop among `rules` that would never settle, by the ids of the rules in it: a cycle of
/// rules setting each other off in which something always changes (a reply, a macro, or two
/// actions undoing each other). Loops that settle (every rule setting what is already set) are
/// left to run: the second round changes nothing and causes no event. With `through`, only a
/// loop that rule is part of (a new rule is not refused for a loop it is not in).
pub fn find_loop(rules: &[Compiled], through: Option<Uuid>) -> Option<Vec<Uuid>> {
    let n = rules.len();
    let effects: Vec<Vec<Effect>> = rules
        .iter()
        .map(|r| r.rule.actions.iter().filter_map(effect).collect())
        .collect();
    // Only the rules running on a kind can be set off by it: index triggers by kind.
    let mut by_on: std::collections::HashMap<On, Vec<usize>> = std::collections::HashMap::new();
    let mut automations = Vec::new();
    for (j, r) in rules.iter().enumerate() {
        if r.rule.kind == Kind::Automation {
            automations.push(j);
        }
        for on in &r.rule.on {
            by_on.entry(*on).or_default().push(j);
        }
    }
    let edges: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            let mut targets: BTreeSet<usize> = automations.iter().copied().collect();
            let produces_all = rules[i]
                .rule
                .actions
                .iter()
                .any(|x| matches!(x, Action::Macro { .. }));
            if produces_all {
                targets.extend(0..n);
            } else {
                for e in &effects[i] {
                    for on in e.causes() {
                        targets.extend(by_on.get(on).into_iter().flatten().copied());
                    }
                }
                if rules[i]
                    .rule
                    .actions
                    .iter()
                    .any(|x| matches!(x, Action::Reply { .. }))
                {
                    targets.extend(by_on.get(&On::MessageSent).into_iter().flatten().copied());
                }
            }
            targets
                .into_iter()
                .filter(|&j| sets_off(&rules[i], &effects[i], &rules[j], &effects[j]))
                .collect()
        })
        .collect();
    // Every elementary cycle is too many to list; a strongly connected component with an
    // always-changing part is enough to refuse (Kosaraju's algorithm, linear in the edges).
    for comp in strongly_connected(&edges) {
        if comp.len() < 2 {
            continue;
        }
        let members: Vec<&Compiled> = comp.iter().map(|&i| &rules[i]).collect();
        if through.is_some_and(|id| !members.iter().any(|r| r.id == id)) {
            continue;
        }
        let churns = members.iter().any(|r| {
            r.rule
                .actions
                .iter()
                .any(|a| matches!(a, Action::Reply { .. } | Action::Macro { .. }))
        });
        let all_effects: Vec<&Effect> = comp.iter().flat_map(|&i| effects[i].iter()).collect();
        let undo = all_effects
            .iter()
            .enumerate()
            .any(|(i, a)| all_effects[i + 1..].iter().any(|b| a.conflicts(b)));
        if churns || undo {
            let mut ids: Vec<Uuid> = members.iter().map(|r| r.id).collect();
            ids.sort();
            return Some(ids);
        }
    }
    None
}

/// The strongly connected components of the graph `edges` gives (node `i` points at
/// `edges[i]`): petgraph's Kosaraju, two iterative depth-first passes, so thousands of rules in one
/// chain need no deep recursion.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut g = petgraph::graph::DiGraph::<(), (), usize>::with_capacity(
        edges.len(),
        edges.iter().map(Vec::len).sum(),
    );
    let nodes: Vec<_> = (0..edges.len()).map(|_| g.add_node(())).collect();
    for (i, targets) in edges.iter().enumerate() {
        for &j in targets {
            g.add_edge(nodes[i], nodes[j], ());
        }
    }
    petgraph::algo::kosaraju_scc(&g)
        .into_iter()
        .map(|comp| comp.into_iter().map(|n| n.index()).collect())
        .collect()
}

/// Who caused an event, as the `actor` condition reads it: `agent:<id>` is `agent`,
/// `rule:<id>` is `rule`, an inbound message is `customer`.
pub fn actor_kind(actor: Option<&str>, change: &TicketChange) -> String {
    if let TicketChange::MessageAdded {
        direction: Direction::Inbound,
        ..
    } = change
    {
        return "customer".into();
    }
    if let TicketChange::Created { .. } = change {
        return "customer".into();
    }
    let a = actor.unwrap_or("system");
    a.split(':').next().unwrap_or("system").to_string()
}

/// The rule an actor names (`rule:<id>`).
pub fn actor_rule(actor: Option<&str>) -> Option<Uuid> {
    actor?
        .strip_prefix("rule:")
        .and_then(|id| Uuid::parse_str(id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        serde_json::from_value(v).unwrap()
    }

    fn compile(v: Value) -> Result<Compiled, Invalid> {
        Compiled::new(Uuid::now_v7(), "r", &rule(v))
    }

    fn facts() -> Facts {
        let now = Utc::now();
        Facts {
            status: "open".into(),
            priority: "medium".into(),
            channel: "email".into(),
            tags: vec!["vip".into()],
            now,
            created_at: now - chrono::Duration::hours(50),
            updated_at: now - chrono::Duration::hours(49),
            message: Some(MessageFacts {
                text: "I want a REFUND for order #1001".into(),
                to: Some("wholesale@shop.example".into()),
                automatic: false,
            }),
            ..Facts::default()
        }
    }

    #[test]
    fn conditions_read_the_ticket_and_its_message() {
        let r = compile(json!({"kind": "trigger", "on": ["message_received"],
            "conditions": {"all": [
                {"field": "channel", "op": "is", "value": "EMAIL"},
                {"field": "message.to", "op": "contains", "value": "wholesale@"},
                {"field": "message.text", "op": "matches", "value": "(?i)refund.*#\\d+"},
                {"field": "tags", "op": "contains", "value": "vip"},
                {"field": "priority", "op": "lt", "value": "high"}],
              "any": [{"field": "status", "op": "is", "value": ["pending", "open"]},
                      {"field": "assignee", "op": "present"}]},
            "actions": [{"type": "tags", "add": ["wholesale"]}]}))
        .unwrap();
        assert!(r.reads_message);
        let mut f = facts();
        assert!(r.matches(&f));
        f.tags.clear();
        assert!(!r.matches(&f));
        f.tags.push("vip".into());
        f.status = "resolved".into();
        assert!(!r.matches(&f), "no condition of any holds");
        f.assignee = Some(Uuid::now_v7());
        assert!(r.matches(&f));
        f.priority = "urgent".into();
        assert!(!r.matches(&f));
        f.priority = "low".into();
        f.message = None;
        assert!(!r.matches(&f), "no message: text conditions fail");
    }

    #[test]
    fn negations_hold_when_the_value_is_absent() {
        let r = compile(json!({"kind": "trigger", "on": ["created"],
            "conditions": {"all": [{"field": "category", "op": "is_not", "value": "billing"},
                                   {"field": "subject", "op": "not_contains", "value": "spam"},
                                   {"field": "tags", "op": "not_contains", "value": ["a", "b"]}]},
            "actions": [{"type": "priority", "priority": "high"}]}))
        .unwrap();
        let mut f = facts();
        assert!(r.matches(&f));
        f.category = Some("Billing".into());
        assert!(!r.matches(&f), "words compare ignoring case");
        f.category = None;
        f.subject = Some("SPAM offer".into());
        assert!(!r.matches(&f));
        f.subject = None;
        f.tags = vec!["b".into()];
        assert!(!r.matches(&f));
    }

    #[test]
    fn order_value_and_custom_fields_compare() {
        let r = compile(
            json!({"kind": "trigger", "on": ["created", "fields_changed"],
            "conditions": {"all": [{"field": "order_value", "op": "gt", "value": 500},
                                   {"field": "fields.reason", "op": "is", "value": "refund"},
                                   {"field": "fields.items", "op": "contains", "value": "shoes"}]},
            "actions": [{"type": "team", "team_id": Uuid::nil()}]}),
        )
        .unwrap();
        let mut f = facts();
        f.order_value = Some(750.0);
        f.fields.insert("reason".into(), json!("refund"));
        f.fields.insert("items".into(), json!(["hat", "shoes"]));
        assert!(r.matches(&f));
        f.order_value = Some(500.0);
        assert!(!r.matches(&f));
        f.order_value = None;
        assert!(!r.matches(&f));
    }

    #[test]
    fn automations_need_time_and_an_end() {
        let ok = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                   {"field": "hours_since_pending", "op": "gte", "value": 48},
                                   {"field": "tags", "op": "not_contains", "value": "reminded"}]},
            "actions": [{"type": "reply", "text": "Any news, {{customer.first_name}}?"},
                        {"type": "tags", "add": ["reminded"]}]}))
        .unwrap();
        let p = ok.prefilter();
        assert_eq!(p.statuses, Some(vec!["pending".to_string()]));
        assert_eq!(p.tags_none, vec!["reminded".to_string()]);
        assert_eq!(p.older_than_hours.get("pending"), Some(&48.0));
        let mut f = facts();
        f.status = "pending".into();
        f.status_since = Some(f.now - chrono::Duration::hours(47));
        assert!(!ok.matches(&f));
        f.status_since = Some(f.now - chrono::Duration::hours(48));
        assert!(ok.matches(&f));

        let no_time = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"}]},
            "actions": [{"type": "status", "status": "closed"}]}))
        .unwrap_err();
        assert_eq!(no_time.field, "conditions.all");
        let no_end = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "hours_since_created", "op": "gt", "value": 1}]},
            "actions": [{"type": "note", "text": "old"}]}))
        .unwrap_err();
        assert_eq!(no_end.field, "actions");
        let ends_by_status = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                   {"field": "hours_since_pending", "op": "gte", "value": 96}]},
            "actions": [{"type": "status", "status": "closed"}]}));
        assert!(ends_by_status.is_ok());
    }

    #[test]
    fn bad_rules_are_refused_naming_the_part() {
        let cases = [
            (
                json!({"kind": "trigger", "on": [], "actions": [{"type": "survey"}]}),
                "on",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "colour", "op": "is", "value": "x"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].field",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"any": [{"field": "status", "op": "is", "value": "x"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.any[0].value",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "subject", "op": "matches", "value": "(unclosed"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].value",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "subject", "op": "matches", "value": "a{1000}{1000}"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].value",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "tags", "op": "gt", "value": 1}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].op",
            ),
            (
                json!({"kind": "trigger", "on": ["status_changed"], "conditions": {"all": [{"field": "message.text", "op": "contains", "value": "x"}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].field",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "conditions": {"all": [{"field": "hours_since_created", "op": "gt", "value": 1}]}, "actions": [{"type": "priority", "priority": "high"}]}),
                "conditions.all[0].field",
            ),
            (
                json!({"kind": "trigger", "on": ["message_sent"], "actions": [{"type": "reply", "text": "hi"}]}),
                "actions[0].type",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "notify", "to": ["boss"], "text": "x"}]}),
                "actions[0].to[0]",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "notify", "to": ["assignee"], "text": "x"}, {"type": "status", "status": "gone"}]}),
                "actions[1].status",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "reply", "text": "{{secret}}"}]}),
                "actions[0].text",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "order", "action": "delete"}]}),
                "actions[0].action",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "order", "action": "refund", "amount_cents": 0}]}),
                "actions[0].amount_cents",
            ),
            (
                json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "order", "action": "cancel", "amount_cents": 500}]}),
                "actions[0].amount_cents",
            ),
        ];
        // A refund of a part and a cancel are rules like any other.
        for ok in [
            json!({"kind": "trigger", "on": ["created"], "actions": [{"type": "order", "action": "refund", "amount_cents": 500}]}),
            json!({"kind": "trigger", "on": ["message_received"], "actions": [{"type": "order", "action": "cancel"}, {"type": "order", "action": "resend"}]}),
        ] {
            assert!(compile(ok.clone()).is_ok(), "{ok}");
        }
        for (v, field) in cases {
            let e = compile(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {}", e.why);
        }
        // Unknown keys are refused by the parser itself.
        assert!(serde_json::from_value::<Rule>(
            json!({"kind": "trigger", "on": ["created"], "actions": [], "extra": 1})
        )
        .is_err());
    }

    #[test]
    fn patterns_are_weighed_and_a_huge_one_is_refused() {
        let r = |cond: Value| -> Result<Compiled, Invalid> {
            let rule: Rule = serde_json::from_value(json!({"kind": "trigger", "on": ["created"],
                "conditions": {"all": [cond]}, "actions": [{"type": "priority", "priority": "high"}]}))
            .unwrap();
            Compiled::new(Uuid::nil(), "x", &rule)
        };
        let plain = r(json!({"field": "priority", "op": "is", "value": "low"})).unwrap();
        assert_eq!(plain.pattern_bytes, 0);
        let small = r(json!({"field": "subject", "op": "contains", "value": "refund"})).unwrap();
        let heavy = r(json!({"field": "subject", "op": "matches", "value": "\\w+@\\w+"})).unwrap();
        assert!(small.pattern_bytes > 0);
        assert!(
            heavy.pattern_bytes > 10 * small.pattern_bytes,
            "{} vs {}",
            heavy.pattern_bytes,
            small.pattern_bytes
        );
        assert!(heavy.pattern_bytes <= REGEX_SIZE * 4);
        // Past the size limit: refused on save, naming the value and why.
        let e = r(json!({"field": "subject", "op": "matches", "value": "\\w{1000}"})).unwrap_err();
        assert_eq!(e.field, "conditions.all[0].value", "{e:?}");
        assert!(e.why.starts_with("too large a pattern"), "{e:?}");
        let e = r(json!({"field": "subject", "op": "matches", "value": "(refund"})).unwrap_err();
        assert!(e.why.starts_with("not a regular expression"), "{e:?}");
        // Unicode classes, and hostile text around them.
        let mut f = Facts {
            subject: Some(format!("{}\u{0}", "é".repeat(10_000))),
            ..Facts::default()
        };
        assert!(!heavy.matches(&f));
        f.subject = Some("\u{7}Zoë@ßhop\u{0}".into());
        assert!(heavy.matches(&f));
        f.subject = Some("ana@example".into());
        assert!(heavy.matches(&f));
    }

    #[test]
    fn a_long_chain_of_rules_needs_no_deep_stack() {
        // A ring of 100,000 (far past MAX_RULES), searched on a thread with a 256 KiB stack:
        // a recursive search would overflow it.
        let n = 100_000;
        let ring: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        let comps = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || strongly_connected(&ring))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0].len(), n);
        // Two rings joined one way: two components.
        let mut two: Vec<Vec<usize>> = (0..6).map(|i| vec![(i + 1) % 3 + 3 * (i / 3)]).collect();
        two[0].push(3);
        let mut sizes: Vec<usize> = strongly_connected(&two).iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![3, 3]);
    }

    #[test]
    fn toggling_rules_are_a_loop_and_settling_ones_are_not() {
        let a = compile(json!({"kind": "trigger", "on": ["status_changed"],
            "conditions": {"all": [{"field": "status", "op": "is", "value": "open"}]},
            "actions": [{"type": "status", "status": "pending"}]}))
        .unwrap();
        let b = compile(json!({"kind": "trigger", "on": ["status_changed"],
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"}]},
            "actions": [{"type": "status", "status": "open"}]}))
        .unwrap();
        let found = find_loop(&[a.clone(), b.clone()], None).unwrap();
        assert_eq!(found.len(), 2);
        assert!(
            find_loop(std::slice::from_ref(&a), None).is_none(),
            "a rule never sets itself off"
        );
        // Tag then priority then tag: the second round sets what is set, no event, it settles.
        let c = compile(json!({"kind": "trigger", "on": ["tags_changed"],
            "conditions": {"all": [{"field": "tags", "op": "contains", "value": "vip"}]},
            "actions": [{"type": "priority", "priority": "urgent"}]}))
        .unwrap();
        let d = compile(json!({"kind": "trigger", "on": ["priority_changed"],
            "actions": [{"type": "tags", "add": ["escalated"]}]}))
        .unwrap();
        assert!(find_loop(&[c.clone(), d.clone()], None).is_none());
        // One removes what the other added, but nothing sets the adder off again: no loop.
        let e = compile(json!({"kind": "trigger", "on": ["tags_changed"],
            "actions": [{"type": "tags", "remove": ["escalated"]}]}))
        .unwrap();
        assert!(find_loop(&[d, e.clone()], None).is_none());
        // Tags one way and the other, each on the other's change: never settles.
        let d2 = compile(json!({"kind": "trigger", "on": ["tags_changed"],
            "actions": [{"type": "tags", "add": ["escalated"]}]}))
        .unwrap();
        assert!(find_loop(&[d2, e], None).is_some());
        // A reply feeding a message_sent trigger that sets something off the other way.
        let f = compile(json!({"kind": "trigger", "on": ["priority_changed"],
            "actions": [{"type": "reply", "text": "We are on it."}]}))
        .unwrap();
        let g = compile(json!({"kind": "trigger", "on": ["message_sent"],
            "actions": [{"type": "priority", "priority": "low"}]}))
        .unwrap();
        assert!(find_loop(&[f, g], None).is_some());
    }

    #[test]
    fn a_trigger_undoing_an_automations_end_is_a_loop() {
        let nudge = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"},
                                   {"field": "hours_since_pending", "op": "gte", "value": 48},
                                   {"field": "tags", "op": "not_contains", "value": "nudged"}]},
            "actions": [{"type": "reply", "text": "Still there?"}, {"type": "tags", "add": ["nudged"]}]}))
        .unwrap();
        let untag = compile(json!({"kind": "trigger", "on": ["message_sent"],
            "actions": [{"type": "tags", "remove": ["nudged"]}]}))
        .unwrap();
        assert!(find_loop(&[nudge.clone(), untag], None).is_some());
        // A trigger touching something else leaves the automation ended.
        let other = compile(json!({"kind": "trigger", "on": ["message_sent"],
            "actions": [{"type": "tags", "add": ["answered"]}]}))
        .unwrap();
        assert!(find_loop(&[nudge.clone(), other], None).is_none());
        // A trigger that needs a person as the actor is never set off by a rule's reply.
        let by_agent = compile(json!({"kind": "trigger", "on": ["message_sent"],
            "conditions": {"all": [{"field": "actor", "op": "is", "value": "agent"}]},
            "actions": [{"type": "status", "status": "pending"}]}))
        .unwrap();
        let pending_reply = compile(json!({"kind": "trigger", "on": ["status_changed"],
            "conditions": {"all": [{"field": "status", "op": "is", "value": "pending"}]},
            "actions": [{"type": "reply", "text": "We wait for you."}]}))
        .unwrap();
        assert!(find_loop(&[by_agent, pending_reply], None).is_none());
        // Time conditions compare with gt or gte only: fractional hours are never equal.
        let exact = compile(json!({"kind": "automation",
            "conditions": {"all": [{"field": "hours_since_created", "op": "is", "value": 2},
                                   {"field": "tags", "op": "not_contains", "value": "x"}]},
            "actions": [{"type": "tags", "add": ["x"]}]}))
        .unwrap_err();
        assert_eq!(exact.field, "conditions.all[0].op");
    }

    #[test]
    fn events_map_to_triggers() {
        let msg = |direction| TicketChange::MessageAdded {
            message_id: Uuid::nil(),
            direction,
            channel: switchboard_contracts::Channel::Email,
            automatic: false,
        };
        assert_eq!(On::of(&msg(Direction::Inbound)), Some(On::MessageReceived));
        assert_eq!(On::of(&msg(Direction::Outbound)), Some(On::MessageSent));
        assert_eq!(On::of(&msg(Direction::Note)), None);
        assert_eq!(On::of(&TicketChange::Resolved), None);
        let csat = TicketChange::CsatReceived {
            rating: 2,
            previous: Some(5),
            commented: true,
        };
        assert_eq!(On::of(&csat), Some(On::CsatReceived));
        let order = TicketChange::OrderUpdated {
            order_number: "#1".into(),
            status: Some("fulfilled".into()),
            financial_status: Some("paid".into()),
            fulfillment_status: Some("fulfilled".into()),
        };
        assert_eq!(On::of(&order), Some(On::OrderUpdated));
        // What the event says, the facts read; the next event clears it.
        let mut f = Facts::default();
        f.event(&csat);
        assert_eq!(
            (f.csat_rating, f.order_status.as_deref()),
            (Some(2.0), None)
        );
        f.event(&order);
        assert_eq!(
            (f.csat_rating, f.order_status.as_deref()),
            (None, Some("fulfilled"))
        );
        f.event(&TicketChange::Resolved);
        assert_eq!(
            (f.csat_rating, f.order_status.as_deref()),
            (None, Some("fulfilled")),
            "the order's status stays what the shop last said"
        );
        // The rating is read on csat_received triggers only; the order's status anywhere.
        for (on, field, value, ok) in [
            ("csat_received", "csat.rating", serde_json::json!(1), true),
            ("order_updated", "csat.rating", serde_json::json!(1), false),
            (
                "order_updated",
                "order.status",
                serde_json::json!("fulfilled"),
                true,
            ),
            (
                "created",
                "order.status",
                serde_json::json!("fulfilled"),
                true,
            ),
            ("created", "csat.rating", serde_json::json!(1), false),
        ] {
            let r: Rule = serde_json::from_value(serde_json::json!({"kind": "trigger", "on": [on],
                "conditions": {"all": [{"field": field, "op": "is", "value": value}]},
                "actions": [{"type": "priority", "priority": "high"}]}))
            .unwrap();
            let r = Compiled::new(Uuid::nil(), "x", &r);
            assert_eq!(r.is_ok(), ok, "{on} {field}: {:?}", r.err());
        }
        assert_eq!(
            actor_kind(Some("agent:123"), &TicketChange::Resolved),
            "agent"
        );
        assert_eq!(actor_kind(None, &msg(Direction::Inbound)), "customer");
        let id = Uuid::now_v7();
        assert_eq!(actor_rule(Some(&format!("rule:{id}"))), Some(id));
        assert_eq!(actor_rule(Some("agent:x")), None);
    }

    proptest! {
        /// Hostile texts (control characters, non-ASCII, huge) are matched without a panic,
        /// and `contains`/`not_contains` always disagree.
        #[test]
        fn contains_and_its_negation_disagree(text in "\\PC{0,200}", needle in "\\PC{1,20}") {
            let mk = |op: &str| compile(json!({"kind": "trigger", "on": ["message_received"],
                "conditions": {"all": [{"field": "message.text", "op": op, "value": needle}]},
                "actions": [{"type": "priority", "priority": "high"}]})).unwrap();
            let mut f = facts();
            f.message = Some(MessageFacts { text: text.clone(), to: None, automatic: false });
            prop_assert_ne!(mk("contains").matches(&f), mk("not_contains").matches(&f));
            let lower_hit = text.to_lowercase().contains(&needle.to_lowercase());
            if lower_hit {
                prop_assert!(mk("contains").matches(&f));
            }
        }

        /// Any rule JSON either compiles or is refused naming a part; never a panic.
        #[test]
        fn any_condition_compiles_or_is_named(field in "[a-z._]{1,20}", op in 0usize..11, value in prop_oneof![
            Just(json!(null)), Just(json!(1.5)), Just(json!("x")), Just(json!(["a", "b"])), Just(json!(true)), Just(json!({"a": 1}))
        ]) {
            let ops = ["is", "is_not", "contains", "not_contains", "matches", "gt", "gte", "lt", "lte", "present", "absent"];
            let r = compile(json!({"kind": "trigger", "on": ["created"],
                "conditions": {"all": [{"field": field, "op": ops[op], "value": value}]},
                "actions": [{"type": "priority", "priority": "high"}]}));
            match r {
                Ok(c) => { let _ = c.matches(&facts()); }
                Err(e) => prop_assert!(e.field.starts_with("conditions.all[0]"), "{}", e.field),
            }
        }
    }

    #[test]
    fn a_huge_text_is_matched_in_linear_time() {
        let r = compile(json!({"kind": "trigger", "on": ["message_received"],
            "conditions": {"all": [{"field": "message.text", "op": "matches", "value": "(a|a)*b"}]},
            "actions": [{"type": "priority", "priority": "high"}]}))
        .unwrap();
        let mut f = facts();
        f.message = Some(MessageFacts {
            text: "a".repeat(1 << 20),
            to: None,
            automatic: false,
        });
        // A backtracking engine takes exponential time here; this one answers at once.
        assert!(!r.matches(&f));
    }
}
