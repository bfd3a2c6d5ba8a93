//! Email out: replies on email tickets, sent over SMTP with the thread's headers.
//!
//! Reads `outbound.replies` and acts on the `email` ones. Each reply goes to the customer's
//! address from the configured support address, as `Re: <subject> [<ticket number>]`, with
//! `In-Reply-To` the customer's latest message and `References` the thread (root first), so
//! the customer's mail program shows one conversation; our `Message-ID` is
//! `<ticket.reply@domain>`, so an answer to it names the ticket even if the subject is changed.
//! The delivery ledger (`deliveries`) sends each reply once; a permanent SMTP refusal (5xx) is
//! dead-lettered with the server's answer, anything else retried.

use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::{PgPool, Row};
use switchboard_contracts::{Channel, OutboundReply};
use switchboard_core::config::Secret;
use switchboard_core::kafka::HandlerError;
use tracing::info;

use switchboard_contracts::text::{clean_line, clean_text, cut_chars};

use crate::email::reply_message_id;

/// How replies leave: an SMTP relay (stage type `email_sender`), `channels.email.outbound` of
/// pipelines.yaml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSenderConfig {
    /// Empty: email replies cannot be sent and are dead-lettered with that reason.
    pub host: String,
    pub port: u16,
    /// `none` (localhost only), `starttls` or `tls`.
    pub security: SmtpSecurity,
    pub username: String,
    /// Environment only: `SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__PASSWORD`.
    pub password: Secret,
    /// The From of replies, e.g. `Support <help@example.com>`.
    pub from: String,
}

impl Default for EmailSenderConfig {
    fn default() -> Self {
        EmailSenderConfig {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::StartTls,
            username: String::new(),
            password: Secret::default(),
            from: "Support <support@switchboard.localhost>".into(),
        }
    }
}

/// A reply's subject keeps at most this many characters of the customer's (plus `Re: ` and the
/// ticket number).
const MAX_SUBJECT_CHARS: usize = 400;

/// How to talk to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP (a relay on localhost only).
    None,
    /// STARTTLS required.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The relay `config` names and the From it sends as (replies and the people's notifications
/// share it).
pub fn relay(
    config: &EmailSenderConfig,
) -> Result<(AsyncSmtpTransport<Tokio1Executor>, Mailbox), EmailSenderError> {
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|e: lettre::address::AddressError| {
            EmailSenderError::From(config.from.clone(), e.to_string())
        })?;
    let tls = |host: &str| {
        TlsParameters::new(host.to_string())
            .map_err(|e| EmailSenderError::Tls(host.to_string(), e.to_string()))
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .timeout(Some(Duration::from_secs(30)));
    builder = match config.security {
        SmtpSecurity::None => builder.tls(Tls::None),
        SmtpSecurity::StartTls => builder.tls(Tls::Required(tls(&config.host)?)),
        SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls(&config.host)?)),
    };
    if !config.username.is_empty() {
        builder = builder.credentials(Credentials::new(
            config.username.clone(),
            config.password.expose().to_string(),
        ));
    }
    Ok((builder.build(), from))
}

/// The running sender.
#[derive(Clone)]
pub struct EmailSender {
    config: EmailSenderConfig,
    /// Our Message-ID domain (`channels.email.domain`, the intake's).
    domain: String,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    pool: PgPool,
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSender")
            .field("config", &self.config)
            .finish()
    }
}

/// A sender that cannot start: the settings are wrong.
#[derive(Debug, thiserror::Error)]
pub enum EmailSenderError {
    #[error("channels.email.outbound.from {0:?} is not a mailbox: {1}")]
    From(String, String),
    #[error("smtp tls settings for {0:?}: {1}")]
    Tls(String, String),
}

/// The thread a reply belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub subject: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

/// The subject of a reply: `Re: ` once, and the ticket number once. Any subject is safe here:
/// no byte offset is taken that could split a character (a subject may begin with Cyrillic,
/// CJK or an emoji), and control characters (a CR/LF would start a new header) become spaces.
pub fn reply_subject(subject: Option<&str>, number: &str) -> String {
    let cleaned = subject.map(clean_line);
    let s = cleaned
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("Your request");
    let s = cut_chars(s, MAX_SUBJECT_CHARS);
    let base = if s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:")) {
        s.to_string()
    } else {
        format!("Re: {s}")
    };
    if base.contains(number) {
        base
    } else {
        format!("{base} [{number}]")
    }
}

impl EmailSender {
    /// The sender through `config`'s relay; `domain`: of our Message-IDs (`channels.email.domain`).
    pub fn new(
        config: EmailSenderConfig,
        domain: String,
        pool: PgPool,
    ) -> Result<Self, EmailSenderError> {
        let (transport, from) = relay(&config)?;
        Ok(EmailSender {
            transport,
            from,
            config,
            domain,
            pool,
        })
    }

    async fn thread(&self, r: &OutboundReply) -> Result<Thread, HandlerError> {
        let row = sqlx::query(
            "SELECT t.number, t.subject, m.external_id, m.metadata->>'email_references' AS refs
             FROM tickets t
             LEFT JOIN LATERAL (SELECT external_id, metadata FROM messages
                                WHERE ticket_id = t.id AND direction = 'inbound' AND channel = 'email'
                                  AND external_id IS NOT NULL
                                ORDER BY received_at DESC LIMIT 1) m ON true
             WHERE t.id = $1",
        )
        .bind(r.ticket_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| HandlerError::Transient(format!("thread lookup: {e}")))?
        .ok_or_else(|| HandlerError::Permanent(format!("ticket {} not found", r.ticket_id)))?;
        let number: String = row
            .try_get("number")
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let subject: Option<String> = row.try_get("subject").unwrap_or(None);
        let last: Option<String> = row
            .try_get("external_id")
            .unwrap_or(None)
            .filter(|id: &String| !id.starts_with("sha256:"))
            .or_else(|| r.in_reply_to.clone());
        let refs: Option<String> = row.try_get("refs").unwrap_or(None);
        let mut references: Vec<String> = refs
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if let Some(l) = &last {
            if !references.contains(l) {
                references.push(l.clone());
            }
        }
        Ok(Thread {
            subject: reply_subject(subject.as_deref(), &number),
            in_reply_to: last,
            references,
        })
    }

    /// Builds the message for a reply (no I/O beyond the thread lookup done by the caller).
    pub fn message(
        &self,
        r: &OutboundReply,
        to: Mailbox,
        thread: &Thread,
    ) -> Result<Message, HandlerError> {
        let id = reply_message_id(r.ticket_id, r.reply_id, &self.domain);
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(thread.subject.clone())
            .message_id(Some(format!("<{id}>")));
        if let Some(irt) = &thread.in_reply_to {
            b = b.in_reply_to(format!("<{irt}>"));
        }
        if !thread.references.is_empty() {
            let refs: Vec<String> = thread.references.iter().map(|r| format!("<{r}>")).collect();
            b = b.references(refs.join(" "));
        }
        // What no person wrote says so (RFC 3834), so the customer's auto-responder stays quiet:
        // the bot's answer to a message is `auto-replied`, a survey `auto-generated`.
        if r.author_agent_id.is_none() {
            let kind = if r.in_reply_to.is_some() {
                "auto-replied"
            } else {
                "auto-generated"
            };
            b = b.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                kind.to_string(),
            ));
        }
        // No NUL or terminal escapes reach the customer's mail program.
        b.header(ContentType::TEXT_PLAIN)
            .body(clean_text(&r.text).into_owned())
            .map_err(|e| HandlerError::Permanent(format!("cannot build the email: {e}")))
    }

    /// Sends one reply; `Ok(false)` when it is not an email reply or was sent before.
    pub async fn send(&self, r: &OutboundReply) -> Result<bool, HandlerError> {
        if r.channel != Channel::Email {
            return Ok(false);
        }
        if self.config.host.is_empty() {
            return Err(crate::ledger::refused(
                "email",
                "no smtp relay is configured (channels.email.outbound.host)".into(),
            ));
        }
        let Some(addr) = r.to.email.as_deref() else {
            return Err(HandlerError::Permanent(
                "an email reply without an address".into(),
            ));
        };
        let to = Mailbox::new(
            r.to.name
                .as_deref()
                .map(|n| cut_chars(clean_line(n).trim(), 200).into_owned())
                .filter(|n| !n.is_empty()),
            addr.parse()
                .map_err(|e| HandlerError::Permanent(format!("bad recipient {addr:?}: {e}")))?,
        );
        let thread = self.thread(r).await?;
        let msg = self.message(r, to, &thread)?;
        let id = reply_message_id(r.ticket_id, r.reply_id, &self.domain);
        let sent = crate::ledger::deliver_once(&self.pool, r.reply_id, "email", addr, || async {
            match self.transport.send(msg).await {
                Ok(_) => Ok(id),
                Err(e) if e.is_permanent() => Err(crate::ledger::refused(
                    "email",
                    format!("the smtp relay refused the reply: {e}"),
                )),
                Err(e) => Err(HandlerError::Transient(format!("smtp relay: {e}"))),
            }
        })
        .await?;
        if sent.is_none() {
            return Ok(false);
        }
        info!(reply_id = %r.reply_id, ticket_id = %r.ticket_id, "email sent");
        Ok(true)
    }
}

impl crate::ledger::ReplySender for EmailSender {
    async fn send_reply(&self, r: &OutboundReply) -> Result<(), HandlerError> {
        self.send(r).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_carry_re_and_the_number_once() {
        assert_eq!(
            reply_subject(Some("Refund"), "T-2026-000001"),
            "Re: Refund [T-2026-000001]"
        );
        assert_eq!(
            reply_subject(Some("RE: Refund [T-2026-000001]"), "T-2026-000001"),
            "RE: Refund [T-2026-000001]"
        );
        assert_eq!(
            reply_subject(None, "T-2026-000002"),
            "Re: Your request [T-2026-000002]"
        );
    }

    #[test]
    fn subjects_that_begin_with_multibyte_characters_do_not_panic() {
        // Production went down on the first of these: `s[..3]` inside a two-byte character.
        for (subject, want) in [
            ("Привет", "Re: Привет [T-1]"),
            ("Ré: commande", "Re: Ré: commande [T-1]"),
            ("注文について", "Re: 注文について [T-1]"),
            ("😀 order", "Re: 😀 order [T-1]"),
            ("e\u{301}", "Re: e\u{301} [T-1]"),
            ("Re: Привет", "Re: Привет [T-1]"),
            (
                "hi\r\nBcc: x@evil.example",
                "Re: hi  Bcc: x@evil.example [T-1]",
            ),
            ("\u{0}", "Re: Your request [T-1]"),
        ] {
            assert_eq!(reply_subject(Some(subject), "T-1"), want, "{subject:?}");
        }
    }
}
