//! Outbound webhooks, the part every role shares: what a subscription may name (event types, a
//! URL), the body a delivery carries (`{"type", "timestamp", "data"}` as the Standard Webhooks
//! specification suggests), and putting a delivery in the ledger (`webhook_deliveries`), once
//! per webhook and event however often the event is read. The ingest role's `webhook_sender`
//! signs and sends them; serving manages the subscriptions; a rule's `webhook` action enqueues
//! one in its own transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// How webhooks are delivered (`webhooks:` of pipelines.yaml; the subscriptions themselves live
/// in Postgres, managed through `/v1/webhooks`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// One attempt's limit, connect to last byte (ms).
    pub timeout_ms: u64,
    /// Attempts before a delivery is dead-lettered (`failed`, redeliverable).
    pub max_attempts: u32,
    /// The wait after the first failed attempt (ms); it doubles each time (±20%), up to
    /// `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Deliveries in flight per endpoint and instance: a slow endpoint holds only its own.
    pub in_flight_per_endpoint: usize,
    /// All endpoints together, per instance.
    pub in_flight_total: usize,
    /// How often the sender looks for due deliveries when nothing wakes it (ms).
    pub poll_ms: u64,
    /// May a webhook point at a private, loopback or link-local address? Off: such URLs are
    /// refused on save and at every delivery (names are resolved and checked), so a webhook
    /// cannot reach inside the network.
    pub allow_private_networks: bool,
    /// After a rotation the old secret keeps signing (a second signature) this long, unless the
    /// rotation says otherwise.
    pub rotation_overlap_hours: u32,
    /// Deliveries one endpoint may have waiting: past it (an endpoint down for days), new
    /// events are ledgered as `failed` ("backlog full") at once, listed and redeliverable, so a
    /// dead endpoint cannot grow the ledger without bound.
    pub max_pending_per_endpoint: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            timeout_ms: 10_000,
            max_attempts: 8,
            backoff_base_ms: 5_000,
            backoff_max_ms: 6 * 3600 * 1000,
            in_flight_per_endpoint: 4,
            in_flight_total: 64,
            poll_ms: 1_000,
            allow_private_networks: false,
            rotation_overlap_hours: 24,
            max_pending_per_endpoint: 10_000,
        }
    }
}

impl WebhooksConfig {
    /// One attempt's limit (0.1 s to 2 min).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.clamp(100, 120_000))
    }

    /// The wait before attempt `attempts + 1`, given `attempts` failed ones and a `jitter` in
    /// `[0, 1)`: `backoff_base_ms * 2^(attempts-1)` within ±20%, at most `backoff_max_ms`.
    pub fn backoff(&self, attempts: u32, jitter: f64) -> std::time::Duration {
        let exp = attempts.saturating_sub(1).min(40);
        let base = self.backoff_base_ms.max(1) as f64 * 2f64.powi(exp as i32);
        let capped = base.min(self.backoff_max_ms.max(1) as f64);
        let ms = capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        std::time::Duration::from_millis(ms as u64)
    }
}

/// The ticket event types a webhook can subscribe to (`ticket.<kind>` of `TicketChange`).
pub const TICKET_KINDS: &[&str] = &[
    "created",
    "message_added",
    "assigned",
    "unassigned",
    "status_changed",
    "resolved",
    "reopened",
    "merged",
    "split_off",
    "priority_changed",
    "escalated",
    "bot_answered",
    "handed_over",
    "tags_changed",
    "team_changed",
    "mentioned",
    "fields_changed",
    "notified",
    "rules_halted",
    "csat_received",
    "order_updated",
    "triage_corrected",
];

/// The SLA event types (`sla.<kind>`).
pub const SLA_KINDS: &[&str] = &["warning", "breached", "met"];

/// The type a rule's `webhook` action sends (never subscribed to: the rule names its webhook).
pub const RULE_FIRED: &str = "rule.fired";

/// The most event types one subscription lists, and the longest URL.
pub const MAX_EVENTS: usize = 64;
pub const MAX_URL: usize = 2048;

/// Every event type a subscription may name (`*` aside).
pub fn event_types() -> Vec<String> {
    TICKET_KINDS
        .iter()
        .map(|k| format!("ticket.{k}"))
        .chain(SLA_KINDS.iter().map(|k| format!("sla.{k}")))
        .collect()
}

/// Is `t` an event type a subscription may name?
pub fn known_type(t: &str) -> bool {
    t == "*"
        || t.strip_prefix("ticket.")
            .is_some_and(|k| TICKET_KINDS.contains(&k))
        || t.strip_prefix("sla.")
            .is_some_and(|k| SLA_KINDS.contains(&k))
}

/// Does a subscription to `events` want `event_type`?
pub fn wants(events: &[String], event_type: &str) -> bool {
    events.iter().any(|e| e == "*" || e == event_type)
}

/// Checks a subscription's event types: a sorted, deduplicated list, or the index and reason
/// of the first bad one.
pub fn check_events(events: &[String]) -> Result<Vec<String>, (usize, String)> {
    if events.is_empty() {
        return Err((0, "name at least one event type, or *".into()));
    }
    if events.len() > MAX_EVENTS {
        return Err((MAX_EVENTS, format!("at most {MAX_EVENTS} event types")));
    }
    for (i, e) in events.iter().enumerate() {
        if !known_type(e) {
            return Err((
                i,
                "not an event type: ticket.<kind>, sla.warning, sla.breached, sla.met or *".into(),
            ));
        }
    }
    let mut out = events.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks a webhook's URL: http(s), a host, no credentials in it, no fragment; an address on a
/// private, loopback or link-local network only where `allow_private` (the sender checks the
/// addresses a name resolves to again at every delivery).
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    if raw.len() > MAX_URL || raw.chars().any(char::is_control) {
        return Err(format!(
            "at most {MAX_URL} characters, no control characters"
        ));
    }
    let u = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err("http or https only".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("no credentials in the URL (the signature authenticates us)".into());
    }
    if u.fragment().is_some() {
        return Err("no fragment".into());
    }
    let Some(host) = u.host() else {
        return Err("a host is needed".into());
    };
    if !allow_private {
        let private = match host {
            url::Host::Ipv4(a) => !public_ip(std::net::IpAddr::V4(a)),
            url::Host::Ipv6(a) => !public_ip(std::net::IpAddr::V6(a)),
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal")
            }
        };
        if private {
            return Err(
                "a private, loopback or link-local address (webhooks.allow_private_networks is off)"
                    .into(),
            );
        }
    }
    Ok(u)
}

/// Is `ip` reachable on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified)?
pub fn public_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240)
        }
        std::net::IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return public_ip(std::net::IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// A fresh signing secret: `whsec_` and 32 random bytes in base64, as Standard Webhooks
/// libraries read it.
pub fn new_secret() -> String {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The body of a delivery: `{"type": .., "timestamp": .., "data": ..}`.
pub fn body(event_type: &str, at: DateTime<Utc>, data: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Body<'a, T> {
        r#type: &'a str,
        timestamp: String,
        data: &'a T,
    }
    serde_json::to_string(&Body {
        r#type: event_type,
        timestamp: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data,
    })
    .unwrap_or_else(|_| "{}".into())
}

/// Puts one delivery of `event_id` to `webhook_id` in the ledger, due now; `false` when it is
/// there already (the event was read again). With `refused`, the delivery is ledgered as `failed` at once with that reason (the
/// endpoint's backlog is full): listed with the failed ones, redeliverable.
pub async fn enqueue(
    conn: &mut PgConnection,
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: &str,
    payload: &str,
    now: DateTime<Utc>,
    refused: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, next_attempt_at, created_at, state, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $6, CASE WHEN $7::text IS NULL THEN 'pending' ELSE 'failed' END, $7)
         ON CONFLICT (webhook_id, event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(webhook_id)
    .bind(event_id)
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .bind(refused)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_checked_and_sorted() {
        let ok = check_events(&[
            "sla.breached".into(),
            "ticket.created".into(),
            "sla.breached".into(),
        ]);
        assert_eq!(ok, Ok(vec!["sla.breached".into(), "ticket.created".into()]));
        assert_eq!(check_events(&[]).map_err(|e| e.0), Err(0));
        let bad = check_events(&["ticket.created".into(), "ticket.exploded".into()]);
        assert_eq!(bad.map_err(|e| e.0), Err(1));
        assert!(
            check_events(&["rule.fired".into()]).is_err(),
            "a rule names its webhook"
        );
        assert!(wants(&["*".into()], "ticket.created"));
        assert!(!wants(&["ticket.created".into()], "ticket.resolved"));
        assert_eq!(event_types().len(), TICKET_KINDS.len() + SLA_KINDS.len());
    }

    #[test]
    fn backoff_doubles_within_its_bounds() {
        let c = WebhooksConfig::default();
        assert_eq!(c.backoff(1, 0.5).as_millis(), 5_000);
        assert_eq!(c.backoff(2, 0.5).as_millis(), 10_000);
        assert_eq!(c.backoff(3, 0.0).as_millis(), 16_000);
        assert_eq!(c.backoff(3, 1.0).as_millis(), 24_000);
        assert_eq!(c.backoff(40, 0.5).as_millis(), 6 * 3600 * 1000);
        assert_eq!(c.backoff(u32::MAX, 1.0).as_millis(), 6 * 3600 * 1200);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/in?x=1", false).is_ok());
        for (bad, private) in [
            ("ftp://example.com/", true),
            ("https://user:pw@example.com/", true),
            ("https://example.com/#frag", true),
            ("https://exa\u{7}mple.com/", true),
            ("not a url", true),
            ("http://127.0.0.1:8080/", false),
            ("http://localhost/", false),
            ("http://10.1.2.3/", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("http://[::1]/", false),
            ("http://[fd00::1]/", false),
            ("http://[::ffff:192.168.0.1]/", false),
            ("http://100.64.0.1/", false),
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
            assert_eq!(
                check_url(bad, true).is_err(),
                private,
                "{bad} with private allowed"
            );
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL)), true).is_err());
    }

    #[test]
    fn secrets_are_fresh_and_standard() {
        use base64::Engine as _;
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let key = base64::engine::general_purpose::STANDARD
            .decode(a.strip_prefix("whsec_").expect("prefix"))
            .expect("base64");
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn the_body_names_type_and_time() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T08:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let b = body("ticket.created", at, &serde_json::json!({"n": "é\u{0}"}));
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["type"], "ticket.created");
        assert_eq!(v["timestamp"], "2026-12-02T08:00:00.000Z");
        assert_eq!(v["data"]["n"], "é\u{0}");
    }
}
