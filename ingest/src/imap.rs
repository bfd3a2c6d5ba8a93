//! Email in over IMAP: polls a support mailbox.
//!
//! Every `poll_interval` the poller logs in, selects the mailbox, finds the unseen messages
//! (`UID SEARCH UNSEEN`), fetches each with `BODY.PEEK[]` (fetching does not mark it seen), hands
//! it to the email intake, and only after the broker acknowledged the event (or its dead-letter
//! record) flags it `\Seen`. A crash between the two re-reads the message next time; its
//! Message-ID makes that the same message downstream, so nothing is lost or doubled. Broker
//! down, or the attachment store over its quota: the round stops, the message stays unseen and
//! is taken on a later poll. The MIME parsing runs on the blocking pool, like the SMTP
//! listener's ([`crate::email::EmailIntake::parse_off_worker`]).
//!
//! Health: `switchboard_connector_up{connector="imap"}` (1 after a good poll, 0 after a failed
//! one) and `switchboard_imap_polls_total{result}`.

use std::time::Duration;

use futures::TryStreamExt;
use switchboard_core::config::Secret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::email::{EmailIntake, Intake, IntakeError};

/// The IMAP poller (source type `imap`): `channels.email.imap` of pipelines.yaml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    /// IMAPS; turn off only for a server on localhost.
    pub tls: bool,
    pub username: String,
    /// Environment only: `SWITCHBOARD__CHANNELS__EMAIL__IMAP__PASSWORD`.
    pub password: Secret,
    pub mailbox: String,
    pub poll_interval_ms: u64,
    /// At most this many messages per poll.
    pub batch: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            host: String::new(),
            port: 993,
            tls: true,
            username: String::new(),
            password: Secret::default(),
            mailbox: "INBOX".into(),
            poll_interval_ms: 5000,
            batch: 100,
        }
    }
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot reach the imap server: {0}")]
    Connect(std::io::Error),
    #[error("imap: {0}")]
    Protocol(#[from] async_imap::error::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

impl ImapError {
    /// Every poll failure is retried at the next poll; this says whether waiting can help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ImapError::Protocol(async_imap::error::Error::No(_)))
    }
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    pub published: usize,
    pub dead_lettered: usize,
}

/// The running poller.
#[derive(Debug, Clone)]
pub struct ImapPoller {
    config: ImapConfig,
    intake: EmailIntake,
}

impl ImapPoller {
    pub fn new(config: ImapConfig, intake: EmailIntake) -> Self {
        ImapPoller { config, intake }
    }

    /// Polls until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            host = self.config.host.as_str(),
            mailbox = self.config.mailbox.as_str(),
            "imap poller started"
        );
        loop {
            match self.poll_once().await {
                Ok(r) => {
                    metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => "imap").set(1.0);
                    metrics::counter!(crate::telemetry::IMAP_POLLS_TOTAL, "result" => "ok")
                        .increment(1);
                    if r.published + r.dead_lettered > 0 {
                        info!(
                            published = r.published,
                            dead_lettered = r.dead_lettered,
                            "imap poll"
                        );
                    }
                }
                Err(e) => {
                    metrics::gauge!(crate::telemetry::CONNECTOR_UP, "connector" => "imap").set(0.0);
                    metrics::counter!(crate::telemetry::IMAP_POLLS_TOTAL, "result" => "error")
                        .increment(1);
                    warn!(error = %e, retryable = e.is_retryable(), "imap poll failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_interval_ms.max(100))) => {}
            }
        }
    }

    /// One poll: takes every unseen message (up to `batch`).
    pub async fn poll_once(&self) -> Result<PollReport, ImapError> {
        let tcp = TcpStream::connect((self.config.host.as_str(), self.config.port))
            .await
            .map_err(ImapError::Connect)?;
        if self.config.tls {
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config()));
            let name = rustls_name(&self.config.host)?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ImapError::Tls(e.to_string()))?;
            self.poll_on(stream).await
        } else {
            self.poll_on(tcp).await
        }
    }

    async fn poll_on<S>(&self, stream: S) -> Result<PollReport, ImapError>
    where
        S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
    {
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .map_err(ImapError::Connect)?
            .ok_or_else(|| ImapError::Connect(std::io::Error::other("no greeting")))?;
        let mut session = client
            .login(&self.config.username, self.config.password.expose())
            .await
            .map_err(|(e, _)| e)?;
        session.select(&self.config.mailbox).await?;
        let mut uids: Vec<u32> = session.uid_search("UNSEEN").await?.into_iter().collect();
        uids.sort_unstable();
        uids.truncate(self.config.batch.max(1));
        let mut report = PollReport::default();
        for uid in uids {
            let fetched: Vec<_> = session
                .uid_fetch(uid.to_string(), "BODY.PEEK[]")
                .await?
                .try_collect()
                .await?;
            let Some(raw) = fetched.iter().find_map(|f| f.body().map(<[u8]>::to_vec)) else {
                continue;
            };
            let to = self.config.username.clone();
            match self.intake.take(&raw, "imap", Some(&to)).await? {
                Intake::Published(_) => report.published += 1,
                Intake::DeadLettered(_) => report.dead_lettered += 1,
            }
            let _: Vec<_> = session
                .uid_store(uid.to_string(), "+FLAGS (\\Seen)")
                .await?
                .try_collect()
                .await?;
        }
        session.logout().await?;
        Ok(report)
    }
}

fn tls_config() -> tokio_rustls::rustls::ClientConfig {
    let roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn rustls_name(
    host: &str,
) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>, ImapError> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ImapError::Tls(format!("bad server name {host:?}: {e}")))
}

impl switchboard_core::runtime::Background for ImapPoller {
    fn name(&self) -> &'static str {
        "imap"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        ImapPoller::run(self, shutdown)
    }
}
