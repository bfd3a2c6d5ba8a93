//! Streaming processors: the consumers that turn inbound messages into assigned tickets.
//!
//! - [`ticketing::Ticketing`] threads each inbound message into a new or existing ticket.
//! - [`router::Router`] assigns open tickets to online agents with the needed skill and free
//!   capacity, and retries waiting tickets when agents come online.
//!
//! Both write state and the events describing it in one Postgres transaction (the outbox) and
//! are safe to re-run on the same record, so at-least-once delivery never duplicates a ticket,
//! a message or an assignment.

pub mod router;
pub mod rules;
pub mod ticketing;
