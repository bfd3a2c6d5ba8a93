//! Email against real mail software: a real SMTP client (lettre) into Switchboard's SMTP
//! listener, Debian's dovecot as the IMAP mailbox Switchboard polls, and Debian's aiosmtpd as the
//! SMTP relay replies go out through (delivering into a Maildir the test reads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_refused, eventually, free_port, header, Harness, Node};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::mail::{smtp_send, ticket_of, DOMAIN};
use lettre::message::{header::ContentType, Attachment, MultiPart, SinglePart};
use lettre::Message;

/// dovecot (IMAP) and aiosmtpd (the outbound relay), private to one test.
struct MailServers {
    dir: PathBuf,
    imap_port: u16,
    relay_port: u16,
    relay: Child,
}

impl Drop for MailServers {
    fn drop(&mut self) {
        let _ = Command::new("dovecot")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .arg("stop")
            .status();
        let _ = self.relay.kill();
        let _ = self.relay.wait();
    }
}

fn need(bin: &str) {
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "{bin} is missing: run scripts/setup.sh (it installs dovecot-imapd and python3-aiosmtpd)"
    );
}

async fn mail_servers(name: &str) -> MailServers {
    need("dovecot");
    need("/usr/bin/python3");
    let dir = std::env::temp_dir().join(format!("{name}-mail"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("mail")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let imap_port = free_port();
    let d = dir.display();
    // The mail processes run as nobody; the mailbox must be theirs.
    std::fs::write(
        dir.join("dovecot.conf"),
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/run\nlog_path = {d}/dovecot.log\nprotocols = imap\n\
             listen = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\n\
             first_valid_uid = 1\nmail_location = maildir:{d}/mail/%u\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n\
               inet_listener imaps {{\n    port = 0\n  }}\n  chroot =\n}}\nservice anvil {{\n  chroot =\n}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("users"),
        format!("help@{DOMAIN}:{{PLAIN}}mailbox-secret\n"),
    )
    .unwrap();
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.join("mail"))
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("dovecot")
        .arg("-c")
        .arg(dir.join("dovecot.conf"))
        .status()
        .unwrap();
    assert!(status.success(), "dovecot did not start");
    let relay_port = free_port();
    let relay = Command::new("/usr/bin/python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{relay_port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(dir.join("sent"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
        .spawn()
        .unwrap();
    for port in [imap_port, relay_port] {
        eventually(
            "the mail servers to listen",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }
    MailServers {
        dir,
        imap_port,
        relay_port,
        relay,
    }
}

async fn imap_session(port: u16) -> async_imap::Session<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.unwrap();
    let mut s = client
        .login(format!("help@{DOMAIN}"), "mailbox-secret")
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    s.select("INBOX").await.unwrap();
    s
}

/// Ingest, processors and serving taking mail for `help@` over SMTP and sending replies out
/// through `mail`'s relay; `extra` adds to that.
async fn spawn_with_relay(h: &Harness, mail: &MailServers, extra: &[(&str, &str)]) -> Node {
    let recipients = format!("help@{DOMAIN}");
    let relay_port = mail.relay_port.to_string();
    let from = format!("Support <help@{DOMAIN}>");
    let mut env = vec![
        ("SWITCHBOARD__CHANNELS__EMAIL__DOMAIN", DOMAIN),
        (
            "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
            recipients.as_str(),
        ),
        ("SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__HOST", "127.0.0.1"),
        (
            "SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__PORT",
            relay_port.as_str(),
        ),
        ("SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__SECURITY", "none"),
        (
            "SWITCHBOARD__CHANNELS__EMAIL__OUTBOUND__FROM",
            from.as_str(),
        ),
    ];
    env.extend_from_slice(extra);
    h.spawn(&["ingest", "processors", "serving"], &env).await
}

/// Every message the relay delivered, raw.
fn relayed(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join("sent").join(sub)) {
            for e in rd.flatten() {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn email_in_by_smtp_and_imap_threads_into_one_ticket_and_replies_go_out_threaded() {
    let mut h = Harness::new().await;
    let mail = mail_servers(&h.name).await;
    h.edit_config(&[(
        "  # - name: mailbox\n  #   type: imap                   # polls channels.email.imap (set host, username; password from the environment)\n  #   outputs: [inbound.messages, deadletter]\n",
        "  - name: mailbox\n    type: imap\n    outputs: [inbound.messages, deadletter]\n",
    )]);
    let node = spawn_with_relay(
        &h,
        &mail,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__SMTP__MAX_MESSAGE_BYTES",
                "200000",
            ),
            ("SWITCHBOARD__CHANNELS__EMAIL__IMAP__HOST", "127.0.0.1"),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__IMAP__PORT",
                &mail.imap_port.to_string(),
            ),
            ("SWITCHBOARD__CHANNELS__EMAIL__IMAP__TLS", "false"),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__IMAP__USERNAME",
                &format!("help@{DOMAIN}"),
            ),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__IMAP__PASSWORD",
                "mailbox-secret",
            ),
            (
                "SWITCHBOARD__CHANNELS__EMAIL__IMAP__POLL_INTERVAL_MS",
                "300",
            ),
        ],
    )
    .await;

    // 1. A customer writes to the support address over SMTP: multipart, an attachment, a quote.
    let first = Message::builder()
        .from("Ann Lee <Ann@Example.com>".parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("My parcel never arrived")
        .message_id(Some("<first-1@mail.example.com>".into()))
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain(
                            "Hello, order 1234 never arrived.\n\n-- \nAnn Lee\nSent from my phone"
                                .to_string(),
                        ))
                        .singlepart(SinglePart::html(
                            "<p>Hello, order 1234 never arrived.</p>".to_string(),
                        )),
                )
                .singlepart(Attachment::new("receipt.pdf".into()).body(
                    b"%PDF-1.4 receipt".to_vec(),
                    ContentType::parse("application/pdf").unwrap(),
                )),
        )
        .unwrap();
    smtp_send(&node.smtp, first.clone())
        .await
        .expect("250 for the first message");
    // The sending server retries the same message: accepted, still one message.
    smtp_send(&node.smtp, first)
        .await
        .expect("250 for the retry");

    let ticket = ticket_of(&h, &node, "ann@example.com").await;
    let ticket_id = ticket["id"].as_str().unwrap().to_string();
    let number = ticket["number"].as_str().unwrap().to_string();
    assert_eq!(ticket["channel"], "email");
    assert_eq!(ticket["subject"], "My parcel never arrived");
    let m = &ticket["messages"][0];
    assert_eq!(
        m["text"], "Hello, order 1234 never arrived.",
        "signature cut: {m}"
    );
    assert_eq!(m["external_id"], "first-1@mail.example.com");
    assert_eq!(m["metadata"]["conversation_id"], "first-1@mail.example.com");
    let att = &m["attachments"][0];
    assert_eq!(att["filename"], "receipt.pdf");
    assert_eq!(att["content_type"], "application/pdf");
    assert_eq!(att["size_bytes"], 16);
    // Agents fetch the content (with their token), as a download.
    let key = att["storage_key"].as_str().unwrap();
    let r = h
        .fetch(&node, &format!("/v1/attachments/{key}"), Some(&h.token))
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-disposition").starts_with("attachment"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"%PDF-1.4 receipt");
    let r = h
        .fetch(&node, &format!("/v1/attachments/{key}"), None)
        .await;
    assert_eq!(r.status(), 401);
    let (s, v) = h.get(&node, "/v1/attachments/..%2Fetc").await;
    assert_refused(s, &v, 400, "key");

    // Refused at the door: a recipient that is not ours (never a relay), an oversized message.
    let stranger = Message::builder()
        .from("ann@example.com".parse().unwrap())
        .to("someone@elsewhere.example".parse().unwrap())
        .subject("relay me")
        .body("x".to_string())
        .unwrap();
    let e = smtp_send(&node.smtp, stranger).await.expect_err("550");
    assert!(e.is_permanent(), "{e}");
    let big = Message::builder()
        .from("ann@example.com".parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("huge")
        .body("y".repeat(300_000))
        .unwrap();
    let e = smtp_send(&node.smtp, big).await.expect_err("552");
    assert!(e.to_string().contains("552") || e.is_permanent(), "{e}");

    // 2. The agent replies: out through the relay with the thread's headers.
    let agent = h
        .agent(&node, "mail-agent@example.com", &["shipping"], 5, false)
        .await;
    h.reply(
        &node,
        &ticket_id,
        &agent,
        "Sorry! A new parcel ships today.",
    )
    .await;
    let sent = eventually(
        "the reply at the relay",
        Duration::from_secs(30),
        || async {
            let all = relayed(&mail.dir);
            (!all.is_empty()).then_some(all)
        },
    )
    .await;
    let reply = mail_parser::MessageParser::default()
        .parse(&sent[0])
        .unwrap();
    // A person's reply: nothing says a machine sent it.
    assert!(reply.header_raw("Auto-Submitted").is_none());
    assert_eq!(
        reply.to().unwrap().first().unwrap().address(),
        Some("ann@example.com")
    );
    assert_eq!(
        reply.from().unwrap().first().unwrap().address(),
        Some(format!("help@{DOMAIN}").as_str())
    );
    assert_eq!(
        reply.subject(),
        Some(format!("Re: My parcel never arrived [{number}]").as_str())
    );
    assert_eq!(
        reply.in_reply_to().as_text(),
        Some("first-1@mail.example.com")
    );
    let our_id = reply.message_id().unwrap().to_string();
    assert!(
        our_id.starts_with(&ticket_id) && our_id.ends_with(DOMAIN),
        "{our_id}"
    );
    assert!(reply
        .body_text(0)
        .unwrap()
        .contains("A new parcel ships today."));

    // 3. The customer answers our reply; it lands in the mailbox Switchboard polls over IMAP.
    // Her mail program kept only In-Reply-To (our id) and changed the subject.
    let mut imap = imap_session(mail.imap_port).await;
    let answer = format!(
        "From: Ann Lee <ann@example.com>\r\nTo: help@{DOMAIN}\r\nSubject: still waiting\r\n\
         Message-ID: <answer-2@mail.example.com>\r\nIn-Reply-To: <{our_id}>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nThanks, I will watch for it.\r\n\r\n\
         On Thu, 26 Nov 2026, Support <help@{DOMAIN}> wrote:\r\n> Sorry! A new parcel ships today.\r\n"
    );
    imap.append("INBOX", None, None, answer.as_bytes())
        .await
        .unwrap();
    // Another message names the ticket only by the number in its subject.
    let by_number = format!(
        "From: ann@example.com\r\nTo: help@{DOMAIN}\r\nSubject: Re: [{number}] one more thing\r\n\
         Message-ID: <third-3@mail.example.com>\r\n\r\nPlease leave it with the neighbour.\r\n"
    );
    imap.append("INBOX", None, None, by_number.as_bytes())
        .await
        .unwrap();
    // And one that cannot be a ticket (no sender): kept raw and dead-lettered.
    imap.append(
        "INBOX",
        None,
        None,
        b"Subject: no sender\r\n\r\nwho am I\r\n".as_slice(),
    )
    .await
    .unwrap();

    let pool = h.pg().await;
    let texts: Vec<String> = eventually("the polled messages on the ticket", Duration::from_secs(60), || {
        let pool = pool.clone();
        let id: uuid::Uuid = ticket_id.parse().unwrap();
        async move {
            let t: Vec<String> = sqlx::query_scalar(
                "SELECT text FROM messages WHERE ticket_id = $1 AND direction = 'inbound' ORDER BY received_at",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
            (t.len() >= 3).then_some(t)
        }
    })
    .await;
    assert_eq!(
        texts,
        [
            "Hello, order 1234 never arrived.",
            "Thanks, I will watch for it.",
            "Please leave it with the neighbour."
        ]
    );
    let (tickets, messages): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM messages WHERE direction = 'inbound')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (tickets, messages),
        (1, 3),
        "one ticket, the retry not doubled"
    );
    // The unusable message is on disk and every polled message is flagged seen.
    eventually("the raw dead letter", Duration::from_secs(20), || async {
        std::fs::read_dir(node.data.join("deadletter").join("email"))
            .ok()
            .and_then(|mut d| d.next())
            .map(|_| ())
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // A fresh SELECT sees the poller's flags.
        imap.select("INBOX").await.unwrap();
        let unseen = imap.uid_search("UNSEEN").await.unwrap();
        if unseen.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still unseen: {unseen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(imap.uid_search("ALL").await.unwrap().len(), 3);
    let _ = imap.logout().await;
}

/// Issue 13, class 1: a reply to a subject that begins with a multi-byte character took the
/// process down (`s[..3]` inside a character). Each of these subjects arrives over SMTP, an
/// agent replies, and the reply reaches the relay with `Re: <subject> [<number>]`, and the
/// process is still up to answer.
#[tokio::test(flavor = "multi_thread")]
async fn replies_to_cyrillic_emoji_and_cjk_subjects_reach_the_relay() {
    let h = Harness::new().await;
    let mail = mail_servers(&h.name).await;
    let node = spawn_with_relay(&h, &mail, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let subjects = [
        ("ivan@example.com", "Привет, где мой заказ?"),
        ("emoji@example.com", "😀 my order is late"),
        ("kenji@example.com", "注文が届きません"),
        ("zoe@example.com", "e\u{301}\u{302} Ré: combining marks"),
    ];
    for (i, (from, subject)) in subjects.iter().enumerate() {
        let m = Message::builder()
            .from(from.parse().unwrap())
            .to(format!("help@{DOMAIN}").parse().unwrap())
            .subject(*subject)
            .message_id(Some(format!("<utf8-{i}@mail.example.com>")))
            .body("Where is my parcel?".to_string())
            .unwrap();
        smtp_send(&node.smtp, m).await.expect("250");
    }
    let agent = h
        .agent(&node, "utf8-agent@example.com", &["shipping"], 10, false)
        .await;
    let mut want = Vec::new();
    for (from, subject) in subjects {
        let ticket = ticket_of(&h, &node, from).await;
        assert_eq!(ticket["subject"], subject);
        let id = ticket["id"].as_str().unwrap().to_string();
        let number = ticket["number"].as_str().unwrap().to_string();
        h.reply(&node, id, &agent, "It ships today. Отправим сегодня 📦")
            .await;
        want.push((from.to_string(), format!("Re: {subject} [{number}]")));
    }
    let sent = eventually(
        "every reply at the relay",
        Duration::from_secs(60),
        || async {
            let all = relayed(&mail.dir);
            (all.len() >= want.len()).then_some(all)
        },
    )
    .await;
    let mut got: Vec<(String, String)> = sent
        .iter()
        .map(|raw| {
            let m = mail_parser::MessageParser::default().parse(raw).unwrap();
            assert!(m.body_text(0).unwrap().contains("Отправим сегодня 📦"));
            (
                m.to()
                    .unwrap()
                    .first()
                    .unwrap()
                    .address()
                    .unwrap()
                    .to_string(),
                m.subject().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Still up: the process did not panic on any of them.
    let (s, _) = h.get(&node, "/healthz").await;
    assert_eq!(s, 200);
    let pool = h.pg().await;
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM deliveries")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(states, vec!["sent"; 4]);
}

/// An `Auto-Submitted` header on a mail built by lettre.
fn auto(value: &str) -> lettre::message::header::HeaderValue {
    lettre::message::header::HeaderValue::new(
        lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted"),
        value.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_reply_is_kept_but_never_answered_and_the_bot_says_it_is_a_machine() {
    let h = Harness::new().await;
    let mail = mail_servers(&h.name).await;
    // The knowledge-base bot answers email (its default channels), with the models.
    let node = spawn_with_relay(&h, &mail, &[]).await;
    let pool = h.pg().await;
    let question = "How can I cancel the order I placed yesterday?";

    // A person asks: the bot answers, and its mail says a machine sent it.
    let ask = Message::builder()
        .from("Ann Lee <ann@example.com>".parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("Cancel my order")
        .message_id(Some("<ask-1@mail.example.com>".into()))
        .body(question.to_string())
        .unwrap();
    smtp_send(&node.smtp, ask).await.expect("250");
    let ticket = common::ticket_by_external_id(&pool, "ask-1@mail.example.com").await;
    let sent = eventually(
        "the bot's answer at the relay",
        Duration::from_secs(60),
        || async {
            let all = relayed(&mail.dir);
            (!all.is_empty()).then_some(all)
        },
    )
    .await;
    let answer = mail_parser::MessageParser::default()
        .parse(&sent[0])
        .unwrap();
    assert_eq!(
        answer.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let answer_id = answer.message_id().unwrap().to_string();
    let state = |pool: sqlx::PgPool, ticket: uuid::Uuid| async move {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, bot_state FROM tickets WHERE id = $1",
        )
        .bind(ticket)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(
        state(pool.clone(), ticket).await,
        ("pending".to_string(), Some("answered".to_string()))
    );

    // Ann's out-of-office answers the bot (words the bot knows included): kept on the ticket,
    // marked, but it is not her answer: the ticket still waits on her, nobody is handed it, and
    // no second answer goes out.
    let ooo = Message::builder()
        .from("Ann Lee <ann@example.com>".parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("Automatic reply: Re: Cancel my order")
        .message_id(Some("<ooo-1@mail.example.com>".into()))
        .in_reply_to(format!("<{answer_id}>"))
        .references(format!("<ask-1@mail.example.com> <{answer_id}>"))
        .raw_header(auto("auto-replied"))
        .body("I am out of the office until Monday. Je suis absente; how can I cancel the order? 不在".to_string())
        .unwrap();
    smtp_send(&node.smtp, ooo).await.expect("250");
    let on = common::ticket_by_external_id(&pool, "ooo-1@mail.example.com").await;
    let why: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'automatic' FROM messages WHERE external_id = 'ooo-1@mail.example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((on, why.as_deref()), (ticket, Some("auto_submitted")));
    assert_eq!(
        state(pool.clone(), ticket).await,
        ("pending".to_string(), Some("answered".to_string()))
    );
    let running_next: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sla_clocks WHERE ticket_id = $1 AND metric = 'next_response' AND stopped_at IS NULL",
    )
    .bind(ticket)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(running_next, 0, "an auto-reply started a response clock");

    // An auto-generated first mail asking the same question opens a ticket nobody answers
    // automatically: no bot answer, open for an agent.
    let bulk = Message::builder()
        .from(
            "Shop Notifications <noreply@shop.example.com>"
                .parse()
                .unwrap(),
        )
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("Cancel my order")
        .message_id(Some("<bulk-1@shop.example.com>".into()))
        .raw_header(auto("auto-generated"))
        .body(question.to_string())
        .unwrap();
    smtp_send(&node.smtp, bulk).await.expect("250");
    let other = common::ticket_by_external_id(&pool, "bulk-1@shop.example.com").await;
    // The bot decides in the transaction that opens the ticket: nothing from it now means never.
    assert_eq!(state(pool.clone(), other).await, ("open".to_string(), None));
    let outbound: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE ticket_id = $1 AND direction = 'outbound'",
    )
    .bind(other)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(outbound, 0);
    // Only the one answer to Ann ever reached the relay.
    assert_eq!(relayed(&mail.dir).len(), 1);

    // Solved, Ann's ticket brings her a survey (itself marked as a machine's); the ticket only
    // a machine wrote to brings none.
    for t in [ticket, other] {
        let (s, v) = h
            .put(
                &node,
                &format!("/v1/tickets/{t}/status"),
                serde_json::json!({"status": "resolved"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let surveys: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT ticket_id FROM csat")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(surveys, vec![ticket]);
    let sent = eventually(
        "the survey at the relay",
        Duration::from_secs(60),
        || async {
            let all = relayed(&mail.dir);
            (all.len() == 2).then_some(all)
        },
    )
    .await;
    let kinds: std::collections::BTreeSet<String> = sent
        .iter()
        .map(|raw| {
            let m = mail_parser::MessageParser::default().parse(raw).unwrap();
            m.header_raw("Auto-Submitted")
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        ["auto-generated", "auto-replied"].map(String::from).into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_writing_while_the_desk_is_closed_hears_when_it_opens_once() {
    use chrono::Timelike;
    let mut h = Harness::new().await;
    let mail = mail_servers(&h.name).await;
    // A desk open one hour a day, starting two hours from now (UTC): closed as the test runs.
    let open = (chrono::Utc::now().hour() + 2) % 24;
    let span = if open == 23 {
        "23:00-23:59".to_string()
    } else {
        format!("{open:02}:00-{:02}:00", open + 1)
    };
    let hours = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(|d| format!("{d}: \"{span}\""))
        .join(", ");
    h.edit_config(&[
        (
            "    eu-office:\n",
            &format!(
                "    night-desk:\n      timezone: UTC\n      hours: {{ {hours} }}\n      auto_reply: \"Thanks for writing. We are closed now and answer from {{{{opens}}}}. Merci !\"\n    eu-office:\n"
            ),
        ),
        (
            "{ name: standard, calendar: 24x7,",
            "{ name: standard, calendar: night-desk,",
        ),
    ]);
    let node = spawn_with_relay(&h, &mail, &[("SWITCHBOARD__MODELS__ENABLED", "false")]).await;
    let pool = h.pg().await;
    let send = |from: &str, id: &str, automatic: bool| {
        let mut b = Message::builder()
            .from(from.parse().unwrap())
            .to(format!("help@{DOMAIN}").parse().unwrap())
            .subject("Où est mon colis ?")
            .message_id(Some(format!("<{id}>")));
        if automatic {
            b = b.raw_header(auto("auto-generated"));
        }
        // Her second mail answers her first.
        if id == "late-1@mail.example.com" {
            b = b
                .in_reply_to("<late-0@mail.example.com>".into())
                .references("<late-0@mail.example.com>".into());
        }
        b.body("Mon colis n'est pas arrivé. 🙁".to_string())
            .unwrap()
    };

    // A person writes while the desk is closed: told when it opens, by a mail marked as a
    // machine's; the first-response clock still runs (that was no response).
    smtp_send(
        &node.smtp,
        send("Zoë <zoe@example.com>", "late-0@mail.example.com", false),
    )
    .await
    .expect("250");
    let ticket = common::ticket_by_external_id(&pool, "late-0@mail.example.com").await;
    let sent = eventually(
        "the closed-hours reply at the relay",
        Duration::from_secs(60),
        || async {
            let all = relayed(&mail.dir);
            (!all.is_empty()).then_some(all)
        },
    )
    .await;
    let reply = mail_parser::MessageParser::default()
        .parse(&sent[0])
        .unwrap();
    assert_eq!(
        reply.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let body = reply.body_text(0).unwrap().to_string();
    assert!(
        body.contains("answer from ") && body.contains(&format!("{open:02}:00 (UTC)")),
        "{body}"
    );
    let first_response_running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sla_clocks WHERE ticket_id = $1 AND metric = 'first_response' AND stopped_at IS NULL",
    )
    .bind(ticket)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(first_response_running, 1);

    // She writes again: no second reply. A machine's mail opening a ticket gets none at all.
    smtp_send(
        &node.smtp,
        send("Zoë <zoe@example.com>", "late-1@mail.example.com", false),
    )
    .await
    .expect("250");
    assert_eq!(
        common::ticket_by_external_id(&pool, "late-1@mail.example.com").await,
        ticket
    );
    smtp_send(
        &node.smtp,
        send("noreply@shop.example.com", "late-2@shop.example.com", true),
    )
    .await
    .expect("250");
    let other = common::ticket_by_external_id(&pool, "late-2@shop.example.com").await;
    // The SLA stage answers as it starts the clocks: once they exist, the decision is made.
    eventually(
        "the clocks of both tickets",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(DISTINCT ticket_id) FROM sla_clocks WHERE ticket_id = ANY($1)",
                )
                .bind(vec![ticket, other])
                .fetch_one(&pool)
                .await
                .unwrap();
                (n == 2).then_some(())
            }
        },
    )
    .await;
    let replies: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT ticket_id, metadata->>'automatic' FROM messages WHERE author = 'auto-reply'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(replies, vec![(ticket, "closed_hours".to_string())]);
    assert_eq!(relayed(&mail.dir).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_tags_the_wholesale_mailbox_and_answers_people_but_never_machines() {
    let h = Harness::new().await;
    let mail = mail_servers(&h.name).await;
    let recipients = format!("help@{DOMAIN},wholesale@{DOMAIN}");
    let node = spawn_with_relay(
        &h,
        &mail,
        &[
            (
                "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
                recipients.as_str(),
            ),
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
        ],
    )
    .await;
    let pool = h.pg().await;
    // "Tag everything from the wholesale mailbox", and tell the buyer who answers.
    let (s, v) = h
        .post(
            &node,
            "/v1/rules",
            serde_json::json!({"name": "Wholesale mailbox", "kind": "trigger", "on": ["created"], "enabled": true,
                "conditions": {"all": [{"field": "message.to", "op": "contains", "value": "wholesale@"}]},
                "actions": [{"type": "tags", "add": ["wholesale"]},
                            {"type": "reply", "text": "Thanks {{customer.first_name}}, our wholesale team answers {{ticket.number}} within a business day."}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let buyer = Message::builder()
        .from("Bea Ünal <bea@shop.example>".parse().unwrap())
        .to(format!("wholesale@{DOMAIN}").parse().unwrap())
        .subject("50 units of the blue kettle")
        .message_id(Some("<ws-1@shop.example>".into()))
        .body("Could you quote 50 units? ✓".to_string())
        .unwrap();
    smtp_send(&node.smtp, buyer).await.expect("250");
    let person = Message::builder()
        .from("Cy <cy@example.com>".parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("Where is my kettle")
        .message_id(Some("<help-1@example.com>".into()))
        .body("Hello".to_string())
        .unwrap();
    smtp_send(&node.smtp, person).await.expect("250");
    // A wholesale customer's out-of-office: tagged like any mail to the mailbox, never answered.
    let ooo = Message::builder()
        .from("Dee <dee@shop.example>".parse().unwrap())
        .to(format!("wholesale@{DOMAIN}").parse().unwrap())
        .subject("Out of office")
        .message_id(Some("<ooo-ws@shop.example>".into()))
        .raw_header(auto("auto-replied"))
        .body("I am away until Monday.".to_string())
        .unwrap();
    smtp_send(&node.smtp, ooo).await.expect("250");

    let tags = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let t = common::ticket_by_external_id(&pool, id).await;
            eventually("the rule's tag", Duration::from_secs(60), || {
                let pool = pool.clone();
                async move {
                    let tags: Vec<String> =
                        sqlx::query_scalar("SELECT tags FROM tickets WHERE id = $1")
                            .bind(t)
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                    (!tags.is_empty()).then_some(tags)
                }
            })
            .await
        }
    };
    assert_eq!(tags("ws-1@shop.example").await, ["wholesale"]);
    assert_eq!(tags("ooo-ws@shop.example").await, ["wholesale"]);
    let cy = common::ticket_by_external_id(&pool, "help-1@example.com").await;
    // One reply went out: to the buyer, threaded, saying a machine sent it.
    let sent = eventually(
        "the rule's reply at the relay",
        Duration::from_secs(60),
        || async {
            let all = relayed(&mail.dir);
            (!all.is_empty()).then_some(all)
        },
    )
    .await;
    let reply = mail_parser::MessageParser::default()
        .parse(&sent[0])
        .unwrap();
    assert_eq!(
        reply.to().unwrap().first().unwrap().address(),
        Some("bea@shop.example")
    );
    assert_eq!(reply.in_reply_to().as_text(), Some("ws-1@shop.example"));
    assert_eq!(
        reply.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let body = reply.body_text(0).unwrap();
    assert!(
        body.contains("Thanks Bea, our wholesale team answers T-"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        relayed(&mail.dir).len(),
        1,
        "the out-of-office got no reply"
    );
    let cy_tags: Vec<String> = sqlx::query_scalar("SELECT tags FROM tickets WHERE id = $1")
        .bind(cy)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cy_tags.is_empty());
}
