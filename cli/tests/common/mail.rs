//! Mail into a node's SMTP listener: through a real SMTP client (lettre), or one raw transaction
//! for bytes no client would send.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::{eventually, Harness, Node};

/// The support domain the mail tests write to (`help@` it is a support address).
pub const DOMAIN: &str = "support.example.com";

/// Sends `msg` to the SMTP listener at `addr` (host:port).
pub async fn smtp_send(
    addr: &str,
    msg: lettre::Message,
) -> Result<(), lettre::transport::smtp::Error> {
    use lettre::AsyncTransport as _;
    let (host, port) = addr.rsplit_once(':').unwrap();
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
        .port(port.parse().unwrap())
        .build()
        .send(msg)
        .await
        .map(|_| ())
}

/// One raw SMTP transaction from `from` to `help@DOMAIN` carrying `raw`; the server's final
/// reply to the message.
pub async fn smtp_raw(addr: &str, from: &str, raw: &[u8]) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert!(!line.is_empty(), "smtp closed: {all}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    reply(&mut r).await;
    for cmd in [
        "EHLO test.example\r\n".to_string(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<help@{DOMAIN}>\r\n"),
        "DATA\r\n".to_string(),
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let rep = reply(&mut r).await;
        assert!(rep.starts_with('2') || rep.starts_with('3'), "{cmd}: {rep}");
    }
    w.write_all(raw).await.unwrap();
    w.write_all(b"\r\n.\r\n").await.unwrap();
    let done = reply(&mut r).await;
    w.write_all(b"QUIT\r\n").await.unwrap();
    done
}

/// [`smtp_raw`], asserting the server took the message (250).
pub async fn smtp_accepted(addr: &str, from: &str, raw: &[u8]) {
    let rep = smtp_raw(addr, from, raw).await;
    assert!(rep.starts_with("250"), "{rep}");
}

/// The first ticket of the customer with this email, in full, once it exists.
pub async fn ticket_of(h: &Harness, node: &Node, email: &str) -> Value {
    let list = eventually("the email ticket", Duration::from_secs(60), || async {
        let (s, v) = h
            .get(node, &format!("/v1/tickets?customer_email={email}"))
            .await;
        (s == 200 && v["tickets"].as_array().is_some_and(|t| !t.is_empty())).then_some(v)
    })
    .await;
    let id = list["tickets"][0]["id"].as_str().unwrap().to_string();
    h.get(node, &format!("/v1/tickets/{id}")).await.1
}
