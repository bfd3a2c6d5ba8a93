//! Web chat: the customer's WebSocket.
//!
//! 1. The widget opens a conversation: `POST /chat/sessions {"email", "name"?}` answers
//!    `{conversation_id, token}`; the token is an HMAC of the conversation and the customer under
//!    `channels.chat.secret`, so any ingest instance can check it without a lookup.
//! 2. It connects: `GET /chat/ws?token=...&last_seq=N` (WebSocket). Frames are JSON:
//!    - customer -> server: `{"type":"message","client_id":"c1","text":"..."}`; answered
//!      `{"type":"ack","client_id":"c1","message_id":...}` only after the broker acked the event.
//!      `client_id` is the idempotency key: a client resends what was not acked after a
//!      reconnect and gets the same ack, never a second message. Messages of one conversation
//!      are published in the order they arrive and keyed by conversation (one partition).
//!      `{"type":"typing","on":true}`: the agent side is told (Postgres `NOTIFY`).
//!      `{"type":"delivered","seq":N}`: the customer has seen everything up to N.
//!    - server -> customer: `{"type":"message","seq":N,"id":...,"author":"agent"|"bot","text":...,"at":...}`
//!      in `seq` order; `{"type":"typing","who":"agent","on":true}`;
//!      `{"type":"error","code":...,"message":...,"client_id"?:...,"retry":bool}`.
//! 3. Agent and bot replies reach the chat through the `chat-out` stage ([`ChatSender`]): each
//!    reply is appended to the conversation's log (`chat_log`, a per-conversation `seq`,
//!    idempotent on the reply id) and announced with `NOTIFY`; every instance's [`ChatHub`]
//!    wakes the sockets of that conversation, which read the log after their last sent `seq`.
//!    A reconnect with `last_seq` replays the rest: no loss, no duplicate, in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use switchboard_contracts::{
    message_id_for, normalise_email, Channel, CustomerRef, Envelope, InboundMessage, OutboundReply,
};
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_core::kafka::{HandlerError, Publisher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::api::truncate;

/// The Postgres channel announcing new log entries (payload: the conversation id).
pub const NOTIFY_MESSAGES: &str = "switchboard_chat";
/// Agent typing, for the customer (payload: `<conversation id>:<0|1>`).
pub const NOTIFY_AGENT_TYPING: &str = "switchboard_chat_agent_typing";
/// Customer typing, for the agent side (payload: `<conversation id>:<0|1>`).
pub const NOTIFY_CUSTOMER_TYPING: &str = "switchboard_chat_customer_typing";

/// Settings of the chat endpoint (`channels.chat`).
#[derive(Clone)]
pub struct ChatConfig {
    /// Signs conversation tokens (environment only; all instances share it).
    pub secret: String,
    pub max_text_bytes: usize,
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Messages per second one connection may send (bursts of this many).
    pub messages_per_sec: u32,
}

impl std::fmt::Debug for ChatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatConfig")
            .field("max_text_bytes", &self.max_text_bytes)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("messages_per_sec", &self.messages_per_sec)
            .finish()
    }
}

fn mac(secret: &str, conversation: Uuid, email: &str) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    m.update(conversation.as_bytes());
    m.update(email.as_bytes());
    Some(m)
}

/// The token of a conversation: `<conversation>.<base64url email>.<hex hmac>`.
pub fn issue_token(secret: &str, conversation: Uuid, email: &str) -> String {
    let sig = mac(secret, conversation, email)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(email);
    format!("{conversation}.{e}.{sig}")
}

/// The conversation and customer a token was issued for (constant-time check).
pub fn verify_token(secret: &str, token: &str) -> Option<(Uuid, String)> {
    let mut parts = token.split('.');
    let (c, e, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || secret.is_empty() {
        return None;
    }
    let conversation = Uuid::parse_str(c).ok()?;
    let email = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(e)
            .ok()?,
    )
    .ok()?;
    let sig = hex::decode(s).ok()?;
    mac(secret, conversation, &email)?
        .verify_slice(&sig)
        .ok()
        .map(|_| (conversation, email))
}

/// Frames from the customer.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Message { client_id: String, text: String },
    Typing { on: bool },
    Delivered { seq: i64 },
}

/// Frames to the customer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ack {
        client_id: String,
        message_id: Uuid,
    },
    Message {
        seq: i64,
        id: Uuid,
        author: String,
        text: String,
        at: DateTime<Utc>,
    },
    Typing {
        who: String,
        on: bool,
    },
    Error {
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        retry: bool,
    },
}

/// What wakes a socket.
#[derive(Debug, Clone, Copy)]
enum Wake {
    Messages,
    AgentTyping(bool),
}

/// The sockets of one conversation on this instance (subscription id, wake-up queue).
type Subscribers = Vec<(u64, mpsc::Sender<Wake>)>;

/// Fans `NOTIFY`s out to this instance's sockets.
#[derive(Debug, Default)]
pub struct ChatHub {
    next: AtomicU64,
    sockets: Mutex<HashMap<Uuid, Subscribers>>,
}

impl ChatHub {
    fn subscribe(&self, conversation: Uuid) -> (u64, mpsc::Receiver<Wake>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(8);
        self.sockets
            .lock()
            .entry(conversation)
            .or_default()
            .push((id, tx));
        (id, rx)
    }

    fn unsubscribe(&self, conversation: Uuid, id: u64) {
        let mut s = self.sockets.lock();
        if let Some(v) = s.get_mut(&conversation) {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                s.remove(&conversation);
            }
        }
    }

    fn wake(&self, conversation: Uuid, w: Wake) {
        if let Some(v) = self.sockets.lock().get(&conversation) {
            for (_, tx) in v {
                // A full queue already holds a wake-up; the socket reads everything new.
                let _ = tx.try_send(w);
            }
        }
    }

    /// Follows the notifications until `shutdown` (reconnecting; after a reconnect every socket
    /// is woken, so nothing announced meanwhile is missed).
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        loop {
            match self.listen_once(&pool, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    metrics::gauge!("switchboard_connector_up", "connector" => "chat").set(0.0);
                    warn!(error = %e, "chat notifications lost, reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn listen_once(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen_all([NOTIFY_MESSAGES, NOTIFY_AGENT_TYPING]).await?;
        metrics::gauge!("switchboard_connector_up", "connector" => "chat").set(1.0);
        let all: Vec<Uuid> = self.sockets.lock().keys().copied().collect();
        for c in all {
            self.wake(c, Wake::Messages);
        }
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = l.recv() => n?,
            };
            let payload = n.payload();
            if n.channel() == NOTIFY_MESSAGES {
                if let Ok(c) = Uuid::parse_str(payload) {
                    self.wake(c, Wake::Messages);
                }
            } else if let Some((c, on)) = payload.split_once(':') {
                if let Ok(c) = Uuid::parse_str(c) {
                    self.wake(c, Wake::AgentTyping(on == "1"));
                }
            }
        }
    }
}

/// The running chat endpoint.
#[derive(Debug, Clone)]
pub struct ChatSource {
    config: Arc<ChatConfig>,
    publisher: Publisher,
    pool: PgPool,
    hub: Arc<ChatHub>,
}

/// `POST /chat/sessions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /chat/sessions` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    pub conversation_id: Uuid,
    pub token: String,
}

/// `GET /chat/ws` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    pub token: String,
    #[serde(default)]
    pub last_seq: i64,
}

impl ChatSource {
    pub fn new(config: ChatConfig, publisher: Publisher, pool: PgPool, hub: Arc<ChatHub>) -> Self {
        ChatSource {
            config: Arc::new(config),
            publisher,
            pool,
            hub,
        }
    }

    /// The customer routes (their credential is the conversation token, not the bearer token).
    pub fn router(self) -> Router {
        Router::new()
            .route("/chat/sessions", post(new_session))
            .route("/chat/ws", get(connect))
            .with_state(self)
    }

    async fn publish(
        &self,
        conversation: Uuid,
        customer: &CustomerRef,
        client_id: &str,
        text: &str,
    ) -> Result<Uuid, ApiError> {
        let external = format!("{conversation}:{client_id}");
        let (text, truncated) = truncate(text, self.config.max_text_bytes);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("conversation_id".to_string(), conversation.to_string());
        let m = InboundMessage {
            message_id: message_id_for(Channel::Chat.as_str(), Some(&external)),
            channel: Channel::Chat,
            external_id: Some(external),
            conversation_key: format!("chat:{conversation}"),
            ticket_id: None,
            customer: customer.clone(),
            subject: None,
            text,
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at: switchboard_core::clock::now(),
        };
        let id = m.message_id;
        crate::publish(
            &self.publisher,
            "chat",
            &Envelope::new(id, m.received_at, m),
        )
        .await?;
        Ok(id)
    }

    /// Log entries after `after`, in order.
    async fn entries_after(
        &self,
        conversation: Uuid,
        after: i64,
    ) -> Result<Vec<ServerFrame>, sqlx::Error> {
        let rows: Vec<(i64, Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT seq, reply_id, author, text, created_at FROM chat_log
             WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT 500",
        )
        .bind(conversation)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, id, author, text, at)| ServerFrame::Message {
                seq,
                id,
                author,
                text,
                at,
            })
            .collect())
    }

    async fn run_socket(
        self,
        mut ws: WebSocket,
        conversation: Uuid,
        customer: CustomerRef,
        last_seq: i64,
    ) {
        metrics::gauge!("switchboard_chat_connections").increment(1.0);
        let (sub, mut wakes) = self.hub.subscribe(conversation);
        let mut sent = last_seq.max(0);
        let limiter = governor::RateLimiter::direct(governor::Quota::per_second(
            std::num::NonZeroU32::new(self.config.messages_per_sec.max(1))
                .unwrap_or(std::num::NonZeroU32::MIN),
        ));
        // Subscribed first, then the replay: anything logged meanwhile is read by the wake-up.
        let mut pending_wake = true;
        let result: Result<(), axum::Error> = async {
            loop {
                if pending_wake {
                    pending_wake = false;
                    match self.entries_after(conversation, sent).await {
                        Ok(frames) => {
                            let full = frames.len() == 500;
                            for f in frames {
                                if let ServerFrame::Message { seq, .. } = &f {
                                    sent = *seq;
                                }
                                send(&mut ws, &f).await?;
                                metrics::counter!("switchboard_chat_delivered_total").increment(1);
                            }
                            pending_wake = full;
                        }
                        Err(e) => {
                            warn!(error = %e, %conversation, "chat log read failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            pending_wake = true;
                        }
                    }
                    continue;
                }
                tokio::select! {
                    w = wakes.recv() => match w {
                        Some(Wake::Messages) | None => pending_wake = true,
                        Some(Wake::AgentTyping(on)) => {
                            send(&mut ws, &ServerFrame::Typing { who: "agent".into(), on }).await?;
                        }
                    },
                    frame = ws.recv() => {
                        let Some(frame) = frame else { return Ok(()) };
                        match frame? {
                            WsMessage::Text(t) => {
                                if let Some(reply) = self.on_frame(conversation, &customer, t.as_str(), &limiter).await {
                                    send(&mut ws, &reply).await?;
                                }
                            }
                            WsMessage::Close(_) => return Ok(()),
                            WsMessage::Binary(_) => {
                                send(&mut ws, &error_frame("bad_frame", "frames are JSON text", None, false)).await?;
                            }
                            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                        }
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            debug!(error = %e, %conversation, "chat socket closed");
        }
        self.hub.unsubscribe(conversation, sub);
        metrics::gauge!("switchboard_chat_connections").decrement(1.0);
    }

    async fn on_frame(
        &self,
        conversation: Uuid,
        customer: &CustomerRef,
        text: &str,
        limiter: &governor::DefaultDirectRateLimiter,
    ) -> Option<ServerFrame> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("switchboard_ingest_rejected_total", "source" => "chat")
                    .increment(1);
                return Some(error_frame(
                    "bad_frame",
                    &format!("not a chat frame: {e}"),
                    None,
                    false,
                ));
            }
        };
        match frame {
            ClientFrame::Message { client_id, text } => {
                if client_id.is_empty() || client_id.len() > 128 {
                    return Some(error_frame(
                        "bad_frame",
                        "client_id: 1 to 128 characters",
                        Some(client_id),
                        false,
                    ));
                }
                if text.trim().is_empty() {
                    return Some(error_frame(
                        "bad_frame",
                        "text: must not be empty",
                        Some(client_id),
                        false,
                    ));
                }
                if limiter.check().is_err() {
                    metrics::counter!("switchboard_ingest_rate_limited_total", "source" => "chat")
                        .increment(1);
                    return Some(error_frame(
                        "rate_limited",
                        "too many messages, send again shortly",
                        Some(client_id),
                        true,
                    ));
                }
                match self
                    .publish(conversation, customer, &client_id, &text)
                    .await
                {
                    Ok(message_id) => Some(ServerFrame::Ack {
                        client_id,
                        message_id,
                    }),
                    Err(e) => Some(error_frame(
                        "unavailable",
                        &e.message,
                        Some(client_id),
                        true,
                    )),
                }
            }
            ClientFrame::Typing { on } => {
                let payload = format!("{conversation}:{}", if on { 1 } else { 0 });
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CUSTOMER_TYPING)
                    .bind(payload)
                    .execute(&self.pool)
                    .await
                {
                    debug!(error = %e, "typing not forwarded");
                }
                None
            }
            ClientFrame::Delivered { seq } => {
                if let Err(e) = sqlx::query(
                    "UPDATE chat_conversations SET delivered_seq = GREATEST(delivered_seq, LEAST($2, next_seq - 1)) WHERE id = $1",
                )
                .bind(conversation)
                .bind(seq)
                .execute(&self.pool)
                .await
                {
                    debug!(error = %e, "delivery receipt not stored");
                }
                None
            }
        }
    }
}

fn error_frame(code: &str, message: &str, client_id: Option<String>, retry: bool) -> ServerFrame {
    ServerFrame::Error {
        code: code.into(),
        message: message.into(),
        client_id,
        retry,
    }
}

async fn send(ws: &mut WebSocket, f: &ServerFrame) -> Result<(), axum::Error> {
    let text = serde_json::to_string(f).unwrap_or_default();
    ws.send(WsMessage::Text(text.into())).await
}

#[utoipa::path(post, path = "/chat/sessions", tag = "channels", request_body = NewSession, responses((status = 201, body = Session), (status = 400, description = "not an email")))]
async fn new_session(
    State(src): State<ChatSource>,
    ApiJson(req): ApiJson<NewSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    let email = normalise_email(&req.email)
        .ok_or_else(|| ApiError::field("email", "not an email address"))?;
    if req.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::field("name", "at most 200 bytes"));
    }
    let conversation = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO chat_conversations (id, customer_email, customer_name) VALUES ($1, $2, $3)",
    )
    .bind(conversation)
    .bind(&email)
    .bind(&req.name)
    .execute(&src.pool)
    .await
    .map_err(|e| ApiError::unavailable(format!("cannot open the conversation: {e}")))?;
    info!(%conversation, "chat conversation opened");
    Ok((
        StatusCode::CREATED,
        Json(Session {
            conversation_id: conversation,
            token: issue_token(&src.config.secret, conversation, &email),
        }),
    ))
}

#[utoipa::path(get, path = "/chat/ws", tag = "channels", params(("token" = String, Query), ("last_seq" = Option<i64>, Query)), responses((status = 101, description = "the customer's WebSocket"), (status = 401, description = "not a conversation token")))]
async fn connect(
    State(src): State<ChatSource>,
    Query(q): Query<Connect>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some((conversation, email)) = verify_token(&src.config.secret, &q.token) else {
        metrics::counter!("switchboard_ingest_rejected_total", "source" => "chat").increment(1);
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "token: not a valid conversation token",
        )
        .into_response();
    };
    let name: Option<String> =
        sqlx::query_scalar("SELECT customer_name FROM chat_conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&src.pool)
            .await
            .ok()
            .flatten()
            .flatten();
    let customer = CustomerRef {
        email: Some(email),
        phone: None,
        name,
        handle: None,
    };
    let max = src.config.max_frame_bytes;
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| src.run_socket(socket, conversation, customer, q.last_seq))
}

/// The `chat-out` stage: appends agent and bot replies on chat tickets to the conversation's log
/// and announces them (the sockets deliver). Idempotent on the reply id.
#[derive(Debug, Clone)]
pub struct ChatSender {
    pool: PgPool,
}

impl ChatSender {
    pub fn new(pool: PgPool) -> Self {
        ChatSender { pool }
    }

    /// Logs one reply; `Ok(None)` when it is not a chat reply, else its `seq`.
    pub async fn deliver(&self, r: &OutboundReply) -> Result<Option<i64>, HandlerError> {
        if r.channel != Channel::Chat {
            return Ok(None);
        }
        let t = |e: sqlx::Error| HandlerError::Transient(format!("chat log: {e}"));
        let mut tx = self.pool.begin().await.map_err(t)?;
        let key: Option<String> =
            sqlx::query_scalar("SELECT conversation_key FROM tickets WHERE id = $1")
                .bind(r.ticket_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(t)?
                .flatten();
        let conversation = key
            .as_deref()
            .and_then(|k| k.strip_prefix("chat:"))
            .and_then(|c| Uuid::parse_str(c).ok())
            .ok_or_else(|| {
                HandlerError::Permanent(format!("ticket {} has no chat conversation", r.ticket_id))
            })?;
        if let Some(seq) =
            sqlx::query_scalar::<_, i64>("SELECT seq FROM chat_log WHERE reply_id = $1")
                .bind(r.reply_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(t)?
        {
            return Ok(Some(seq));
        }
        // The conversation row serialises appends: seqs are dense and in commit order.
        let seq: i64 = sqlx::query_scalar(
            "UPDATE chat_conversations SET next_seq = next_seq + 1 WHERE id = $1 RETURNING next_seq - 1",
        )
        .bind(conversation)
        .fetch_optional(&mut *tx)
        .await
        .map_err(t)?
        .ok_or_else(|| HandlerError::Permanent(format!("chat conversation {conversation} not found")))?;
        let author = if r.author_agent_id.is_some() {
            "agent"
        } else {
            "bot"
        };
        sqlx::query(
            "INSERT INTO chat_log (conversation_id, seq, reply_id, author, text) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(conversation)
        .bind(seq)
        .bind(r.reply_id)
        .bind(author)
        .bind(&r.text)
        .execute(&mut *tx)
        .await
        .map_err(t)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_MESSAGES)
            .bind(conversation.to_string())
            .execute(&mut *tx)
            .await
            .map_err(t)?;
        tx.commit().await.map_err(t)?;
        metrics::counter!("switchboard_outbound_sent_total", "channel" => "chat").increment(1);
        Ok(Some(seq))
    }
}

impl crate::ledger::ReplySender for ChatSender {
    async fn send_reply(&self, r: &OutboundReply) -> Result<(), HandlerError> {
        self.deliver(r).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_verify_and_resist_tampering() {
        let c = Uuid::now_v7();
        let t = issue_token("s3cret", c, "ann@example.com");
        assert_eq!(
            verify_token("s3cret", &t),
            Some((c, "ann@example.com".to_string()))
        );
        assert_eq!(verify_token("other", &t), None);
        assert_eq!(verify_token("", &t), None);
        let other = Uuid::now_v7();
        let forged = t.replacen(&c.to_string(), &other.to_string(), 1);
        assert_eq!(verify_token("s3cret", &forged), None);
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("eve@example.com");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(
            verify_token("s3cret", &format!("{}.{e}.{}", parts[0], parts[2])),
            None
        );
    }

    #[test]
    fn client_frames_parse_strictly() {
        assert_eq!(
            serde_json::from_str::<ClientFrame>(
                r#"{"type":"message","client_id":"c1","text":"hi"}"#
            )
            .unwrap(),
            ClientFrame::Message {
                client_id: "c1".into(),
                text: "hi".into()
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"message","text":"hi"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"typing","on":true,"x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
    }

    proptest! {
        /// Any token string verifies only if it was issued under the secret.
        #[test]
        fn random_tokens_never_verify(s in "\\PC{0,120}") {
            prop_assert!(verify_token("s3cret", &s).is_none());
        }
    }
}
