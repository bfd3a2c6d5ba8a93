//! Social out: replies on social tickets through the Graph-style send APIs.
//!
//! Reads `outbound.replies` and acts on the `social` ones. Where a reply goes comes from the
//! ticket's latest customer message (its `social_network`, `business_id` and sender):
//! - WhatsApp: `POST {base}/{version}/{phone_number_id}/messages`
//!   `{"messaging_product":"whatsapp","to":"<digits>","type":"text","text":{"body":...}}`;
//! - Messenger and Instagram: `POST {base}/{version}/{page_id}/messages`
//!   `{"recipient":{"id":...},"messaging_type":"RESPONSE","message":{"text":...}}`;
//!
//! with `Authorization: Bearer <channels.meta.access_token>`. The delivery ledger sends each
//! reply once; 4xx (but 429) is dead-lettered with the answer, 429/5xx/network retried.

use sqlx::PgPool;
use switchboard_contracts::{Channel, OutboundReply};
use switchboard_core::kafka::HandlerError;
use tracing::info;

/// The running sender.
#[derive(Debug, Clone)]
pub struct SocialSender {
    config: crate::meta::MetaConfig,
    http: reqwest::Client,
    pool: PgPool,
}

/// Where one reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub network: String,
    pub business_id: String,
    pub recipient: String,
}

/// The longest text each network takes (WhatsApp 4,096 characters, Messenger and Instagram
/// 2,000); a longer reply is cut, ending in `…`, rather than refused and dead-lettered.
pub fn max_text_chars(network: &str) -> usize {
    if network == "whatsapp" {
        4096
    } else {
        2000
    }
}

impl Destination {
    /// The URL path and JSON body of the send call (the text cleaned of control characters and
    /// cut to the network's limit without splitting a character).
    pub fn request(&self, text: &str) -> (String, serde_json::Value) {
        let clean = switchboard_contracts::text::clean_text(text);
        let text: &str =
            &switchboard_contracts::text::cut_chars(&clean, max_text_chars(&self.network));
        let path = format!("{}/messages", self.business_id);
        let body = if self.network == "whatsapp" {
            serde_json::json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": self.recipient.trim_start_matches('+'),
                "type": "text",
                "text": {"body": text},
            })
        } else {
            serde_json::json!({
                "recipient": {"id": self.recipient},
                "messaging_type": "RESPONSE",
                "message": {"text": text},
            })
        };
        (path, body)
    }
}

impl SocialSender {
    pub fn new(config: crate::meta::MetaConfig, pool: PgPool) -> Result<Self, reqwest::Error> {
        let http = crate::ledger::provider_client()?;
        Ok(SocialSender { config, http, pool })
    }

    async fn destination(&self, r: &OutboundReply) -> Result<Destination, HandlerError> {
        let row: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT metadata->>'social_network', metadata->>'business_id', metadata->>'conversation_id'
             FROM messages WHERE ticket_id = $1 AND direction = 'inbound' AND channel = 'social'
             ORDER BY received_at DESC LIMIT 1",
        )
        .bind(r.ticket_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| HandlerError::Transient(format!("reply destination: {e}")))?;
        let Some((Some(network), Some(business_id), Some(conversation))) = row else {
            return Err(HandlerError::Permanent(format!(
                "ticket {} has no social message to answer (network, business id, sender)",
                r.ticket_id
            )));
        };
        // The conversation is the sender: a phone number (WhatsApp) or `network:<scoped id>`.
        let recipient = conversation
            .strip_prefix(&format!("{network}:"))
            .unwrap_or(&conversation)
            .to_string();
        Ok(Destination {
            network,
            business_id,
            recipient,
        })
    }

    /// Sends one reply; `Ok(false)` when it is not a social reply or was sent before.
    pub async fn send(&self, r: &OutboundReply) -> Result<bool, HandlerError> {
        if r.channel != Channel::Social {
            return Ok(false);
        }
        let dest = self.destination(r).await?;
        let recipient = format!("{}:{}", dest.network, dest.recipient);
        let (path, body) = dest.request(&r.text);
        let url = format!(
            "{}/{}/{path}",
            self.config.graph_api_base.trim_end_matches('/'),
            self.config.graph_api_version
        );
        let sent =
            crate::ledger::deliver_once(&self.pool, r.reply_id, "social", &recipient, || async {
                let resp = self
                    .http
                    .post(&url)
                    .bearer_auth(self.config.access_token.expose())
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| HandlerError::Transient(format!("graph api unreachable: {e}")))?;
                let answer = crate::ledger::provider_answer("social", resp).await?;
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                Ok(v.get("message_id")
                    .or_else(|| v.pointer("/messages/0/id"))
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string())
            })
            .await?;
        if sent.is_none() {
            return Ok(false);
        }
        info!(reply_id = %r.reply_id, network = dest.network.as_str(), "social reply sent");
        Ok(true)
    }
}

impl crate::ledger::ReplySender for SocialSender {
    async fn send_reply(&self, r: &OutboundReply) -> Result<(), HandlerError> {
        self.send(r).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_and_messenger_bodies() {
        let wa = Destination {
            network: "whatsapp".into(),
            business_id: "PN1".into(),
            recipient: "+15550100042".into(),
        };
        let (path, body) = wa.request("hi");
        assert_eq!(path, "PN1/messages");
        assert_eq!(body["to"], "15550100042");
        assert_eq!(body["text"]["body"], "hi");
        let ms = Destination {
            network: "messenger".into(),
            business_id: "PAGE".into(),
            recipient: "123".into(),
        };
        let (path, body) = ms.request("hello");
        assert_eq!(path, "PAGE/messages");
        assert_eq!(body["recipient"]["id"], "123");
        assert_eq!(body["message"]["text"], "hello");
    }
}
