//! What the ingest role starts: the front doors named by `sources:` and the reply senders named
//! by `stages:` in pipelines.yaml. The composition root says which ([`Door`], [`Sender`]); this
//! module builds each from its own section.

use std::sync::Arc;

use axum::Router;
use switchboard_core::kafka::ConsumerSettings;
use switchboard_core::runtime::{Ctx, StartError, Started};
use switchboard_core::storage::BlobStore;
use tracing::warn;

use crate::{
    api, chat, email, email_out, imap, ledger, limit, meta, orders, sms, sms_out, smtp, social_out,
    voice,
};
use crate::{ChannelsConfig, IngestConfig};

/// A front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST /v1/messages` for trusted connectors (the admin token).
    Api,
    /// The customer chat: sessions and the WebSocket.
    Chat,
    /// The signed SMS webhook.
    Sms,
    /// Meta's signed webhooks (WhatsApp, Messenger, Instagram).
    Meta,
    /// The signed call-transcript webhook.
    Voice,
    /// The SMTP listener.
    Smtp,
    /// The IMAP poller.
    Imap,
    /// The shop's signed order webhook.
    Orders,
}

/// A reply sender (a consumer of `outbound.replies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Sms,
    Email,
    Social,
    Chat,
}

/// The routes of the front doors that have them.
#[derive(Debug, Default)]
pub struct Routes {
    /// Behind the bearer token (the composition root adds it).
    pub trusted: Router,
    /// The customers' own (the chat: its credential is the conversation token).
    pub customer: Router,
    /// Provider webhooks: their signature authenticates them.
    pub webhooks: Router,
}

/// Where the ingest role's front doors find what they share.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub ingest: &'a IngestConfig,
    pub channels: &'a ChannelsConfig,
    /// `http.listen`: the SMS webhook's URL when `channels.sms.public_url` is empty.
    pub http_listen: &'a str,
}

/// Starts `doors`, each kind once however often it is named; the HTTP ones come back as
/// routes, the SMTP listener and the IMAP poller run as background loops. `blobs`: where mail
/// attachments go.
pub async fn start_doors(
    doors: &[Door],
    cfg: Sections<'_>,
    blobs: Option<&BlobStore>,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<Routes, StartError> {
    let (ingest, channels) = (cfg.ingest, cfg.channels);
    let publisher = &ctx.publisher;
    let mut routes = Routes::default();
    // One door per kind: two sources of a kind share it (their routes are one, and merging a
    // route twice would panic).
    let mut started_doors: Vec<Door> = Vec::with_capacity(doors.len());
    for door in doors {
        if started_doors.contains(door) {
            continue;
        }
        started_doors.push(*door);
        match door {
            Door::Api => {
                let source = api::ApiSource::new(ingest, publisher.clone());
                let r = limit::limited(source.router(), "api", ingest.rate_limit("api"));
                routes.trusted = std::mem::take(&mut routes.trusted).merge(r);
            }
            Door::Chat => {
                let r = start_chat(ingest, &channels.chat, ctx, started)?;
                routes.customer = std::mem::take(&mut routes.customer).merge(r);
            }
            Door::Sms => {
                let mut c = channels.sms.clone();
                if c.auth_token.is_empty() {
                    warn!("channels.sms.auth_token is not set (SWITCHBOARD__CHANNELS__SMS__AUTH_TOKEN): every SMS webhook call is refused");
                }
                if c.public_url.is_empty() {
                    c.public_url = format!("http://{}{}", cfg.http_listen, sms::PATH);
                }
                let r = sms::SmsSource::new(c, ingest, publisher.clone()).router();
                routes.webhooks = std::mem::take(&mut routes.webhooks).merge(r);
            }
            Door::Meta => {
                let c = channels.meta.clone();
                if c.app_secret.is_empty() {
                    warn!("channels.meta.app_secret is not set (SWITCHBOARD__CHANNELS__META__APP_SECRET): every meta webhook is refused");
                }
                let r = meta::MetaSource::new(c, ingest, publisher.clone()).router();
                routes.webhooks = std::mem::take(&mut routes.webhooks).merge(r);
            }
            Door::Voice => {
                let c = channels.voice.clone();
                if c.secret.is_empty() {
                    warn!("channels.voice.secret is not set (SWITCHBOARD__CHANNELS__VOICE__SECRET): every call-transcript webhook is refused");
                }
                let r = voice::VoiceSource::new(c, ingest, publisher.clone()).router();
                routes.webhooks = std::mem::take(&mut routes.webhooks).merge(r);
            }
            Door::Orders => {
                let c = channels.orders.clone();
                if c.secret.is_empty() {
                    warn!("channels.orders.secret is not set (SWITCHBOARD__CHANNELS__ORDERS__SECRET): every order webhook is refused");
                }
                let r = orders::OrdersSource::new(c, ingest, publisher.clone()).router();
                routes.webhooks = std::mem::take(&mut routes.webhooks).merge(r);
            }
            Door::Smtp | Door::Imap => {}
        }
    }
    let smtp = doors.contains(&Door::Smtp);
    let imap = doors.contains(&Door::Imap);
    if smtp || imap {
        let blobs = blobs
            .cloned()
            .ok_or_else(|| StartError::Config("email needs an attachment store".into()))?;
        start_email(smtp, imap, ingest, &channels.email, blobs, ctx, started).await?;
    }
    Ok(routes)
}

/// The chat endpoint and the hub that hears new entries from Postgres.
fn start_chat(
    ingest: &IngestConfig,
    chat: &chat::ChatConfig,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<Router, StartError> {
    let pool = ctx.pool("the chat")?;
    if chat.secret.is_empty() {
        return Err(StartError::Config(
            "channels.chat.secret is empty: the composition root draws one for a single process"
                .into(),
        ));
    }
    let hub = Arc::new(chat::ChatHub::default());
    started.spawn_loop(
        ctx,
        chat::ChatHubListener {
            hub: hub.clone(),
            pool: pool.clone(),
        },
    );
    let source = chat::ChatSource::new(
        chat.clone(),
        ingest,
        ctx.publisher.clone(),
        pool,
        hub,
        ctx.shutdown.clone(),
    );
    Ok(limit::limited(
        source.router(),
        "chat",
        ingest.rate_limit("chat"),
    ))
}

/// The email front doors: the SMTP listener and the IMAP poller over one intake.
async fn start_email(
    smtp: bool,
    imap: bool,
    ingest: &IngestConfig,
    email: &email::EmailConfig,
    blobs: BlobStore,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<(), StartError> {
    let intake = email::EmailIntake::new(email.clone(), ingest, blobs, ctx.publisher.clone());
    if smtp {
        let source = smtp::SmtpSource::new(email.smtp.clone(), ingest, intake.clone());
        let listener = source.bind().await.map_err(|e| {
            StartError::failed(
                format!("cannot listen for smtp on {}", email.smtp.listen),
                e,
            )
        })?;
        started.spawn_loop(ctx, smtp::SmtpServer { source, listener });
    }
    if imap {
        if email.imap.host.is_empty() {
            return Err(StartError::Config(
                "an imap source is configured but channels.email.imap.host is empty".into(),
            ));
        }
        started.spawn_loop(ctx, imap::ImapPoller::new(email.imap.clone(), intake));
    }
    Ok(())
}

/// Starts the reply sender `sender` as the consumer `stage` with `settings`.
pub fn start_sender(
    sender: Sender,
    stage: &str,
    settings: ConsumerSettings,
    channels: &ChannelsConfig,
    ctx: &Ctx,
    started: &mut Started,
) -> Result<(), StartError> {
    let pool = ctx.pool("the reply senders")?;
    let bad = |e: reqwest::Error| StartError::failed("cannot build the http client", e);
    match sender {
        Sender::Sms => {
            let h = sms_out::SmsSender::new(channels.sms.clone(), pool).map_err(bad)?;
            started.spawn_consumer(ctx, stage, settings, ledger::Replies(h));
        }
        Sender::Email => {
            let email = &channels.email;
            if email.outbound.host.is_empty() {
                warn!("channels.email.outbound.host is not set: email replies are dead-lettered");
            }
            let h = email_out::EmailSender::new(email.outbound.clone(), email.domain.clone(), pool)
                .map_err(|e| StartError::Config(e.to_string()))?;
            started.spawn_consumer(ctx, stage, settings, ledger::Replies(h));
        }
        Sender::Social => {
            let h = social_out::SocialSender::new(channels.meta.clone(), pool).map_err(bad)?;
            started.spawn_consumer(ctx, stage, settings, ledger::Replies(h));
        }
        Sender::Chat => {
            let h = chat::ChatSender::new(pool);
            started.spawn_consumer(ctx, stage, settings, ledger::Replies(h));
        }
    }
    Ok(())
}
