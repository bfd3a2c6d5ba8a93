//! The ticket store's shared transitions: what more than one role does to tickets, customers,
//! assignments and their events, in the caller's Postgres transaction with the events in its
//! outbox (so a transition and what it publishes commit together).
//!
//! - [`store`]: releasing an assignment, escalating a ticket, adding a ticket event.
//! - [`customers`]: one customer across channels (identities and the merge rule).
//! - [`orders`]: a shop's orders, stored for their customer (the newest version wins).
//! - [`tags`]: what a tag is, and adding and removing them on a ticket.
//! - [`fields`]: custom fields: what a value may be, and setting them on a ticket.
//! - [`notes`]: internal notes and the agents they mention.
//! - [`rules`]: the team's own triggers and automations: conditions, actions, the checks on
//!   save (loops included), evaluation (pure).
//! - [`status`]: a status change with its events, the survey and the freed agent.
//! - [`survey`]: the satisfaction survey of a resolved ticket.
//! - [`replay`]: a rule's dry run over recorded history (pure).
//! - [`notify`]: people's notification preferences (topics by email and SMS, quiet hours).
//! - [`webhooks`]: outbound webhooks: what a subscription names, a delivery's body, the ledger.
//! - [`assign`]: assignment by hand (to an agent, a team, the queue) and the capacity claim
//!   the router shares.
//!
//! The processors (ticketing, router, SLA) and the agent API (serving) both write through
//! here; neither reaches into the other's crate for it.

pub mod assign;
pub mod churn;
pub mod customers;
pub mod drafts;
pub mod fields;
pub mod macros;
pub mod notes;
pub mod notify;
pub mod orders;
pub mod replay;
pub mod returns;
pub mod row;
pub mod rules;
pub mod shop;
pub mod status;
pub mod store;
pub mod survey;
pub mod tags;
pub mod telemetry;
pub mod webhooks;
