//! SMS in: a Twilio-compatible inbound webhook.
//!
//! The provider POSTs `application/x-www-form-urlencoded` (`MessageSid`, `From`, `To`, `Body`,
//! `NumMedia`, `MediaUrl0`, `MediaContentType0`, ...) and signs it: `X-Twilio-Signature` is
//! base64(HMAC-SHA1(auth token, public URL + every parameter name and value, sorted by name)).
//! A bad or missing signature is 401 and nothing is produced; a malformed form is 400 naming the
//! field. A valid message becomes an `inbound_message` (channel `sms`, the sender's number as
//! customer and conversation, `MessageSid` as the idempotency key, so a provider retry is the same
//! message) and is answered with an empty TwiML `<Response/>` only after the broker acked it;
//! broker down: 503, and the provider retries.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use switchboard_contracts::{message_id_for, Channel, CustomerRef, Envelope, InboundMessage};
use switchboard_core::config::Secret;
use switchboard_core::http::{ApiError, ClientKey, ClientLimit};
use switchboard_core::kafka::Publisher;
use tracing::info;

use crate::api::truncate;

/// The SMS provider (Twilio-compatible): `channels.sms` of pipelines.yaml, read by the webhook
/// ([`SmsSource`]) and the sender ([`crate::sms_out::SmsSender`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// The provider's auth token, which signs webhooks (environment only:
    /// `SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN`). Empty: every webhook call is refused.
    pub auth_token: Secret,
    /// The webhook URL exactly as configured at the provider (signatures cover it); empty:
    /// `http://<http.listen>/webhooks/sms`.
    pub public_url: String,
    /// Sending: the provider's API base, account and the number texts come from.
    pub api_base_url: String,
    pub account_sid: String,
    pub from_number: String,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            auth_token: Secret::default(),
            public_url: String::new(),
            api_base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            from_number: String::new(),
        }
    }
}

/// Where the provider posts.
pub const PATH: &str = "/webhooks/sms";

/// The running webhook.
#[derive(Debug, Clone)]
pub struct SmsSource {
    config: SmsConfig,
    max_text_bytes: usize,
    publisher: Publisher,
    /// Taken by correctly signed calls only.
    limit: ClientLimit,
}

const TWIML_EMPTY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Option<Hmac<Sha1>> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).ok()?;
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    Some(mac)
}

/// The provider's signature of a webhook call (what a provider, or a simulator, sends).
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    mac(auth_token, url, params).map_or_else(String::new, |m| {
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    })
}

/// Whether `signature` is the provider's signature of `url` and `params`.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    // Constant-time comparison.
    mac(auth_token, url, params).is_some_and(|m| m.verify_slice(&expected).is_ok())
}

/// Phone numbers are normalised where emails are (one definition for every door and search).
pub use switchboard_contracts::normalise_phone;

impl SmsSource {
    /// The webhook with the `ingest` section's text cap and the `sms` rate limit.
    /// `config.public_url` must be the URL the provider calls (the signature covers it).
    pub fn new(config: SmsConfig, ingest: &crate::IngestConfig, publisher: Publisher) -> Self {
        SmsSource {
            config,
            max_text_bytes: ingest.max_text_bytes,
            publisher,
            limit: ClientLimit::new("sms", ingest.rate_limit("sms")),
        }
    }

    /// Correctly signed calls limited to `per_sec` per second (the provider account's budget,
    /// which unsigned calls never touch).
    pub fn with_limit(mut self, per_sec: Option<u32>) -> Self {
        self.limit = ClientLimit::new("sms", per_sec);
        self
    }

    /// The webhook route (no bearer token: the signature authenticates the provider).
    pub fn router(self) -> Router {
        Router::new().route(PATH, post(inbound)).with_state(self)
    }

    /// Checks the signature and turns the form into the event (no I/O).
    pub fn normalise(&self, headers: &HeaderMap, body: &[u8]) -> Result<InboundMessage, ApiError> {
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if self.config.auth_token.is_empty()
            || signature.is_empty()
            || !verify(
                self.config.auth_token.expose(),
                &self.config.public_url,
                &params,
                signature,
            )
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-Twilio-Signature is missing or does not match this request",
            ));
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let sid = get("MessageSid")
            .or_else(|| get("SmsSid"))
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .ok_or_else(|| ApiError::field("MessageSid", "MessageSid is missing"))?;
        let from = get("From")
            .and_then(normalise_phone)
            .ok_or_else(|| ApiError::field("From", "From is missing or not an E.164 number"))?;
        let media: u32 = match get("NumMedia") {
            None | Some("") => 0,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n <= 10)
                .ok_or_else(|| ApiError::field("NumMedia", "NumMedia must be 0 to 10"))?,
        };
        // Control characters (NUL, escapes) go before anything is decided on the text.
        let body = switchboard_contracts::text::clean_text(get("Body").unwrap_or_default());
        if body.trim().is_empty() && media == 0 {
            return Err(ApiError::field(
                "Body",
                "the message has neither text nor media",
            ));
        }
        let (text, truncated) = truncate(&body, self.max_text_bytes);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("conversation_id".to_string(), from.clone());
        if let Some(to) = get("To") {
            metadata.insert("to".to_string(), to.to_string());
        }
        for i in 0..media {
            if let Some(url) = get(&format!("MediaUrl{i}")) {
                metadata.insert(format!("media_url_{i}"), url.to_string());
            }
            if let Some(ct) = get(&format!("MediaContentType{i}")) {
                metadata.insert(format!("media_content_type_{i}"), ct.to_string());
            }
        }
        let mut m = InboundMessage {
            message_id: message_id_for(Channel::Sms.as_str(), Some(sid)),
            channel: Channel::Sms,
            external_id: Some(sid.to_string()),
            conversation_key: format!("sms:{from}"),
            ticket_id: None,
            customer: CustomerRef {
                email: None,
                phone: Some(from),
                name: None,
                handle: None,
            },
            subject: None,
            text: if text.trim().is_empty() {
                format!("({media} media attachment(s))")
            } else {
                text
            },
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at: switchboard_core::clock::now(),
            // the provider's signed webhook names the sender
            verified: true,
        };
        crate::sanitise("sms", &mut m);
        Ok(m)
    }
}

async fn inbound(State(source): State<SmsSource>, headers: HeaderMap, body: Bytes) -> Response {
    let msg = match source.normalise(&headers, &body) {
        Ok(m) => m,
        Err(e) => return crate::rejected("sms", e),
    };
    if let Err(e) = source.limit.check(ClientKey::Provider("sms")) {
        return e.into_response();
    }
    let env = Envelope::new(msg.message_id, msg.received_at, msg);
    match crate::publish(&source.publisher, "sms", &env).await {
        Ok((partition, offset)) => {
            info!(message_id = %env.event_id, partition, offset, "sms accepted");
            ([(header::CONTENT_TYPE, "text/xml")], TWIML_EMPTY).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verifies_the_providers_documented_example() {
        // Twilio's documented example (token 12345); the expected value computed independently
        // with Python's hmac module.
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(verify(
            "12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(
            "12346",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify(
            "12345",
            "https://mycompany.com/other",
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "9999".into();
        assert!(!verify(
            "12345",
            url,
            &tampered,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify("12345", url, &params, "not base64 at all"));
    }

    #[test]
    fn phones_are_e164() {
        assert_eq!(
            normalise_phone("+1 (555) 010-9999").as_deref(),
            Some("+15550109999")
        );
        assert_eq!(normalise_phone("5550109999"), None);
        assert_eq!(normalise_phone("+12"), None);
        assert_eq!(normalise_phone("+1555abc9999"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_change_to_the_form_breaks_the_signature(
            params in proptest::collection::vec(("[A-Za-z]{1,8}", "[ -~]{0,16}"), 1..8),
            flip in 0usize..8,
        ) {
            let url = "https://support.example.com/webhooks/sms";
            let mut mac = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
            let mut sorted = params.clone();
            sorted.sort();
            mac.update(url.as_bytes());
            for (k, v) in &sorted {
                mac.update(k.as_bytes());
                mac.update(v.as_bytes());
            }
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            proptest::prop_assert!(verify("secret", url, &params, &sig));
            let mut changed = params.clone();
            let i = flip % changed.len();
            changed[i].1.push('x');
            proptest::prop_assert!(!verify("secret", url, &changed, &sig));
        }
    }
}
