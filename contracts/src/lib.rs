//! Switchboard's event contracts: everything that crosses Kafka.
//!
//! One small, dependency-light crate that every stage shares: the [`Topic`] names, the versioned
//! [`Envelope`] every record travels in, the event types themselves, and [`decode`], which turns a
//! record into a typed event or a [`DecodeError`] that says why it belongs in the dead-letter topic.
//! [`text`] makes text from outside storable and cuts it without splitting a character.
//! `ARCHITECTURE.md` documents the same contracts for readers who do not read Rust.

mod envelope;
mod events;
mod ids;
pub mod text;
mod topics;

pub use envelope::{decode, decode_raw, encode, DecodeError, Envelope, Event, RawEnvelope};
pub use events::*;
pub use ids::{
    derived_id, message_id_for, normalise_email, normalise_phone, order_key, MESSAGE_NAMESPACE,
};
pub use topics::Topic;
