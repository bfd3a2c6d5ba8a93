//! Web chat: the customer's WebSocket.
//!
//! 1. The widget opens a conversation: `POST /chat/sessions {"email", "name"?}` answers
//!    `{conversation_id, token, verified}`; the token is an HMAC of the conversation and the
//!    customer under `channels.chat.secret`, so any ingest instance can check it without a lookup.
//!    **Identity.** A typed email proves nothing, so such a chat is *unverified*: it is its own
//!    customer, known only by its conversation (`chat:<id>`), and the typed address travels as
//!    `claimed_email`, never matched or merged on (the opener never sees that address's history,
//!    orders or tickets). A shop that knows its visitor signs them, as Intercom's and Zendesk's
//!    identity verification do: `{"identity": {"email"?, "external_id"?, "name"?},
//!    "identity_hmac": hex(HMAC-SHA256(identity_secret, email if given, else external_id))}`,
//!    computed on the shop's backend with `channels.chat.identity_secret`. A valid signature makes
//!    the chat *verified*: it is that customer's (by the signed value only). A wrong signature is
//!    refused (401, field `identity_hmac`), never downgraded to unverified.
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
//! 4. Floods ([`ChatConfig`]): new conversations per client IP per minute, open sockets per IP
//!    and per conversation (429 before the upgrade), every frame type rate-limited per
//!    conversation (all its sockets share one budget: over it typing and receipts are dropped,
//!    messages answered `rate_limited`, and a socket that keeps flooding is closed with 1008), and
//!    a socket on which the customer sent nothing for `idle_timeout_secs` is closed with 4408.
//! 5. An instance that is stopping closes its sockets with 1012 (service restart) once its
//!    unready window is over: the widget reconnects at once with `last_seq`, and the load
//!    balancer sends it to another instance.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use switchboard_contracts::{
    message_id_for, normalise_email, Channel, CustomerRef, Envelope, InboundMessage, OutboundReply,
};
use switchboard_core::config::Secret;
use switchboard_core::http::{ApiError, ApiJson};
use switchboard_core::kafka::{HandlerError, Publisher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::api::truncate;

/// The customer chat WebSocket (source type `chat`): `channels.chat` of pipelines.yaml, with
/// the caps that keep one client from starving the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// Signs conversation tokens; every instance needs the same (environment only:
    /// `SWITCHBOARD__CHANNELS__CHAT__SECRET`). Empty: a random one per process (tokens then
    /// stop working on restart and on other instances).
    pub secret: Secret,
    /// Identity verification: the shop's backend signs the visitor it knows,
    /// `identity_hmac = hex(HMAC-SHA256(identity_secret, email, else external_id))`, and a chat
    /// opened with a valid signature is that customer's (environment only:
    /// `SWITCHBOARD__CHANNELS__CHAT__IDENTITY_SECRET`). Empty: no chat is verified; every chat
    /// is its own customer and a signed identity is refused.
    pub identity_secret: Secret,
    /// Largest frame a client may send.
    pub max_frame_bytes: usize,
    /// Messages per second one conversation may send (all its sockets together).
    pub messages_per_sec: u32,
    /// Frames of any type (message, typing, delivered) per second one conversation may send;
    /// bursts of twice this. Over it, typing and receipts are dropped and messages refused
    /// (`rate_limited`); a socket that keeps sending over it is closed (1008).
    pub frames_per_sec: u32,
    /// New conversations one IP address may open per minute (bursts of this many).
    pub sessions_per_ip_per_min: u32,
    /// Open sockets one IP address may hold.
    pub max_sockets_per_ip: u32,
    /// Open sockets one conversation may have (tabs of one visitor).
    pub max_sockets_per_conversation: u32,
    /// A socket on which the customer sent nothing for this long is closed (4408, `idle`);
    /// the widget reconnects when the customer writes again.
    pub idle_timeout_secs: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            secret: Secret::default(),
            identity_secret: Secret::default(),
            max_frame_bytes: 64 * 1024,
            messages_per_sec: 5,
            frames_per_sec: 20,
            sessions_per_ip_per_min: 60,
            max_sockets_per_ip: 200,
            max_sockets_per_conversation: 8,
            idle_timeout_secs: 900,
        }
    }
}

/// The Postgres channel announcing new log entries (payload: the conversation id).
pub const NOTIFY_MESSAGES: &str = "switchboard_chat";
/// Agent typing, for the customer (payload: `<conversation id>:<0|1>`).
pub const NOTIFY_AGENT_TYPING: &str = "switchboard_chat_agent_typing";
/// Customer typing, for the agent side (payload: `<conversation id>:<0|1>`).
pub const NOTIFY_CUSTOMER_TYPING: &str = "switchboard_chat_customer_typing";

impl ChatConfig {
    /// A socket whose customer sent nothing for this long is closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
}

/// Close code of a socket on which the customer sent nothing for the idle timeout.
pub const CLOSE_IDLE: u16 = 4408;
/// Close code of a socket that kept sending over its conversation's frame budget.
pub const CLOSE_FLOOD: u16 = 1008;
/// Close code of the sockets of an instance that is stopping (RFC 6455 "service restart"): the
/// widget reconnects at once, through the load balancer to another instance, with `last_seq`.
pub const CLOSE_RESTART: u16 = 1012;
/// Refused frames in a row after which a socket is closed.
const FLOOD_CLOSE_AFTER: u32 = 50;

/// `hex(HMAC-SHA256(secret, subject))`: what the shop's backend computes for a visitor it knows
/// (`subject`: the identity's email if it has one, else its external id).
pub fn identity_hmac(secret: &str, subject: &str) -> String {
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut m| {
            m.update(subject.as_bytes());
            hex::encode(m.finalize().into_bytes())
        })
        .unwrap_or_default()
}

/// Whether `signature` (hex, either case) is the identity HMAC of `subject` (constant-time).
pub fn verify_identity(secret: &str, subject: &str, signature: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Ok(sig) = hex::decode(signature.trim()) else {
        return false;
    };
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut m| {
            m.update(subject.as_bytes());
            m.verify_slice(&sig).is_ok()
        })
        .unwrap_or(false)
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
                    metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => "chat").set(0.0);
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
        metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => "chat").set(1.0);
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
    max_text_bytes: usize,
    publisher: Publisher,
    pool: PgPool,
    hub: Arc<ChatHub>,
    guards: Arc<Guards>,
    /// Fires when the process drains: every socket is closed with [`CLOSE_RESTART`].
    shutdown: CancellationToken,
}

/// The in-memory flood state of this instance (the caps are per instance).
struct Guards {
    /// New conversations per client IP.
    sessions: DefaultKeyedRateLimiter<IpAddr>,
    /// Frames of any type per conversation.
    frames: DefaultKeyedRateLimiter<Uuid>,
    /// Messages per conversation.
    messages: DefaultKeyedRateLimiter<Uuid>,
    /// Open sockets per client IP and per conversation.
    open: Mutex<(HashMap<IpAddr, u32>, HashMap<Uuid, u32>)>,
    /// Connections so far (every so many, idle limiter keys are dropped).
    connects: AtomicU64,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("conversations", &self.frames.len())
            .finish()
    }
}

fn per_sec(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Guards {
    fn new(config: &ChatConfig) -> Guards {
        let l = config;
        let frames = per_sec(l.frames_per_sec);
        Guards {
            sessions: RateLimiter::keyed(
                Quota::per_minute(per_sec(l.sessions_per_ip_per_min))
                    .allow_burst(per_sec(l.sessions_per_ip_per_min)),
            ),
            frames: RateLimiter::keyed(
                Quota::per_second(frames).allow_burst(per_sec(frames.get().saturating_mul(2))),
            ),
            messages: RateLimiter::keyed(Quota::per_second(per_sec(config.messages_per_sec))),
            open: Mutex::new((HashMap::new(), HashMap::new())),
            connects: AtomicU64::new(0),
        }
    }

    /// Takes a socket slot for `conversation` (and `ip`, when known), or says which cap is full.
    fn open_socket(
        self: &Arc<Self>,
        limits: &ChatConfig,
        ip: Option<IpAddr>,
        conversation: Uuid,
    ) -> Result<SocketSlot, &'static str> {
        if self.connects.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            // Limiter state of conversations and addresses not seen lately.
            self.frames.retain_recent();
            self.messages.retain_recent();
            self.sessions.retain_recent();
        }
        let mut open = self.open.lock();
        let (per_ip, per_conversation) = &mut *open;
        if per_conversation.get(&conversation).copied().unwrap_or(0)
            >= limits.max_sockets_per_conversation.max(1)
        {
            return Err("conversation");
        }
        if let Some(ip) = ip {
            if per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_sockets_per_ip.max(1) {
                return Err("ip");
            }
            *per_ip.entry(ip).or_default() += 1;
        }
        *per_conversation.entry(conversation).or_default() += 1;
        Ok(SocketSlot {
            guards: self.clone(),
            ip,
            conversation,
        })
    }
}

/// An open socket's place in the caps; given back when dropped.
struct SocketSlot {
    guards: Arc<Guards>,
    ip: Option<IpAddr>,
    conversation: Uuid,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.guards.open.lock();
        let (per_ip, per_conversation) = &mut *open;
        if let Some(ip) = self.ip {
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        if let Some(n) = per_conversation.get_mut(&self.conversation) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_conversation.remove(&self.conversation);
            }
        }
    }
}

/// The client's address, when the server was started with connection info.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// `POST /chat/sessions` body: a signed `identity` (verified), or a typed `email` (unverified).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// The address the visitor typed: kept as their claimed email, never matched on. Required
    /// unless `identity` is given.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The visitor as the shop knows them (signed by `identity_hmac`).
    #[serde(default)]
    pub identity: Option<Identity>,
    /// `hex(HMAC-SHA256(identity_secret, identity.email if given, else identity.external_id))`.
    #[serde(default)]
    pub identity_hmac: Option<String>,
}

/// A visitor the shop signed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub email: Option<String>,
    /// The shop's id for the visitor (identifies them only when no email is given).
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /chat/sessions` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    pub conversation_id: Uuid,
    pub token: String,
    /// Whether the shop signed the visitor's identity (else the chat is its own customer).
    #[serde(default)]
    pub verified: bool,
}

/// Who is writing in a conversation, as its row says.
#[derive(Debug, Clone)]
struct Visitor {
    /// A verified identity, or only the conversation (`chat:<id>`).
    customer: CustomerRef,
    verified: bool,
    /// The address an unverified visitor typed.
    claimed_email: Option<String>,
}

impl Visitor {
    fn of(
        conversation: Uuid,
        email: Option<String>,
        name: Option<String>,
        verified: bool,
        external_id: Option<String>,
    ) -> Visitor {
        if verified {
            // Only the signed value identifies: the email, else the shop's id.
            let handle = match (&email, external_id) {
                (None, Some(x)) => Some(format!("external:{x}")),
                _ => None,
            };
            Visitor {
                customer: CustomerRef {
                    email,
                    phone: None,
                    name,
                    handle,
                },
                verified: true,
                claimed_email: None,
            }
        } else {
            Visitor {
                customer: CustomerRef {
                    email: None,
                    phone: None,
                    name,
                    handle: Some(format!("chat:{conversation}")),
                },
                verified: false,
                claimed_email: email,
            }
        }
    }
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
    /// The chat endpoint with the `ingest` section's text cap. `config.secret` must be set and
    /// shared by every instance (the composition root draws one when it is empty).
    pub fn new(
        config: ChatConfig,
        ingest: &crate::IngestConfig,
        publisher: Publisher,
        pool: PgPool,
        hub: Arc<ChatHub>,
        shutdown: CancellationToken,
    ) -> Self {
        let guards = Arc::new(Guards::new(&config));
        ChatSource {
            config: Arc::new(config),
            max_text_bytes: ingest.max_text_bytes,
            publisher,
            pool,
            hub,
            guards,
            shutdown,
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
        visitor: &Visitor,
        client_id: &str,
        text: &str,
    ) -> Result<Uuid, ApiError> {
        let external = format!("{conversation}:{client_id}");
        let (text, truncated) = truncate(text, self.max_text_bytes);
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("conversation_id".to_string(), conversation.to_string());
        if let Some(e) = &visitor.claimed_email {
            metadata.insert("claimed_email".to_string(), e.clone());
        }
        let m = InboundMessage {
            message_id: message_id_for(Channel::Chat.as_str(), Some(&external)),
            channel: Channel::Chat,
            external_id: Some(external),
            conversation_key: format!("chat:{conversation}"),
            ticket_id: None,
            customer: visitor.customer.clone(),
            subject: None,
            text,
            truncated,
            attachments: Vec::new(),
            metadata,
            received_at: switchboard_core::clock::now(),
            verified: visitor.verified,
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
        visitor: Visitor,
        last_seq: i64,
        slot: SocketSlot,
    ) {
        metrics::gauge!(crate::telemetry::CHAT_CONNECTIONS).increment(1.0);
        let (sub, mut wakes) = self.hub.subscribe(conversation);
        let mut sent = last_seq.max(0);
        let idle = self.config.idle_timeout();
        let mut idle_at = tokio::time::Instant::now() + idle;
        // Frames refused in a row by the conversation's budget.
        let mut refused: u32 = 0;
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
                                metrics::counter!(crate::telemetry::CHAT_DELIVERED_TOTAL).increment(1);
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
                    _ = self.shutdown.cancelled() => {
                        metrics::counter!(crate::telemetry::CHAT_CLOSED_TOTAL, "reason" => "restart").increment(1);
                        debug!(%conversation, "instance stopping, closing the chat socket with a reconnect hint");
                        return close(&mut ws, CLOSE_RESTART, "restarting: reconnect").await;
                    }
                    _ = tokio::time::sleep_until(idle_at) => {
                        metrics::counter!(crate::telemetry::CHAT_CLOSED_TOTAL, "reason" => "idle").increment(1);
                        debug!(%conversation, "chat socket idle, closing");
                        return close(&mut ws, CLOSE_IDLE, "idle").await;
                    }
                    frame = ws.recv() => {
                        let Some(frame) = frame else { return Ok(()) };
                        let frame = frame?;
                        if matches!(frame, WsMessage::Text(_) | WsMessage::Binary(_)) {
                            idle_at = tokio::time::Instant::now() + idle;
                            // Every frame, whatever its type (or none), spends the conversation's budget.
                            if self.guards.frames.check_key(&conversation).is_err() {
                                refused += 1;
                                metrics::counter!(switchboard_core::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => "chat").increment(1);
                                if refused >= FLOOD_CLOSE_AFTER {
                                    metrics::counter!(crate::telemetry::CHAT_CLOSED_TOTAL, "reason" => "flood").increment(1);
                                    warn!(%conversation, "chat socket flooding, closing");
                                    return close(&mut ws, CLOSE_FLOOD, "too many frames").await;
                                }
                                if let WsMessage::Text(t) = &frame {
                                    // A message is told to come again; typing and receipts are dropped.
                                    if let Ok(ClientFrame::Message { client_id, .. }) = serde_json::from_str::<ClientFrame>(t.as_str()) {
                                        send(&mut ws, &error_frame("rate_limited", "too many frames, send again shortly", Some(client_id), true)).await?;
                                    }
                                }
                                continue;
                            }
                            refused = 0;
                        }
                        match frame {
                            WsMessage::Text(t) => {
                                if let Some(reply) = self.on_frame(conversation, &visitor, t.as_str()).await {
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
        drop(slot);
        metrics::gauge!(crate::telemetry::CHAT_CONNECTIONS).decrement(1.0);
    }

    async fn on_frame(
        &self,
        conversation: Uuid,
        visitor: &Visitor,
        text: &str,
    ) -> Option<ServerFrame> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => "chat")
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
                // Control characters (NUL, escapes) do not count as text; they are removed
                // before the ack (crate::publish sanitises the message).
                if switchboard_contracts::text::clean_text(&text)
                    .trim()
                    .is_empty()
                {
                    return Some(error_frame(
                        "bad_frame",
                        "text: must not be empty",
                        Some(client_id),
                        false,
                    ));
                }
                if self.guards.messages.check_key(&conversation).is_err() {
                    metrics::counter!(switchboard_core::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => "chat")
                        .increment(1);
                    return Some(error_frame(
                        "rate_limited",
                        "too many messages, send again shortly",
                        Some(client_id),
                        true,
                    ));
                }
                match self.publish(conversation, visitor, &client_id, &text).await {
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

async fn close(ws: &mut WebSocket, code: u16, reason: &'static str) -> Result<(), axum::Error> {
    ws.send(WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })))
    .await
}

/// Who opens a conversation, as a checked session request says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    /// The signed email (verified), or the typed one (a claim).
    pub email: Option<String>,
    pub name: Option<String>,
    pub verified: bool,
    /// The shop's id for a verified visitor signed without an email.
    pub external_id: Option<String>,
}

/// Checks a session request (see the module docs): who opens the conversation, or why not.
pub fn check_session(identity_secret: &str, req: &NewSession) -> Result<Opener, ApiError> {
    let name_ok = |field: &str, n: &Option<String>| match n {
        Some(n) if n.len() > 200 => Err(ApiError::field(field, "at most 200 bytes")),
        Some(n) if n.chars().any(char::is_control) => {
            Err(ApiError::field(field, "no control characters"))
        }
        _ => Ok(()),
    };
    name_ok("name", &req.name)?;
    let Some(identity) = &req.identity else {
        if req.identity_hmac.is_some() {
            return Err(ApiError::field("identity", "required with identity_hmac"));
        }
        let email = req
            .email
            .as_deref()
            .ok_or_else(|| ApiError::field("email", "required (or a signed identity)"))?;
        let email = normalise_email(email)
            .ok_or_else(|| ApiError::field("email", "not an email address"))?;
        return Ok(Opener {
            email: Some(email),
            name: req.name.clone(),
            verified: false,
            external_id: None,
        });
    };
    name_ok("identity.name", &identity.name)?;
    let hmac = req
        .identity_hmac
        .as_deref()
        .ok_or_else(|| ApiError::field("identity_hmac", "required with identity"))?;
    if identity_secret.is_empty() {
        return Err(ApiError::field(
            "identity",
            "identity verification is not enabled here (channels.chat.identity_secret is not set)",
        ));
    }
    let email = identity
        .email
        .as_deref()
        .map(|e| {
            normalise_email(e)
                .ok_or_else(|| ApiError::field("identity.email", "not an email address"))
        })
        .transpose()?;
    let external_id = match identity.external_id.as_deref() {
        Some(x) if x.is_empty() || x.len() > 255 || x.chars().any(char::is_control) => {
            return Err(ApiError::field(
                "identity.external_id",
                "1 to 255 bytes, no control characters",
            ))
        }
        x => x,
    };
    // The signed value, exactly as the shop sent it.
    let subject = match (identity.email.as_deref(), external_id) {
        (Some(e), _) => e,
        (None, Some(x)) => x,
        (None, None) => {
            return Err(ApiError::field(
                "identity",
                "needs an email or an external_id",
            ))
        }
    };
    if !verify_identity(identity_secret, subject, hmac) {
        metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => "chat")
            .increment(1);
        let mut e =
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                "identity_hmac: not the signature of identity.{} under the shop's identity secret",
                if identity.email.is_some() { "email" } else { "external_id" }
            ),
            );
        e.field = Some("identity_hmac".into());
        return Err(e);
    }
    let name = identity.name.clone().or_else(|| req.name.clone());
    // With an email signed, the external id is not (it identifies nothing then).
    let external_id = if email.is_some() {
        None
    } else {
        external_id.map(str::to_string)
    };
    Ok(Opener {
        email,
        name,
        verified: true,
        external_id,
    })
}

#[utoipa::path(post, path = "/chat/sessions", tag = "channels", request_body = NewSession, responses((status = 201, body = Session), (status = 400, description = "not an email, or a malformed identity"), (status = 401, description = "identity_hmac does not sign the identity"), (status = 429, description = "too many new conversations from this address")))]
async fn new_session(
    State(src): State<ChatSource>,
    peer: Peer,
    ApiJson(req): ApiJson<NewSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    if let Some(Extension(ConnectInfo(addr))) = peer {
        if src.guards.sessions.check_key(&addr.ip()).is_err() {
            metrics::counter!(switchboard_core::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => "chat")
                .increment(1);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many new conversations from this address",
            );
            e.retry_after_secs = Some(60);
            return Err(e);
        }
    }
    let Opener {
        email,
        name,
        verified,
        external_id,
    } = check_session(src.config.identity_secret.expose(), &req)?;
    let conversation = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO chat_conversations (id, customer_email, customer_name, verified, external_id)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(conversation)
    .bind(&email)
    .bind(&name)
    .bind(verified)
    .bind(&external_id)
    .execute(&src.pool)
    .await
    .map_err(|e| ApiError::unavailable(format!("cannot open the conversation: {e}")))?;
    info!(%conversation, verified, "chat conversation opened");
    Ok((
        StatusCode::CREATED,
        Json(Session {
            conversation_id: conversation,
            token: issue_token(
                src.config.secret.expose(),
                conversation,
                email.as_deref().unwrap_or_default(),
            ),
            verified,
        }),
    ))
}

#[utoipa::path(get, path = "/chat/ws", tag = "channels", params(("token" = String, Query), ("last_seq" = Option<i64>, Query)), responses((status = 101, description = "the customer's WebSocket"), (status = 400, description = "an unknown or malformed query parameter"), (status = 401, description = "not a conversation token"), (status = 429, description = "too many open sockets for this conversation or address")))]
async fn connect(
    State(src): State<ChatSource>,
    peer: Peer,
    Query(q): Query<Connect>,
    ws: WebSocketUpgrade,
) -> Response {
    let unauthorized = || {
        metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => "chat")
            .increment(1);
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "token: not a valid conversation token",
        )
        .into_response()
    };
    let Some((conversation, _)) = verify_token(src.config.secret.expose(), &q.token) else {
        return unauthorized();
    };
    // Who writes is what the conversation's row says (its identity was checked when opened).
    type Row = (Option<String>, Option<String>, bool, Option<String>);
    let row: Option<Row> = match sqlx::query_as(
        "SELECT customer_email, customer_name, verified, external_id FROM chat_conversations WHERE id = $1",
    )
    .bind(conversation)
    .fetch_optional(&src.pool)
    .await
    {
        Ok(r) => r,
        Err(e) => {
            return ApiError::unavailable(format!("cannot read the conversation: {e}"))
                .into_response()
        }
    };
    // Gone (erased or expired): the token opens nothing.
    let Some((email, name, verified, external_id)) = row else {
        return unauthorized();
    };
    let visitor = Visitor::of(conversation, email, name, verified, external_id);
    let ip = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let slot = match src.guards.open_socket(&src.config, ip, conversation) {
        Ok(s) => s,
        Err(which) => {
            metrics::counter!(switchboard_core::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => "chat")
                .increment(1);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!("too many open chat sockets for this {which}"),
            );
            e.retry_after_secs = Some(5);
            return e.into_response();
        }
    };
    let max = src.config.max_frame_bytes;
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| src.run_socket(socket, conversation, visitor, q.last_seq, slot))
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
        metrics::counter!(crate::telemetry::OUTBOUND_SENT_TOTAL, "channel" => "chat").increment(1);
        Ok(Some(seq))
    }
}

impl crate::ledger::ReplySender for ChatSender {
    async fn send_reply(&self, r: &OutboundReply) -> Result<(), HandlerError> {
        self.deliver(r).await?;
        Ok(())
    }
}

/// The hub listening to Postgres for new chat entries, until shutdown.
#[derive(Debug)]
pub struct ChatHubListener {
    pub hub: Arc<ChatHub>,
    pub pool: PgPool,
}

impl switchboard_core::runtime::Background for ChatHubListener {
    fn name(&self) -> &'static str {
        "chat-hub"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.hub.listen(self.pool, shutdown)
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

    fn session(v: serde_json::Value) -> NewSession {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn identities_verify_only_under_the_shops_signature() {
        let sig = identity_hmac("shop", "Ann@Example.com");
        assert_eq!(sig.len(), 64);
        assert!(verify_identity("shop", "Ann@Example.com", &sig));
        assert!(verify_identity(
            "shop",
            "Ann@Example.com",
            &sig.to_uppercase()
        ));
        assert!(!verify_identity("shop", "ann@example.com", &sig));
        assert!(!verify_identity("other", "Ann@Example.com", &sig));
        assert!(!verify_identity(
            "",
            "Ann@Example.com",
            &identity_hmac("", "Ann@Example.com")
        ));
        assert!(!verify_identity("shop", "Ann@Example.com", "zz"));

        // Signed: the email identifies, the external id beside it does not.
        let o = check_session(
            "shop",
            &session(serde_json::json!({"identity": {"email": "Ann@Example.com", "external_id": "u1", "name": "Ann"}, "identity_hmac": sig})),
        )
        .unwrap();
        assert_eq!(
            o,
            Opener {
                email: Some("ann@example.com".into()),
                name: Some("Ann".into()),
                verified: true,
                external_id: None
            }
        );
        // Signed by id only.
        let o = check_session(
            "shop",
            &session(serde_json::json!({"identity": {"external_id": "u1"}, "identity_hmac": identity_hmac("shop", "u1")})),
        )
        .unwrap();
        assert_eq!(
            (o.verified, o.external_id.as_deref(), o.email),
            (true, Some("u1"), None)
        );
        // Typed: a claim.
        let o = check_session(
            "shop",
            &session(serde_json::json!({"email": "Ann@Example.com"})),
        )
        .unwrap();
        assert_eq!(
            (o.verified, o.email.as_deref()),
            (false, Some("ann@example.com"))
        );

        let refused = |secret: &str, v: serde_json::Value| {
            let e = check_session(secret, &session(v)).unwrap_err();
            (e.status.as_u16(), e.field.unwrap_or_default())
        };
        let wrong = identity_hmac("shop", "eve@example.com");
        assert_eq!(
            refused(
                "shop",
                serde_json::json!({"identity": {"email": "ann@example.com"}, "identity_hmac": wrong})
            ),
            (401, "identity_hmac".into())
        );
        assert_eq!(
            refused(
                "",
                serde_json::json!({"identity": {"email": "ann@example.com"}, "identity_hmac": wrong})
            ),
            (400, "identity".into())
        );
        assert_eq!(
            refused(
                "shop",
                serde_json::json!({"identity": {"email": "ann@example.com"}})
            ),
            (400, "identity_hmac".into())
        );
        assert_eq!(
            refused("shop", serde_json::json!({"identity_hmac": wrong})),
            (400, "identity".into())
        );
        assert_eq!(
            refused(
                "shop",
                serde_json::json!({"identity": {}, "identity_hmac": wrong})
            ),
            (400, "identity".into())
        );
        assert_eq!(
            refused(
                "shop",
                serde_json::json!({"identity": {"external_id": "x".repeat(256)}, "identity_hmac": wrong})
            ),
            (400, "identity.external_id".into())
        );
        assert_eq!(
            refused(
                "shop",
                serde_json::json!({"email": "ann@example.com", "name": "A\u{1b}[31m"})
            ),
            (400, "name".into())
        );
        assert_eq!(
            refused("shop", serde_json::json!({})),
            (400, "email".into())
        );
    }

    #[test]
    fn an_unverified_visitor_is_only_its_conversation() {
        let c = Uuid::now_v7();
        let v = Visitor::of(c, Some("vic@example.com".into()), None, false, None);
        assert_eq!(v.customer.email, None);
        assert_eq!(v.customer.handle, Some(format!("chat:{c}")));
        assert_eq!(v.claimed_email.as_deref(), Some("vic@example.com"));
        let v = Visitor::of(c, Some("vic@example.com".into()), None, true, None);
        assert_eq!(v.customer.email.as_deref(), Some("vic@example.com"));
        assert_eq!((v.customer.handle, v.claimed_email), (None, None));
        let v = Visitor::of(c, None, None, true, Some("u1".into()));
        assert_eq!(v.customer.handle.as_deref(), Some("external:u1"));
    }

    proptest! {
        /// Any token string verifies only if it was issued under the secret.
        #[test]
        fn random_tokens_never_verify(s in "\\PC{0,120}") {
            prop_assert!(verify_token("s3cret", &s).is_none());
        }
    }
}
