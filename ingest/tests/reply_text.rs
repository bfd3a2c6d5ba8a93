//! Every formatting helper on the reply path takes any text a customer or an agent can type:
//! arbitrary Unicode, with combining marks, 4-byte characters, controls, CR/LF, and text that
//! begins or ends inside what a byte-indexed cut would split. None may panic, and each keeps its
//! promise (a subject stays one line with `Re:` and the number once; a cut never splits a
//! character and respects its limit; what goes out through lettre comes back as it went in).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lettre::message::Mailbox;
use proptest::prelude::*;
use switchboard_contracts::text::{
    clean_line, clean_text, cut_chars, cut_utf16, floor_char_boundary, truncate_bytes,
};
use switchboard_contracts::{Channel, CustomerRef, OutboundReply};
use switchboard_ingest::api::truncate;
use switchboard_ingest::email::{strip_reply, ticket_number_in};
use switchboard_ingest::email_out::{
    reply_subject, EmailSender, EmailSenderConfig, SmtpSecurity, Thread,
};
use switchboard_ingest::sms_out::{sms_body, MAX_BODY_UNITS};
use switchboard_ingest::social_out::{max_text_chars, Destination};

/// Text made of the characters that break byte-indexed code: multi-byte letters, combining
/// marks, 4-byte emoji (and their modifiers and joiners), CJK, controls, line breaks, and
/// arbitrary scalar values.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("Привет".to_string()),
        Just("é".to_string()),
        Just("e\u{301}\u{302}\u{303}".to_string()),
        Just("注文".to_string()),
        Just("😀".to_string()),
        Just("👩\u{200d}👩\u{200d}👧".to_string()),
        Just("👍🏽".to_string()),
        Just("𝕏".to_string()),
        Just("Re:".to_string()),
        Just("RE: ".to_string()),
        Just("\u{0}".to_string()),
        Just("\r\n".to_string()),
        Just("\t".to_string()),
        Just("\u{7f}\u{85}\u{1b}[2J".to_string()),
        Just("\u{202e}".to_string()),
        Just("[T-2026-000123]".to_string()),
        Just(" ".to_string()),
        any::<char>().prop_map(String::from),
        "[a-z]{1,5}",
    ];
    proptest::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

fn sender() -> EmailSender {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("lazy pool");
    EmailSender::new(
        EmailSenderConfig {
            host: "127.0.0.1".into(),
            port: 1,
            security: SmtpSecurity::None,
            username: String::new(),
            password: Default::default(),
            from: "Support <help@support.example.com>".into(),
        },
        "support.example.com".into(),
        pool,
    )
    .expect("sender")
}

/// Without whitespace: RFC 2047 drops the space between two encoded words, and lettre puts
/// spaces between them, so only the characters themselves are compared.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn reply_subjects_are_one_line_with_re_and_the_number_once(
        subject in proptest::option::of(hostile_text(40)),
    ) {
        let number = "T-2026-000042";
        let s = reply_subject(subject.as_deref(), number);
        prop_assert!(!s.chars().any(char::is_control), "{s:?}");
        prop_assert!(s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:")), "{s:?}");
        prop_assert!(s.contains(number));
        // Idempotent: a reply to the reply keeps one `Re:` and one number.
        prop_assert_eq!(reply_subject(Some(&s), number), s);
    }

    #[test]
    fn cuts_never_split_a_character_and_respect_their_limit(
        text in hostile_text(60),
        max in 0usize..120,
    ) {
        let (t, cut) = truncate(&text, max);
        prop_assert!(t.len() <= max && text.starts_with(&t));
        prop_assert_eq!(cut, t.len() < text.len());
        let (t, _) = truncate_bytes(&text, max);
        prop_assert!(t.len() <= max && text.starts_with(t));
        let b = floor_char_boundary(&text, max);
        prop_assert!(text.is_char_boundary(b) && b <= max.min(text.len()));
        let c = cut_chars(&text, max);
        prop_assert!(c.chars().count() <= max);
        prop_assert!(text.starts_with(c.trim_end_matches('…')));
        let u = cut_utf16(&text, max);
        prop_assert!(u.encode_utf16().count() <= max);
    }

    #[test]
    fn sms_and_social_bodies_fit_their_network(text in hostile_text(400)) {
        let long = text.repeat(8);
        let body = sms_body(&long);
        prop_assert!(body.encode_utf16().count() <= MAX_BODY_UNITS);
        prop_assert!(!body.chars().any(|c| c == '\0'));
        for network in ["whatsapp", "messenger", "instagram"] {
            let d = Destination {
                network: network.into(),
                business_id: "B".into(),
                recipient: "+15550100042".into(),
            };
            let (_, json) = d.request(&long);
            let sent = json
                .pointer("/text/body")
                .or_else(|| json.pointer("/message/text"))
                .and_then(|v| v.as_str())
                .expect("text");
            prop_assert!(sent.chars().count() <= max_text_chars(network));
            prop_assert!(!sent.contains('\0'));
        }
    }

    #[test]
    fn cleaning_keeps_text_and_drops_only_controls(text in hostile_text(60)) {
        let t = clean_text(&text);
        prop_assert!(!t.contains('\0'));
        prop_assert!(t.chars().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r')));
        let l = clean_line(&text);
        prop_assert!(!l.chars().any(char::is_control));
        let again = clean_text(&t).into_owned();
        prop_assert_eq!(again.as_str(), t.as_ref());
    }

    #[test]
    fn quote_stripping_and_ticket_numbers_take_any_text(text in hostile_text(80)) {
        let (out, _) = strip_reply(&text);
        if !text.trim().is_empty() {
            prop_assert!(!out.trim().is_empty());
        }
        if let Some(n) = ticket_number_in(&text) {
            prop_assert!(text.contains(&n));
        }
    }

    /// The whole email a reply becomes: built by lettre from an arbitrary subject, name and
    /// text, it parses back with the subject and the text the customer will see.
    #[test]
    fn a_reply_email_round_trips_any_subject_name_and_text(
        subject in hostile_text(30),
        name in hostile_text(8),
        text in hostile_text(60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let _g = rt.enter();
        let sender = sender();
        let thread = Thread {
            subject: reply_subject(Some(&subject), "T-2026-000042"),
            in_reply_to: Some("m1@mail.example.com".into()),
            references: vec!["m0@mail.example.com".into(), "m1@mail.example.com".into()],
        };
        let name = Some(clean_line(&name).trim().to_string()).filter(|n| !n.is_empty());
        let reply = OutboundReply {
            reply_id: uuid::Uuid::now_v7(),
            ticket_id: uuid::Uuid::now_v7(),
            channel: Channel::Email,
            to: CustomerRef { email: Some("ann@example.com".into()), name: name.clone(), ..CustomerRef::default() },
            text: text.clone(),
            author_agent_id: None,
            in_reply_to: None,
        };
        let to = Mailbox::new(name, "ann@example.com".parse().expect("address"));
        let msg = sender.message(&reply, to, &thread).expect("message");
        let raw = msg.formatted();
        let parsed = mail_parser::MessageParser::default().parse(&raw).expect("parses back");
        prop_assert_eq!(squash(parsed.subject().unwrap_or_default()), squash(&thread.subject));
        prop_assert_eq!(
            parsed.to().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("ann@example.com")
        );
        let body = parsed.body_text(0).unwrap_or_default();
        prop_assert_eq!(squash(&body), squash(&clean_text(&text)));
    }
}
