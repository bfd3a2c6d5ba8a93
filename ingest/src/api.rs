//! The HTTP inbound API: `POST /v1/messages`.
//!
//! Accepts `{channel: "api", customer: {email, name?}, subject?, text, external_id?, ticket_id?,
//! conversation_id?}` and answers `202 {message_id, ticket_id, truncated}` once the event is on
//! Kafka. Broker down: `503` with `Retry-After`, nothing accepted. The same `external_id` always
//! maps to the same `message_id`, so a client retry becomes one message downstream.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{
    message_id_for, normalise_email, Channel, CustomerRef, Envelope, InboundMessage,
};
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_core::kafka::Publisher;
use tracing::info;
use uuid::Uuid;

/// The running API source.
#[derive(Debug, Clone)]
pub struct ApiSource {
    /// Texts longer than this are cut on a character boundary and flagged `truncated`.
    max_text_bytes: usize,
    publisher: Publisher,
}

/// The request body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    pub channel: String,
    pub customer: PostCustomer,
    #[serde(default)]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default)]
    pub external_id: Option<String>,
    /// Reply on this existing ticket.
    #[serde(default)]
    pub ticket_id: Option<Uuid>,
    /// Thread messages that share this id into one ticket.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// What the caller knows about the customer: `customer_tier` (e.g. `vip`) and
    /// `order_value` (in currency units) move priority and routing.
    #[serde(default)]
    pub customer_context: Option<CustomerContext>,
}

/// Customer facts a trusted caller (a connector, the shop) sends with a message.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerContext {
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub order_value: Option<f64>,
}

/// The sender.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostCustomer {
    pub email: String,
    /// The same person's phone number (E.164): an API caller is authenticated, so a message
    /// naming both makes the customer who texts and the one who emails one customer.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The 202 body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub message_id: Uuid,
    pub ticket_id: Option<Uuid>,
    pub truncated: bool,
}

const MAX_SUBJECT_CHARS: usize = 998;
const MAX_ID_BYTES: usize = 256;
/// The largest order value taken (currency units): larger is a typo or an attack, and would not
/// survive the conversion to cents downstream.
const MAX_ORDER_VALUE: f64 = 1e12;

impl ApiSource {
    /// The source with the `ingest` section's text cap (it has no section of its own).
    pub fn new(ingest: &crate::IngestConfig, publisher: Publisher) -> Self {
        ApiSource {
            max_text_bytes: ingest.max_text_bytes,
            publisher,
        }
    }

    /// The routes of this source.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/messages", post(post_message))
            .with_state(self)
    }

    /// Validates and normalises a request into the event (no I/O).
    pub fn normalise(&self, req: PostMessage) -> Result<InboundMessage, ApiError> {
        if req.channel != "api" {
            return Err(ApiError::field(
                "channel",
                format!("channel {:?} is not accepted here: this endpoint takes \"api\"; other channels arrive through their connectors", req.channel),
            ));
        }
        let email = normalise_email(&req.customer.email).ok_or_else(|| {
            ApiError::field(
                "customer.email",
                format!("{:?} is not an email address", req.customer.email),
            )
        })?;
        if req.text.trim().is_empty() {
            return Err(ApiError::field("text", "text is empty"));
        }
        let (text, truncated) = truncate(&req.text, self.max_text_bytes);
        let subject = match req.subject.as_deref().map(str::trim) {
            Some(s) if s.chars().count() > MAX_SUBJECT_CHARS => {
                return Err(ApiError::field(
                    "subject",
                    format!("subject is longer than {MAX_SUBJECT_CHARS} characters"),
                ))
            }
            Some("") | None => None,
            Some(s) => Some(s.to_string()),
        };
        for (field, value) in [
            ("external_id", &req.external_id),
            ("conversation_id", &req.conversation_id),
        ] {
            if let Some(v) = value {
                if v.is_empty() || v.len() > MAX_ID_BYTES {
                    return Err(ApiError::field(
                        field,
                        format!("{field} must be 1 to {MAX_ID_BYTES} bytes"),
                    ));
                }
            }
        }
        let phone = match req.customer.phone.as_deref() {
            None => None,
            Some(p) => Some(crate::sms::normalise_phone(p).ok_or_else(|| {
                ApiError::field("customer.phone", format!("{p:?} is not a phone number"))
            })?),
        };
        let name = req
            .customer
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let message_id = message_id_for(Channel::Api.as_str(), req.external_id.as_deref());
        let conversation_key = match (&req.ticket_id, &req.conversation_id) {
            (Some(t), _) => format!("ticket:{t}"),
            (None, Some(c)) => format!("api:{c}"),
            (None, None) => format!("customer:{email}"),
        };
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(c) = req.conversation_id {
            metadata.insert("conversation_id".to_string(), c);
        }
        if let Some(ctx) = req.customer_context {
            if let Some(tier) = ctx.tier.map(|t| t.trim().to_lowercase()) {
                if tier.is_empty()
                    || tier.len() > 32
                    || !tier
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(ApiError::field(
                        "customer_context.tier",
                        "tier must be 1 to 32 letters, digits, '-' or '_'",
                    ));
                }
                metadata.insert("customer_tier".to_string(), tier);
            }
            if let Some(v) = ctx.order_value {
                if !v.is_finite() || !(0.0..=MAX_ORDER_VALUE).contains(&v) {
                    return Err(ApiError::field(
                        "customer_context.order_value",
                        format!("order_value must be a number from 0 to {MAX_ORDER_VALUE}"),
                    ));
                }
                metadata.insert("order_value".to_string(), format!("{v}"));
            }
        }
        let mut m = InboundMessage {
            message_id,
            channel: Channel::Api,
            external_id: req.external_id,
            conversation_key,
            ticket_id: req.ticket_id,
            customer: CustomerRef {
                email: Some(email),
                phone,
                name,
                handle: None,
            },
            subject,
            text,
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at: switchboard_core::clock::now(),
            // an authenticated caller
            verified: true,
        };
        // What a store would refuse (NUL, control characters) goes before the 202.
        crate::sanitise("api", &mut m);
        if m.text.trim().is_empty() {
            return Err(ApiError::field(
                "text",
                "text is empty once control characters are removed",
            ));
        }
        Ok(m)
    }
}

#[utoipa::path(post, path = "/v1/messages", tag = "channels", request_body = PostMessage, responses((status = 202, body = Accepted), (status = 400, description = "a field is invalid"), (status = 503, description = "the broker did not acknowledge; retry")), security(("bearer" = [])))]
async fn post_message(
    State(source): State<ApiSource>,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let msg = source.normalise(req)?;
    let accepted = Accepted {
        message_id: msg.message_id,
        ticket_id: msg.ticket_id,
        truncated: msg.truncated,
    };
    let env = Envelope::new(msg.message_id, msg.received_at, msg);
    let (partition, offset) = crate::publish(&source.publisher, "api", &env).await?;
    info!(message_id = %accepted.message_id, partition, offset, "message accepted");
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> (String, bool) {
    let (t, cut) = switchboard_contracts::text::truncate_bytes(text, max);
    (t.to_string(), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let (t, cut) = truncate("héllo", 2);
        assert_eq!(t, "h");
        assert!(cut);
        let (t, cut) = truncate("hello", 10);
        assert_eq!(t, "hello");
        assert!(!cut);
        let (t, _) = truncate("😀😀", 5);
        assert_eq!(t, "😀");
    }
}
