//! The front doors as customers and providers use them (SMTP, the chat WebSocket, signed SMS,
//! WhatsApp, voice and order webhooks), and the providers' side of the replies: an SMTP relay
//! that is every customer's mailbox, and stand-ins for the SMS provider's and the Graph API's
//! send endpoints. Every reply reaches the simulated customer it is addressed to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A reply as the customer receives it.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub text: String,
    /// The email's Message-ID (the customer answers with In-Reply-To), the chat message's id.
    pub message_id: Option<String>,
    /// The chat message's conversation and place in it.
    pub seq: Option<(String, i64)>,
    pub at: Instant,
}

/// Per handle the reply ids delivered; per chat conversation the last `seq` seen.
type Seen = (
    HashMap<String, std::collections::HashSet<String>>,
    HashMap<String, i64>,
);

/// Who receives what: customer handle (`email:a@b`, `sms:+1555...`, `social:4915...`) -> the
/// customer's mailbox.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inbox {
    boxes: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Delivered>>>>,
    pub unknown: Arc<std::sync::atomic::AtomicU64>,
    /// Per handle the ids delivered; per chat conversation the last `seq` seen.
    seen: Arc<Mutex<Seen>>,
    /// Replies delivered a second time (same id to the same customer).
    pub duplicates: Arc<std::sync::atomic::AtomicU64>,
    /// The first few of them (`handle id`).
    pub duplicate_samples: Arc<Mutex<Vec<String>>>,
    /// Chat messages that arrived after a later one of their conversation.
    pub out_of_order: Arc<std::sync::atomic::AtomicU64>,
}

impl Inbox {
    pub(crate) fn register(&self, handle: String) -> mpsc::UnboundedReceiver<Delivered> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.boxes.lock().insert(handle, tx);
        rx
    }

    fn deliver(&self, handle: &str, d: Delivered) {
        use std::sync::atomic::Ordering::Relaxed;
        if d.message_id.is_some() || d.seq.is_some() {
            let mut seen = self.seen.lock();
            let (ids, seqs) = &mut *seen;
            if let Some(id) = &d.message_id {
                if !ids
                    .entry(handle.to_string())
                    .or_default()
                    .insert(id.clone())
                {
                    self.duplicates.fetch_add(1, Relaxed);
                    let mut samples = self.duplicate_samples.lock();
                    if samples.len() < 5 {
                        samples.push(format!("{handle} {id}"));
                    }
                    return;
                }
            }
            if let Some((conversation, seq)) = &d.seq {
                let last = seqs.entry(conversation.clone()).or_default();
                if *seq <= *last {
                    self.out_of_order.fetch_add(1, Relaxed);
                }
                *last = (*last).max(*seq);
            }
        }
        let sent = self
            .boxes
            .lock()
            .get(handle)
            .map(|tx| tx.send(d).is_ok())
            .unwrap_or(false);
        if !sent {
            self.unknown
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Starts the providers' side: (SMTP relay port, HTTP port for the SMS and Graph APIs).
pub(crate) async fn start_providers(inbox: Inbox) -> Result<(u16, u16)> {
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let smtp_port = smtp.local_addr()?.port();
    let ib = inbox.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = smtp.accept().await {
            let ib = ib.clone();
            tokio::spawn(async move {
                if let Err(e) = relay_session(sock, ib).await {
                    tracing::debug!(error = %e, "relay session ended");
                }
            });
        }
    });
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_port = http.local_addr()?.port();
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(sms_send))
        .route("/{version}/{business}/messages", post(graph_send))
        .with_state(inbox);
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    Ok((smtp_port, http_port))
}

/// A minimal SMTP server: the relay Switchboard's email sender talks to.
async fn relay_session(sock: tokio::net::TcpStream, inbox: Inbox) -> Result<()> {
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sim.example ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        if cmd.starts_with("EHLO") {
            w.write_all(b"250-sim.example\r\n250 8BITMIME\r\n").await?;
        } else if cmd.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut raw = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" || l == b".\n" {
                    break;
                }
                let l = if l.starts_with(b"..") {
                    &l[1..]
                } else {
                    &l[..]
                };
                raw.extend_from_slice(l);
            }
            if let Some(m) = mail_parser::MessageParser::default().parse(&raw) {
                let to = m
                    .to()
                    .and_then(|a| a.first())
                    .and_then(|a| a.address())
                    .unwrap_or_default()
                    .to_lowercase();
                inbox.deliver(
                    &format!("email:{to}"),
                    Delivered {
                        text: m.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
                        message_id: m.message_id().map(str::to_string),
                        seq: None,
                        at: Instant::now(),
                    },
                );
            }
            w.write_all(b"250 queued\r\n").await?;
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"250 ok\r\n").await?;
        }
    }
}

async fn sms_send(State(inbox): State<Inbox>, body: Bytes) -> Json<Value> {
    let f: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let to = f.get("To").cloned().unwrap_or_default();
    inbox.deliver(
        &format!("sms:{to}"),
        Delivered {
            text: f.get("Body").cloned().unwrap_or_default(),
            message_id: None,
            seq: None,
            at: Instant::now(),
        },
    );
    Json(json!({"sid": format!("SM{}", uuid::Uuid::new_v4().simple())}))
}

async fn graph_send(State(inbox): State<Inbox>, Json(v): Json<Value>) -> Json<Value> {
    let to = v["to"].as_str().unwrap_or_default();
    inbox.deliver(
        &format!("social:{to}"),
        Delivered {
            text: v["text"]["body"].as_str().unwrap_or_default().to_string(),
            message_id: None,
            seq: None,
            at: Instant::now(),
        },
    );
    Json(json!({"messages": [{"id": format!("wamid.out{}", uuid::Uuid::new_v4().simple())}]}))
}

/// The secrets and addresses of the system under simulation.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The ingest process (webhooks, chat, the message API).
    pub ingest: String,
    /// The serving process (agent API, order webhooks, surveys).
    pub serving: String,
    pub smtp: String,
    pub admin_token: String,
    pub sms_token: String,
    pub voice_secret: String,
    pub meta_secret: String,
    pub orders_secret: String,
    pub support_address: String,
    /// Messages per second one chat connection may send (`channels.chat.messages_per_sec`).
    pub chat_rate: u32,
    /// The shop's key for chat identity verification (`channels.chat.identity_secret`).
    pub chat_identity_secret: String,
}

/// How one front-door call went.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// HTTP status or SMTP reply code (0: no answer).
    pub code: u16,
    pub latency: Duration,
    pub body: String,
}

impl Outcome {
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Answers a provider retries: no answer, or the load balancer's or the server's "not now".
fn retryable(code: u16) -> bool {
    matches!(code, 0 | 502 | 503 | 504)
}

/// How long a caller goes on retrying a request that met a restart (`--chaos`): providers retry
/// a webhook for hours; every front door is idempotent by the provider's id.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retrying {
    /// Zero: a pooled connection the server closed meanwhile is retried once, nothing else.
    pub for_: Duration,
    /// Requests that were sent again (each retry counts).
    pub retried: Arc<std::sync::atomic::AtomicU64>,
    /// Chat sockets opened again after the server closed them (a widget always does).
    pub reconnects: Arc<std::sync::atomic::AtomicU64>,
}

impl Retrying {
    /// Waits before attempt `n` (1-based) if it is still worth one; false: give up.
    async fn again(&self, began: Instant, n: u32) -> bool {
        if self.for_.is_zero() {
            return n == 1;
        }
        if began.elapsed() >= self.for_ {
            return false;
        }
        self.retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = Duration::from_millis(100 * 2u64.pow(n.min(4))).min(Duration::from_secs(2));
        tokio::time::sleep(wait).await;
        true
    }
}

async fn http_outcome(retrying: &Retrying, req: reqwest::RequestBuilder) -> Outcome {
    let began = Instant::now();
    let mut attempt = 0;
    let mut next = req;
    loop {
        let again = next.try_clone();
        let mut o = http_once(next).await;
        attempt += 1;
        // Without retries only a connection that failed before anything was sent goes again.
        let worth = if retrying.for_.is_zero() {
            o.code == 0
        } else {
            retryable(o.code)
        };
        match again {
            Some(a) if worth && retrying.again(began, attempt).await => next = a,
            _ => {
                o.latency = began.elapsed();
                return o;
            }
        }
    }
}

async fn http_once(req: reqwest::RequestBuilder) -> Outcome {
    let t = Instant::now();
    match req.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            Outcome {
                code,
                latency: t.elapsed(),
                body,
            }
        }
        Err(e) => Outcome {
            code: 0,
            latency: t.elapsed(),
            body: e.to_string(),
        },
    }
}

/// The front doors.
#[derive(Debug, Clone)]
pub(crate) struct Doors {
    pub t: Target,
    pub http: reqwest::Client,
    pub retrying: Retrying,
}

impl Doors {
    pub(crate) fn new(t: Target, retry_for: Duration) -> Result<Doors> {
        Ok(Doors {
            t,
            retrying: Retrying {
                for_: retry_for,
                retried: Default::default(),
                reconnects: Default::default(),
            },
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// An agent API call, retried like the front doors under `--chaos` (each is idempotent:
    /// reads, status puts, replies by their `request_id`).
    pub(crate) async fn call(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let began = Instant::now();
        let mut attempt = 0;
        let mut next = req;
        loop {
            let again = next.try_clone();
            let r = next.send().await;
            attempt += 1;
            let code = match &r {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            match again {
                Some(a)
                    if !self.retrying.for_.is_zero()
                        && retryable(code)
                        && self.retrying.again(began, attempt).await =>
                {
                    next = a
                }
                _ => return r,
            }
        }
    }

    pub(crate) fn sms_url(&self) -> String {
        format!("{}{}", self.t.ingest, switchboard_ingest::sms::PATH)
    }

    /// A signed SMS webhook call (Twilio form); `bad_signature` signs with the wrong key.
    pub(crate) async fn sms(
        &self,
        sid: &str,
        from: &str,
        text: &str,
        bad_signature: bool,
    ) -> Outcome {
        let params: Vec<(String, String)> = vec![
            ("MessageSid".into(), sid.into()),
            ("From".into(), from.into()),
            ("To".into(), "+15550100000".into()),
            ("Body".into(), text.into()),
            ("NumMedia".into(), "0".into()),
        ];
        let key = if bad_signature {
            "not-the-token"
        } else {
            &self.t.sms_token
        };
        let sig = switchboard_ingest::sms::sign(key, &self.sms_url(), &params);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        http_outcome(
            &self.retrying,
            self.http
                .post(self.sms_url())
                .header("x-twilio-signature", sig)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    /// A signed JSON webhook (`secret` HMAC-SHA256 hex in `header`).
    pub(crate) async fn signed_json(
        &self,
        base: &str,
        path: &str,
        header: &str,
        secret: &str,
        body: Vec<u8>,
    ) -> Outcome {
        let sig = switchboard_ingest::voice::sign(secret, &body);
        http_outcome(
            &self.retrying,
            self.http
                .post(format!("{base}{path}"))
                .header(header, sig)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// A raw body to the voice webhook, signed with the voice secret.
    pub(crate) async fn voice_body(&self, body: Vec<u8>) -> Outcome {
        let (base, secret) = (self.t.ingest.clone(), self.t.voice_secret.clone());
        self.signed_json(
            &base,
            switchboard_ingest::voice::PATH,
            "x-signature-256",
            &secret,
            body,
        )
        .await
    }

    /// A GET on the serving role's API with `token` as the bearer token.
    pub(crate) async fn api_get(&self, path: &str, token: &str) -> Outcome {
        http_outcome(
            &self.retrying,
            self.http
                .get(format!("{}{path}", self.t.serving))
                .bearer_auth(token),
        )
        .await
    }

    /// A raw body to the Meta webhook, signed with the app secret.
    pub(crate) async fn meta_body(&self, body: Vec<u8>) -> Outcome {
        let (base, secret) = (self.t.ingest.clone(), self.t.meta_secret.clone());
        self.signed_json(
            &base,
            switchboard_ingest::meta::PATH,
            "x-hub-signature-256",
            &secret,
            body,
        )
        .await
    }

    /// A WhatsApp message through the Meta webhook.
    pub(crate) async fn whatsapp(&self, id: &str, from: &str, text: &str, at: i64) -> Outcome {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA-SIM", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": "PN-SIM"},
            "contacts": [{"wa_id": from, "profile": {"name": "Sim Customer"}}],
            "messages": [{"from": from, "id": id, "timestamp": at.to_string(), "type": "text", "text": {"body": text}}]}}]}]});
        self.meta_body(serde_json::to_vec(&body).unwrap_or_default())
            .await
    }

    /// A call transcript through the voice webhook.
    pub(crate) async fn voice(&self, call_id: &str, from: &str, text: &str) -> Outcome {
        let body = serde_json::to_vec(&json!({"call_id": call_id, "from": from,
            "turns": [{"speaker": "ivr", "text": "Thanks for calling, how can we help?"}, {"speaker": "customer", "text": text}]}))
        .unwrap_or_default();
        self.voice_body(body).await
    }

    /// A shop's order webhook (Shopify-style, base64 HMAC).
    pub(crate) async fn order(&self, order: &Value, bad_signature: bool) -> Outcome {
        let body = serde_json::to_vec(order).unwrap_or_default();
        let key = if bad_signature {
            "nope"
        } else {
            &self.t.orders_secret
        };
        let sig = switchboard_ingest::orders::sign(key, &body);
        http_outcome(
            &self.retrying,
            self.http
                .post(format!(
                    "{}{}",
                    self.t.ingest,
                    switchboard_ingest::orders::PATH
                ))
                .header("x-shopify-hmac-sha256", sig)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// One email over SMTP (its own connection, TCP_NODELAY as an MTA sends).
    pub(crate) async fn email(&self, raw: &[u8], from: &str) -> Outcome {
        let t = Instant::now();
        let mut attempt = 0;
        // An MTA retries a connection that failed or a temporary refusal (4xx) later; the
        // Message-ID makes the second delivery the same message.
        let r = loop {
            let r = self.smtp_send(raw, from).await;
            attempt += 1;
            let temporary = match &r {
                Ok(code) => (400..500).contains(code),
                Err(_) => true,
            };
            if !(temporary
                && !self.retrying.for_.is_zero()
                && self.retrying.again(t, attempt).await)
            {
                break r;
            }
        };
        let latency = t.elapsed();
        match r {
            Ok(code) => Outcome {
                code,
                latency,
                body: String::new(),
            },
            Err(e) => Outcome {
                code: 0,
                latency,
                body: e.to_string(),
            },
        }
    }

    async fn smtp_send(&self, raw: &[u8], from: &str) -> Result<u16> {
        let sock = tokio::net::TcpStream::connect(&self.t.smtp).await?;
        sock.set_nodelay(true)?;
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<u16> {
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    bail!("connection closed");
                }
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return line
                        .get(..3)
                        .and_then(|c| c.parse().ok())
                        .context("bad reply");
                }
            }
        }
        reply(&mut r).await?;
        for cmd in [
            "EHLO sim.example\r\n".to_string(),
            format!("MAIL FROM:<{from}>\r\n"),
            format!("RCPT TO:<{}>\r\n", self.t.support_address),
        ] {
            w.write_all(cmd.as_bytes()).await?;
            let code = reply(&mut r).await?;
            if code >= 400 {
                return Ok(code);
            }
        }
        w.write_all(b"DATA\r\n").await?;
        let code = reply(&mut r).await?;
        if code != 354 {
            return Ok(code);
        }
        let mut body = Vec::with_capacity(raw.len() + 8);
        for line in raw.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                body.push(b'.');
            }
            body.extend_from_slice(line);
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        w.write_all(&body).await?;
        let code = reply(&mut r).await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Ok(code)
    }
}

/// An email as a customer's mail program writes it.
pub(crate) fn email_raw(
    from: &str,
    to: &str,
    subject: &str,
    message_id: &str,
    in_reply_to: Option<&str>,
    text: &str,
) -> Vec<u8> {
    let mut h = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        chrono::Utc::now().to_rfc2822()
    );
    if let Some(r) = in_reply_to {
        let r = r.trim_matches(|c| c == '<' || c == '>');
        h.push_str(&format!("In-Reply-To: <{r}>\r\nReferences: <{r}>\r\n"));
    }
    h.push_str("\r\n");
    h.push_str(&text.replace('\n', "\r\n"));
    h.push_str("\r\n");
    h.into_bytes()
}

type WsWrite = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    WsMessage,
>;

/// A customer's chat: the session, the socket, acks and the agent's messages. A socket the
/// server closes (a stopping instance: 1012) or that dies is opened again, through the load
/// balancer, with `last_seq` (the rest is replayed), and what was not acked is sent again with
/// its `client_id` (acked once).
pub(crate) struct Chat {
    pub conversation: String,
    /// The socket's address with its token.
    url: String,
    write: WsWrite,
    /// `(client_id, when, acked)`: an ack, or (false) an error frame asking to send again.
    acks: mpsc::UnboundedReceiver<(String, Instant, bool)>,
    ack_tx: mpsc::UnboundedSender<(String, Instant, bool)>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    /// The last `seq` received: where a reconnect resumes.
    last_seq: Arc<std::sync::atomic::AtomicI64>,
    /// False once the current socket's reader saw it close.
    alive: Arc<std::sync::atomic::AtomicBool>,
    inbox: Inbox,
    handle: String,
    retrying: Retrying,
}

impl Chat {
    /// Opens a session and its socket; agent and bot messages go to `inbox` under `handle`.
    pub(crate) async fn open(
        doors: &Doors,
        email: &str,
        inbox: &Inbox,
        handle: &str,
    ) -> Result<Chat> {
        let r = doors
            .call(
                doors
                    .http
                    .post(format!("{}/chat/sessions", doors.t.ingest))
                    // The shop knows its customer and signs the identity, as a real widget would.
                    .json(&json!({
                        "identity": {"email": email, "name": "Sim Customer"},
                        "identity_hmac": switchboard_ingest::chat::identity_hmac(&doors.t.chat_identity_secret, email),
                    })),
            )
            .await?;
        if !r.status().is_success() {
            bail!("chat session: {}", r.status());
        }
        let s: Value = r.json().await?;
        let token = s["token"].as_str().context("no token")?.to_string();
        let conversation = s["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let url = format!(
            "{}/chat/ws?token={token}",
            doors.t.ingest.replacen("http://", "ws://", 1)
        );
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let last_seq = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let write = Self::connect(&url, &last_seq, &alive, &ack_tx, &errors, inbox, handle).await?;
        Ok(Chat {
            conversation,
            url,
            write,
            acks,
            ack_tx,
            errors,
            last_seq,
            alive,
            inbox: inbox.clone(),
            handle: handle.to_string(),
            retrying: doors.retrying.clone(),
        })
    }

    /// Opens the socket (resuming after `last_seq`) and starts its reader.
    async fn connect(
        url: &str,
        last_seq: &Arc<std::sync::atomic::AtomicI64>,
        alive: &Arc<std::sync::atomic::AtomicBool>,
        ack_tx: &mpsc::UnboundedSender<(String, Instant, bool)>,
        errors: &Arc<std::sync::atomic::AtomicU64>,
        inbox: &Inbox,
        handle: &str,
    ) -> Result<WsWrite> {
        use std::sync::atomic::Ordering::Relaxed;
        // The token names the conversation: the key its seqs are checked under.
        let key = url.to_string();
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{url}&last_seq={}", last_seq.load(Relaxed)))
                .await?;
        let (write, mut read) = ws.split();
        alive.store(true, Relaxed);
        let (inbox, handle, errs) = (inbox.clone(), handle.to_string(), errors.clone());
        let (ack_tx, last_seq, alive) = (ack_tx.clone(), last_seq.clone(), alive.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = read.next().await {
                let WsMessage::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("ack") => {
                        let _ = ack_tx.send((
                            v["client_id"].as_str().unwrap_or_default().to_string(),
                            Instant::now(),
                            true,
                        ));
                    }
                    // The widget's contract: `retry: true` on a message means send it again
                    // (the broker did not take it in time); the same client_id is acked once.
                    Some("error")
                        if v["retry"].as_bool() == Some(true) && v["client_id"].is_string() =>
                    {
                        let _ = ack_tx.send((
                            v["client_id"].as_str().unwrap_or_default().to_string(),
                            Instant::now(),
                            false,
                        ));
                    }
                    Some("message") => {
                        let seq = v["seq"].as_i64();
                        if let Some(n) = seq {
                            last_seq.fetch_max(n, Relaxed);
                        }
                        let seq = seq.map(|n| (key.clone(), n));
                        inbox.deliver(
                            &handle,
                            Delivered {
                                text: v["text"].as_str().unwrap_or_default().to_string(),
                                message_id: v["id"].as_str().map(|id| format!("chat:{id}")),
                                seq,
                                at: Instant::now(),
                            },
                        )
                    }
                    Some("error") => {
                        errs.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
            alive.store(false, Relaxed);
        });
        Ok(write)
    }

    /// Opens the socket again after it closed, as a widget does (a stopping instance closes
    /// its sockets with 1012); false when it could not within 30 s (or the retry budget).
    async fn reconnect(&mut self, began: Instant, attempt: &mut u32) -> bool {
        let budget = self.retrying.for_.max(Duration::from_secs(30));
        loop {
            *attempt += 1;
            if began.elapsed() >= budget {
                return false;
            }
            if *attempt > 1 {
                let wait = Duration::from_millis(100 * 2u64.pow((*attempt).min(4)));
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
            }
            self.retrying
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(w) = Self::connect(
                &self.url,
                &self.last_seq,
                &self.alive,
                &self.ack_tx,
                &self.errors,
                &self.inbox,
                &self.handle,
            )
            .await
            {
                self.write = w;
                return true;
            }
        }
    }

    /// Sends a message and waits for its ack (code 200) or 30 s (code 0).
    pub(crate) async fn send(&mut self, client_id: &str, text: &str) -> Outcome {
        use std::sync::atomic::Ordering::Relaxed;
        let t = Instant::now();
        let frame = json!({"type": "message", "client_id": client_id, "text": text}).to_string();
        let mut attempt = 0;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(30).max(self.retrying.for_);
        'send: loop {
            if let Err(e) = self.write.send(WsMessage::Text(frame.clone().into())).await {
                if self.reconnect(t, &mut attempt).await {
                    continue 'send;
                }
                return Outcome {
                    code: 0,
                    latency: t.elapsed(),
                    body: e.to_string(),
                };
            }
            loop {
                let slice = tokio::time::Instant::now() + Duration::from_millis(250);
                match tokio::time::timeout_at(slice.min(deadline), self.acks.recv()).await {
                    Ok(Some((id, at, true))) if id == client_id => {
                        return Outcome {
                            code: 200,
                            latency: at - t,
                            body: String::new(),
                        }
                    }
                    Ok(Some((id, _, false)))
                        if id == client_id && tokio::time::Instant::now() < deadline =>
                    {
                        attempt += 1;
                        self.retrying.retried.fetch_add(1, Relaxed);
                        let wait = Duration::from_millis(100 * 2u64.pow(attempt.min(4)));
                        tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                        continue 'send;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        // The socket died before the ack: open it again and send the same
                        // client_id (acked once, never a second message).
                        if !self.alive.load(Relaxed) {
                            if self.reconnect(t, &mut attempt).await {
                                continue 'send;
                            }
                        } else {
                            continue;
                        }
                    }
                    Err(_) => {}
                }
                return Outcome {
                    code: 0,
                    latency: t.elapsed(),
                    body: "no ack".into(),
                };
            }
        }
    }

    /// Sends `n` frames as fast as possible (a flood) and waits until each was answered (30 s at
    /// most): (acked, refused with an error frame, seconds it took).
    pub(crate) async fn flood(&mut self, n: usize) -> (u64, u64, f64) {
        let t = Instant::now();
        for i in 0..n {
            let frame = json!({"type": "message", "client_id": format!("flood-{i}"), "text": "spam spam spam"}).to_string();
            if self
                .write
                .send(WsMessage::Text(frame.into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let (mut acked, mut told_again) = (0u64, 0u64);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let refused =
            |told_again: u64| self.errors.load(std::sync::atomic::Ordering::Relaxed) + told_again;
        loop {
            if acked + refused(told_again) >= n as u64 {
                break;
            }
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some((_, _, true))) => acked += 1,
                // Refused with "send again" (rate limited): a flood does not.
                Ok(Some((_, _, false))) => told_again += 1,
                _ => break,
            }
        }
        (acked, refused(told_again), t.elapsed().as_secs_f64())
    }

    pub(crate) async fn close(mut self) {
        let _ = self.write.close().await;
    }
}
