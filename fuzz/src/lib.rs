//! The bodies of Switchboard's fuzz targets, one plain function per target, so that the
//! libFuzzer binaries (`fuzz_targets/*.rs`, run with `cargo fuzz`) and the corpus replay test
//! (`tests/replay.rs`, run on stable by CI) exercise exactly the same code.
//!
//! Each function takes arbitrary bytes, feeds them to a front door's parser the way the server
//! does, and asserts the invariants that make an accepted input safe to acknowledge: no panic,
//! no text a store refuses (NUL and other control characters) in what was accepted, lengths
//! bounded by the input or by the configured limit. Webhook bodies are signed here with the
//! target's own secret, so the fuzzer reaches past the signature check into the parser.
//!
//! An assertion that fails is a bug in the front door, not in the target: report it with the
//! input (libFuzzer writes it under `fuzz/artifacts/<target>/`).

#![forbid(unsafe_code)]
#![warn(rust_2018_idioms, missing_debug_implementations, unreachable_pub)]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use switchboard_contracts::text::{clean_text, is_refused_control, storable_time};
use switchboard_contracts::{normalise_email, order_key, InboundMessage};
use switchboard_core::config::KafkaConfig;
use switchboard_core::kafka::Publisher;
use switchboard_ingest::chat::{self, ClientFrame, Connect, NewSession, Opener};
use switchboard_ingest::email::{self, ParsedEmail};
use switchboard_ingest::meta::{MetaConfig, MetaSource};
use switchboard_ingest::orders::{self, OrdersConfig, OrdersSource};
use switchboard_ingest::sms::{self, SmsConfig, SmsSource};
use switchboard_ingest::voice::{self, VoiceConfig, VoiceSource};
use uuid::Uuid;

/// Our own Message-ID domain in the MIME target (a reference to `<ticket.reply@DOMAIN>` names a
/// ticket).
pub const DOMAIN: &str = "support.example.com";
/// The chat token and identity secrets of the chat target.
pub const CHAT_SECRET: &str = "fuzz-chat-secret";
pub const IDENTITY_SECRET: &str = "fuzz-identity-secret";
/// The webhook secrets the targets sign with.
pub const SMS_TOKEN: &str = "fuzz-sms-token";
pub const SMS_URL: &str = "https://support.example.com/webhooks/sms";
pub const META_SECRET: &str = "fuzz-meta-secret";
pub const VOICE_SECRET: &str = "fuzz-voice-secret";
pub const ORDERS_SECRET: &str = "fuzz-orders-secret";
/// `max_text_bytes` of the webhook sources.
pub const MAX_TEXT: usize = 1600;

/// A target: its name (the folder of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target built with the enabled features.
pub fn targets() -> Vec<Target> {
    vec![
        ("mime", mime),
        ("chat_frame", chat_frame),
        ("sms_webhook", sms_webhook),
        ("meta_webhook", meta_webhook),
        ("voice_webhook", voice_webhook),
        ("order_webhook", order_webhook),
    ]
}

/// A producer that never connects (the sources need one; `normalise` does no I/O).
fn publisher() -> Publisher {
    static P: OnceLock<Publisher> = OnceLock::new();
    P.get_or_init(|| {
        let k = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        match Publisher::new(&k) {
            Ok(p) => p,
            Err(e) => panic!("a producer that never connects could not be made: {e}"),
        }
    })
    .clone()
}

/// Text safe to store as free text (a body, a transcript).
fn assert_free_text(what: &str, s: &str) {
    assert!(
        !s.chars().any(is_refused_control),
        "{what} holds a control character a store refuses: {s:?}"
    );
}

/// Text safe to store and to send back as a single line (a subject, a name, an id).
fn assert_line(what: &str, s: &str) {
    assert!(
        !s.chars().any(char::is_control),
        "{what} holds a control character: {s:?}"
    );
}

/// What every front door promises of a message it acknowledges.
fn assert_storable(m: &InboundMessage, max_text: usize) {
    assert_free_text("text", &m.text);
    assert!(
        m.text.len() <= max_text,
        "text of {} bytes, over the {max_text} bytes taken",
        m.text.len()
    );
    assert!(
        !m.text.trim().is_empty(),
        "an accepted message without text"
    );
    for (what, v) in [
        ("subject", &m.subject),
        ("customer.name", &m.customer.name),
        ("customer.email", &m.customer.email),
        ("customer.phone", &m.customer.phone),
        ("customer.handle", &m.customer.handle),
        ("external_id", &m.external_id),
    ] {
        if let Some(v) = v {
            assert_line(what, v);
        }
    }
    assert_line("conversation_key", &m.conversation_key);
    for (k, v) in &m.metadata {
        assert_line("a metadata key", k);
        assert_line("a metadata value", v);
    }
    for a in &m.attachments {
        assert_line("attachment filename", &a.filename);
        assert_line("attachment content_type", &a.content_type);
    }
    assert!(
        storable_time(m.received_at, chrono::Utc::now()),
        "received_at {} is out of the stores' range",
        m.received_at
    );
}

/// An E.164 number as `normalise_phone` promises it.
fn assert_e164(p: &str) {
    let digits = p.strip_prefix('+').unwrap_or_default();
    assert!(
        (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
        "not E.164: {p:?}"
    );
}

/// `normalise_email`'s promise: a normalised address is its own normal form, without control
/// characters or spaces.
fn assert_email(e: &str) {
    assert_line("email", e);
    assert!(
        !e.contains(char::is_whitespace),
        "email with a space: {e:?}"
    );
    assert_eq!(
        normalise_email(e).as_deref(),
        Some(e),
        "a normalised email is not normal"
    );
}

// ---------------------------------------------------------------------------------------------
// mime

/// The MIME path: `email::parse` on the raw bytes (what SMTP and IMAP hand over), and the reply
/// helpers (`strip_reply`, `ticket_number_in`) on the same bytes read as text.
pub fn mime(data: &[u8]) {
    reply_helpers(&String::from_utf8_lossy(data));
    if let Ok(p) = email::parse(data, DOMAIN) {
        parsed_email(data, &p);
    }
}

fn reply_helpers(text: &str) {
    let (out, _) = email::strip_reply(text);
    assert!(
        out.len() <= text.len(),
        "strip_reply made {} bytes out of {}",
        out.len(),
        text.len()
    );
    if let Some(n) = email::ticket_number_in(text) {
        assert!(
            text.contains(n.as_str()),
            "ticket number {n:?} not in the text"
        );
        assert!(
            n.starts_with("T-") && n.len() <= 2 + 5 + 12,
            "not a ticket number: {n:?}"
        );
        assert_eq!(
            email::ticket_number_in(&n).as_deref(),
            Some(n.as_str()),
            "a ticket number is not found in itself"
        );
    }
}

fn parsed_email(raw: &[u8], p: &ParsedEmail) {
    assert_email(&p.from_email);
    assert!(!p.external_id.is_empty(), "a message without an id");
    assert!(
        p.references.len() <= email::MAX_REFERENCES,
        "{} references kept",
        p.references.len()
    );
    assert!(
        !p.references.contains(&p.external_id),
        "a message refers to itself"
    );
    if let Some(s) = &p.subject {
        assert!(s.chars().count() <= 998, "a subject over 998 characters");
        assert_eq!(
            p.ticket_number,
            email::ticket_number_in(s),
            "ticket number not the subject's"
        );
    } else {
        assert_eq!(p.ticket_number, None, "a ticket number without a subject");
    }
    if let Some(n) = &p.from_name {
        assert!(
            n.chars().count() <= 200,
            "a sender name over 200 characters"
        );
    }
    // Decoding can grow text (a charset byte becomes up to 3 UTF-8 bytes, an undecodable one a
    // 3-byte U+FFFD), never by more than that.
    assert!(
        p.text.len() <= 3 * raw.len() + 16,
        "{} bytes of text out of a {}-byte message",
        p.text.len(),
        raw.len()
    );
    let mut total = 0usize;
    for a in &p.attachments {
        assert!(
            !a.filename.is_empty() && a.filename.chars().count() <= 200,
            "attachment filename {:?}",
            a.filename
        );
        assert!(
            !a.filename.contains(['/', '\\', '"']) && !a.filename.chars().any(char::is_control),
            "unsafe attachment filename {:?}",
            a.filename
        );
        total += a.content.len();
    }
    assert!(
        total <= 3 * raw.len() + 16,
        "{total} bytes of attachments out of a {}-byte message",
        raw.len()
    );
    // What the intake will store after `sanitise`: the same fields, cleaned.
    let mut m = InboundMessage {
        message_id: Uuid::nil(),
        channel: switchboard_contracts::Channel::Email,
        external_id: Some(p.external_id.clone()),
        conversation_key: format!("email:{}", p.thread_root),
        ticket_id: p.ticket_id,
        customer: switchboard_contracts::CustomerRef {
            email: Some(p.from_email.clone()),
            phone: None,
            name: p.from_name.clone(),
            handle: None,
        },
        subject: p.subject.clone(),
        text: p.text.clone(),
        truncated: false,
        attachments: p
            .attachments
            .iter()
            .map(|a| switchboard_contracts::AttachmentMeta {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                size_bytes: a.content.len() as u64,
                storage_key: String::new(),
            })
            .collect(),
        metadata: Default::default(),
        received_at: chrono::Utc::now(),
        verified: false,
    };
    switchboard_ingest::sanitise("fuzz", &mut m);
    if !m.text.trim().is_empty() {
        assert_storable(&m, usize::MAX);
    }
}

// ---------------------------------------------------------------------------------------------
// chat_frame

/// The chat front door: a WebSocket text frame as `on_frame` reads it (`ClientFrame`), a
/// `POST /chat/sessions` body (`check_session`, then the same identity correctly signed), the
/// `GET /chat/ws` query and its token (`verify_token`).
pub fn chat_frame(data: &[u8]) {
    // A WebSocket text frame is UTF-8 (the socket refuses others before the parser).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Message { client_id, text: t }) = serde_json::from_str(text) {
        // What on_frame accepts and publishes (crate::publish sanitises it again).
        let clean = clean_text(&t);
        if !client_id.is_empty() && client_id.len() <= 128 && !clean.trim().is_empty() {
            assert_free_text("chat text", &clean);
        }
    }
    if let Ok(mut req) = serde_json::from_str::<NewSession>(text) {
        session(&req);
        // The same identity signed by the shop: past the signature, into the field checks.
        let subject = req
            .identity
            .as_ref()
            .and_then(|i| i.email.clone().or_else(|| i.external_id.clone()));
        if let Some(s) = subject {
            req.identity_hmac = Some(chat::identity_hmac(IDENTITY_SECRET, &s));
            let o = session(&req);
            assert!(
                o.as_ref().is_none_or(|o| o.verified),
                "a correctly signed identity opened an unverified chat"
            );
        }
    }
    if let Ok(q) = serde_urlencoded::from_str::<Connect>(text) {
        token(&q.token);
    }
    token(text);
}

/// `check_session` on a request; what it lets through is storable and gets a token that
/// verifies to the same conversation and email.
fn session(req: &NewSession) -> Option<Opener> {
    let o = chat::check_session(IDENTITY_SECRET, req).ok()?;
    if let Some(e) = &o.email {
        assert_email(e);
    }
    if let Some(n) = &o.name {
        assert_line("chat name", n);
        assert!(n.len() <= 200, "a chat name over 200 bytes");
    }
    if let Some(x) = &o.external_id {
        assert_line("chat external_id", x);
        assert!(o.email.is_none(), "an external id beside a signed email");
    }
    assert!(
        o.verified || req.identity.is_none(),
        "an identity accepted unverified"
    );
    let conversation = Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0001);
    let email = o.email.clone().unwrap_or_default();
    let t = chat::issue_token(CHAT_SECRET, conversation, &email);
    assert_eq!(
        chat::verify_token(CHAT_SECRET, &t),
        Some((conversation, email)),
        "an issued token does not verify"
    );
    assert_eq!(
        chat::verify_token("another secret", &t),
        None,
        "a token verifies under another secret"
    );
    Some(o)
}

fn token(t: &str) {
    if let Some((conversation, email)) = chat::verify_token(CHAT_SECRET, t) {
        // Only a token we issued verifies: it is the one issued for what it names.
        let again = chat::issue_token(CHAT_SECRET, conversation, &email);
        assert_eq!(
            chat::verify_token(CHAT_SECRET, &again),
            Some((conversation, email)),
            "a re-issued token does not verify"
        );
    }
    assert_eq!(
        chat::verify_token("", t),
        None,
        "a token verifies without a secret"
    );
}

// ---------------------------------------------------------------------------------------------
// sms_webhook

/// The `ingest` section the sources run with here: texts cut at `MAX_TEXT`.
fn ingest() -> switchboard_ingest::IngestConfig {
    switchboard_ingest::IngestConfig {
        max_text_bytes: MAX_TEXT,
        ..switchboard_ingest::IngestConfig::default()
    }
}

fn sms_source() -> &'static SmsSource {
    static S: OnceLock<SmsSource> = OnceLock::new();
    S.get_or_init(|| {
        SmsSource::new(
            SmsConfig {
                auth_token: SMS_TOKEN.into(),
                public_url: SMS_URL.into(),
                ..SmsConfig::default()
            },
            &ingest(),
            publisher(),
        )
    })
}

/// The Twilio webhook: the form body, signed as the provider signs it, through
/// `SmsSource::normalise`; and `normalise_phone` on the body read as text.
pub fn sms_webhook(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(p) = sms::normalise_phone(&text) {
        assert_e164(&p);
        assert_eq!(sms::normalise_phone(&p).as_deref(), Some(p.as_str()));
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(data).into_owned().collect();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&sms::sign(SMS_TOKEN, SMS_URL, &params)) {
        headers.insert("x-twilio-signature", v);
    }
    if let Ok(m) = sms_source().normalise(&headers, data) {
        assert_storable(&m, MAX_TEXT);
        assert_e164(m.customer.phone.as_deref().unwrap_or_default());
    }
    // Unsigned, the same body is refused.
    assert!(
        sms_source().normalise(&HeaderMap::new(), data).is_err(),
        "an unsigned sms accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// meta_webhook

fn meta_source() -> &'static MetaSource {
    static S: OnceLock<MetaSource> = OnceLock::new();
    S.get_or_init(|| {
        MetaSource::new(
            MetaConfig {
                app_secret: META_SECRET.into(),
                verify_token: "fuzz-verify-token".into(),
                ..MetaConfig::default()
            },
            &ingest(),
            publisher(),
        )
    })
}

fn signed(header: &'static str, signature: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&signature) {
        headers.insert(header, v);
    }
    headers
}

/// Meta's webhook (WhatsApp, Messenger, Instagram): the JSON body, signed, through
/// `MetaSource::normalise`.
pub fn meta_webhook(data: &[u8]) {
    let headers = signed("x-hub-signature-256", voice::sign(META_SECRET, data));
    if let Ok(messages) = meta_source().normalise(&headers, data) {
        assert!(
            messages.len() <= data.len(),
            "more messages than bytes in the body"
        );
        for m in &messages {
            assert_storable(m, MAX_TEXT);
            if let Some(p) = &m.customer.phone {
                assert_e164(p);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// voice_webhook

fn voice_source() -> &'static VoiceSource {
    static S: OnceLock<VoiceSource> = OnceLock::new();
    S.get_or_init(|| {
        VoiceSource::new(
            VoiceConfig {
                secret: VOICE_SECRET.into(),
            },
            &ingest(),
            publisher(),
        )
    })
}

/// The call-transcript webhook: the JSON body, signed, through `VoiceSource::normalise`.
pub fn voice_webhook(data: &[u8]) {
    let sig = voice::sign(VOICE_SECRET, data);
    assert!(
        voice::verify(VOICE_SECRET, data, &sig),
        "a signature does not verify"
    );
    if let Ok(m) = voice_source().normalise(&signed("x-signature-256", sig), data) {
        assert_storable(&m, MAX_TEXT);
        assert_e164(m.customer.phone.as_deref().unwrap_or_default());
    }
}

// ---------------------------------------------------------------------------------------------
// order_webhook

fn orders_source() -> &'static OrdersSource {
    static S: OnceLock<OrdersSource> = OnceLock::new();
    S.get_or_init(|| {
        OrdersSource::new(
            OrdersConfig {
                secret: ORDERS_SECRET.into(),
            },
            &ingest(),
            publisher(),
        )
    })
}

/// The shop's order webhook: the body, signed, through `OrdersSource::normalise` (what
/// `POST /webhooks/orders` publishes, and the orders stage binds to Postgres), `cents`, and
/// `order_key` (what `/track` compares) on the body read as text.
pub fn order_webhook(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(k) = order_key(&text) {
        assert!(!k.is_empty(), "an empty order key");
        assert_line("order key", &k);
        assert!(!k.starts_with('#'), "an order key with its #: {k:?}");
    }
    if let Some(c) = orders::cents(&text) {
        assert!(c >= 0, "negative cents {c} from {text:?}");
        let again = format!("{}.{:02}", c / 100, c % 100);
        assert_eq!(orders::cents(&again), Some(c), "cents do not round-trip");
    }
    let sig = orders::sign(ORDERS_SECRET, data);
    assert!(!sig.is_empty());
    let Ok(o) = orders_source().normalise(&signed("x-shopify-hmac-sha256", sig), data) else {
        return;
    };
    assert_email(o.customer.email.as_deref().unwrap_or_default());
    assert!(o.total_cents >= 0);
    // Accepted: every text bound to Postgres must be one it stores (no NUL in `text`, no
    // `\u0000` in `jsonb`), else the stage dead-letters an order the shop was told we took.
    assert!(!o.external_id.is_empty() && o.external_id.len() <= 128);
    for (what, v) in [
        ("order id", Some(&o.external_id)),
        ("order name", Some(&o.number)),
        ("currency", Some(&o.currency)),
        ("customer name", o.customer.name.as_ref()),
        ("financial_status", o.financial_status.as_ref()),
        ("fulfillment_status", o.fulfillment_status.as_ref()),
    ] {
        if let Some(v) = v {
            assert_no_nul(what, v);
        }
    }
    for f in &o.fulfillments {
        for v in [
            &f.status,
            &f.shipment_status,
            &f.tracking_company,
            &f.tracking_number,
            &f.tracking_url,
        ]
        .into_iter()
        .flatten()
        {
            assert_no_nul("fulfillment field", v);
        }
    }
    for l in &o.line_items {
        assert_no_nul("line item title", &l.title);
        if let Some(p) = &l.price {
            assert_no_nul("line item price", p);
        }
    }
    let now = chrono::Utc::now();
    assert!(
        storable_time(o.updated_at, now),
        "an updated_at the stores cannot hold"
    );
}

/// Text Postgres stores (a `text` or `jsonb` value cannot hold NUL).
fn assert_no_nul(what: &str, s: &str) {
    assert!(
        !s.contains('\0'),
        "{what} holds a NUL, which Postgres refuses: {s:?}"
    );
}
