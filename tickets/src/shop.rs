//! The shop Switchboard supports: its facts (what the help centre's articles and the bot's
//! answers say about it, filled in at send time), its Admin API (order actions), who may refund
//! how much, the return policy, and the where-is-my-order answer composed from an order's
//! shipping data (pure).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use switchboard_contracts::{Fulfillment, ShipmentEvent};
use switchboard_core::config::Secret;

use crate::returns::ReturnPolicy;

/// The `shop:` section of pipelines.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShopConfig {
    /// The shop's name as customers know it (`{{shop.name}}`).
    pub name: String,
    /// The facts articles name as `{{shop.<key>}}` (`support_email`, `return_window_days`, ...).
    /// An article naming a fact not configured here is never sent: the bot hands over instead.
    pub facts: BTreeMap<String, String>,
    /// The shop's Admin API for order actions; none: order actions answer 409.
    pub admin_api: Option<AdminApiConfig>,
    /// The most one person may refund without a supervisor's approval.
    pub refund_limits: RefundLimits,
    /// Returns: window, what cannot be returned, who pays shipping, auto-approval.
    pub returns: ReturnPolicy,
    /// When a shipment counts as late or stuck (the bot then hands over at high priority).
    pub wismo: WismoConfig,
}

impl Default for ShopConfig {
    fn default() -> Self {
        // The demo shop's facts: every placeholder the shipped help centre uses.
        let facts = [
            ("url", "https://shop.example.com"),
            ("support_email", "help@shop.example.com"),
            ("support_phone", "+1 555 0100"),
            ("support_hours", "Monday to Friday, 9:00 to 17:00"),
            ("return_window_days", "30"),
            ("refund_days", "5"),
            ("free_shipping_threshold", "50 USD"),
            ("standard_delivery_days", "3 to 5"),
            ("express_delivery_days", "1 to 2"),
            ("track_url", "https://shop.example.com/track"),
            ("returns_url", "https://shop.example.com/returns"),
            ("account_url", "https://shop.example.com/account"),
            ("cancel_window_hours", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ShopConfig {
            name: "Demo Shop".into(),
            facts,
            admin_api: None,
            refund_limits: RefundLimits::default(),
            returns: ReturnPolicy::default(),
            wismo: WismoConfig::default(),
        }
    }
}

/// The shop's Admin API (Shopify's REST Admin API shapes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminApiConfig {
    /// Up to the version, e.g. `https://demo.myshopify.com/admin/api/2024-10`.
    pub url: String,
    /// Sent as `X-Shopify-Access-Token` (`SWITCHBOARD__SHOP__ADMIN_API__ACCESS_TOKEN`).
    pub access_token: Secret,
    /// One call's limit, connect to last byte (ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Refund limits, in the order's currency's cents: above the caller's, a refund (or a cancel
/// that refunds) waits for a supervisor's approval.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefundLimits {
    /// An agent's, unless one of its teams allows more.
    pub agent_cents: i64,
    /// A supervisor's; none: no limit (admins have none).
    pub supervisor_cents: Option<i64>,
    /// Per team name: an agent in the team may refund up to this.
    pub teams: BTreeMap<String, i64>,
    /// The team's rules (`order` actions): 0, the default, sends every rule's refund, paid
    /// cancel and replacement to a supervisor first.
    pub rules_cents: i64,
}

impl Default for RefundLimits {
    fn default() -> Self {
        RefundLimits {
            agent_cents: 5_000,
            supervisor_cents: None,
            teams: BTreeMap::new(),
            rules_cents: 0,
        }
    }
}

impl RefundLimits {
    /// An agent's limit: the largest of the agent default and its teams' limits.
    pub fn for_agent<'a>(&self, teams: impl IntoIterator<Item = &'a str>) -> i64 {
        teams
            .into_iter()
            .filter_map(|t| self.teams.get(t).copied())
            .fold(self.agent_cents, i64::max)
    }
}

/// When a shipment is late or stuck.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WismoConfig {
    /// Past the carrier's estimate by this much, undelivered: late.
    pub late_after_hours: u32,
    /// No carrier scan for this long, undelivered: stuck.
    pub stuck_after_hours: u32,
    /// Not shipped this long after the order: late in the warehouse.
    pub ship_within_hours: u32,
    /// The bot answers from the order's data when the intent model says where-is-my-order
    /// (`track_order`, `delivery_problem`) at least this sure.
    pub min_confidence: f32,
}

impl Default for WismoConfig {
    fn default() -> Self {
        WismoConfig {
            late_after_hours: 24,
            stuck_after_hours: 96,
            ship_within_hours: 72,
            min_confidence: 0.5,
        }
    }
}

impl ShopConfig {
    /// The value of `{{shop.<key>}}`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        if key == "name" {
            return Some(self.name.as_str()).filter(|n| !n.trim().is_empty());
        }
        self.facts
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// `text` with every `{{shop.<key>}}` filled from the facts: the keys it could not fill
    /// when any is not configured (the text must then not be sent), or another `{{...}}` is
    /// left (a template from somewhere else). One pass over the text.
    pub fn fill(&self, text: &str) -> Result<String, Vec<String>> {
        let mut out = String::with_capacity(text.len());
        let mut missing = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                missing.push(after.chars().take(40).collect());
                rest = "";
                break;
            };
            let token = after[..end].trim();
            match token.strip_prefix("shop.").and_then(|k| self.fact(k)) {
                Some(v) => out.push_str(v),
                None => missing.push(token.chars().take(40).collect()),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(missing)
        }
    }
    /// `text` filled as [`ShopConfig::fill`] does, where a placeholder it cannot fill shows
    /// its words (`{{Order Number}}`: `Order Number`): for pages, never for the bot.
    pub fn fill_or_words(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                out.push_str(after);
                rest = "";
                break;
            };
            let token = after[..end].trim();
            let key = token.strip_prefix("shop.");
            match key.and_then(|k| self.fact(k)) {
                Some(v) => out.push_str(v),
                None => out.push_str(key.unwrap_or(token)),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// What the shop's data says about an order's whereabouts.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFacts {
    pub number: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub fulfillment_status: Option<String>,
    pub fulfillments: Vec<Fulfillment>,
}

/// The bot's answer to "where is my order".
#[derive(Debug, Clone, PartialEq)]
pub enum Wismo {
    /// The order's state, told: the ticket waits on the customer.
    Answer(String),
    /// Told, and handed to a person at high priority: the shipment is late or stuck.
    HandOver { text: String, reason: String },
}

impl Wismo {
    pub fn text(&self) -> &str {
        match self {
            Wismo::Answer(t) | Wismo::HandOver { text: t, .. } => t,
        }
    }
}

/// A date as customers read it (`3 December 2026`).
pub fn day(t: DateTime<Utc>) -> String {
    t.format("%-d %B %Y").to_string()
}

fn scan(e: &ShipmentEvent) -> String {
    let what = e
        .message
        .as_deref()
        .or(e.status.as_deref())
        .unwrap_or("scanned");
    match e.location.as_deref().filter(|l| !l.trim().is_empty()) {
        Some(l) => format!("{what}, {l}, on {}", day(e.at)),
        None => format!("{what}, on {}", day(e.at)),
    }
}

/// Composes the where-is-my-order answer for `order` at `now`: what shipped with which carrier,
/// the tracking number and link, the last scan and the expected delivery; late against the
/// carrier's estimate, stuck without a scan, a carrier failure, or not shipped in time: said,
/// and handed over.
pub fn wismo(order: &OrderFacts, cfg: &WismoConfig, now: DateTime<Utc>) -> Wismo {
    let name = &order.number;
    if let Some(at) = order.cancelled_at {
        return Wismo::Answer(format!(
            "Your order {name} was cancelled on {}. If that is not what you expected, reply and a person will look into it.",
            day(at)
        ));
    }
    let shipments: Vec<&Fulfillment> = order
        .fulfillments
        .iter()
        .filter(|f| f.status.as_deref() != Some("cancelled"))
        .collect();
    if shipments.is_empty() {
        let waited = now - order.created_at;
        let text = format!(
            "Your order {name}, placed on {}, has not shipped yet. We email the tracking link as soon as it leaves our warehouse.",
            day(order.created_at)
        );
        if waited > chrono::Duration::hours(i64::from(cfg.ship_within_hours)) {
            return Wismo::HandOver {
                text: format!("{text} It is taking longer than it should, so I have passed it to a person who will check on it and get back to you."),
                reason: "order not shipped in time".into(),
            };
        }
        return Wismo::Answer(text);
    }
    let mut parts = Vec::new();
    let mut trouble: Option<String> = None;
    let many = shipments.len() > 1;
    for (i, f) in shipments.iter().enumerate() {
        let carrier = f.tracking_company.as_deref().unwrap_or("the carrier");
        let label = if many {
            format!("Parcel {} of {name}", i + 1)
        } else {
            format!("Your order {name}")
        };
        let status = f.shipment_status.as_deref().unwrap_or("");
        let mut line = match (status, f.delivered_at) {
            ("delivered", Some(at)) => {
                format!("{label} was delivered by {carrier} on {}.", day(at))
            }
            ("delivered", None) => format!("{label} was delivered by {carrier}."),
            _ => match f.created_at {
                Some(at) => format!("{label} shipped with {carrier} on {}.", day(at)),
                None => format!("{label} has shipped with {carrier}."),
            },
        };
        if let Some(n) = f.tracking_number.as_deref() {
            line.push_str(&format!(" Tracking number: {n}."));
        }
        if let Some(u) = f.tracking_url.as_deref() {
            line.push_str(&format!(" Track it here: {u}"));
        }
        if let Some(e) = &f.last_event {
            line.push_str(&format!("\nLatest scan: {}.", scan(e)));
        }
        let delivered = status == "delivered";
        if let (Some(eta), false) = (f.estimated_delivery_at, delivered) {
            line.push_str(&format!("\nExpected delivery: {}.", day(eta)));
            if now - eta > chrono::Duration::hours(i64::from(cfg.late_after_hours)) {
                trouble.get_or_insert_with(|| {
                    format!("late against the carrier's estimate of {}", day(eta))
                });
            }
        }
        if !delivered {
            if status == "failure" {
                trouble.get_or_insert_with(|| "the carrier reported a delivery failure".into());
            }
            let last = f.last_event.as_ref().map(|e| e.at).or(f.created_at);
            if let Some(last) = last {
                if now - last > chrono::Duration::hours(i64::from(cfg.stuck_after_hours)) {
                    trouble.get_or_insert_with(|| format!("no carrier scan since {}", day(last)));
                }
            }
        }
        parts.push(line);
    }
    let text = parts.join("\n\n");
    match trouble {
        Some(reason) => Wismo::HandOver {
            text: format!(
                "{text}\n\nThis is taking longer than it should ({reason}), so I have passed it to a person who will chase the carrier and get back to you."
            ),
            reason: format!("shipment {reason}"),
        },
        None => Wismo::Answer(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn shipped(eta: Option<DateTime<Utc>>, scan_at: DateTime<Utc>) -> OrderFacts {
        OrderFacts {
            number: "#1001".into(),
            created_at: t(1, 9),
            cancelled_at: None,
            fulfillment_status: Some("fulfilled".into()),
            fulfillments: vec![Fulfillment {
                status: Some("success".into()),
                shipment_status: Some("in_transit".into()),
                tracking_company: Some("UPS".into()),
                tracking_number: Some("1Z999".into()),
                tracking_url: Some("https://ups.example/1Z999".into()),
                estimated_delivery_at: eta,
                last_event: Some(ShipmentEvent {
                    status: Some("in_transit".into()),
                    message: Some("Departed facility".into()),
                    location: Some("Memphis, TN".into()),
                    at: scan_at,
                }),
                created_at: Some(t(2, 9)),
                delivered_at: None,
            }],
        }
    }

    #[test]
    fn an_order_on_its_way_is_told_with_carrier_tracking_scan_and_estimate() {
        let w = wismo(
            &shipped(Some(t(5, 18)), t(3, 7)),
            &WismoConfig::default(),
            t(4, 12),
        );
        let Wismo::Answer(text) = w else {
            panic!("{w:?}")
        };
        for part in [
            "#1001",
            "UPS",
            "1Z999",
            "https://ups.example/1Z999",
            "Departed facility, Memphis, TN, on 3 November 2026",
            "Expected delivery: 5 November 2026",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn late_or_stuck_shipments_and_unshipped_orders_are_handed_over() {
        let cfg = WismoConfig::default();
        // A day past the estimate.
        let w = wismo(&shipped(Some(t(5, 18)), t(5, 7)), &cfg, t(7, 12));
        assert!(
            matches!(&w, Wismo::HandOver { reason, .. } if reason.contains("late")),
            "{w:?}"
        );
        // No scan for five days, no estimate.
        let w = wismo(&shipped(None, t(3, 7)), &cfg, t(8, 12));
        assert!(
            matches!(&w, Wismo::HandOver { reason, .. } if reason.contains("no carrier scan")),
            "{w:?}"
        );
        // Not shipped four days after the order.
        let mut o = shipped(None, t(3, 7));
        o.fulfillments.clear();
        assert!(matches!(wismo(&o, &cfg, t(2, 12)), Wismo::Answer(_)));
        assert!(matches!(wismo(&o, &cfg, t(5, 12)), Wismo::HandOver { .. }));
        // Delivered is an answer, whatever the estimate said.
        let mut o = shipped(Some(t(2, 0)), t(3, 7));
        o.fulfillments[0].shipment_status = Some("delivered".into());
        o.fulfillments[0].delivered_at = Some(t(3, 7));
        let w = wismo(&o, &cfg, t(20, 0));
        assert!(
            matches!(&w, Wismo::Answer(t) if t.contains("delivered by UPS on 3 November 2026")),
            "{w:?}"
        );
        // Cancelled.
        let mut o = shipped(None, t(3, 7));
        o.cancelled_at = Some(t(2, 0));
        assert!(matches!(wismo(&o, &cfg, t(3, 0)), Wismo::Answer(t) if t.contains("cancelled")));
    }

    #[test]
    fn facts_fill_every_placeholder_or_name_what_is_missing() {
        let shop = ShopConfig::default();
        assert_eq!(
            shop.fill("Write to {{shop.support_email}} at {{ shop.name }}.")
                .unwrap(),
            "Write to help@shop.example.com at Demo Shop."
        );
        assert_eq!(
            shop.fill("{{Website Name}} and {{shop.nope}} and {{shop.url")
                .unwrap_err(),
            vec!["Website Name", "shop.nope", "shop.url"]
        );
        assert_eq!(
            shop.fill_or_words("{{Website Name}} at {{shop.url}} {{shop.nope}}"),
            "Website Name at https://shop.example.com nope"
        );
        // Hostile text: no placeholder, huge, non-ASCII: unchanged, linear.
        let big = "é{ }".repeat(100_000);
        assert_eq!(shop.fill(&big).unwrap(), big);
    }

    /// The shipped help centre: every article fills from the default facts, and after filling
    /// carries no figure the shop did not configure (digits come only from facts or numbered
    /// steps).
    #[test]
    fn the_shipped_help_centre_fills_completely_and_invents_no_figures() {
        let shop = ShopConfig::default();
        let seed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../processors/kb/helpcentre.jsonl"
        ))
        .unwrap();
        // Longest first, so a short fact ("5") does not split a longer one ("+1 555 0100").
        let mut fact_digits: Vec<&str> = shop.facts.values().map(String::as_str).collect();
        fact_digits.sort_by_key(|f| std::cmp::Reverse(f.len()));
        let mut n = 0;
        for line in seed.lines() {
            let a: serde_json::Value = serde_json::from_str(line).unwrap();
            let body = a["body"].as_str().unwrap();
            let filled = shop
                .fill(body)
                .unwrap_or_else(|m| panic!("{}: unfilled {m:?}", a["title"]));
            assert!(!filled.contains("{{") && !filled.contains("}}"));
            // Remove what the facts put in, then numbered steps: no digit may be left.
            let mut rest = filled.clone();
            for f in &fact_digits {
                rest = rest.replace(f, "");
            }
            for l in rest.lines() {
                let l = l.trim_start();
                let l = l.trim_start_matches(|c: char| c.is_ascii_digit());
                assert!(
                    !l.chars().any(|c| c.is_ascii_digit()),
                    "{}: a figure the shop did not configure in {l:?}",
                    a["title"]
                );
            }
            n += 1;
        }
        assert!(n >= 25, "{n} articles");
    }
}
