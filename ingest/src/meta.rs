//! Social in: Meta-style webhooks for the WhatsApp Cloud API (the sender is a phone number, so
//! the customer is the same one who texts or calls), Messenger (`object: page`) and Instagram
//! (`object: instagram`), whose senders are page- or account-scoped ids (customer handle
//! `messenger:<id>` / `instagram:<id>`).
//!
//! - `GET /webhooks/meta?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`: the
//!   subscription handshake; answers `C` when `T` is `channels.meta.verify_token`, else 403.
//! - `POST /webhooks/meta`: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` with the
//!   app secret; 401 and nothing produced when it does not match. Each message in the batch
//!   (WhatsApp `entry[].changes[].value.messages[]`, Messenger/Instagram
//!   `entry[].messaging[].message`, text or media) becomes an `inbound_message` (channel
//!   `social`, the network's message id as idempotency key, the sender as customer and
//!   conversation, the network and the business number/page in metadata for the reply); 200
//!   only after the broker acked all of them. Status updates, delivery and read receipts and
//!   echoes of our own messages carry no customer message and are acknowledged without an event.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use switchboard_contracts::{message_id_for, Channel, CustomerRef, Envelope, InboundMessage};
use switchboard_core::config::Secret;
use switchboard_core::http::{parse_json, ApiError, ClientKey, ClientLimit};
use switchboard_core::kafka::Publisher;
use tracing::info;

use switchboard_contracts::text::clean_text;

use crate::api::truncate;
use crate::sms::normalise_phone;

/// Meta webhooks: the app secret that signs them and the subscription verify token (both
/// environment only: `SWITCHBOARD__CHANNELS__META__APP_SECRET`, `..._VERIFY_TOKEN`); replies
/// through the Graph API with `access_token` (environment only): `channels.meta` of
/// pipelines.yaml, read by the webhook ([`MetaSource`]) and the sender
/// ([`crate::social_out::SocialSender`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaConfig {
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub graph_api_base: String,
    pub graph_api_version: String,
    pub access_token: Secret,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            app_secret: Secret::default(),
            verify_token: Secret::default(),
            graph_api_base: "https://graph.facebook.com".into(),
            graph_api_version: "v21.0".into(),
            access_token: Secret::default(),
        }
    }
}

/// Where Meta posts.
pub const PATH: &str = "/webhooks/meta";

/// The running webhook.
#[derive(Debug, Clone)]
pub struct MetaSource {
    config: MetaConfig,
    max_text_bytes: usize,
    publisher: Publisher,
    /// Taken by correctly signed notifications only.
    limit: ClientLimit,
}

#[derive(Debug, Deserialize)]
struct Notification {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    /// The page or Instagram account (Messenger/Instagram).
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    changes: Vec<Change>,
    #[serde(default)]
    messaging: Vec<Messaging>,
}

/// A Messenger/Instagram event.
#[derive(Debug, Deserialize)]
struct Messaging {
    sender: Party,
    #[serde(default)]
    timestamp: Option<i64>,
    /// Absent for delivery/read receipts and other events.
    #[serde(default)]
    message: Option<SocialMessage>,
}

#[derive(Debug, Deserialize)]
struct Party {
    id: String,
}

#[derive(Debug, Deserialize)]
struct SocialMessage {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    attachments: Vec<SocialAttachment>,
    /// Our own message, echoed back.
    #[serde(default)]
    is_echo: bool,
}

#[derive(Debug, Deserialize)]
struct SocialAttachment {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Change {
    value: ChangeValue,
}

#[derive(Debug, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<WaMetadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<WaMessage>,
}

#[derive(Debug, Deserialize)]
struct WaMetadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Contact {
    wa_id: String,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaMessage {
    from: String,
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<WaText>,
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WaText {
    body: String,
}

impl MetaSource {
    /// The webhook with the `ingest` section's text cap and the `meta` rate limit.
    pub fn new(config: MetaConfig, ingest: &crate::IngestConfig, publisher: Publisher) -> Self {
        MetaSource {
            config,
            max_text_bytes: ingest.max_text_bytes,
            publisher,
            limit: ClientLimit::new("meta", ingest.rate_limit("meta")),
        }
    }

    /// Correctly signed notifications limited to `per_sec` per second (the app's budget, which
    /// unsigned calls never touch).
    pub fn with_limit(mut self, per_sec: Option<u32>) -> Self {
        self.limit = ClientLimit::new("meta", per_sec);
        self
    }

    /// The handshake and the notification routes (no bearer token: the signature authenticates).
    pub fn router(self) -> Router {
        Router::new()
            .route(PATH, get(handshake).post(notify))
            .with_state(self)
    }

    /// Checks the signature and turns a notification into events (no I/O).
    pub fn normalise(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<InboundMessage>, ApiError> {
        let signature = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if self.config.app_secret.is_empty()
            || !crate::voice::verify(self.config.app_secret.expose(), body, signature)
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Hub-Signature-256 is missing or does not match this body",
            ));
        }
        let n: Notification = parse_json(body)?;
        let network = match n.object.as_str() {
            "whatsapp_business_account" => "whatsapp",
            "page" => "messenger",
            "instagram" => "instagram",
            other => {
                return Err(ApiError::field(
                    "object",
                    format!("{other:?} is not whatsapp_business_account, page or instagram"),
                ))
            }
        };
        let mut out = Vec::new();
        for (e, entry) in n.entry.into_iter().enumerate() {
            if network != "whatsapp" {
                let page = entry.id.clone().unwrap_or_default();
                for (i, ev) in entry.messaging.into_iter().enumerate() {
                    let at = format!("entry[{e}].messaging[{i}]");
                    if let Some(m) = self.social_message(network, &page, ev, &at)? {
                        out.push(m);
                    }
                }
                continue;
            }
            for (c, change) in entry.changes.into_iter().enumerate() {
                let phone_number_id = change
                    .value
                    .metadata
                    .as_ref()
                    .and_then(|m| m.phone_number_id.clone());
                let names: HashMap<String, String> = change
                    .value
                    .contacts
                    .into_iter()
                    .filter_map(|k| Some((k.wa_id, k.profile?.name?)))
                    .collect();
                for (m, msg) in change.value.messages.into_iter().enumerate() {
                    let at = format!("entry[{e}].changes[{c}].value.messages[{m}]");
                    let from = normalise_phone(&format!("+{}", msg.from.trim_start_matches('+')))
                        .ok_or_else(|| {
                        ApiError::field(format!("{at}.from"), "not a phone number")
                    })?;
                    if msg.id.is_empty() || msg.id.len() > 256 {
                        return Err(ApiError::field(
                            format!("{at}.id"),
                            "id must be 1 to 256 characters",
                        ));
                    }
                    let (text, media) = match (msg.kind.as_str(), &msg.text) {
                        ("text", Some(t)) if !clean_text(&t.body).trim().is_empty() => {
                            (clean_text(&t.body).into_owned(), None)
                        }
                        ("text", _) => {
                            return Err(ApiError::field(
                                format!("{at}.text.body"),
                                "a text message without text",
                            ))
                        }
                        (kind, _) => {
                            let caption = msg
                                .other
                                .get(kind)
                                .and_then(|v| v.get("caption"))
                                .and_then(|v| v.as_str())
                                .map(|c| clean_text(c).trim().to_string())
                                .filter(|c| !c.is_empty());
                            let media_id = msg
                                .other
                                .get(kind)
                                .and_then(|v| v.get("id"))
                                .and_then(|v| v.as_str());
                            (
                                caption.unwrap_or_else(|| format!("({kind})")),
                                Some((kind.to_string(), media_id.map(str::to_string))),
                            )
                        }
                    };
                    let (text, truncated) = truncate(&text, self.max_text_bytes);
                    let mut metadata = BTreeMap::new();
                    metadata.insert("conversation_id".to_string(), from.clone());
                    metadata.insert("social_network".to_string(), "whatsapp".to_string());
                    if let Some(id) = &phone_number_id {
                        metadata.insert("business_id".to_string(), id.clone());
                    }
                    if let Some((kind, id)) = media {
                        metadata.insert("media_type".to_string(), kind);
                        if let Some(id) = id {
                            metadata.insert("media_id".to_string(), id);
                        }
                    }
                    let received_at = msg
                        .timestamp
                        .as_deref()
                        .and_then(|t| t.parse::<i64>().ok())
                        .and_then(|t| DateTime::from_timestamp(t, 0))
                        .unwrap_or_else(Utc::now);
                    out.push(InboundMessage {
                        message_id: message_id_for("whatsapp", Some(&msg.id)),
                        channel: Channel::Social,
                        external_id: Some(msg.id.clone()),
                        conversation_key: format!("social:{from}"),
                        ticket_id: None,
                        customer: CustomerRef {
                            email: None,
                            name: names.get(&msg.from).cloned(),
                            phone: Some(from),
                            handle: None,
                        },
                        subject: None,
                        text,
                        truncated,
                        attachments: Vec::new(),
                        metadata,
                        received_at,
                        // the network's signed webhook names the sender
                        verified: true,
                    });
                }
            }
        }
        // What a store would refuse (NUL, control characters, a timestamp out of range) goes
        // before the 200.
        for m in &mut out {
            crate::sanitise("meta", m);
        }
        Ok(out)
    }
}

impl MetaSource {
    /// One Messenger/Instagram event: a customer message, or `None` for receipts and echoes.
    fn social_message(
        &self,
        network: &'static str,
        page: &str,
        ev: Messaging,
        at: &str,
    ) -> Result<Option<InboundMessage>, ApiError> {
        let Some(msg) = ev.message.filter(|m| !m.is_echo) else {
            return Ok(None);
        };
        let sender = ev.sender.id.trim().to_string();
        if sender.is_empty()
            || sender.len() > 64
            || !sender.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ApiError::field(
                format!("{at}.sender.id"),
                "not a scoped user id",
            ));
        }
        if msg.mid.is_empty() || msg.mid.len() > 256 {
            return Err(ApiError::field(
                format!("{at}.message.mid"),
                "mid must be 1 to 256 characters",
            ));
        }
        let mut metadata = BTreeMap::new();
        let urls: Vec<String> = msg
            .attachments
            .iter()
            .filter_map(|a| a.payload.as_ref()?.get("url")?.as_str().map(str::to_string))
            .collect();
        if let Some(first) = msg.attachments.first() {
            metadata.insert("media_type".to_string(), first.kind.clone());
        }
        if !urls.is_empty() {
            metadata.insert("media_urls".to_string(), urls.join(" "));
        }
        let text = match msg.text.as_deref().map(clean_text) {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ if !msg.attachments.is_empty() => format!(
                "({})",
                msg.attachments
                    .iter()
                    .map(|a| a.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => {
                return Err(ApiError::field(
                    format!("{at}.message.text"),
                    "a message without text or attachments",
                ))
            }
        };
        let (text, truncated) = truncate(&text, self.max_text_bytes);
        let handle = format!("{network}:{sender}");
        metadata.insert("conversation_id".to_string(), handle.clone());
        metadata.insert("social_network".to_string(), network.to_string());
        if !page.is_empty() {
            metadata.insert("business_id".to_string(), page.to_string());
        }
        let received_at = ev
            .timestamp
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        Ok(Some(InboundMessage {
            message_id: message_id_for(network, Some(&msg.mid)),
            channel: Channel::Social,
            external_id: Some(msg.mid),
            conversation_key: format!("social:{handle}"),
            ticket_id: None,
            customer: CustomerRef {
                handle: Some(handle),
                ..Default::default()
            },
            subject: None,
            text,
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at,
            // the network's signed webhook names the sender
            verified: true,
        }))
    }
}

async fn handshake(
    State(source): State<MetaSource>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && !source.config.verify_token.is_empty()
        && q.get("hub.verify_token").map(String::as_str)
            == Some(source.config.verify_token.expose());
    match (ok, q.get("hub.challenge")) {
        (true, Some(challenge)) => (StatusCode::OK, challenge.clone()).into_response(),
        _ => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "verification token does not match",
        )
        .into_response(),
    }
}

async fn notify(State(source): State<MetaSource>, headers: HeaderMap, body: Bytes) -> Response {
    let messages = match source.normalise(&headers, &body) {
        Ok(m) => m,
        Err(e) => return crate::rejected("meta", e),
    };
    if let Err(e) = source.limit.check(ClientKey::Provider("meta")) {
        return e.into_response();
    }
    let n = messages.len();
    for msg in messages {
        let env = Envelope::new(msg.message_id, msg.received_at, msg);
        // Meta retries the whole notification; the messages already accepted are the same
        // messages then (ids derive from the provider's ids).
        if let Err(e) = crate::publish(&source.publisher, "meta", &env).await {
            return e.into_response();
        }
    }
    info!(messages = n, "meta notification accepted");
    (StatusCode::OK, Json(serde_json::json!({ "accepted": n }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use switchboard_core::config::KafkaConfig;

    /// One source for every case (the producer connects lazily; normalise does no I/O).
    fn source() -> &'static MetaSource {
        static SOURCE: std::sync::OnceLock<MetaSource> = std::sync::OnceLock::new();
        SOURCE.get_or_init(|| {
            let k = KafkaConfig {
                brokers: "127.0.0.1:1".into(),
                ..KafkaConfig::default()
            };
            MetaSource::new(
                MetaConfig {
                    app_secret: "s".into(),
                    verify_token: "v".into(),
                    ..MetaConfig::default()
                },
                &crate::IngestConfig {
                    max_text_bytes: 100,
                    ..crate::IngestConfig::default()
                },
                Publisher::new(&k).expect("producer"),
            )
        })
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            crate::voice::sign("s", body).parse().expect("header"),
        );
        h
    }

    #[test]
    fn messenger_receipts_and_echoes_are_not_messages() {
        let body = serde_json::to_vec(&serde_json::json!({"object": "page", "entry": [{"id": "P", "messaging": [
            {"sender": {"id": "1"}, "delivery": {"mids": ["m"]}},
            {"sender": {"id": "P"}, "message": {"mid": "m2", "text": "ours", "is_echo": true}},
            {"sender": {"id": "1"}, "timestamp": 1764150000000i64, "message": {"mid": "m3", "text": "hello there, this text is longer than the limit of one hundred bytes that this source has, so it is cut"}}
        ]}]}))
        .expect("json");
        let out = source().normalise(&signed(&body), &body).expect("valid");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].customer.handle.as_deref(), Some("messenger:1"));
        assert!(out[0].truncated && out[0].text.len() <= 100);
        assert_eq!(out[0].metadata["business_id"], "P");
    }

    proptest! {
        /// Any signed body is events or a 400, never a panic.
        #[test]
        fn any_signed_body_is_events_or_400(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match source().normalise(&signed(&body), &body) {
                Ok(_) => {}
                Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
            }
        }

        /// Notification-shaped JSON with arbitrary fields: events or a 400 naming a field.
        #[test]
        fn shaped_notifications_are_events_or_400(
            object in prop_oneof![Just("page"), Just("instagram"), Just("whatsapp_business_account"), Just("x")],
            sender in "[ -~]{0,20}",
            mid in "[ -~]{0,20}",
            text in proptest::option::of("\\PC{0,50}"),
            kind in prop_oneof![Just("text"), Just("image"), Just("sticker")],
        ) {
            let v = serde_json::json!({"object": object, "entry": [{"id": "P",
                "messaging": [{"sender": {"id": sender}, "message": {"mid": mid, "text": text}}],
                "changes": [{"value": {"messages": [{"from": sender, "id": mid, "type": kind, "text": text.as_ref().map(|t| serde_json::json!({"body": t}))}]}}]}]});
            let body = serde_json::to_vec(&v).expect("json");
            match source().normalise(&signed(&body), &body) {
                Ok(events) => for e in events {
                    prop_assert!(e.external_id.is_some());
                    prop_assert!(!e.text.trim().is_empty());
                },
                Err(e) => {
                    prop_assert_eq!(e.status.as_u16(), 400);
                    prop_assert!(e.field.is_some(), "{}", e.message);
                }
            }
        }
    }
}
