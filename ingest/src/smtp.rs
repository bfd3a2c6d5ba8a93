//! Email in over SMTP: Switchboard as the forwarding target of a support address.
//!
//! An SMTP server (the protocol state machine is the `mailin` crate, driven here over tokio)
//! that accepts mail for the configured support addresses only (never an open relay: any other
//! recipient is `550`). At the end of `DATA` the message is parsed and published; the `250` goes
//! out only after the broker acknowledged the event (or the dead-letter record, for a message
//! that cannot be an event). Broker down or disk full: `451`, so the sending server keeps the
//! message and retries; over `max_message_bytes`: `552`; over the source's rate: `451 4.7.0`.
//! Connections are bounded (`max_connections`, and [`SmtpConfig::max_connections_per_ip`] from
//! one address: `421 4.7.0`) and idle ones closed after 5 minutes. The bytes of messages being
//! received, over all connections together, are bounded ([`SmtpConfig::max_buffered_bytes`]:
//! past it a message is read to its end, kept nowhere and answered `452 4.3.1`, so the sender
//! retries later); so are the recipients of one message ([`SmtpConfig::max_recipients`]: the
//! next `RCPT` is `452 4.5.3`, as RFC 5321 prescribes) and the disk the attachments take
//! (`452 4.3.1` when the store is over its quota). The MIME parsing runs on the blocking pool
//! (see [`crate::email::EmailIntake::parse_off_worker`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::email::{EmailIntake, Intake, IntakeError};

/// The inbound SMTP listener (source type `smtp`): `channels.email.smtp` of pipelines.yaml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Where to listen (localhost by default; put it behind your MX or forwarder).
    pub listen: String,
    /// The name in the greeting.
    pub hostname: String,
    /// Accepted recipients: addresses (`help@example.com`) or domains (`@example.com`); any
    /// other recipient is refused (never an open relay).
    #[serde(deserialize_with = "switchboard_core::config::string_list")]
    pub recipients: Vec<String>,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    /// Connections at once from one IP address (more: `421 4.7.0`).
    pub max_connections_per_ip: usize,
    /// Bytes of messages being received over all connections together (past it a message is
    /// answered `452 4.3.1` and the sender retries later).
    pub max_buffered_bytes: usize,
    /// Recipients of one message (more: `452 4.5.3`).
    pub max_recipients: usize,
    /// Disk the stored email attachments may take in all, SMTP and IMAP alike (`0`: no limit;
    /// past it a message with an attachment is answered `452 4.3.1`, IMAP leaves it unseen).
    pub attachment_quota_bytes: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: "127.0.0.1:2525".into(),
            hostname: "switchboard.localhost".into(),
            recipients: vec!["@switchboard.localhost".into()],
            max_message_bytes: 25 * 1024 * 1024,
            max_connections: 512,
            max_connections_per_ip: 20,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_recipients: 100,
            attachment_quota_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// The bytes held by transactions being received, over all connections.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    fn try_add(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            let _ = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    Some(u.saturating_sub(n))
                });
        }
    }
}

/// Connections per IP address.
#[derive(Debug, Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn try_open(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn close(&self, ip: IpAddr) {
        let mut m = self.0.lock();
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// What the client is told at the end of DATA, and why.
fn final_reply(outcome: &Result<Intake, IntakeError>) -> String {
    match outcome {
        Ok(Intake::Published(id)) => format!("250 2.0.0 accepted as {id}\r\n"),
        Ok(Intake::DeadLettered(reason)) => {
            format!("250 2.0.0 kept for review, not a ticket: {reason}\r\n")
        }
        Err(IntakeError::Broker(_)) => {
            "451 4.3.0 temporarily unable to accept the message, try again later\r\n".into()
        }
        Err(IntakeError::Storage(_)) => {
            "451 4.3.0 temporarily unable to store the message\r\n".into()
        }
        Err(IntakeError::Quota(_)) => {
            "452 4.3.1 insufficient system storage for attachments, try again later\r\n".into()
        }
    }
}

#[derive(Debug, Default)]
struct Transaction {
    recipients: Vec<String>,
    data: Vec<u8>,
    /// Bytes of `data` counted in the shared budget.
    reserved: usize,
    oversize: bool,
    /// The shared budget had no room: the message is read to its end and kept nowhere.
    over_budget: bool,
    complete: bool,
    /// Between MAIL FROM and the final reply: a stop waits for the transaction to end.
    open: bool,
    /// Between DATA and its final dot: lines are the message's, not commands.
    in_data: bool,
}

impl Transaction {
    /// Drops what was received and gives its bytes back to the budget.
    fn discard(&mut self, budget: &Budget) {
        budget.release(std::mem::take(&mut self.reserved));
        self.data = Vec::new();
    }
}

/// The mailin callbacks: collect the transaction; the I/O loop acts on it.
#[derive(Debug)]
struct Collector {
    tx: Arc<Mutex<Transaction>>,
    recipients: Arc<Vec<String>>,
    max: usize,
    max_recipients: usize,
    budget: Arc<Budget>,
}

/// Gives a session's held bytes and its per-IP slot back however the session ends.
struct SessionGuard {
    tx: Arc<Mutex<Transaction>>,
    budget: Arc<Budget>,
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.tx.lock().discard(&self.budget);
        self.per_ip.close(self.ip);
    }
}

impl Collector {
    fn accepts(&self, to: &str) -> bool {
        let to = to
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        self.recipients.iter().any(|r| {
            let r = r.to_ascii_lowercase();
            if r.starts_with('@') {
                to.ends_with(&r)
            } else {
                to == r
            }
        })
    }
}

impl mailin::Handler for Collector {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> mailin::Response {
        let mut tx = self.tx.lock();
        tx.discard(&self.budget);
        *tx = Transaction {
            open: true,
            ..Transaction::default()
        };
        mailin::response::OK
    }

    fn rcpt(&mut self, to: &str) -> mailin::Response {
        if !self.accepts(to) {
            return mailin::response::NO_MAILBOX;
        }
        let mut tx = self.tx.lock();
        if tx.recipients.len() >= self.max_recipients {
            metrics::counter!(crate::telemetry::SMTP_RECIPIENTS_REFUSED_TOTAL).increment(1);
            return mailin::Response::custom(452, "4.5.3 too many recipients".to_string());
        }
        tx.recipients.push(to.to_string());
        mailin::response::OK
    }

    fn data_start(&mut self, _d: &str, _f: &str, _b: bool, _to: &[String]) -> mailin::Response {
        let mut tx = self.tx.lock();
        tx.discard(&self.budget);
        tx.oversize = false;
        tx.over_budget = false;
        tx.complete = false;
        tx.in_data = true;
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut tx = self.tx.lock();
        if tx.oversize || tx.over_budget {
            // Keep reading to the final dot, keep nothing.
        } else if tx.data.len() + buf.len() > self.max {
            tx.oversize = true;
            tx.discard(&self.budget);
        } else if !self.budget.try_add(buf.len()) {
            tx.over_budget = true;
            tx.discard(&self.budget);
        } else {
            tx.reserved += buf.len();
            tx.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        let mut tx = self.tx.lock();
        tx.complete = true;
        tx.in_data = false;
        mailin::response::OK
    }
}

/// The running listener.
#[derive(Debug, Clone)]
pub struct SmtpSource {
    config: SmtpConfig,
    intake: EmailIntake,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    budget: Arc<Budget>,
    per_ip: Arc<PerIp>,
}

const MAX_LINE: u64 = 64 * 1024;

/// Bytes of the budget held until dropped.
struct Held<'a>(&'a Budget, usize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}
const IDLE: Duration = Duration::from_secs(300);

impl SmtpSource {
    /// The listener over `intake`, with the `ingest` section's `smtp` rate limit (messages per
    /// second over all connections).
    pub fn new(config: SmtpConfig, ingest: &crate::IngestConfig, intake: EmailIntake) -> Self {
        let limiter = ingest
            .rate_limit("smtp")
            .and_then(NonZeroU32::new)
            .map(|r| Arc::new(RateLimiter::direct(Quota::per_second(r))));
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: config.max_buffered_bytes,
        });
        SmtpSource {
            config,
            intake,
            limiter,
            budget,
            per_ip: Arc::default(),
        }
    }

    /// Binds the listener (so a caller knows the port is taken before serving).
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        let addr: SocketAddr = self.config.listen.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("channels.email.smtp.listen {:?}: {e}", self.config.listen),
            )
        })?;
        TcpListener::bind(addr).await
    }

    /// Serves connections until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        info!(addr = ?listener.local_addr().ok(), "smtp listening");
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "smtp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics::counter!(crate::telemetry::SMTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
                let mut s = stream;
                let _ = s
                    .write_all(b"421 4.7.0 too many connections, try again later\r\n")
                    .await;
                continue;
            };
            if !self
                .per_ip
                .try_open(peer.ip(), self.config.max_connections_per_ip.max(1))
            {
                metrics::counter!(crate::telemetry::SMTP_CONNECTIONS_REFUSED_TOTAL, "reason" => "per_ip")
                    .increment(1);
                // Answered off the accept loop: a slow peer never holds it up.
                tokio::spawn(async move {
                    let mut s = stream;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        s.write_all(b"421 4.7.0 too many connections from your address, try again later\r\n"),
                    )
                    .await;
                    drop(permit);
                });
                continue;
            }
            let this = self.clone();
            let stop = shutdown.clone();
            sessions.spawn(async move {
                metrics::gauge!(crate::telemetry::SMTP_CONNECTIONS).increment(1.0);
                if let Err(e) = this.session(stream, peer, stop).await {
                    debug!(error = %e, %peer, "smtp session ended");
                }
                metrics::gauge!(crate::telemetry::SMTP_CONNECTIONS).decrement(1.0);
                drop(permit);
            });
        }
        // A session in the middle of a message finishes it before its 421 (the process's drain
        // time bounds the wait); the others answer 421 at once.
        if !sessions.is_empty() {
            info!(
                sessions = sessions.len(),
                "smtp stopping, waiting for open sessions"
            );
        }
        while sessions.join_next().await.is_some() {}
    }

    async fn session(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        // Replies are small writes answered by the client's next command: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let tx = Arc::new(Mutex::new(Transaction::default()));
        let _guard = SessionGuard {
            tx: tx.clone(),
            budget: self.budget.clone(),
            per_ip: self.per_ip.clone(),
            ip: peer.ip(),
        };
        let greeting_name = self.config.hostname.clone();
        let collector = Collector {
            tx: tx.clone(),
            recipients: Arc::new(self.config.recipients.clone()),
            max: self.config.max_message_bytes,
            max_recipients: self.config.max_recipients.max(1),
            budget: self.budget.clone(),
        };
        let builder = mailin::SessionBuilder::new(greeting_name);
        let mut session = builder.build(peer.ip(), collector);
        write.write_all(&session.greeting().buffer()?).await?;
        let mut line = Vec::with_capacity(1024);
        // Set once the stop came during a transaction: the session reads on to its end.
        let mut stopping = false;
        loop {
            line.clear();
            let mut limited = (&mut reader).take(MAX_LINE);
            let read = tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line));
            let read = if stopping {
                read.await
            } else {
                tokio::pin!(read);
                tokio::select! {
                    r = &mut read => r,
                    _ = shutdown.cancelled() => {
                        if !tx.lock().open {
                            write.write_all(b"421 4.3.2 shutting down\r\n").await?;
                            return Ok(());
                        }
                        stopping = true;
                        read.await
                    }
                }
            };
            let n = match read {
                Ok(r) => r?,
                Err(_) => {
                    write
                        .write_all(b"421 4.4.2 idle too long, closing\r\n")
                        .await?;
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
            if stopping
                && !tx.lock().in_data
                && line
                    .get(..4)
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"MAIL"))
            {
                // The transaction was reset: no new one begins while stopping.
                write.write_all(b"421 4.3.2 shutting down\r\n").await?;
                return Ok(());
            }
            if line.last() != Some(&b'\n') {
                write.write_all(b"500 5.5.6 line too long\r\n").await?;
                return Ok(());
            }
            let response = session.process(&line);
            let done = {
                let mut t = tx.lock();
                if t.complete {
                    t.complete = false;
                    t.open = false;
                    // The bytes stay counted until the message is taken.
                    Some((
                        std::mem::take(&mut t.data),
                        std::mem::take(&mut t.reserved),
                        t.oversize,
                        t.over_budget,
                        t.recipients.first().cloned(),
                    ))
                } else {
                    None
                }
            };
            if let Some((data, reserved, oversize, over_budget, recipient)) = done {
                let _held = Held(&self.budget, reserved);
                let reply = if oversize {
                    metrics::counter!(switchboard_core::telemetry::INGEST_REJECTED_TOTAL, "source" => "smtp")
                        .increment(1);
                    format!(
                        "552 5.3.4 message exceeds the size limit of {} bytes\r\n",
                        self.config.max_message_bytes
                    )
                } else if over_budget {
                    metrics::counter!(crate::telemetry::INGEST_REFUSED_TOTAL, "source" => "smtp")
                        .increment(1);
                    warn!(%peer, "smtp message refused: the receive buffers are full");
                    "452 4.3.1 insufficient system storage, try again later\r\n".into()
                } else if self.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
                    metrics::counter!(switchboard_core::telemetry::INGEST_RATE_LIMITED_TOTAL, "source" => "smtp")
                        .increment(1);
                    "451 4.7.0 rate limited, try again later\r\n".into()
                } else {
                    let outcome = self.intake.take(&data, "smtp", recipient.as_deref()).await;
                    if let Err(e) = &outcome {
                        metrics::counter!(crate::telemetry::INGEST_REFUSED_TOTAL, "source" => "smtp")
                            .increment(1);
                        warn!(error = %e, "smtp message not accepted");
                    }
                    final_reply(&outcome)
                };
                write.write_all(reply.as_bytes()).await?;
                if stopping || shutdown.is_cancelled() {
                    write.write_all(b"421 4.3.2 shutting down\r\n").await?;
                    return Ok(());
                }
                continue;
            }
            match response.action {
                mailin::Action::NoReply => {}
                mailin::Action::Close => {
                    write.write_all(&response.buffer()?).await?;
                    return Ok(());
                }
                mailin::Action::Reply | mailin::Action::UpgradeTls => {
                    write.write_all(&response.buffer()?).await?;
                }
            }
        }
    }
}

/// The listener bound to its port, serving until shutdown (the lifecycle of a background loop).
#[derive(Debug)]
pub struct SmtpServer {
    pub source: SmtpSource,
    pub listener: TcpListener,
}

impl switchboard_core::runtime::Background for SmtpServer {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.source.serve(self.listener, shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(recipients: &[&str]) -> Collector {
        Collector {
            tx: Arc::default(),
            recipients: Arc::new(recipients.iter().map(|s| s.to_string()).collect()),
            max: 10,
            max_recipients: 2,
            budget: Arc::new(Budget {
                used: AtomicUsize::new(0),
                max: 15,
            }),
        }
    }

    #[test]
    fn recipients_per_message_are_bounded() {
        use mailin::Handler as _;
        let mut c = collector(&["@example.com"]);
        assert_eq!(c.rcpt("a@example.com").code, 250);
        assert_eq!(c.rcpt("b@example.com").code, 250);
        assert_eq!(c.rcpt("c@example.com").code, 452);
        // A new transaction starts over.
        c.mail("127.0.0.1".parse().expect("ip"), "x", "s@x.org");
        assert_eq!(c.rcpt("c@example.com").code, 250);
    }

    #[test]
    fn the_shared_buffer_budget_bounds_every_connection_together() {
        use mailin::Handler as _;
        let mut a = collector(&["@example.com"]);
        let mut b = collector(&["@example.com"]);
        b.budget = a.budget.clone();
        a.data(b"0123456789").expect("data");
        assert_eq!(a.budget.used.load(Ordering::Acquire), 10);
        // Only 5 bytes of the budget are left: b's message is refused, and holds nothing.
        b.data(b"012345").expect("data");
        assert!(b.tx.lock().over_budget);
        assert!(b.tx.lock().data.is_empty());
        assert_eq!(a.budget.used.load(Ordering::Acquire), 10);
        // a's next transaction gives its bytes back.
        a.data_start("x", "s@x.org", false, &[]);
        assert_eq!(a.budget.used.load(Ordering::Acquire), 0);
        b.data_start("x", "s@x.org", false, &[]);
        b.data(b"012345").expect("data");
        assert!(!b.tx.lock().over_budget);
    }

    #[test]
    fn connections_per_ip_are_bounded() {
        let p = PerIp::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(p.try_open(ip, 2));
        assert!(p.try_open(ip, 2));
        assert!(!p.try_open(ip, 2));
        assert!(p.try_open(other, 2));
        p.close(ip);
        assert!(p.try_open(ip, 2));
    }

    #[test]
    fn the_final_reply_says_whether_to_retry() {
        let id = uuid::Uuid::now_v7();
        assert!(final_reply(&Ok(Intake::Published(id))).starts_with("250 "));
        assert!(final_reply(&Ok(Intake::DeadLettered("no sender".into()))).starts_with("250 "));
        // Broker or disk trouble: a transient 4xx, so the sending server keeps the message.
        assert!(final_reply(&Err(IntakeError::Broker("down".into()))).starts_with("451 "));
        assert!(final_reply(&Err(IntakeError::Storage(
            switchboard_core::storage::StorageError::Config("unreachable".into())
        )))
        .starts_with("451 "));
        assert!(final_reply(&Err(IntakeError::Quota("full".into()))).starts_with("452 "));
    }

    #[test]
    fn only_support_addresses_are_accepted() {
        let c = collector(&["help@example.com", "@support.example.com"]);
        assert!(c.accepts("help@example.com"));
        assert!(c.accepts("<HELP@example.com>"));
        assert!(c.accepts("billing@support.example.com"));
        assert!(!c.accepts("someone@gmail.com"));
        assert!(!c.accepts("help@example.com.evil.org"));
    }

    #[test]
    fn an_oversized_message_keeps_nothing() {
        use mailin::Handler as _;
        let mut c = collector(&["help@example.com"]);
        c.data(b"0123456789").expect("data");
        assert!(!c.tx.lock().oversize);
        c.data(b"x").expect("data");
        assert!(c.tx.lock().oversize);
        assert!(c.tx.lock().data.is_empty());
    }
}
