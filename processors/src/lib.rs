//! Streaming processors: the consumers that turn inbound messages into classified, prioritised,
//! assigned tickets with SLA clocks running, and answer from the knowledge base when they can.
//!
//! - [`ticketing`]: threads messages into tickets, runs the models, sets priority, escalates
//!   repeat contacts and angry customers, asks the [`kb`] bot, offers reply [`drafts`] from
//!   solved tickets.
//! - [`router`]: scores agents ([`scoring`]) and assigns, reassigns, keeps the waiting queue.
//! - [`sla`]: SLA clocks on business [`calendar`]s, warnings, breaches and escalation.
//! - [`orders`]: stores the shops' order updates for their customers.
//! - [`automation`]: the team's own rules at work: triggers in the stream, automations on time.
//!
//! Transitions the agent API makes too (release, escalation, customers) live in
//! `switchboard_tickets`.

pub mod automation;
pub mod calendar;
pub mod drafts;
pub mod kb;
pub mod orders;
pub mod router;
pub mod rules;
pub mod scoring;
pub mod sla;
pub mod start;
pub mod telemetry;
pub mod ticketing;
