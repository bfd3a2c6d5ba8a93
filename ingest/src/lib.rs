//! Channel connectors: every way a customer message enters Switchboard.
//!
//! Each connector is a component (config struct plus runtime struct, in its own module) that
//! validates what arrives, normalises it into an [`switchboard_contracts::InboundMessage`], and
//! answers the sender only after the broker acknowledged the event. Today: the HTTP API
//! ([`api::ApiSource`]), the SMS webhook ([`sms::SmsSource`], Twilio-compatible, signed) and
//! the SMS sender for replies ([`sms_out::SmsSender`]) and the call-transcript webhook
//! ([`voice::VoiceSource`]), the Meta webhook ([`meta::MetaSource`], WhatsApp Cloud API);
//! the email, chat, social and voice connectors join the same registry.

pub mod api;
pub mod limit;
pub mod meta;
pub mod sms;
pub mod sms_out;
pub mod voice;
