//! Attachments and raw dead-lettered mail in an S3-compatible object store, shared by replicas
//! that have no folder in common: an ingest replica stores, a serving replica on its own data
//! directory serves, erases and reports the store's outage as a retryable 503.
//!
//! The store is moto's S3 server (PyPI `moto[server]`, installed by scripts/setup.sh): a stand-in
//! for AWS S3, the third party's service; Switchboard talks to it over real HTTP with signed
//! requests through the `object_store` crate, as it would to S3, MinIO or Ceph.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{eventually, header, Harness};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::mail::{smtp_accepted, smtp_send, ticket_of, DOMAIN};
use lettre::message::{header::ContentType, Attachment, MultiPart, SinglePart};
use lettre::Message;
use serde_json::Value;
const BUCKET: &str = "switchboard-test";

/// moto's S3 server on a loopback port, private to one test.
struct S3 {
    child: Child,
    url: String,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    async fn start(name: &str) -> S3 {
        let bin = std::env::var("SWITCHBOARD_MOTO_SERVER").unwrap_or_else(|_| {
            format!(
                "{}/moto-venv/bin/moto_server",
                std::env::var("SWITCHBOARD_CACHE")
                    .unwrap_or_else(|_| "/var/tmp/switchboard".into())
            )
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/setup.sh (it installs moto[server] from PyPI)"
        );
        let port = common::free_port();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("{name}-moto.log"))).unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let s3 = S3 {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        eventually("moto's S3 server", Duration::from_secs(60), || async {
            let r = http.put(format!("{}/{BUCKET}", s3.url)).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        s3
    }

    /// The keys under `prefix` in the bucket (ListObjectsV2, as any S3 client lists).
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let body = reqwest::get(format!("{}/{BUCKET}?list-type=2&prefix={prefix}", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    fn env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "SWITCHBOARD__STORAGE__URL",
                format!("s3://{BUCKET}/{prefix}"),
            ),
            ("SWITCHBOARD__STORAGE__ENDPOINT", self.url.clone()),
            ("SWITCHBOARD__STORAGE__ALLOW_HTTP", "true".into()),
            ("SWITCHBOARD__STORAGE__REGION", "us-east-1".into()),
            ("SWITCHBOARD__STORAGE__ACCESS_KEY_ID", "switchboard".into()),
            (
                "SWITCHBOARD__STORAGE__SECRET_ACCESS_KEY",
                "not-a-real-secret".into(),
            ),
        ]
    }
}

fn mail_with(from: &str, id: &str, filename: &str, content: &[u8]) -> Message {
    Message::builder()
        .from(from.parse().unwrap())
        .to(format!("help@{DOMAIN}").parse().unwrap())
        .subject("Счёт и фото — 領収書")
        .message_id(Some(format!("<{id}@mail.example.com>")))
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(
                    "Bonjour, la facture est jointe. 🙏".to_string(),
                ))
                .singlepart(Attachment::new(filename.into()).body(
                    content.to_vec(),
                    ContentType::parse("application/octet-stream").unwrap(),
                )),
        )
        .unwrap()
}

fn attachment_of(ticket: &Value) -> (String, String) {
    let a = ticket["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["attachments"].as_array().cloned().unwrap_or_default())
        .next()
        .unwrap_or_else(|| panic!("an attachment on {ticket}"));
    (
        a["storage_key"].as_str().unwrap().to_string(),
        a["filename"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_attachments_through_an_s3_store() {
    let h = Harness::new().await;
    let mut s3 = S3::start(&h.name).await;
    let prefix = format!("{}/blobs", h.name);
    let mut env = s3.env(&prefix);
    env.extend([
        ("SWITCHBOARD__MODELS__ENABLED", "false".to_string()),
        ("SWITCHBOARD__CHANNELS__EMAIL__DOMAIN", DOMAIN.into()),
        (
            "SWITCHBOARD__CHANNELS__EMAIL__SMTP__RECIPIENTS",
            format!("help@{DOMAIN}"),
        ),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Two replicas with nothing on disk in common: one takes mail in (with the pipeline behind
    // it), the other serves agents.
    let ingest = h.spawn(&["ingest", "processors", "sink"], &env).await;
    let serving = h.spawn(&["serving"], &env).await;
    assert_ne!(ingest.data, serving.data);

    // Ann writes with a binary attachment whose name is not ASCII.
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    smtp_send(
        &ingest.smtp,
        mail_with(
            "Ann <ann@example.com>",
            "ann-1",
            "reçu 領収書.bin",
            &content,
        ),
    )
    .await
    .expect("accepted");
    let ticket = ticket_of(&h, &serving, "ann@example.com").await;
    let (key, filename) = attachment_of(&ticket);
    assert_eq!(key.len(), 64);
    assert!(filename.contains("領収書"), "{filename}");
    // The bytes are in the bucket under the configured prefix, and on neither replica's disk.
    assert_eq!(
        s3.keys(&format!("{prefix}/attachments/")).await,
        vec![format!("{prefix}/attachments/{}/{key}", &key[..2])]
    );
    assert!(!ingest.data.join("attachments").exists());
    assert!(!serving.data.join("attachments").exists());

    // The serving replica streams them back whole, as a download.
    let r = h
        .fetch(&serving, &format!("/v1/attachments/{key}"), Some(&h.token))
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-disposition").starts_with("attachment;"));
    assert_eq!(header(&r, "content-length"), content.len().to_string());
    assert_eq!(r.bytes().await.unwrap().as_ref(), content.as_slice());
    // A hostile key never reaches the store.
    for bad in [
        "..%2F..%2Fetc%2Fpasswd",
        &"zz".repeat(32),
        &"a".repeat(10_000),
    ] {
        let (s, v) = h.get(&serving, &format!("/v1/attachments/{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["field"], "key", "{v}");
    }

    // Mail from Ann that cannot be a ticket (no From) is kept raw in the store.
    smtp_accepted(&ingest.smtp, "ann@example.com", b"Return-Path: <ann@example.com>\r\nSubject: \xd0\x97\xd0\xb0\xd0\xba\xd0\xb0\xd0\xb7\r\n\r\nno sender line\r\n").await;
    let raw = s3.keys(&format!("{prefix}/deadletter/email/")).await;
    assert_eq!(raw.len(), 1, "{raw:?}");

    // Bob writes too; his attachment must survive Ann's erasure.
    smtp_send(
        &ingest.smtp,
        mail_with(
            "Bob <bob@example.com>",
            "bob-1",
            "photo.bin",
            b"bob's photo",
        ),
    )
    .await
    .expect("accepted");
    let bob = ticket_of(&h, &serving, "bob@example.com").await;
    let (bob_key, _) = attachment_of(&bob);

    // Erasing Ann, on the serving replica, deletes her attachment and her raw mail in the store.
    let customer = ticket["customer_id"].as_str().unwrap().to_string();
    let (s, erased) = h
        .delete(&serving, &format!("/v1/customers/{customer}"))
        .await;
    assert_eq!(s, 200, "{erased}");
    assert_eq!(erased["attachments"], 1, "{erased}");
    assert_eq!(erased["raw_mails"], 1, "{erased}");
    assert!(s3
        .keys(&format!("{prefix}/deadletter/email/"))
        .await
        .is_empty());
    assert_eq!(
        s3.keys(&format!("{prefix}/attachments/")).await,
        vec![format!("{prefix}/attachments/{}/{bob_key}", &bob_key[..2])]
    );

    // The store goes down: a download is a retryable 503 (not a 404 that says the file is
    // gone), and mail with an attachment is refused for now so the sender keeps it.
    let _ = s3.child.kill();
    let _ = s3.child.wait();
    let (s, v) = h.get(&serving, &format!("/v1/attachments/{bob_key}")).await;
    assert_eq!(s, 503, "{v}");
    let refused = smtp_send(
        &ingest.smtp,
        mail_with(
            "Cy <cy@example.com>",
            "cy-1",
            "x.bin",
            b"while the store is down",
        ),
    )
    .await
    .expect_err("refused while the store is down");
    assert!(refused.is_transient(), "{refused}");
    // Both replicas stay up and ready.
    for node in [&ingest, &serving] {
        let r = h.fetch(node, "/readyz", None).await;
        assert_eq!(r.status(), 200, "{}", node.log_tail());
    }
}
