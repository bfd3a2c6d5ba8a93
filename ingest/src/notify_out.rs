//! Notifications out: what concerns agents and supervisors, by email through the relay and by
//! SMS through the provider, as each person's preferences say (`/v1/agents/{id}/notifications`:
//! topics per channel, the phone number, quiet hours). The live stream (in-app) already carries
//! every notification; this stage (`notifier`) carries them further.
//!
//! - Rules' `notify` actions, SLA escalations' `notify_supervisor` and `@` mentions queue
//!   their notifications in the `notifications` ledger in the same transaction as the event
//!   that shows them on the stream (`switchboard_tickets::notify::enqueue`): one row per person
//!   and channel that the notification asks for and the person accepts, due when the person's
//!   quiet hours allow. No consumer reads every event for the few that notify.
//! - [`NotifyDispatcher`] sends what is due: once a person's oldest row on a channel has waited
//!   the digest window, everything due for them there goes in one message; several make a
//!   digest ("12 notifications")
//!   instead of a flood. A refusal the relay or provider calls final fails the rows; anything
//!   else is retried with backoff, up to `max_attempts`.
//!
//! Guarantee: at least once. A crash after the relay took a message and before the ledger
//! recorded it sends it again; every message says it was generated (`Auto-Submitted`).

use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::{PgPool, Row};
use switchboard_contracts::text::{clean_line, cut_chars};
use switchboard_core::kafka::HandlerError;
use switchboard_core::runtime::{Background, Ctx, StartError, Started};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::email_out::{relay, EmailSenderConfig};
use crate::sms::SmsConfig;

/// How notifications leave (`notifications:` of pipelines.yaml; the relay is
/// `channels.email.outbound`, the SMS provider `channels.sms`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// How long a notification waits for others to the same person and channel (ms): what
    /// comes within it goes in one digest.
    pub digest_window_ms: u64,
    /// How often the notifier looks for due notifications (ms).
    pub poll_ms: u64,
    /// Attempts before a notification is given up (`failed`).
    pub max_attempts: u32,
    /// The most notifications one digest lists (the rest are counted).
    pub digest_max_items: usize,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            digest_window_ms: 30_000,
            poll_ms: 1_000,
            max_attempts: 5,
            digest_max_items: 50,
        }
    }
}

/// Starts the dispatcher (the ingest role runs it; instances share the ledger).
pub fn start(
    config: &NotificationsConfig,
    email: &EmailSenderConfig,
    domain: &str,
    sms: &SmsConfig,
    public_url: &str,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<(), StartError> {
    let pool = ctx.pool("the notifier")?;
    let transport = if email.host.is_empty() {
        warn!(
            "channels.email.outbound.host is not set: notifications by email fail with that reason"
        );
        None
    } else {
        Some(relay(email).map_err(|e| StartError::Config(e.to_string()))?)
    };
    let http = crate::ledger::provider_client()
        .map_err(|e| StartError::failed("cannot build the http client", e))?;
    started.spawn_loop(
        ctx,
        NotifyDispatcher {
            config: config.clone(),
            pool,
            transport,
            domain: domain.to_string(),
            sms: sms.clone(),
            http,
            console: format!("{}/console/", public_url.trim_end_matches('/')),
        },
    );
    Ok(())
}

/// One queued notification.
#[derive(Debug, Clone)]
struct Item {
    id: Uuid,
    ticket_number: String,
    text: String,
    recipient: String,
    attempts: i32,
}

/// Sends what is due (see the module doc).
pub struct NotifyDispatcher {
    config: NotificationsConfig,
    pool: PgPool,
    transport: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    domain: String,
    sms: SmsConfig,
    http: reqwest::Client,
    /// Where the console is, for the messages' link.
    console: String,
}

impl std::fmt::Debug for NotifyDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyDispatcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The subject and text of one message carrying `items` (a digest when there are several).
pub fn compose(items: &[(String, String)], max_items: usize, console: &str) -> (String, String) {
    let line =
        |number: &str, text: &str| format!("{number}: {}", cut_chars(clean_line(text).trim(), 300));
    if let [(number, text)] = items {
        let subject = format!("[{number}] {}", cut_chars(clean_line(text).trim(), 120));
        let body = format!(
            "{}\n\nOpen the console: {console}\n",
            switchboard_contracts::text::clean_text(text)
        );
        return (subject, body);
    }
    let subject = format!("{} notifications from Switchboard", items.len());
    let mut body = String::new();
    for (number, text) in items.iter().take(max_items.max(1)) {
        body.push_str("- ");
        body.push_str(&line(number, text));
        body.push('\n');
    }
    if items.len() > max_items.max(1) {
        body.push_str(&format!("…and {} more\n", items.len() - max_items.max(1)));
    }
    body.push_str(&format!("\nOpen the console: {console}\n"));
    (subject, body)
}

impl NotifyDispatcher {
    fn window(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.config.digest_window_ms.min(86_400_000) as i64)
    }

    /// One look for due notifications: how many messages it sent.
    pub async fn pass(&self) -> Result<usize, sqlx::Error> {
        let now = switchboard_core::clock::now();
        // A person's notifications on a channel go once the oldest has waited the window.
        let groups = sqlx::query(
            "SELECT DISTINCT agent_id, channel FROM notifications
             WHERE state = 'pending' AND due_at <= $1 LIMIT 200",
        )
        .bind(now - self.window())
        .fetch_all(&self.pool)
        .await?;
        let mut sent = 0;
        for g in groups {
            let agent: Uuid = g.try_get("agent_id")?;
            let channel: String = g.try_get("channel")?;
            if self.send_group(agent, &channel).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Sends everything due for `agent` on `channel` as one message.
    async fn send_group(&self, agent: Uuid, channel: &str) -> Result<bool, sqlx::Error> {
        let now = switchboard_core::clock::now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, ticket_number, text, recipient, attempts FROM notifications
             WHERE agent_id = $1 AND channel = $2 AND state = 'pending' AND due_at <= $3
             ORDER BY created_at, id LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .bind(agent)
        .bind(channel)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let items: Vec<Item> = rows
            .iter()
            .map(|r| {
                Ok(Item {
                    id: r.try_get("id")?,
                    ticket_number: r.try_get("ticket_number")?,
                    text: r.try_get("text")?,
                    recipient: r.try_get("recipient")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        // Another instance holds them.
        if items.is_empty() {
            return Ok(false);
        }
        let message_id = Uuid::now_v7();
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.ticket_number.clone(), i.text.clone()))
            .collect();
        let (subject, body) = compose(&pairs, self.config.digest_max_items, &self.console);
        // The newest address or number (a person may have changed it meanwhile).
        let to = items
            .last()
            .map(|i| i.recipient.clone())
            .unwrap_or_default();
        let outcome = match channel {
            "email" => self.email(&to, &subject, &body, message_id).await,
            _ => {
                let text = match items.as_slice() {
                    [one] => format!("Switchboard {}: {}", one.ticket_number, one.text),
                    _ => format!("Switchboard: {subject}. {}", body.replace('\n', " ")),
                };
                if self.sms.account_sid.is_empty() || self.sms.from_number.is_empty() {
                    Err(HandlerError::Permanent(
                        "no sms provider is configured (channels.sms.account_sid, from_number)"
                            .into(),
                    ))
                } else {
                    crate::sms_out::send_text(&self.http, &self.sms, &to, &text)
                        .await
                        .map(|_| ())
                }
            }
        };
        let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "UPDATE notifications SET state = 'sent', sent_at = $2, message_id = $3,
                            attempts = attempts + 1, last_error = NULL
                     WHERE id = ANY($1)",
                )
                .bind(&ids)
                .bind(now)
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                metrics::counter!(crate::telemetry::NOTIFICATIONS_SENT_TOTAL, "channel" => channel.to_string())
                    .increment(ids.len() as u64);
                info!(agent_id = %agent, channel, notifications = ids.len(), digest = ids.len() > 1, "notification sent");
                Ok(true)
            }
            Err(e) => {
                let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0) + 1;
                let last = matches!(e, HandlerError::Permanent(_))
                    || attempts >= self.config.max_attempts.max(1) as i32;
                let wait = chrono::Duration::seconds((30i64 << attempts.clamp(0, 7)).min(3600));
                sqlx::query(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = $2,
                            state = CASE WHEN $3 THEN 'failed' ELSE 'pending' END, due_at = $4
                     WHERE id = ANY($1)",
                )
                .bind(&ids)
                .bind(e.to_string())
                .bind(last)
                .bind(now + wait)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                if last {
                    metrics::counter!(crate::telemetry::NOTIFICATIONS_FAILED_TOTAL, "channel" => channel.to_string())
                        .increment(ids.len() as u64);
                }
                warn!(agent_id = %agent, channel, error = %e, given_up = last, "notification not sent");
                Ok(false)
            }
        }
    }

    async fn email(
        &self,
        to: &str,
        subject: &str,
        body: &str,
        message_id: Uuid,
    ) -> Result<(), HandlerError> {
        let Some((transport, from)) = &self.transport else {
            return Err(HandlerError::Permanent(
                "no smtp relay is configured (channels.email.outbound.host)".into(),
            ));
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| HandlerError::Permanent(format!("bad address {to:?}: {e}")))?;
        let msg = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<notification.{message_id}@{}>", self.domain)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_string(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| HandlerError::Permanent(format!("cannot build the email: {e}")))?;
        match transport.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(HandlerError::Permanent(format!(
                "the smtp relay refused the notification: {e}"
            ))),
            Err(e) => Err(HandlerError::Transient(format!("smtp relay: {e}"))),
        }
    }
}

impl Background for NotifyDispatcher {
    fn name(&self) -> &'static str {
        "notify-dispatcher"
    }

    async fn run(self, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.config.poll_ms.clamp(10, 60_000));
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "notification pass failed");
            }
            if !switchboard_core::runtime::pause(every, &shutdown).await {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notification_is_a_message_several_a_digest() {
        let (s, b) = compose(
            &[("T-1".into(), "VIP breached\u{1b}[31m".into())],
            50,
            "http://x/console/",
        );
        assert_eq!(s, "[T-1] VIP breached [31m");
        assert!(b.starts_with("VIP breached"));
        assert!(!b.contains('\u{1b}'));
        let many: Vec<(String, String)> = (0..60)
            .map(|i| (format!("T-{i}"), format!("breach {i}\nsecond line")))
            .collect();
        let (s, b) = compose(&many, 50, "http://x/console/");
        assert_eq!(s, "60 notifications from Switchboard");
        assert_eq!(b.lines().filter(|l| l.starts_with("- ")).count(), 50);
        assert!(b.contains("- T-0: breach 0 second line"), "{b}");
        assert!(b.contains("…and 10 more"));
        assert!(b.ends_with("Open the console: http://x/console/\n"));
    }
}
