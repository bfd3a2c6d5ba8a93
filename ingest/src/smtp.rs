//! Email in over SMTP: Switchboard as the forwarding target of a support address.
//!
//! An SMTP server (the protocol state machine is the `mailin` crate, driven here over tokio)
//! that accepts mail for the configured support addresses only (never an open relay: any other
//! recipient is `550`). At the end of `DATA` the message is parsed and published; the `250` goes
//! out only after the broker acknowledged the event (or the dead-letter record, for a message
//! that cannot be an event). Broker down or disk full: `451`, so the sending server keeps the
//! message and retries; over `max_message_bytes`: `552`; over the source's rate: `451 4.7.0`.
//! Connections are bounded (`max_connections`) and idle ones closed after 5 minutes.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
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

/// Settings of the SMTP listener (`channels.email.smtp`).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Where to listen (localhost by default; put it behind your MX or forwarder).
    pub listen: SocketAddr,
    /// The name in the greeting.
    pub hostname: String,
    /// Accepted recipients: full addresses (`help@example.com`) or whole domains (`@example.com`).
    pub recipients: Vec<String>,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    /// Messages per second over all connections; `None`: unlimited.
    pub rate_per_sec: Option<u32>,
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
    }
}

#[derive(Debug, Default)]
struct Transaction {
    recipients: Vec<String>,
    data: Vec<u8>,
    oversize: bool,
    complete: bool,
}

/// The mailin callbacks: collect the transaction; the I/O loop acts on it.
#[derive(Debug)]
struct Collector {
    tx: Arc<Mutex<Transaction>>,
    recipients: Arc<Vec<String>>,
    max: usize,
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
        *self.tx.lock() = Transaction::default();
        mailin::response::OK
    }

    fn rcpt(&mut self, to: &str) -> mailin::Response {
        if self.accepts(to) {
            self.tx.lock().recipients.push(to.to_string());
            mailin::response::OK
        } else {
            mailin::response::NO_MAILBOX
        }
    }

    fn data_start(&mut self, _d: &str, _f: &str, _b: bool, _to: &[String]) -> mailin::Response {
        let mut tx = self.tx.lock();
        tx.data.clear();
        tx.oversize = false;
        tx.complete = false;
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut tx = self.tx.lock();
        if tx.data.len() + buf.len() > self.max {
            // Keep reading to the final dot, keep nothing.
            tx.oversize = true;
            tx.data = Vec::new();
        } else if !tx.oversize {
            tx.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        self.tx.lock().complete = true;
        mailin::response::OK
    }
}

/// The running listener.
#[derive(Debug, Clone)]
pub struct SmtpSource {
    config: SmtpConfig,
    intake: EmailIntake,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

const MAX_LINE: u64 = 64 * 1024;
const IDLE: Duration = Duration::from_secs(300);

impl SmtpSource {
    pub fn new(config: SmtpConfig, intake: EmailIntake) -> Self {
        let limiter = config
            .rate_per_sec
            .and_then(NonZeroU32::new)
            .map(|r| Arc::new(RateLimiter::direct(Quota::per_second(r))));
        SmtpSource {
            config,
            intake,
            limiter,
        }
    }

    /// Binds the listener (so a caller knows the port is taken before serving).
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.config.listen).await
    }

    /// Serves connections until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        info!(addr = ?listener.local_addr().ok(), "smtp listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
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
                metrics::counter!("switchboard_smtp_connections_refused_total").increment(1);
                let mut s = stream;
                let _ = s
                    .write_all(b"421 4.7.0 too many connections, try again later\r\n")
                    .await;
                continue;
            };
            let this = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                metrics::gauge!("switchboard_smtp_connections").increment(1.0);
                if let Err(e) = this.session(stream, peer, stop).await {
                    debug!(error = %e, %peer, "smtp session ended");
                }
                metrics::gauge!("switchboard_smtp_connections").decrement(1.0);
                drop(permit);
            });
        }
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
        let greeting_name = self.config.hostname.clone();
        let collector = Collector {
            tx: tx.clone(),
            recipients: Arc::new(self.config.recipients.clone()),
            max: self.config.max_message_bytes,
        };
        let builder = mailin::SessionBuilder::new(greeting_name);
        let mut session = builder.build(peer.ip(), collector);
        write.write_all(&session.greeting().buffer()?).await?;
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            let mut limited = (&mut reader).take(MAX_LINE);
            let n = tokio::select! {
                _ = shutdown.cancelled() => {
                    write.write_all(b"421 4.3.2 shutting down\r\n").await?;
                    return Ok(());
                }
                r = tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        write.write_all(b"421 4.4.2 idle too long, closing\r\n").await?;
                        return Ok(());
                    }
                },
            };
            if n == 0 {
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
                    Some((
                        std::mem::take(&mut t.data),
                        t.oversize,
                        t.recipients.first().cloned(),
                    ))
                } else {
                    None
                }
            };
            if let Some((data, oversize, recipient)) = done {
                let reply = if oversize {
                    metrics::counter!("switchboard_ingest_rejected_total", "source" => "smtp")
                        .increment(1);
                    format!(
                        "552 5.3.4 message exceeds the size limit of {} bytes\r\n",
                        self.config.max_message_bytes
                    )
                } else if self.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
                    metrics::counter!("switchboard_ingest_rate_limited_total", "source" => "smtp")
                        .increment(1);
                    "451 4.7.0 rate limited, try again later\r\n".into()
                } else {
                    let outcome = self.intake.take(&data, "smtp", recipient.as_deref()).await;
                    if let Err(e) = &outcome {
                        metrics::counter!("switchboard_ingest_refused_total", "source" => "smtp")
                            .increment(1);
                        warn!(error = %e, "smtp message not accepted");
                    }
                    final_reply(&outcome)
                };
                write.write_all(reply.as_bytes()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(recipients: &[&str]) -> Collector {
        Collector {
            tx: Arc::default(),
            recipients: Arc::new(recipients.iter().map(|s| s.to_string()).collect()),
            max: 10,
        }
    }

    #[test]
    fn the_final_reply_says_whether_to_retry() {
        let id = uuid::Uuid::now_v7();
        assert!(final_reply(&Ok(Intake::Published(id))).starts_with("250 "));
        assert!(final_reply(&Ok(Intake::DeadLettered("no sender".into()))).starts_with("250 "));
        // Broker or disk trouble: a transient 4xx, so the sending server keeps the message.
        assert!(final_reply(&Err(IntakeError::Broker("down".into()))).starts_with("451 "));
        assert!(
            final_reply(&Err(IntakeError::Storage(std::io::Error::other("full"))))
                .starts_with("451 ")
        );
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
