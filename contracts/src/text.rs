//! Text from outside, made safe to store and to cut.
//!
//! Every front door hands customer text to [`InboundMessage::sanitise`] before it acknowledges
//! the message, so what was acknowledged is what Postgres and ClickHouse can hold: NUL (which a
//! Postgres `text` or `jsonb` value cannot hold) and the other C0/C1 control characters are
//! removed from free text (tab, line feed and carriage return stay); single-line fields
//! (subject, names, ids, filenames, metadata) have every control character replaced by a space
//! (a CR/LF in a subject would otherwise become a header of the reply); a `received_at` outside
//! the range the stores hold is replaced by the time of intake. Lone UTF-16 surrogates cannot
//! reach here: a Rust `String` cannot hold them, and the JSON parsers refuse `\ud800` escapes
//! with a 400.
//!
//! The cutting helpers ([`floor_char_boundary`], [`truncate_bytes`], [`cut_chars`]) never split a
//! character, whatever the input: byte offsets into text that came from outside are only ever
//! taken through them (or through `str::get`).

use std::borrow::Cow;

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::InboundMessage;

/// A control character no stored text keeps: C0 but tab, LF and CR; DEL; C1.
pub fn is_refused_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Free text (a body, a transcript): refused control characters removed, line breaks and tabs
/// kept. Borrowed when there was nothing to remove.
pub fn clean_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_refused_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().filter(|c| !is_refused_control(*c)).collect())
}

/// A single-line value (a subject, a name, an id, a filename): every control character,
/// line breaks included, becomes a space; NUL is dropped. Not trimmed.
pub fn clean_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .filter(|c| *c != '\0')
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    )
}

/// The largest char boundary of `s` at or below `i` (`s.len()` when `i` is past the end).
pub fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    // A char is at most 4 bytes: at most 3 steps back.
    let mut end = i;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// `s` cut to at most `max` bytes on a char boundary, and whether it was cut.
pub fn truncate_bytes(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let end = floor_char_boundary(s, max);
    (s.get(..end).unwrap_or_default(), true)
}

/// `s` cut to at most `max` characters (Unicode scalar values), with `…` as the last character
/// when it was cut (so the result has at most `max` characters too).
pub fn cut_chars(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some(_) if max == 0 => Cow::Borrowed(""),
        Some(_) => {
            // The byte offset of the (max-1)th char: room for the ellipsis.
            let end = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", s.get(..end).unwrap_or_default()))
        }
    }
}

/// `s` cut to at most `max` UTF-16 code units (what SMS providers count), on a char boundary,
/// with `…` as the last character when it was cut.
pub fn cut_utf16(s: &str, max: usize) -> Cow<'_, str> {
    if s.encode_utf16().count() <= max {
        return Cow::Borrowed(s);
    }
    if max == 0 {
        return Cow::Borrowed("");
    }
    let budget = max.saturating_sub(1);
    let mut units = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if units + c.len_utf16() > budget {
            break;
        }
        units += c.len_utf16();
        end = i + c.len_utf8();
    }
    Cow::Owned(format!("{}…", s.get(..end).unwrap_or_default()))
}

/// The earliest `received_at` the stores take (ClickHouse `DateTime` starts in 1970; older is
/// a wrong clock).
fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether the stores hold `t` as a message time: 2000-01-01 up to a day after `now` (a later
/// one is a wrong clock, and ClickHouse `DateTime` ends in 2106).
pub fn storable_time(t: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    t >= earliest() && t <= now + Duration::days(1)
}

fn own(v: &mut String, f: fn(&str) -> Cow<'_, str>) -> bool {
    match f(v) {
        Cow::Borrowed(_) => false,
        Cow::Owned(o) => {
            *v = o;
            true
        }
    }
}

fn own_opt(v: &mut Option<String>, f: fn(&str) -> Cow<'_, str>) -> bool {
    let changed = v.as_mut().is_some_and(|s| own(s, f));
    if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
        *v = None;
    }
    changed
}

impl InboundMessage {
    /// Makes the message storable (see the module docs); `now` replaces a `received_at` outside
    /// 2000-01-01 .. now + 1 day. Returns the fields that were changed (empty: none), and marks
    /// them in `metadata.sanitised` so the agent can tell. Idempotent.
    pub fn sanitise(&mut self, now: DateTime<Utc>) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if own(&mut self.text, clean_text) {
            changed.push("text");
        }
        if own_opt(&mut self.subject, clean_line) {
            changed.push("subject");
        }
        if own_opt(&mut self.customer.name, clean_line) {
            changed.push("customer.name");
        }
        let ids = [
            own_opt(&mut self.customer.email, clean_line),
            own_opt(&mut self.customer.phone, clean_line),
            own_opt(&mut self.customer.handle, clean_line),
            own_opt(&mut self.external_id, clean_line),
            own(&mut self.conversation_key, clean_line),
        ];
        if ids.iter().any(|c| *c) {
            changed.push("ids");
        }
        let mut files = false;
        for a in &mut self.attachments {
            files |= own(&mut a.filename, clean_line);
            files |= own(&mut a.content_type, clean_line);
        }
        if files {
            changed.push("attachments");
        }
        let dirty: Vec<String> = self
            .metadata
            .iter()
            .filter(|(k, v)| {
                matches!(clean_line(k), Cow::Owned(_)) || matches!(clean_line(v), Cow::Owned(_))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !dirty.is_empty() {
            for k in dirty {
                if let Some(v) = self.metadata.remove(&k) {
                    self.metadata
                        .insert(clean_line(&k).into_owned(), clean_line(&v).into_owned());
                }
            }
            changed.push("metadata");
        }
        if !storable_time(self.received_at, now) {
            self.received_at = now;
            changed.push("received_at");
        }
        if !changed.is_empty() {
            let mut all: Vec<&str> = self
                .metadata
                .get("sanitised")
                .map(|s| s.split(',').collect())
                .unwrap_or_default();
            for c in &changed {
                if !all.contains(c) {
                    all.push(c);
                }
            }
            let joined = all.join(",");
            self.metadata.insert("sanitised".to_string(), joined);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AttachmentMeta, Channel, CustomerRef};

    fn message(text: &str) -> InboundMessage {
        InboundMessage {
            message_id: uuid::Uuid::now_v7(),
            channel: Channel::Api,
            external_id: Some("x\u{0}1".into()),
            conversation_key: "customer:a@example.com".into(),
            ticket_id: None,
            customer: CustomerRef {
                email: Some("a@example.com".into()),
                name: Some("Ann\u{0}\u{7}".into()),
                ..CustomerRef::default()
            },
            subject: Some("Hi\r\nBcc: x@evil.example".into()),
            text: text.into(),
            truncated: false,
            attachments: vec![AttachmentMeta {
                filename: "a\u{0}.pdf".into(),
                content_type: "application/pdf".into(),
                size_bytes: 1,
                storage_key: String::new(),
            }],
            metadata: [("k".to_string(), "v\u{0}".to_string())].into(),
            received_at: Utc::now(),
            verified: true,
        }
    }

    #[test]
    fn control_characters_go_and_line_breaks_stay() {
        assert_eq!(clean_text("a\u{0}b\u{1b}[2Jc\u{7f}\u{85}d"), "ab[2Jcd");
        assert_eq!(clean_text("line 1\r\n\tline 2"), "line 1\r\n\tline 2");
        assert!(matches!(clean_text("Привет 👋"), Cow::Borrowed(_)));
        assert_eq!(clean_line("Re: hi\r\nBcc: x"), "Re: hi  Bcc: x");
        assert_eq!(clean_line("a\u{0}b"), "ab");
    }

    #[test]
    fn a_sanitised_message_holds_no_nul_anywhere_and_says_what_changed() {
        let now = Utc::now();
        let mut m = message("hello\u{0} world\u{1}");
        let changed = m.sanitise(now);
        let json = serde_json::to_string(&m).expect("json");
        assert!(!json.contains("\\u0000"), "{json}");
        assert_eq!(m.text, "hello world");
        assert_eq!(m.subject.as_deref(), Some("Hi  Bcc: x@evil.example"));
        assert_eq!(m.customer.name.as_deref(), Some("Ann "));
        assert_eq!(m.attachments[0].filename, "a.pdf");
        assert_eq!(m.metadata["k"], "v");
        assert!(changed.contains(&"text") && changed.contains(&"metadata"));
        assert_eq!(
            m.metadata["sanitised"],
            "text,subject,customer.name,ids,attachments,metadata"
        );
        // Idempotent.
        let again = m.clone();
        assert!(m.sanitise(now).is_empty());
        assert_eq!(m, again);
    }

    #[test]
    fn a_date_the_stores_cannot_hold_becomes_now() {
        let now = Utc::now();
        let mut m = message("x");
        m.received_at = Utc
            .with_ymd_and_hms(1900, 1, 1, 0, 0, 0)
            .single()
            .expect("d");
        m.sanitise(now);
        assert_eq!(m.received_at, now);
        m.received_at = now + Duration::days(400);
        m.sanitise(now);
        assert_eq!(m.received_at, now);
    }

    #[test]
    fn cutting_never_splits_a_character() {
        assert_eq!(truncate_bytes("héllo", 2), ("h", true));
        assert_eq!(truncate_bytes("😀😀", 5), ("😀", true));
        assert_eq!(truncate_bytes("abc", 5), ("abc", false));
        assert_eq!(floor_char_boundary("Привет", 3), 2);
        assert_eq!(cut_chars("Привет", 4), "При…");
        assert_eq!(cut_chars("Привет", 6), "Привет");
        assert_eq!(cut_chars("Привет", 0), "");
        assert_eq!(cut_utf16("😀😀😀", 5), "😀😀…");
        assert_eq!(cut_utf16("😀😀", 4), "😀😀");
        assert_eq!(cut_utf16("😀😀", 0), "");
    }
}
