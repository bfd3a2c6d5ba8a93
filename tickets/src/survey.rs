//! The satisfaction survey a resolved ticket's customer gets: once per ticket, on its channel
//! when the channel has a way back, never when only machines wrote. The link's token is the
//! survey's only credential, so the ticket's stored copy has it redacted
//! ([`redact_survey_links`]). The agent API's status change and the rules' `survey` action
//! both send it through [`invite`].

use sqlx::Row;
use switchboard_contracts::{derived_id, Channel, CustomerRef, Envelope, OutboundReply};
use switchboard_core::db::EventTx;
use uuid::Uuid;

/// Adds the survey of a just-resolved ticket, and its message to the customer, to the
/// transaction (once per ticket); the message is published with the commit.
pub async fn invite(
    tx: &mut EventTx<'_>,
    public_url: &str,
    ticket_id: Uuid,
) -> Result<(), switchboard_core::Error> {
    let row = sqlx::query(
        "SELECT t.channel, t.number, t.assigned_agent_id, c.email, c.phone, c.name, c.handle
         FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1",
    )
    .bind(ticket_id)
    .fetch_one(&mut **tx)
    .await?;
    // A ticket only machines wrote to (auto-replies, bounces) gets no survey: a survey answering
    // an auto-responder is how mail loops start.
    let person_wrote: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE ticket_id = $1 AND direction = 'inbound'
                        AND NOT (metadata ? 'automatic'))",
    )
    .bind(ticket_id)
    .fetch_one(&mut **tx)
    .await?;
    if !person_wrote {
        return Ok(());
    }
    let channel = Channel::parse(&row.try_get::<String, _>("channel")?);
    let Some(channel) = channel.filter(|c| c.answerable()) else {
        return Ok(());
    };
    let agent: Option<Uuid> = match row.try_get("assigned_agent_id")? {
        Some(a) => Some(a),
        None => {
            sqlx::query_scalar(
                "SELECT agent_id FROM assignments WHERE ticket_id = $1 ORDER BY assigned_at DESC LIMIT 1",
            )
            .bind(ticket_id)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let inserted = sqlx::query(
        "INSERT INTO csat (ticket_id, token, agent_id) VALUES ($1, $2, $3) ON CONFLICT (ticket_id) DO NOTHING",
    )
    .bind(ticket_id)
    .bind(&token)
    .bind(agent)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(());
    }
    let number: String = row.try_get("number")?;
    let reply_id = derived_id(ticket_id, "csat-survey");
    let text = format!(
        "Your request {number} is resolved. How did we do? Rate us from 1 to 5: {}/csat/{token}",
        public_url.trim_end_matches('/')
    );
    // The ticket keeps the survey without its token (agents read the ticket).
    let stored = redact_survey_links(&text).into_owned();
    let now = switchboard_core::clock::now();
    sqlx::query(
        "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at)
         VALUES ($1, $2, $3, 'outbound', 'survey', $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(reply_id)
    .bind(ticket_id)
    .bind(channel.as_str())
    .bind(&stored)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let out = OutboundReply {
        reply_id,
        ticket_id,
        channel,
        to: CustomerRef {
            email: row.try_get("email")?,
            phone: row.try_get("phone")?,
            name: row.try_get("name")?,
            handle: row.try_get("handle")?,
        },
        text,
        author_agent_id: None,
        in_reply_to: None,
    };
    tx.add(&Envelope::new(reply_id, now, out)).await?;
    Ok(())
}

/// What a survey link shows in place of its token outside the customer's own copy.
pub const REDACTED_TOKEN: &str = "[sent-to-the-customer]";

/// `text` with the token of every survey link (`/csat/` and hex digits) replaced by
/// [`REDACTED_TOKEN`]; borrowed when there is none.
pub fn redact_survey_links(text: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "/csat/";
    if !text.contains(MARK) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(MARK) {
        let (head, tail) = rest.split_at(i + MARK.len());
        out.push_str(head);
        // Hex digits are ASCII: the count of them is a byte offset on a char boundary.
        let n = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n > 0 {
            out.push_str(REDACTED_TOKEN);
            changed = true;
        }
        rest = &tail[n..];
    }
    out.push_str(rest);
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}
