//! Reply drafts from solved tickets: what a solved ticket leaves behind for the next customer
//! who asks the same thing, scrubbed of everything personal, and how an agent's use of a draft
//! is judged.
//!
//! When a ticket is resolved, [`record_solved`] keeps its first customer message (the question)
//! and the last reply an agent sent (the answer) in `reply_examples`, with every piece of
//! personal data replaced by a placeholder ([`scrub`]): the customer's name, email and phone, the
//! order numbers, tracking numbers and links of their orders, the agent's name, then by pattern
//! any email address, phone number, personal link, order or ticket number, date and street
//! address the text still holds. The processors index the examples (their own vector
//! collection beside the knowledge base) and attach the closest ones to a new customer message
//! as the ticket's `drafts`; the agent API fills the placeholders from the ticket being answered
//! ([`crate::macros::render_known`]). A reopened ticket's example is withdrawn (its answer did
//! not solve it), as is an erased or expired ticket's: the row becomes a tombstone with a new
//! revision, which takes the point out of every index that syncs past it.
//!
//! [`judge`] tells whether a reply sent from a draft kept it unchanged or edited it; a reply
//! sent without choosing an offered draft discards them.

use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// The longest question or answer an example keeps (bytes, cut at a character boundary).
pub const MAX_EXAMPLE_TEXT: usize = 8 * 1024;

/// What is known about a solved ticket's people and orders: replaced first, wherever it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub customer_phone: Option<String>,
    pub agent_name: Option<String>,
    /// The customer's orders' numbers (`#1001`, `1001`).
    pub order_numbers: Vec<String>,
    pub tracking_numbers: Vec<String>,
    pub tracking_urls: Vec<String>,
    /// The solved ticket's own number (`T-2026-000123`).
    pub ticket_number: Option<String>,
    /// The orders' shipping addresses: street lines, city, postcode, company.
    pub addresses: Vec<String>,
    /// Other people the orders name (a gift's recipient on the shipping label).
    pub other_names: Vec<String>,
    /// Other phone numbers the orders name.
    pub other_phones: Vec<String>,
}

impl Known {
    /// Adds what an order's `shipping_address` (the shop's JSON, any shape) names: its name
    /// parts, phone and every other string but the country and province.
    pub fn add_shipping_address(&mut self, address: &serde_json::Value) {
        let Some(fields) = address.as_object() else {
            return;
        };
        for (key, value) in fields {
            let Some(v) = value
                .as_str()
                .map(str::trim)
                .filter(|v| v.chars().count() >= 2)
            else {
                continue;
            };
            match key.as_str() {
                "country" | "country_code" | "country_name" | "province" | "province_code"
                | "latitude" | "longitude" => {}
                "name" | "first_name" | "last_name" => self.other_names.push(v.to_string()),
                "phone" => self.other_phones.push(v.to_string()),
                _ => self.addresses.push(v.to_string()),
            }
        }
    }
}

/// One draft offered on a ticket (`tickets.drafts`), its text still with placeholders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDraft {
    /// The solved ticket whose reply this is.
    pub id: Uuid,
    pub text: String,
    /// Cosine similarity of the customer's message to the solved ticket's question.
    pub similarity: f32,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub intent: Option<String>,
}

/// What an agent did with the drafts offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent as offered (placeholders filled, whitespace aside).
    Sent,
    /// Chosen, then changed before sending.
    Edited,
    /// Answered without any of them.
    Discarded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Edited => "edited",
            Outcome::Discarded => "discarded",
        }
    }
}

/// The most placeholders a draft may have for [`judge`] to match filled ones.
const MAX_JUDGED_PLACEHOLDERS: usize = 64;

/// Whether `sent` is the draft `template` as offered or an edit of it. Filling a placeholder is
/// no edit: each one matches its value for this ticket and its author (from `ctx`), the
/// placeholder as written, or, when the ticket has no value for it, up to one line of the
/// agent's own (an address typed in). Whitespace does not count.
pub fn judge(template: &str, sent: &str, ctx: &crate::macros::Context) -> Outcome {
    let template = normalize(template);
    let spans = placeholder_spans(&template);
    if spans.len() > MAX_JUDGED_PLACEHOLDERS {
        // No pattern that large is built: only the draft exactly as offered (its blanks filled
        // from this ticket, as the agent was shown it, or left as written) counts as sent.
        let sent = normalize(sent);
        let shown = normalize(&crate::macros::render_known(&template, ctx).0);
        return if template == sent || shown == sent {
            Outcome::Sent
        } else {
            Outcome::Edited
        };
    }
    let mut pattern = String::from("(?s)^");
    let mut last = 0;
    for (start, end, key) in spans {
        pattern.push_str(&regex::escape(&template[last..start]));
        let written = regex::escape(&template[start..end]);
        match ctx.known(key) {
            Some(v) => {
                pattern.push_str(&format!("(?:{}|{written})", regex::escape(&normalize(&v))))
            }
            None => pattern.push_str(&format!("(?:{written}|[^\n]{{1,200}}?)")),
        }
        last = end;
    }
    pattern.push_str(&regex::escape(&template[last..]));
    pattern.push('$');
    match RegexBuilder::new(&pattern).size_limit(1 << 24).build() {
        Ok(re) if re.is_match(&normalize(sent)) => Outcome::Sent,
        _ => Outcome::Edited,
    }
}

/// Where `text`'s placeholders are: `(start, end, key)`, `start..end` spanning the braces.
fn placeholder_spans(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text
        .get(from..)
        .and_then(|t| t.find("{{"))
        .map(|i| from + i)
    {
        let Some(close) = text
            .get(open + 2..)
            .and_then(|t| t.find("}}"))
            .map(|i| open + 2 + i)
        else {
            break;
        };
        if let Some(key) = text.get(open + 2..close) {
            out.push((open, close + 2, key.trim()));
        }
        from = close + 2;
    }
    out
}

/// `s` with every run of whitespace one space, trimmed.
pub fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const MONTHS: &str = "(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";

/// The street kinds an address ends in, any case (`12 baker street`).
const STREET_KINDS: &str =
    "(?i:street|road|avenue|lane|boulevard|blvd|terrace|crescent|highway|parkway)";
/// Street kinds that are ordinary words too: only capitalised (`Market Place`, `5 Elm Way`).
const STREET_KINDS_CAPITALISED: &str =
    "(?:St|Rd|Ave|Ln|Dr|Drive|Way|Court|Ct|Place|Pl|Square|Sq|Close|Row|Hill|Mews|Grove|Gardens)";
/// Street kinds written before the name (`12 rue de la Paix`, `Via Roma 12`).
const STREET_KINDS_FIRST: &str =
    "(?i:rue|avenue|av\\.|calle|via|viale|piazza|plaza|rua|avenida|chemin|allée|carrer)";
/// Street kinds written after the house number and before the name (`12 rue de la Paix`):
/// not `via` (`2 via PayPal`), which comes before the name and its number (`Via Roma 12`).
const STREET_KINDS_NUMBER_FIRST: &str =
    "(?i:rue|avenue|av\\.|chemin|allée|boulevard|bd|calle|carrer|rua|avenida)";
/// The little words of a street's name (`de la`, `della`, `van`).
const PARTICLES: &str = "(?:(?:de|del|della|di|du|des|la|le|da|do|dos|van|von|der|den)\\s+)*";
/// Street kinds compounded into the name (`Hauptstraße 5`, `Kalverstraat 12`).
const STREET_SUFFIXES: &str =
    "(?i:straße|strasse|str\\.|weg|platz|gasse|allee|straat|gracht|gatan|gade|vej|veien)";

/// The patterns of personal data, tried left to right at each position (one pass, linear time:
/// the `regex` crate never backtracks).
static PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    let day = r"\d{1,2}(?:st|nd|rd|th)?";
    let word = r"[\p{L}][\p{L}'.-]*";
    let alternatives = [
        // A ticket's number.
        r"(?P<ticket>\bT-\d{4}-\d{3,}\b)".to_string(),
        // Dates: 2026-11-23, 23/11/2026, November 23(rd)(, 2026), 23 Nov(ember) (2026).
        format!(
            r"(?P<date>\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}\b|\b(?:{MONTHS})\.?\s+{day}\b(?:,?\s+\d{{4}}\b)?|\b{day}\s+(?:of\s+)?(?:{MONTHS})\b\.?(?:\s+\d{{4}}\b)?)"
        ),
        // A street address: a house number, up to three words of any case and script, and a
        // street kind (`221B Baker Street`, `4 elm road`); a number and a street kind written
        // first (`12 rue de la Paix`); a street kind, its name and a number (`Via Roma 12`);
        // a compound street name and a number (`Hauptstraße 5`); a UK or Canadian postcode.
        format!(
            r"(?P<address>\b\d{{1,5}}[A-Za-z]?,?\s+(?:{word}\s+){{0,3}}(?:{STREET_KINDS}|{STREET_KINDS_CAPITALISED})\b\.?|\b\d{{1,5}}[A-Za-z]?,?\s+{STREET_KINDS_NUMBER_FIRST}\s+{PARTICLES}[\p{{L}}][\p{{L}}'-]*|\b{STREET_KINDS_FIRST}\s+{PARTICLES}(?:\p{{Lu}}[\p{{L}}'-]*\s+){{1,3}}\d{{1,5}}[A-Za-z]?\b|\b\p{{Lu}}[\p{{L}}-]*{STREET_SUFFIXES}\s+\d{{1,4}}[A-Za-z]?\b|\b[A-Z]{{1,2}}\d[A-Z\d]?\s*\d[A-Z]{{2}}\b|\b[A-Z]\d[A-Z]\s?\d[A-Z]\d\b)"
        ),
        // A phone number: seven or more digits with the usual separators.
        r"(?P<phone>\+?\(?\d[\d\s().-]{5,}\d)".to_string(),
        // An order number: `#1001`, or any run of four or more digits.
        r"(?P<order>#\s?[A-Za-z0-9-]*\d[A-Za-z0-9-]*|\b\d{4,}\b)".to_string(),
        // A greeting's name (`Hi Anna,`, `Dear Anna Maria Kowalski`, `hello zoë!`): the
        // customer's. Capitalised, up to three words; in lower case one word before a comma.
        r"(?P<greeting>(?i:\b(?:hi|hello|hey|dear|good\s+(?:morning|afternoon|evening)))[\s\p{Cc}\p{Cf},]+)(?P<greeted>(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr)\.?\s+)?\p{Lu}[\p{L}'-]+(?:\s+\p{Lu}[\p{L}'-]+){0,2}|\p{Ll}[\p{L}'-]+[,!])".to_string(),
    ];
    RegexBuilder::new(&alternatives.join("|"))
        .case_insensitive(false)
        .size_limit(1 << 24)
        .build()
        .unwrap_or_else(|e| panic!("the scrub patterns compile: {e}"))
});

/// Runs of four or more digits (what a too-short phone match may still hide).
static DIGIT_RUNS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{4,}").unwrap_or_else(|e| panic!("the digit pattern compiles: {e}"))
});

/// Words no street's name has: a number followed by them and a street kind is a sentence
/// (`5 days by road`), not an address.
const NOT_STREET_WORDS: &[&str] = &[
    "by", "the", "a", "an", "of", "to", "in", "on", "at", "for", "per", "and", "or", "from",
    "with", "days", "day", "weeks", "week", "hour", "hours", "minute", "minutes", "times", "items",
    "more", "miles", "km",
];

/// Whether an address match is an ordinary phrase (see [`NOT_STREET_WORDS`], in lower case:
/// `12 The Avenue` is an address).
fn ordinary_phrase(matched: &str) -> bool {
    matched
        .split_whitespace()
        .any(|w| NOT_STREET_WORDS.contains(&w.trim_end_matches([',', '.'])))
}

/// Words after a greeting that name nobody.
const NOT_NAMES: &[&str] = &[
    "there", "team", "all", "everyone", "again", "and", "sir", "madam", "folks", "guys", "friend",
    "friends", "both", "you", "support", "customer", "valued",
];

/// Email addresses (any script) and links: a link is personal when it carries a query, a
/// fragment or a long or numeric path part.
static LINKS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?P<email>[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)+)|(?P<url>https?://[^\s<>]*[^\s<>.,;:!?)\]'"])"#)
        .unwrap_or_else(|e| panic!("the link patterns compile: {e}"))
});

/// Whether a link may name a person: a query, a fragment, or a path part with four digits in
/// a row or over 16 characters (a token, a tracking number).
fn personal_link(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if rest.contains('?') || rest.contains('#') {
        return true;
    }
    rest.split('/').skip(1).any(|part| {
        part.len() > 16
            || part
                .as_bytes()
                .windows(4)
                .any(|w| w.iter().all(u8::is_ascii_digit))
    })
}

/// Replaces every case-insensitive occurrence of each value with its placeholder: addresses,
/// numbers and links before names (a name inside an email address must not break the address
/// up first), the longest first within each (a full name before its first name). Values under
/// two characters are ignored; names match whole words only.
fn replace_known(text: &str, values: &mut [(String, &'static str, bool)]) -> String {
    values.sort_by_key(|(v, _, words)| (*words, std::cmp::Reverse(v.chars().count())));
    let mut out = text.to_string();
    for (value, placeholder, words) in values.iter() {
        let value = value.trim();
        if value.chars().count() < 2 {
            continue;
        }
        let escaped = regex::escape(value);
        let pattern = if *words {
            format!(r"\b{escaped}\b")
        } else {
            escaped
        };
        if let Ok(re) = RegexBuilder::new(&pattern).case_insensitive(true).build() {
            out = re
                .replace_all(&out, format!("{{{{{placeholder}}}}}").as_str())
                .into_owned();
        }
    }
    out
}

/// The most address parts and label names one scrub replaces (a shop may send many).
const MAX_EXACT_VALUES: usize = 48;

/// Replaces each value where it stands as whole words, case as written (longest first).
fn replace_exact_words(text: &str, values: &[(String, &'static str)]) -> String {
    let mut out = text.to_string();
    for (value, placeholder) in values {
        let pattern = format!(r"\b{}\b", regex::escape(value.trim()));
        if let Ok(re) = Regex::new(&pattern) {
            out = re
                .replace_all(&out, format!("{{{{{placeholder}}}}}").as_str())
                .into_owned();
        }
    }
    out
}

/// The most of a text [`scrub`] reads (bytes): more than [`MAX_EXAMPLE_TEXT`], so what is kept
/// was scrubbed with what follows it in view; a longer text is cut at a word boundary first.
const MAX_SCRUBBED_INPUT: usize = 4 * MAX_EXAMPLE_TEXT;

/// `text` with the personal data it holds replaced by placeholders: what `known` names first
/// (fillable placeholders: `{{customer.name}}`, `{{order.name}}`), then by pattern (see the
/// module's documentation) with placeholders no ticket fills (`{{redacted.phone}}`: a number
/// found by pattern may be the shop's or a third person's, so the agent types what belongs).
/// The text is cut at [`MAX_EXAMPLE_TEXT`] after scrubbing, at a word boundary.
pub fn scrub(text: &str, known: &Known) -> String {
    let text = cut_at_word(text, MAX_SCRUBBED_INPUT);
    let mut values: Vec<(String, &'static str, bool)> = Vec::new();
    let mut add = |v: &Option<String>, p: &'static str, words: bool| {
        if let Some(v) = v {
            values.push((v.clone(), p, words));
        }
    };
    add(&known.customer_email, "customer.email", false);
    add(&known.customer_phone, "customer.phone", false);
    add(&known.ticket_number, "ticket.number", false);
    add(&known.customer_name, "customer.name", true);
    add(&known.agent_name, "agent.name", true);
    if let Some(name) = &known.customer_name {
        let mut parts = name.split_whitespace();
        if let Some(first) = parts.next() {
            values.push((first.to_string(), "customer.first_name", true));
        }
        for other in parts {
            values.push((other.to_string(), "customer.name", true));
        }
    }
    if let Some(name) = &known.agent_name {
        for part in name.split_whitespace() {
            values.push((part.to_string(), "agent.name", true));
        }
    }
    for u in &known.tracking_urls {
        values.push((u.clone(), "order.tracking_url", false));
    }
    for n in &known.tracking_numbers {
        values.push((n.clone(), "order.tracking_number", false));
    }
    for n in &known.order_numbers {
        values.push((n.clone(), "order.name", false));
        if let Some(bare) = n.strip_prefix('#') {
            values.push((bare.to_string(), "order.name", true));
        }
    }
    for p in known.other_phones.iter().filter(|p| p.chars().count() >= 6) {
        values.push((p.clone(), "redacted.phone", false));
    }
    // The orders' addresses and the people on their labels: whole words, as written (a city
    // called Nice is no reason to blank "nice"), at least three characters, a bounded number.
    let mut exact: Vec<(String, &'static str)> = Vec::new();
    for a in &known.addresses {
        exact.push((a.clone(), "redacted.address"));
    }
    for n in &known.other_names {
        exact.push((n.clone(), "redacted.name"));
        exact.extend(
            n.split_whitespace()
                .filter(|w| w.chars().count() >= 3)
                .map(|w| (w.to_string(), "redacted.name")),
        );
    }
    exact.retain(|(v, _)| v.trim().chars().count() >= 3);
    exact.sort_by_key(|(v, _)| std::cmp::Reverse(v.chars().count()));
    exact.dedup_by(|a, b| a.0 == b.0);
    exact.truncate(MAX_EXACT_VALUES);
    // Numbers, addresses and links first, then any email address or personal link left, then
    // names (a name inside an address must not break the address up before it is caught).
    let (mut words, mut literal): (Vec<_>, Vec<_>) = values.into_iter().partition(|v| v.2);
    let text = replace_known(&text, &mut literal);
    let text = LINKS.replace_all(&text, |c: &regex::Captures<'_>| {
        let whole = c.get(0).map_or("", |m| m.as_str());
        if c.name("email").is_some() {
            "{{redacted.email}}".to_string()
        } else if personal_link(whole) {
            "{{redacted.link}}".to_string()
        } else {
            whole.to_string()
        }
    });
    let text = replace_known(&text, &mut words);
    let text = replace_exact_words(&text, &exact);
    let scrubbed = PATTERNS.replace_all(&text, |c: &regex::Captures<'_>| {
        let whole = c.get(0).map_or("", |m| m.as_str());
        if c.name("ticket").is_some() {
            return "{{redacted.number}}".into();
        }
        if c.name("date").is_some() {
            return "{{redacted.date}}".into();
        }
        if c.name("address").is_some() {
            return if ordinary_phrase(whole) {
                whole.to_string()
            } else {
                "{{redacted.address}}".into()
            };
        }
        if let Some(p) = c.name("phone") {
            let digits = p.as_str().bytes().filter(u8::is_ascii_digit).count();
            return if digits >= 7 {
                "{{redacted.phone}}".into()
            } else {
                // Too short for a phone number, but a run of digits in it is still a number.
                DIGIT_RUNS
                    .replace_all(whole, "{{redacted.number}}")
                    .into_owned()
            };
        }
        if c.name("order").is_some() {
            return "{{redacted.number}}".into();
        }
        if let (Some(g), Some(name)) = (c.name("greeting"), c.name("greeted")) {
            // A greeting word followed by a common word is no name (`Hi There`, `Hello Team`).
            let n = name.as_str().trim_end_matches([',', '!']);
            let first = n
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_lowercase();
            if NOT_NAMES.contains(&first.as_str()) {
                return whole.to_string();
            }
            let tail = &name.as_str()[n.len()..];
            return format!("{}{{{{customer.first_name}}}}{tail}", g.as_str());
        }
        whole.to_string()
    });
    // Placeholders may be longer than what they replace.
    cut_at_word(&scrubbed, MAX_EXAMPLE_TEXT)
}

/// `s` cut to at most `max` bytes: at the last whitespace before the limit when there is one
/// (no half of a number, address or placeholder is kept), else at a character boundary.
fn cut_at_word(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    match head.rfind(char::is_whitespace) {
        Some(i) if i > 0 => head[..i].to_string(),
        _ => head.to_string(),
    }
}

/// Keeps `ticket_id`'s question and the last agent reply as a scrubbed example (the caller is
/// resolving it, under its row lock). Nothing when no agent replied (a bot answer is the
/// knowledge base's, not an example) or the customer never wrote. Returns whether one was kept.
pub async fn record_solved(tx: &mut EventTx<'_>, ticket_id: Uuid) -> Result<bool, Error> {
    let Some(r) = sqlx::query(
        "SELECT t.customer_id, t.number, t.category, t.intent, t.language, t.subject, t.fields->>'order_number' AS order_number,
                c.name, c.email, c.phone,
                (SELECT m.text FROM messages m WHERE m.ticket_id = t.id AND m.direction = 'inbound'
                   AND NOT (m.metadata ? 'automatic') ORDER BY m.received_at LIMIT 1) AS question,
                r.text AS reply, a.name AS agent_name
         FROM tickets t JOIN customers c ON c.id = t.customer_id
         LEFT JOIN LATERAL (SELECT m.text, m.author FROM messages m
                            WHERE m.ticket_id = t.id AND m.direction = 'outbound'
                              AND m.author ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                            ORDER BY m.received_at DESC LIMIT 1) r ON true
         LEFT JOIN agents a ON a.id::text = r.author
         WHERE t.id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let (Some(question), Some(reply)) = (
        r.try_get::<Option<String>, _>("question")?,
        r.try_get::<Option<String>, _>("reply")?,
    ) else {
        return Ok(false);
    };
    let customer_id: Uuid = r.try_get("customer_id")?;
    let mut known = Known {
        customer_name: r.try_get("name")?,
        customer_email: r.try_get("email")?,
        customer_phone: r.try_get("phone")?,
        agent_name: r.try_get("agent_name")?,
        ticket_number: r.try_get("number")?,
        ..Known::default()
    };
    if let Some(n) = r.try_get::<Option<String>, _>("order_number")? {
        known.order_numbers.push(n);
    }
    let orders = sqlx::query(
        "SELECT number, fulfillments, shipping_address FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20",
    )
    .bind(customer_id)
    .fetch_all(&mut **tx)
    .await?;
    for o in orders {
        if let Some(n) = o.try_get::<Option<String>, _>("number")? {
            known.order_numbers.push(n);
        }
        let f: sqlx::types::Json<Vec<switchboard_contracts::Fulfillment>> =
            o.try_get("fulfillments")?;
        for f in f.0 {
            known.tracking_numbers.extend(f.tracking_number);
            known.tracking_urls.extend(f.tracking_url);
        }
        if let Some(a) = o.try_get::<Option<serde_json::Value>, _>("shipping_address")? {
            known.add_shipping_address(&a);
        }
    }
    let subject: Option<String> = r.try_get("subject")?;
    let question = match subject {
        Some(s) if !s.trim().is_empty() && !question.contains(s.trim()) => {
            format!("{}\n{question}", s.trim())
        }
        _ => question,
    };
    sqlx::query(
        "INSERT INTO reply_examples (ticket_id, customer_id, category, intent, language, question, reply, solved_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (ticket_id) DO UPDATE SET category = EXCLUDED.category, intent = EXCLUDED.intent,
             language = EXCLUDED.language, question = EXCLUDED.question, reply = EXCLUDED.reply,
             solved_at = EXCLUDED.solved_at, deleted_at = NULL,
             revision = nextval('reply_example_revision_seq')",
    )
    .bind(ticket_id)
    .bind(customer_id)
    .bind(r.try_get::<Option<String>, _>("category")?)
    .bind(r.try_get::<Option<String>, _>("intent")?)
    .bind(r.try_get::<Option<String>, _>("language")?)
    .bind(scrub(&question, &known))
    .bind(scrub(&reply, &known))
    .bind(switchboard_core::clock::now())
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Withdraws the examples of `tickets` (reopened, erased or expired): tombstones with a new
/// revision, their texts emptied, so every index syncing past them drops the points.
pub async fn withdraw(conn: &mut sqlx::PgConnection, tickets: &[Uuid]) -> Result<u64, sqlx::Error> {
    if tickets.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "UPDATE reply_examples SET deleted_at = now(), question = '', reply = '',
                revision = nextval('reply_example_revision_seq')
         WHERE ticket_id = ANY($1) AND deleted_at IS NULL",
    )
    .bind(tickets)
    .execute(conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known() -> Known {
        Known {
            customer_name: Some("Anna Maria Kowalski".into()),
            customer_email: Some("anna.k@example.org".into()),
            customer_phone: Some("+44 20 7946 0958".into()),
            agent_name: Some("Ben Ortiz".into()),
            order_numbers: vec!["#1042".into()],
            tracking_numbers: vec!["1Z999AA10123456784".into()],
            tracking_urls: vec!["https://ups.example/track?n=1Z999AA10123456784".into()],
            ..Known::default()
        }
    }

    #[test]
    fn what_is_known_becomes_placeholders() {
        let s = scrub(
            "Hi Anna, your order #1042 left today with tracking 1Z999AA10123456784 \
             (https://ups.example/track?n=1Z999AA10123456784). We emailed anna.k@example.org \
             and will call +44 20 7946 0958 if needed, Ms Kowalski. Best, Ben Ortiz",
            &known(),
        );
        assert_eq!(
            s,
            "Hi {{customer.first_name}}, your order {{order.name}} left today with tracking \
             {{order.tracking_number}} ({{order.tracking_url}}). We emailed {{customer.email}} \
             and will call {{customer.phone}} if needed, Ms {{customer.name}}. Best, {{agent.name}}"
        );
    }

    #[test]
    fn patterns_catch_what_no_record_names() {
        let s = scrub(
            "Hello Priya, write to p.shah@mail.test or call 0161 496 0000. Order #A-77812 ships \
             on 2026-11-23, arrives November 25th, 2026 (or 28/11/2026) to 221B Baker Street; \
             see T-2026-000123 and https://carrier.test/t/99887766. Returns: https://shop.example.com/returns",
            &Known::default(),
        );
        for gone in [
            "Priya",
            "p.shah",
            "0161",
            "A-77812",
            "2026-11-23",
            "November 25",
            "28/11",
            "Baker",
            "T-2026",
            "99887766",
        ] {
            assert!(!s.contains(gone), "{gone} left in {s}");
        }
        // Found by pattern: placeholders no ticket fills (the number may be the shop's).
        for placeholder in [
            "{{customer.first_name}}",
            "{{redacted.email}}",
            "{{redacted.phone}}",
            "{{redacted.number}}",
            "{{redacted.date}}",
            "{{redacted.address}}",
            "{{redacted.link}}",
        ] {
            assert!(s.contains(placeholder), "{placeholder} missing in {s}");
        }
        // A public link without anything personal in it stays.
        assert!(s.contains("https://shop.example.com/returns"), "{s}");
    }

    #[test]
    fn ordinary_words_and_small_numbers_stay() {
        let text = "Hi there, you can return it within 30 days; refunds take 5 to 7 days.";
        assert_eq!(scrub(text, &Known::default()), text);
    }

    #[test]
    fn addresses_in_any_case_or_language_and_postcodes_go() {
        for (text, gone) in [
            ("send it to 12 baker street please", "baker"),
            ("ship to 4 calle mayor, Madrid", "mayor"),
            ("deliver to 12 rue de la Paix, Paris", "Paix"),
            ("my address is Hauptstraße 5, Berlin", "Hauptstraße"),
            ("Via Roma 12, Milano", "Roma"),
            ("flat 3, 7 Elm Way, London SW1A 1AA", "SW1A"),
            ("7 Elm Way", "Elm"),
            ("postcode m1 1ae or M1 1AE", "M1 1AE"),
            ("Toronto K1A 0B1", "K1A"),
            ("Kalverstraat 92", "Kalverstraat"),
            ("it went to 12 The Avenue, Leeds", "Avenue"),
        ] {
            let s = scrub(text, &Known::default());
            assert!(!s.contains(gone), "{gone} left in {s}");
            assert!(s.contains("{{redacted.address}}"), "{s}");
        }
        // Ordinary sentences with numbers and street-ish words stay.
        for text in [
            "It takes 3 to 5 days by road.",
            "You can return it within 30 days via our form.",
            "Bring 2 copies of the receipt.",
            "We send 2 via the courier and 1 by post.",
            "Refund 2 via PayPal, the rest by card.",
            "It ships on a 24 hour road service.",
            "That is true 5 times out of 6.",
        ] {
            assert_eq!(scrub(text, &Known::default()), text);
        }
    }

    #[test]
    fn the_orders_shipping_address_is_known() {
        let mut k = Known::default();
        k.add_shipping_address(&serde_json::json!({
            "name": "Olek Nowak", "address1": "ul. Długa 44", "address2": "m. 7",
            "city": "Gdańsk", "zip": "80-831", "country": "Poland", "phone": "+48 58 123 45 67",
            "nested": {"x": 1},
        }));
        let s = scrub(
            "We will send it to Olek Nowak at ul. Długa 44, 80-831 Gdańsk (+48 58 123 45 67), Poland.",
            &k,
        );
        for gone in ["Olek", "Nowak", "Długa", "80-831", "Gdańsk", "123 45"] {
            assert!(!s.contains(gone), "{gone} left in {s}");
        }
        assert!(s.contains("Poland"), "the country is no one's: {s}");
        // As written and whole words: a city called Nice is no reason to blank "nice".
        let mut nice = Known::default();
        nice.add_shipping_address(&serde_json::json!({"city": "Nice", "zip": "06"}));
        assert_eq!(
            scrub("Have a nice day in Nice, 06 is the code", &nice),
            "Have a nice day in {{redacted.address}}, 06 is the code"
        );
        k.add_shipping_address(&serde_json::json!(["not", "an", "object"]));
    }

    #[test]
    fn greeted_names_in_any_case_and_script_go() {
        for (text, gone) in [
            ("Dear Anna Maria Kowalski, thank you", "Kowalski"),
            ("Hi Łucja, thanks", "Łucja"),
            ("hello zoë! all good", "zoë"),
            ("Hi Ms Ortega, sorry", "Ortega"),
        ] {
            let s = scrub(text, &Known::default());
            assert!(!s.contains(gone), "{gone} left in {s}");
            assert!(s.contains("{{customer.first_name}}"), "{s}");
        }
        for text in ["Hi there, thanks", "hello team, see above", "Hi I am back"] {
            assert_eq!(scrub(text, &Known::default()), text);
        }
    }

    #[test]
    fn digits_inside_a_short_phone_like_run_and_at_the_cut_go() {
        let s = scrub("codes 12345 6 and (98765)", &Known::default());
        assert!(!s.contains("12345") && !s.contains("98765"), "{s}");
        // What straddles the cut is not kept in part: the text is cut at a word boundary
        // after scrubbing.
        let filler = "word ".repeat(MAX_EXAMPLE_TEXT / 5 - 2);
        let text = format!("{filler}mail anna.k@example.org now");
        let s = scrub(&text, &known());
        assert!(s.len() <= MAX_EXAMPLE_TEXT);
        assert!(
            !s.contains("anna") && !s.contains("example.org"),
            "{}",
            &s[s.len() - 40..]
        );
        assert!(!s.ends_with("{{"), "no half placeholder");
    }

    #[test]
    fn a_solved_ticket_s_own_number_is_fillable_another_s_is_not() {
        let k = Known {
            ticket_number: Some("T-2026-000042".into()),
            ..Known::default()
        };
        let s = scrub("About T-2026-000042 (merged from T-2026-000041)", &k);
        assert_eq!(
            s,
            "About {{ticket.number}} (merged from {{redacted.number}})"
        );
    }

    #[test]
    fn hostile_text_is_scrubbed_without_panic() {
        let long = "x".repeat(MAX_EXAMPLE_TEXT * 3);
        assert_eq!(scrub(&long, &Known::default()).len(), MAX_EXAMPLE_TEXT);
        let multibyte = "é".repeat(MAX_EXAMPLE_TEXT);
        assert!(scrub(&multibyte, &Known::default()).len() <= MAX_EXAMPLE_TEXT);
        let odd = "Hi \u{0}\u{202e}Zoë, #\u{7}12345 {{customer.name}} (((((";
        let s = scrub(odd, &Known::default());
        assert!(!s.contains("12345") && !s.contains("Zoë"), "{s}");
        let weird = Known {
            customer_name: Some("(.*) [a-z]+".into()),
            ..Known::default()
        };
        assert_eq!(scrub("a b c", &weird), "a b c");
    }

    #[test]
    fn judged_by_the_draft_s_own_words_not_by_spacing_or_filled_blanks() {
        let ctx = crate::macros::Context {
            customer_name: Some("Zoë Quinn".into()),
            agent_name: Some("Ben".into()),
            ..Default::default()
        };
        let t = "Hi {{customer.first_name}},\n\nit goes to {{order.address}}. Best, {{agent.name}}";
        let sent = |s: &str| judge(t, s, &ctx);
        assert_eq!(
            sent("Hi Zoë, it goes to {{order.address}}. Best, Ben"),
            Outcome::Sent
        );
        assert_eq!(
            sent("  Hi Zoë,\nit goes to 1 Main St. Best, {{agent.name}} "),
            Outcome::Sent
        );
        assert_eq!(
            sent("Hi Zoë, it goes to 1 Main St. Best, Ben. Sorry!"),
            Outcome::Edited
        );
        assert_eq!(
            sent("Hi Zoë, it ships to 1 Main St. Best, Ben"),
            Outcome::Edited
        );
        assert_eq!(
            sent("Hi Anna, it goes to 1 Main St. Best, Ben"),
            Outcome::Edited
        );
        // Regex syntax in a draft is text, and an unclosed brace is no placeholder.
        assert_eq!(judge("(a+)+$ {{x", "(a+)+$ {{x", &ctx), Outcome::Sent);
        assert_eq!(judge("(a+)+$", "aaaa", &ctx), Outcome::Edited);
        // A draft made of thousands of blanks is judged by its words alone, at once.
        let many = "{{redacted.number}} ".repeat(2_000);
        assert_eq!(judge(&many, &many, &ctx), Outcome::Sent);
        let named = format!("Hi {{{{customer.first_name}}}}, {many}");
        assert_eq!(
            judge(&named, &format!("Hi Zoë, {many}"), &ctx),
            Outcome::Sent
        );
        assert_eq!(judge(&many, &"12 ".repeat(2_000), &ctx), Outcome::Edited);
    }

    proptest! {
        // Whatever the customer and order are called, none of it survives into an example.
        #[test]
        fn known_values_never_survive(
            first in "[A-Z][a-z]{2,9}",
            last in "[A-Z][a-z]{2,11}",
            user in "[a-z]{1,8}",
            domain in "[a-z]{2,8}",
            phone in "\\+?[1-9][0-9]{6,11}",
            order in "[0-9]{3,7}",
            prefix in "[ -~]{0,40}",
            suffix in "[ -~]{0,40}",
        ) {
            let known = Known {
                customer_name: Some(format!("{first} {last}")),
                customer_email: Some(format!("{user}@{domain}.test")),
                customer_phone: Some(phone.clone()),
                order_numbers: vec![format!("#{order}")],
                ..Known::default()
            };
            let text = format!(
                "{prefix} Dear {first} {last}, order #{order} (ref {order}) is on its way to \
                 {user}@{domain}.test; we may call {phone}. {suffix}"
            );
            let s = scrub(&text, &known);
            let lower = s.to_lowercase();
            prop_assert!(!lower.contains(&format!("{user}@{domain}").to_lowercase()), "{}", s);
            prop_assert!(!s.contains(&phone), "{}", s);
            prop_assert!(!s.contains(&format!("#{order}")), "{}", s);
            prop_assert!(!lower.contains(&format!(" {} ", last.to_lowercase())), "{}", s);
            prop_assert!(!lower.contains(&format!("dear {}", first.to_lowercase())), "{}", s);
        }
    }
}
