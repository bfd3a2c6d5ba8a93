use uuid::Uuid;

/// Namespace for message ids derived from a provider's own message id.
pub const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x5b1e_7c2a_9d4f_4a61_8e3b_0c7d_2f19_a4e6);

/// The message id for a provider message: the same `(channel, external_id)` always gives the same
/// id, which is how a provider's retry (or a client posting twice) becomes one message. Without an
/// external id every message gets a fresh, time-ordered id.
pub fn message_id_for(channel: &str, external_id: Option<&str>) -> Uuid {
    match external_id {
        Some(ext) => Uuid::new_v5(
            &MESSAGE_NAMESPACE,
            format!("{channel}\u{1f}{ext}").as_bytes(),
        ),
        None => Uuid::now_v7(),
    }
}

/// A deterministic id derived from a parent id and a tag: re-processing the same input yields the
/// same event id, so downstream writers can drop the duplicate.
pub fn derived_id(parent: Uuid, tag: &str) -> Uuid {
    Uuid::new_v5(&parent, tag.as_bytes())
}

/// Lowercases and sanity-checks an email address (one `@`, a dotted domain, no spaces).
pub fn normalise_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && local.len() <= 64
        && e.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.contains(char::is_whitespace)
        && !e.contains(char::is_control)
        && !domain.contains('@');
    ok.then_some(e)
}

/// A phone number in E.164 (`+` and 8 to 15 digits), spaces and dashes dropped.
pub fn normalise_phone(raw: &str) -> Option<String> {
    let kept: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let ok = kept.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
    });
    ok.then_some(kept)
}

/// The comparable form of an order number as a customer types it: trimmed, without the shop's
/// leading `#` (and spaces after it), lowercase; none when empty, too long or with control
/// characters.
pub fn order_key(typed: &str) -> Option<String> {
    let t = typed.trim();
    if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
        return None;
    }
    let key = t.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
    (!key.is_empty()).then(|| key.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(
            normalise_email(" Ana@Example.COM ").as_deref(),
            Some("ana@example.com")
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@x.com",
            "ana@localhost",
            "a b@x.com",
            "a@b@c.com",
            "ana@.com",
            "a\u{0}b@x.com",
            "ab@x.com\u{1}",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn external_ids_are_stable_per_channel() {
        let a = message_id_for("api", Some("x-1"));
        assert_eq!(a, message_id_for("api", Some("x-1")));
        assert_ne!(a, message_id_for("sms", Some("x-1")));
        assert_ne!(a, message_id_for("api", Some("x-2")));
        assert_ne!(message_id_for("api", None), message_id_for("api", None));
    }

    #[test]
    fn derived_ids_are_stable() {
        let p = Uuid::now_v7();
        assert_eq!(derived_id(p, "created"), derived_id(p, "created"));
        assert_ne!(derived_id(p, "created"), derived_id(p, "assigned"));
    }

    #[test]
    fn order_numbers_as_customers_type_them() {
        for typed in ["#1001", "1001", " # 1001 ", "#1001\u{a0}", "##1001"] {
            assert_eq!(order_key(typed).as_deref(), Some("1001"), "{typed:?}");
        }
        assert_eq!(order_key("#SB-77a").as_deref(), Some("sb-77a"));
        assert_eq!(order_key("№ 5").as_deref(), Some("№ 5"));
        for bad in [
            "",
            "   ",
            "#",
            "# ",
            "10\u{0}01",
            "1001\u{7}",
            &"9".repeat(65),
        ] {
            assert_eq!(order_key(bad), None, "{bad:?}");
        }
    }
}
