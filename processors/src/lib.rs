//! Streaming processors: the consumers that turn inbound messages into classified, prioritised,
//! assigned tickets with SLA clocks running, and answer from the knowledge base when they can.
//!
//! - [`ticketing`]: threads messages into tickets, runs the models, sets priority, escalates
//!   repeat contacts and angry customers, asks the [`kb`] bot.
//! - [`router`]: scores agents ([`scoring`]) and assigns, reassigns, keeps the waiting queue.
//! - [`sla`]: SLA clocks on business [`calendar`]s, warnings, breaches and escalation.
//! - [`store`]: ticket-store transitions shared with the agent API.
//! - [`customers`]: one customer across channels (identities and the merge rule).

pub mod calendar;
pub mod customers;
pub mod kb;
pub mod router;
pub mod rules;
pub mod scoring;
pub mod sla;
pub mod store;
pub mod ticketing;
