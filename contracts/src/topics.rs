use serde::{Deserialize, Serialize};

/// Every Kafka topic Switchboard reads or writes. The wire name is `prefix + base_name()`; the
/// prefix comes from `kafka.topic_prefix` in pipelines.yaml so several installations (or test
/// runs) can share one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Normalised inbound customer messages from every channel. Key: conversation key.
    InboundMessages,
    /// Shops' order updates, checked by the orders door. Key: the shop's order id.
    InboundOrders,
    /// Ticket lifecycle events. Key: ticket id.
    TicketEvents,
    /// Model outputs per message. Key: ticket id.
    Enrichments,
    /// Assignment decisions (assigned, released). Key: ticket id.
    Assignments,
    /// SLA warnings and breaches. Key: ticket id.
    SlaEvents,
    /// Agent status changes. Key: agent id.
    AgentPresence,
    /// Replies going back out on a channel. Key: ticket id.
    OutboundReplies,
    /// Returns and order actions, each step of their lifecycle. Key: the shop's order id.
    CommerceEvents,
    /// Records that could not be processed, with the reason. Key: the original key.
    DeadLetter,
    /// Records parked after a bounded number of transient failures, waiting to be handed back to
    /// the one consumer group that failed them. Key: the original key.
    Retry,
}

impl Topic {
    /// All topics, in documentation order (the retry topic last: see [`Topic::EVENTS`]).
    pub const ALL: [Topic; 11] = [
        Topic::InboundMessages,
        Topic::InboundOrders,
        Topic::TicketEvents,
        Topic::Enrichments,
        Topic::Assignments,
        Topic::SlaEvents,
        Topic::AgentPresence,
        Topic::OutboundReplies,
        Topic::CommerceEvents,
        Topic::DeadLetter,
        Topic::Retry,
    ];

    /// The topics that carry the system's events (every topic but the retry topic, whose records
    /// are copies handed back to one consumer group): what the analytics sink stores.
    pub const EVENTS: &'static [Topic] = Self::ALL.split_last().unwrap().1;

    /// The topic name without the installation prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::InboundMessages => "inbound.messages",
            Topic::InboundOrders => "inbound.orders",
            Topic::TicketEvents => "ticket.events",
            Topic::Enrichments => "enrichments",
            Topic::Assignments => "assignments",
            Topic::SlaEvents => "sla.events",
            Topic::AgentPresence => "agent.presence",
            Topic::OutboundReplies => "outbound.replies",
            Topic::CommerceEvents => "commerce.events",
            Topic::DeadLetter => "deadletter",
            Topic::Retry => "retry",
        }
    }

    /// The wire name under `prefix`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.base_name())
    }

    /// Looks a topic up by its base name (as written in pipelines.yaml).
    pub fn from_base_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.base_name() == name)
    }

    /// Looks a topic up by its wire name under `prefix`.
    pub fn from_wire_name(prefix: &str, name: &str) -> Option<Topic> {
        name.strip_prefix(prefix).and_then(Topic::from_base_name)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.base_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_base_name(t.base_name()), Some(t));
            assert_eq!(Topic::from_wire_name("sb.", &t.name("sb.")), Some(t));
        }
        assert_eq!(Topic::from_base_name("nope"), None);
        assert_eq!(Topic::from_wire_name("sb.", "other.inbound.messages"), None);
    }
}
