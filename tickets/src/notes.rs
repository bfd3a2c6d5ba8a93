//! Internal notes and their mentions: what an `@mention` is (a pure core with property tests)
//! and the one write that stores a note, records whom it names and announces both.
//!
//! A mention is `@` at the start of the text or after a space or punctuation, followed by an
//! agent's email (`@bob@example.com`) or id; text that names no agent stays text (a customer's
//! email quoted in a note mentions nobody). A caller (the console's autocomplete) may also name
//! agents explicitly. A note is never sent to the customer: it publishes no outbound reply.

use chrono::{DateTime, Utc};
use switchboard_contracts::{derived_id, Channel, Direction, TicketChange};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// The most agents one note mentions.
pub const MAX_MENTIONS: usize = 20;
/// The longest note, in bytes.
pub const MAX_BYTES: usize = 64 * 1024;

/// The `@` tokens of `text`, lowercased, each once, in order, at most `MAX_MENTIONS * 2` of them
/// (one pass; a token ends at the first character no email or id has).
pub fn mention_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let starts =
            c == '@' && prev.is_none_or(|p| p.is_whitespace() || "([{,;:!?\"'".contains(p));
        prev = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[i + 1..];
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "._%+-@".contains(*c)))
            .map_or(rest.len(), |(j, _)| j);
        // A sentence may end right after the mention: `@bob@example.com.`
        let token = rest[..len].trim_end_matches(['.', '-']);
        if token.starts_with(|c: char| c.is_ascii_alphanumeric()) && token.len() <= 254 {
            let token = token.to_ascii_lowercase();
            if !out.contains(&token) {
                out.push(token);
                if out.len() >= MAX_MENTIONS * 2 {
                    break;
                }
            }
        }
        // Skip the token itself (an email's own `@` starts nothing).
        for _ in 0..rest[..len].chars().count() {
            prev = chars.next().map(|(_, c)| c);
        }
    }
    out
}

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("no such ticket")]
    NoTicket,
    /// An explicitly named agent (its index in the caller's list) does not exist.
    #[error("no such agent")]
    NoAgent(usize),
    #[error("a note mentions at most {MAX_MENTIONS} agents")]
    TooMany,
}

/// A stored note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub message_id: Uuid,
    /// The agents told, in the order named.
    pub mentioned: Vec<Uuid>,
    /// A retry of a note already stored (nothing new was written or announced).
    pub duplicate: bool,
}

/// Stores the note `text` (trimmed and checked by the caller) on `ticket_id` as `message_id`
/// by `author` (an agent's id, or who the caller is), tells the agents it mentions (`@` in the
/// text, and `explicit`) with one `mentioned` event, and adds `message_added`, all in `tx`.
pub async fn add(
    tx: &mut EventTx<'_>,
    ticket_id: Uuid,
    message_id: Uuid,
    author: (Option<Uuid>, &str),
    text: &str,
    explicit: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Result<Added, NoteError>, Error> {
    let row: Option<(String, Uuid, String)> =
        sqlx::query_as("SELECT number, customer_id, channel FROM tickets WHERE id = $1 FOR UPDATE")
            .bind(ticket_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((number, customer_id, channel)) = row else {
        return Ok(Err(NoteError::NoTicket));
    };
    let known: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM agents WHERE id = ANY($1)")
        .bind(explicit)
        .fetch_all(&mut **tx)
        .await?;
    if let Some(i) = explicit.iter().position(|a| !known.contains(a)) {
        return Ok(Err(NoteError::NoAgent(i)));
    }
    let tokens = mention_tokens(text);
    let ids: Vec<Uuid> = tokens.iter().filter_map(|t| t.parse().ok()).collect();
    let named: Vec<(Uuid, String)> = if tokens.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, lower(email) FROM agents WHERE lower(email) = ANY($1) OR id = ANY($2)",
        )
        .bind(&tokens)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?
    };
    // In the order named: explicit first, then the text's.
    let mut mentioned: Vec<Uuid> = Vec::new();
    let from_text = tokens.iter().filter_map(|t| {
        named
            .iter()
            .find(|(id, email)| email == t || id.to_string() == *t)
            .map(|(id, _)| *id)
    });
    for a in explicit.iter().copied().chain(from_text) {
        if !mentioned.contains(&a) {
            mentioned.push(a);
        }
    }
    if mentioned.len() > MAX_MENTIONS {
        return Ok(Err(NoteError::TooMany));
    }
    let inserted = sqlx::query(
        "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at, created_at)
         VALUES ($1, $2, $3, 'note', $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(message_id)
    .bind(ticket_id)
    .bind(&channel)
    .bind(author.1)
    .bind(text)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        let mentioned: Vec<Uuid> = sqlx::query_scalar(
            "SELECT agent_id FROM note_mentions WHERE message_id = $1 ORDER BY created_at, agent_id",
        )
        .bind(message_id)
        .fetch_all(&mut **tx)
        .await?;
        return Ok(Ok(Added {
            message_id,
            mentioned,
            duplicate: true,
        }));
    }
    sqlx::query(
        "INSERT INTO note_mentions (message_id, agent_id, ticket_id, created_at)
         SELECT $1, unnest($2::uuid[]), $3, $4",
    )
    .bind(message_id)
    .bind(&mentioned)
    .bind(ticket_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let channel = Channel::parse(&channel).unwrap_or(Channel::Api);
    crate::store::add_ticket_event(
        tx,
        derived_id(message_id, "message_added"),
        ticket_id,
        &number,
        customer_id,
        TicketChange::MessageAdded {
            message_id,
            direction: Direction::Note,
            channel,
            automatic: false,
        },
    )
    .await?;
    if !mentioned.is_empty() {
        let about = format!(
            "you were mentioned on {number}: {}",
            switchboard_contracts::text::cut_chars(
                switchboard_contracts::text::clean_line(text).trim(),
                300
            )
        );
        crate::notify::enqueue(
            tx,
            &crate::notify::Outgoing {
                event_id: derived_id(message_id, "mentioned"),
                ticket_id,
                ticket_number: &number,
                topic: "mention",
                text: &about,
                via: &["email", "sms"],
                people: &mentioned,
            },
            now,
        )
        .await?;
        crate::store::add_ticket_event(
            tx,
            derived_id(message_id, "mentioned"),
            ticket_id,
            &number,
            customer_id,
            TicketChange::Mentioned {
                message_id,
                agent_ids: mentioned.clone(),
                by: author.0,
            },
        )
        .await?;
    }
    Ok(Ok(Added {
        message_id,
        mentioned,
        duplicate: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mentions_are_at_a_word_start_and_end_where_an_address_does() {
        assert_eq!(
            mention_tokens("@Bob@Example.com can you check? cc @ann@example.com."),
            vec!["bob@example.com", "ann@example.com"]
        );
        // An email in the middle of a word is no mention; its own @ starts nothing.
        assert!(mention_tokens("write to carol@example.com please").is_empty());
        assert_eq!(
            mention_tokens("(@dan@x.io) and @dan@x.io again"),
            vec!["dan@x.io"]
        );
        let id = "0190a0a0-0000-7000-8000-000000000001";
        assert_eq!(
            mention_tokens(&format!("over to @{id}")),
            vec![id.to_string()]
        );
        assert!(mention_tokens("@ alone, @@ and @.").is_empty());
        assert_eq!(mention_tokens("Привет @ёж@почта.рф"), Vec::<String>::new());
    }

    #[test]
    fn a_flood_of_ats_stops_early() {
        let text = (0..10_000)
            .map(|i| format!("@a{i}@x.io "))
            .collect::<String>();
        assert_eq!(mention_tokens(&text).len(), MAX_MENTIONS * 2);
    }

    proptest! {
        #[test]
        fn never_panics_and_tokens_come_from_the_text(text in "\\PC{0,300}") {
            let lower = text.to_ascii_lowercase();
            for t in mention_tokens(&text) {
                prop_assert!(!t.is_empty() && t.len() <= 254);
                prop_assert!(lower.contains(&format!("@{t}")), "{t} not in {text}");
            }
        }
    }
}
