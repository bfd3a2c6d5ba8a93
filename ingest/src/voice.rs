//! Voice in: a call-transcript webhook. The telephony or speech-to-text provider POSTs one JSON
//! document per finished call, signed with a shared secret:
//! `X-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` (the scheme Meta and GitHub use).
//!
//! ```json
//! {"call_id": "CA42", "from": "+15550100001", "to": "+15550199999", "started_at": "2026-11-26T10:00:00Z",
//!  "recording_url": "https://...", "turns": [{"speaker": "customer", "text": "..."}, {"speaker": "ivr", "text": "..."}]}
//! ```
//!
//! The call becomes one `inbound_message` (channel `voice`): the transcript with speaker labels
//! as text, the caller as customer (by phone), the call id as idempotency key, the recording URL
//! and duration in metadata. Acknowledged (202) only after the broker acked.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use switchboard_contracts::{message_id_for, Channel, CustomerRef, Envelope, InboundMessage};
use switchboard_core::config::Secret;
use switchboard_core::http::{parse_json, ApiError, ClientKey, ClientLimit};
use switchboard_core::kafka::Publisher;
use tracing::info;

use crate::api::truncate;
use crate::sms::normalise_phone;
use crate::IngestConfig;

/// Where the provider posts.
pub const PATH: &str = "/webhooks/voice";

/// The call-transcript webhook: `channels.voice` of pipelines.yaml.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceConfig {
    /// Shared signing secret (environment only: `SWITCHBOARD__CHANNELS__VOICE__SECRET`). Empty:
    /// every call is refused.
    pub secret: Secret,
}

/// The running webhook.
#[derive(Debug, Clone)]
pub struct VoiceSource {
    config: VoiceConfig,
    max_text_bytes: usize,
    publisher: Publisher,
    /// Taken by correctly signed calls only.
    limit: ClientLimit,
}

/// The posted call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    pub call_id: String,
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_secs: Option<u32>,
    #[serde(default)]
    pub recording_url: Option<String>,
    pub turns: Vec<Turn>,
}

/// One speaker turn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub speaker: String,
    pub text: String,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Whether `header` is the signature of `body` (constant-time).
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let expected: Vec<u8> = (0..32)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    expected.len() == 32 && mac.verify_slice(&expected).is_ok()
}

impl VoiceSource {
    /// The webhook with the `ingest` section's text cap and the `voice` rate limit.
    pub fn new(config: VoiceConfig, ingest: &IngestConfig, publisher: Publisher) -> Self {
        VoiceSource {
            config,
            max_text_bytes: ingest.max_text_bytes,
            publisher,
            limit: ClientLimit::new("voice", ingest.rate_limit("voice")),
        }
    }

    /// Correctly signed calls limited to `per_sec` per second (the provider's budget, which
    /// unsigned calls never touch).
    pub fn with_limit(mut self, per_sec: Option<u32>) -> Self {
        self.limit = ClientLimit::new("voice", per_sec);
        self
    }

    /// The webhook route (no bearer token: the signature authenticates the provider).
    pub fn router(self) -> Router {
        Router::new().route(PATH, post(inbound)).with_state(self)
    }

    /// Checks the signature and turns the call into the event (no I/O).
    pub fn normalise(&self, headers: &HeaderMap, body: &[u8]) -> Result<InboundMessage, ApiError> {
        let signature = headers
            .get("x-signature-256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if self.config.secret.is_empty() || !verify(self.config.secret.expose(), body, signature) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Signature-256 is missing or does not match this body",
            ));
        }
        let call: Call = parse_json(body)?;
        if call.call_id.is_empty() || call.call_id.len() > 128 {
            return Err(ApiError::field(
                "call_id",
                "call_id must be 1 to 128 characters",
            ));
        }
        let from = normalise_phone(&call.from)
            .ok_or_else(|| ApiError::field("from", "from is not an E.164 number"))?;
        // Control characters (NUL, escapes) go before a turn counts as text.
        let transcript: Vec<String> = call
            .turns
            .iter()
            .map(|t| (t, switchboard_contracts::text::clean_text(&t.text)))
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(t, text)| format!("{}: {}", label(&t.speaker), text.trim()))
            .collect();
        if transcript.is_empty() {
            return Err(ApiError::field("turns", "the transcript has no text"));
        }
        let (text, truncated) = truncate(&transcript.join("\n"), self.max_text_bytes);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("call_id".to_string(), call.call_id.clone());
        if let Some(url) = call.recording_url {
            metadata.insert("recording_url".to_string(), url);
        }
        if let Some(d) = call.duration_secs {
            metadata.insert("duration_secs".to_string(), d.to_string());
        }
        if let Some(to) = call.to {
            metadata.insert("to".to_string(), to);
        }
        let mut m = InboundMessage {
            message_id: message_id_for(Channel::Voice.as_str(), Some(&call.call_id)),
            channel: Channel::Voice,
            external_id: Some(call.call_id.clone()),
            conversation_key: format!("voice:{from}"),
            ticket_id: None,
            customer: CustomerRef {
                email: None,
                phone: Some(from),
                name: None,
                handle: None,
            },
            subject: Some(format!("Phone call {}", call.call_id)),
            text,
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at: call.started_at.unwrap_or_else(Utc::now),
            // the provider's signed webhook names the caller
            verified: true,
        };
        // A start time the stores cannot hold becomes the time of intake, with the rest.
        crate::sanitise("voice", &mut m);
        Ok(m)
    }
}

fn label(speaker: &str) -> &'static str {
    match speaker.to_lowercase().as_str() {
        "customer" | "caller" => "Customer",
        "agent" => "Agent",
        _ => "System",
    }
}

async fn inbound(State(source): State<VoiceSource>, headers: HeaderMap, body: Bytes) -> Response {
    let msg = match source.normalise(&headers, &body) {
        Ok(m) => m,
        Err(e) => return crate::rejected("voice", e),
    };
    if let Err(e) = source.limit.check(ClientKey::Provider("voice")) {
        return e.into_response();
    }
    let env = Envelope::new(msg.message_id, switchboard_core::clock::now(), msg);
    match crate::publish(&source.publisher, "voice", &env).await {
        Ok((partition, offset)) => {
            info!(message_id = %env.event_id, partition, offset, "call transcript accepted");
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "message_id": env.event_id })),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_an_independent_hmac() {
        // Computed with Python: hmac.new(b"It's a Secret to Everybody", b"Hello, World!", sha256).
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let sig = sign("s", b"{}");
        assert!(verify("s", b"{}", &sig));
        assert!(!verify("s", b"{ }", &sig));
        assert!(!verify("t", b"{}", &sig));
        assert!(!verify("s", b"{}", "sha256=zz"));
        assert!(!verify("s", b"{}", ""));
    }

    proptest::proptest! {
        #[test]
        fn a_changed_body_never_verifies(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256), at in 0usize..256) {
            let sig = sign("secret", &body);
            proptest::prop_assert!(verify("secret", &body, &sig));
            if !body.is_empty() {
                let mut changed = body.clone();
                let i = at % changed.len();
                changed[i] ^= 1;
                proptest::prop_assert!(!verify("secret", &changed, &sig));
            }
        }
    }
}
