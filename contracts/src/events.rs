//! The event types. Field docs are the schema; `ARCHITECTURE.md` mirrors them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Event, Topic};

/// The channel a message arrived on or a reply leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Api,
    Email,
    Chat,
    Sms,
    Social,
    Voice,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Api => "api",
            Channel::Email => "email",
            Channel::Chat => "chat",
            Channel::Sms => "sms",
            Channel::Social => "social",
            Channel::Voice => "voice",
        }
    }

    /// Whether Switchboard can write back to the customer on this channel (the API and voice
    /// transcripts have no way back).
    pub fn answerable(self) -> bool {
        matches!(
            self,
            Channel::Email | Channel::Chat | Channel::Sms | Channel::Social
        )
    }

    /// The channel named `s` (as [`Channel::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Channel> {
        [
            Channel::Api,
            Channel::Email,
            Channel::Chat,
            Channel::Sms,
            Channel::Social,
            Channel::Voice,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Who a message is from (or a reply is to). At least one of email, phone or handle identifies
/// them; a message carrying several (from an authenticated source) tells that they are one
/// person, and the customers they named are merged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A network-scoped id where the network gives no email or phone:
    /// `messenger:<page-scoped id>`, `instagram:<instagram-scoped id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

/// Metadata of an attachment; the content is stored by the connector, not carried on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub filename: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
}

/// A customer message, normalised by its channel connector. Topic `inbound.messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Derived from `(channel, external_id)` when the provider gave an id, so retries collapse.
    pub message_id: Uuid,
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Partition key: the ticket the message refers to, else the channel's conversation, else the
    /// customer. All messages of one conversation are therefore processed in order.
    pub conversation_key: String,
    /// A ticket the sender explicitly replies to (API callers, or a number found by a connector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<Uuid>,
    pub customer: CustomerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    /// True when the connector cut the text to the configured maximum.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentMeta>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub received_at: DateTime<Utc>,
    /// Whether the front door verified that the sender is who `customer` says: an authenticated
    /// API caller, a provider's signed webhook, a chat identity the shop signed. False for what
    /// the sender merely asserted: an unsigned chat (its `customer` is then only the
    /// conversation, `chat:<id>`, and the typed email travels as `metadata.claimed_email`), and
    /// an email's `From` until SPF/DKIM/DMARC are checked. An unverified message never merges
    /// customers and never joins a ticket of another customer. Absent in records written before
    /// the field existed: true (they were treated as verified).
    #[serde(default = "verified_by_default")]
    pub verified: bool,
}

fn verified_by_default() -> bool {
    true
}

/// The `metadata` key a front door sets when a machine sent the message (an auto-reply, list
/// or bulk mail, a bounce), its value the reason: the message is kept, but it is never answered
/// automatically, never reopens a ticket or counts as the customer's answer, and never brings a
/// survey.
pub const AUTOMATIC: &str = "automatic";

/// The `metadata` key of a message the help centre wrote for a return that waits for a person:
/// the return's id. The ticketing stage links the ticket it lands on to that return (the
/// customer's own only), and the bot does not answer it.
pub const RETURN_ID: &str = "return_id";

impl InboundMessage {
    /// Why a machine sent this message, when one did ([`AUTOMATIC`]).
    pub fn automatic(&self) -> Option<&str> {
        self.metadata.get(AUTOMATIC).map(String::as_str)
    }
}

impl Event for InboundMessage {
    const SCHEMA: &'static str = "inbound_message";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::InboundMessages;
    fn key(&self) -> String {
        self.conversation_key.clone()
    }
}

/// A shop's order as its webhook posted it, checked and made storable by the orders door
/// (signature verified, control characters removed, times bounded). Topic `inbound.orders`, key
/// `external_id`: every update of one order is applied in order, and the store keeps the newest
/// (`updated_at`), so a redelivered or late update changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderUpdate {
    /// The shop's order id.
    pub external_id: String,
    /// The customer-facing name, e.g. `#1001`.
    pub number: String,
    /// The buyer: a normalised email, and the name when the shop gave one.
    pub customer: CustomerRef,
    /// The shop tags the buyer `VIP`: the customer's tier becomes `vip`.
    #[serde(default)]
    pub vip: bool,
    pub total_cents: i64,
    pub currency: String,
    #[serde(default)]
    pub financial_status: Option<String>,
    #[serde(default)]
    pub fulfillment_status: Option<String>,
    #[serde(default)]
    pub fulfillments: Vec<Fulfillment>,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
    /// Where the order ships (the shop's `shipping_address`, as it sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<serde_json::Value>,
    /// The shop's order tags (comma-separated there), e.g. `final-sale`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When the shop cancelled the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The shop's time of this version of the order: a newer one replaces it, an older one
    /// changes nothing.
    pub updated_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl Event for OrderUpdate {
    const SCHEMA: &'static str = "order_update";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::InboundOrders;
    fn key(&self) -> String {
        self.external_id.clone()
    }
}

/// A shipment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fulfillment {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub shipment_status: Option<String>,
    #[serde(default)]
    pub tracking_company: Option<String>,
    #[serde(default)]
    pub tracking_number: Option<String>,
    #[serde(default)]
    pub tracking_url: Option<String>,
    /// When the carrier expects to deliver (the shop's fulfillment events or its tracking
    /// provider), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_delivery_at: Option<DateTime<Utc>>,
    /// The carrier's latest scan, when the shop passes it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<ShipmentEvent>,
    /// When the shipment was created (label bought).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the shipment reached `delivered` (the start of the return window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An id a shop may send as a number or a string (Shopify sends numbers), kept as text; `null`
/// or anything else is none.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s),
        _ => None,
    })
}

/// A carrier scan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShipmentEvent {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    pub at: DateTime<Utc>,
}

/// A line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    /// The shop's line item id (returns and refunds name lines by it): a number or a string.
    #[serde(
        default,
        deserialize_with = "id_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(
        default,
        deserialize_with = "id_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub product_id: Option<String>,
    #[serde(default)]
    pub quantity: Option<i64>,
    #[serde(default)]
    pub price: Option<String>,
}

/// What a commerce event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommerceKind {
    /// A return (RMA) was created or moved on: `status` says where it is now.
    Return,
    /// An order action (cancel, refund, address change) was asked for or moved on.
    OrderAction,
}

/// One step of a return's or an order action's lifecycle. Topic `commerce.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommerceEvent {
    pub kind: CommerceKind,
    /// The return's or the action's id.
    pub id: Uuid,
    /// The Switchboard order id, the shop's id and the order's name (`#1001`).
    pub order_id: Uuid,
    pub order_external_id: String,
    pub order_number: String,
    pub customer_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<Uuid>,
    /// Return: requested, approved, label_sent, in_transit, received, refunded, exchanged,
    /// rejected, cancelled. Action: awaiting_approval, done, failed, rejected.
    pub status: String,
    /// The previous status (absent on the first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Return: the reason (damaged, wrong_item, missing_item, did_not_fit, changed_mind,
    /// other). Action: cancel, refund, address.
    pub detail: String,
    /// The money involved, in the order's currency's cents (a return's value, a refund).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    /// Return: approved by the policy's auto-approval rule.
    #[serde(default)]
    pub automatic: bool,
    /// Who: `agent:<id>`, `admin`, `customer`, `bot`, `policy`.
    pub actor: String,
    /// A rejection's or failure's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event for CommerceEvent {
    const SCHEMA: &'static str = "commerce_event";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::CommerceEvents;
    fn key(&self) -> String {
        self.order_external_id.clone()
    }
}

/// Ticket status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Waiting for an agent.
    Open,
    /// Waiting on the customer (SLA clocks pause).
    Pending,
    Resolved,
    Closed,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Open => "open",
            TicketStatus::Pending => "pending",
            TicketStatus::Resolved => "resolved",
            TicketStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<TicketStatus> {
        [
            TicketStatus::Open,
            TicketStatus::Pending,
            TicketStatus::Resolved,
            TicketStatus::Closed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// An agent's seniority (and the level a ticket's queue needs: [`Level::for_queue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Agent,
    Senior,
    Supervisor,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "agent" => Some(Level::Agent),
            "senior" => Some(Level::Senior),
            "supervisor" => Some(Level::Supervisor),
            _ => None,
        }
    }

    /// The level an agent needs for a ticket queue (`senior`, `supervisor`; any other queue
    /// takes every level).
    pub fn for_queue(queue: &str) -> Option<Level> {
        match queue {
            "supervisor" => Some(Level::Supervisor),
            "senior" => Some(Level::Senior),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Agent => "agent",
            Level::Senior => "senior",
            Level::Supervisor => "supervisor",
        }
    }
}

/// Ticket priority, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
    Urgent,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
            Priority::Critical => "critical",
        }
    }

    /// One step up (critical stays critical).
    pub fn raised(self) -> Priority {
        match self {
            Priority::Low => Priority::Medium,
            Priority::Medium => Priority::High,
            Priority::High => Priority::Urgent,
            Priority::Urgent | Priority::Critical => Priority::Critical,
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Urgent,
            Priority::Critical,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Message direction on a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    Note,
}

/// What happened to a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TicketChange {
    Created {
        channel: Channel,
        subject: Option<String>,
        priority: Priority,
        category: Option<String>,
        required_skill: Option<String>,
        language: Option<String>,
    },
    MessageAdded {
        message_id: Uuid,
        direction: Direction,
        channel: Channel,
        /// A machine sent it (an inbound auto-reply, list mail or bounce: [`AUTOMATIC`]): no
        /// clock waits for an answer to it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        automatic: bool,
    },
    Assigned {
        agent_id: Uuid,
    },
    Unassigned {
        agent_id: Uuid,
        reason: String,
    },
    StatusChanged {
        from: TicketStatus,
        to: TicketStatus,
    },
    Resolved,
    Reopened,
    Merged {
        into_ticket_id: Uuid,
    },
    /// Messages of this ticket were split off into a new ticket (which starts with `created`
    /// and carries `split_from`).
    SplitOff {
        into_ticket_id: Uuid,
        message_ids: Vec<Uuid>,
    },
    /// The priority changed as the conversation did (sentiment, repeat contact, escalation).
    PriorityChanged {
        from: Priority,
        to: Priority,
        reason: String,
    },
    /// Escalated: moved to `queue`, and `notified` told (the ticket's team's supervisor, else
    /// the desk's supervisors) on their streams and by email and SMS as their preferences say.
    Escalated {
        reason: String,
        queue: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notified: Vec<Uuid>,
    },
    /// The knowledge-base bot answered with an article; the customer can ask for a person.
    BotAnswered {
        /// The article it sent (nil when it answered from the order's data).
        article_id: Uuid,
        confidence: f32,
        /// The order it answered about from the shop's data (where is my order).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_number: Option<String>,
    },
    /// The bot handed the conversation to a person.
    HandedOver {
        reason: String,
    },
    /// An agent, a supervisor or the API changed the ticket's tags.
    TagsChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// An internal note named these agents (`@`): each is told on its live stream.
    Mentioned {
        message_id: Uuid,
        agent_ids: Vec<Uuid>,
        /// The note's author, when an agent wrote it.
        by: Option<Uuid>,
    },
    /// Custom fields were set or cleared (their keys).
    FieldsChanged {
        changed: Vec<String>,
    },
    /// The ticket was handed to a team's queue (or taken out of one).
    TeamChanged {
        from: Option<Uuid>,
        to: Option<Uuid>,
        reason: String,
    },
    /// A rule told these agents something: on their live stream, and by email or SMS where
    /// `via` asks and each one's preferences accept (the ingest role's notifier).
    Notified {
        agent_ids: Vec<Uuid>,
        text: String,
        rule_id: Uuid,
        /// Channels beside the stream: `email`, `sms`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        via: Vec<String>,
    },
    /// The ticket's rules fired `fires` times within `window_secs` (a loop the save-time check
    /// could not see): rules set off by rules or by time stop acting on it until a person or
    /// the customer acts on the ticket.
    RulesHalted {
        fires: u32,
        window_secs: u64,
    },
    /// The customer answered the satisfaction survey (1 to 5), or changed the answer
    /// (`previous`). The comment stays in the `csat` table.
    CsatReceived {
        rating: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<u8>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        commented: bool,
    },
    /// The shop changed an order this open ticket names (its `order_number` field): its
    /// status as the shop now says (fulfilment first, else payment).
    OrderUpdated {
        order_number: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        financial_status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fulfillment_status: Option<String>,
    },
    /// A person corrected the models' triage (`PUT /v1/tickets/{id}/triage`): the fields
    /// corrected and their new values; the category and intent the ticket had before.
    TriageCorrected {
        corrected: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        category: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sentiment: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_category: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_intent: Option<String>,
    },
}

impl TicketChange {
    /// Short name used in analytics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TicketChange::Created { .. } => "created",
            TicketChange::MessageAdded { .. } => "message_added",
            TicketChange::Assigned { .. } => "assigned",
            TicketChange::Unassigned { .. } => "unassigned",
            TicketChange::StatusChanged { .. } => "status_changed",
            TicketChange::Resolved => "resolved",
            TicketChange::Reopened => "reopened",
            TicketChange::Merged { .. } => "merged",
            TicketChange::SplitOff { .. } => "split_off",
            TicketChange::PriorityChanged { .. } => "priority_changed",
            TicketChange::Escalated { .. } => "escalated",
            TicketChange::BotAnswered { .. } => "bot_answered",
            TicketChange::HandedOver { .. } => "handed_over",
            TicketChange::TagsChanged { .. } => "tags_changed",
            TicketChange::TeamChanged { .. } => "team_changed",
            TicketChange::Mentioned { .. } => "mentioned",
            TicketChange::FieldsChanged { .. } => "fields_changed",
            TicketChange::Notified { .. } => "notified",
            TicketChange::RulesHalted { .. } => "rules_halted",
            TicketChange::CsatReceived { .. } => "csat_received",
            TicketChange::OrderUpdated { .. } => "order_updated",
            TicketChange::TriageCorrected { .. } => "triage_corrected",
        }
    }
}

/// A ticket lifecycle event. Topic `ticket.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    pub ticket_id: Uuid,
    /// Human-facing number, `T-YYYY-NNNNNN`.
    pub ticket_number: String,
    pub customer_id: Uuid,
    #[serde(flatten)]
    pub change: TicketChange,
    /// Who made the change: `agent:<id>`, `token:<id>`, `admin`, or a rule (`router`, `sla`,
    /// `bot`, `system`). Absent on events written before it was carried (read as `system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl Event for TicketEvent {
    const SCHEMA: &'static str = "ticket_event";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::TicketEvents;
    fn key(&self) -> String {
        self.ticket_id.to_string()
    }
}

/// Sentiment of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// `negative`, `neutral` or `positive`.
    pub label: String,
    /// In `[-1, 1]`.
    pub score: f32,
}

/// Model outputs for one message. Topic `enrichments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichmentResult {
    pub message_id: Uuid,
    pub ticket_id: Uuid,
    pub category: Option<String>,
    pub category_confidence: Option<f32>,
    pub intent: Option<String>,
    pub intent_confidence: Option<f32>,
    pub sentiment: Option<Sentiment>,
    pub language: Option<String>,
    /// Model name to version, for every model that contributed.
    pub model_versions: BTreeMap<String, String>,
}

impl Event for EnrichmentResult {
    const SCHEMA: &'static str = "enrichment_result";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::Enrichments;
    fn key(&self) -> String {
        self.ticket_id.to_string()
    }
}

/// One agent considered for a ticket, with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub agent_id: Uuid,
    pub score: f64,
    /// Why the agent was excluded, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
}

/// Assign or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentAction {
    Assigned,
    Released,
}

/// A routing decision. Topic `assignments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub assignment_id: Uuid,
    pub ticket_id: Uuid,
    pub ticket_number: String,
    pub agent_id: Uuid,
    pub action: AssignmentAction,
    pub reason: String,
    /// Every agent considered, so a supervisor can see why this one won.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
}

impl Event for Assignment {
    const SCHEMA: &'static str = "assignment";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::Assignments;
    fn key(&self) -> String {
        self.ticket_id.to_string()
    }
}

/// Which SLA target an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaMetric {
    FirstResponse,
    NextResponse,
    Resolution,
}

/// Warning, breach, or met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaEventKind {
    Warning,
    Breached,
    Met,
}

/// An SLA clock event. Topic `sla.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaEvent {
    pub ticket_id: Uuid,
    pub policy: String,
    pub metric: SlaMetric,
    pub kind: SlaEventKind,
    pub target_at: DateTime<Utc>,
    /// Which clock of this metric (next_response starts a new one per customer message).
    #[serde(default)]
    pub cycle: u32,
    /// Escalation actions taken with this event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
}

impl Event for SlaEvent {
    const SCHEMA: &'static str = "sla_event";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::SlaEvents;
    fn key(&self) -> String {
        self.ticket_id.to_string()
    }
}

/// Agent availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Away,
    Offline,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Away => "away",
            AgentStatus::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<AgentStatus> {
        [AgentStatus::Online, AgentStatus::Away, AgentStatus::Offline]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// An agent's status change. Topic `agent.presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPresence {
    pub agent_id: Uuid,
    pub status: AgentStatus,
    #[serde(default)]
    pub previous: Option<AgentStatus>,
}

impl Event for AgentPresence {
    const SCHEMA: &'static str = "agent_presence";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::AgentPresence;
    fn key(&self) -> String {
        self.agent_id.to_string()
    }
}

/// A reply to send on the ticket's channel. Topic `outbound.replies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundReply {
    pub reply_id: Uuid,
    pub ticket_id: Uuid,
    pub channel: Channel,
    pub to: CustomerRef,
    pub text: String,
    /// None when the bot answered.
    pub author_agent_id: Option<Uuid>,
    /// Provider id of the message answered, for threading (e.g. an email Message-ID).
    #[serde(default)]
    pub in_reply_to: Option<String>,
}

impl Event for OutboundReply {
    const SCHEMA: &'static str = "outbound_reply";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::OutboundReplies;
    fn key(&self) -> String {
        self.ticket_id.to_string()
    }
}

/// A record some consumer could not process. Topic `deadletter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub consumer_group: String,
    pub reason: String,
    /// The original value, as UTF-8 when it was valid UTF-8.
    pub payload_text: Option<String>,
    /// The original value in base64 when it was not valid UTF-8.
    pub payload_base64: Option<String>,
}

impl Event for DeadLetter {
    const SCHEMA: &'static str = "dead_letter";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::DeadLetter;
    fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{}/{}/{}", self.source_topic, self.partition, self.offset))
    }
}

/// A record parked after `attempts` transient failures in `consumer_group`, to be handed back to
/// that group (and only that group) at `not_before`. Topic `retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub consumer_group: String,
    /// The last failure.
    pub reason: String,
    /// Attempts in the last round before it was parked.
    pub attempts: u32,
    /// How many times this record has been parked, this time included.
    pub parks: u32,
    pub not_before: DateTime<Utc>,
    /// The original value, exactly (base64).
    pub payload_base64: Option<String>,
}

impl Event for Parked {
    const SCHEMA: &'static str = "parked";
    const VERSION: u16 = 1;
    const TOPIC: Topic = Topic::Retry;
    fn key(&self) -> String {
        self.key
            .clone()
            .unwrap_or_else(|| format!("{}/{}/{}", self.source_topic, self.partition, self.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, Envelope};

    #[test]
    fn only_channels_with_a_way_back_are_answerable() {
        let answerable: Vec<&str> = ["api", "email", "chat", "sms", "social", "voice"]
            .into_iter()
            .filter(|c| Channel::parse(c).is_some_and(Channel::answerable))
            .collect();
        assert_eq!(answerable, ["email", "chat", "sms", "social"]);
    }

    #[test]
    fn ticket_event_wire_shape_is_flat_and_tagged() {
        let ev = TicketEvent {
            ticket_id: Uuid::nil(),
            ticket_number: "T-2026-000001".into(),
            customer_id: Uuid::nil(),
            change: TicketChange::Assigned {
                agent_id: Uuid::nil(),
            },
            actor: Some("agent:00000000-0000-0000-0000-000000000000".into()),
        };
        let env = Envelope::new(Uuid::nil(), Utc::now(), ev.clone());
        let v: serde_json::Value = serde_json::from_slice(&encode(&env)).unwrap();
        assert_eq!(v["payload"]["kind"], "assigned");
        assert_eq!(
            v["payload"]["actor"],
            "agent:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(v["schema"], "ticket_event");
        let back = decode::<TicketEvent>(Some(&encode(&env))).unwrap();
        assert_eq!(back.payload, ev);
        // Events written before the actor was carried still decode (as nobody's).
        let mut old = v["payload"].clone();
        old.as_object_mut().unwrap().remove("actor");
        let back: TicketEvent = serde_json::from_value(old).unwrap();
        assert_eq!(back.actor, None);
    }

    #[test]
    fn inbound_messages_from_before_the_verified_flag_decode_as_verified() {
        let old = r#"{"message_id":"00000000-0000-0000-0000-000000000000","channel":"api",
            "conversation_key":"k","customer":{"email":"a@example.com"},"text":"hi",
            "received_at":"2026-01-01T00:00:00Z"}"#;
        let m: InboundMessage = serde_json::from_str(old).unwrap();
        assert!(m.verified);
        let unverified = InboundMessage {
            verified: false,
            ..m
        };
        let v = serde_json::to_value(&unverified).unwrap();
        assert_eq!(v["verified"], false);
        let back: InboundMessage = serde_json::from_value(v).unwrap();
        assert!(!back.verified);
    }

    #[test]
    fn enum_strings_round_trip() {
        for s in ["open", "pending", "resolved", "closed"] {
            assert_eq!(TicketStatus::parse(s).unwrap().as_str(), s);
        }
        for s in ["low", "medium", "high", "urgent", "critical"] {
            assert_eq!(Priority::parse(s).unwrap().as_str(), s);
        }
        assert!(Priority::Critical > Priority::Low);
        assert_eq!(AgentStatus::parse("busy"), None);
    }
}
