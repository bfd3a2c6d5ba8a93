//! The ticketing stage: threads each inbound message into a ticket, triages it and asks the
//! knowledge-base bot.
//!
//! Threading: a message naming a ticket of the same customer joins it (reopening it if it was
//! resolved); a message with a conversation id joins that conversation's open ticket of the same
//! customer; anything else opens a new ticket. "The same customer" is checked on every path, so
//! a ticket number in a subject or one of our Message-IDs in `In-Reply-To` never carries a
//! stranger's mail into another customer's ticket: a forged `From` of someone else starts its
//! own ticket. An unverified message (`InboundMessage::verified`) is stored with
//! `metadata.sender_verified = "false"`, which the console shows ("sender not authenticated"
//! for email, "unverified" for chat). Priority: the category's (model or keyword rules), one step up for
//! strongly negative sentiment, a VIP tier, a high-value order and a repeated contact.
//! Escalation (senior queue, supervisor notified): strongly negative sentiment, or the
//! `routing.escalate_on_contact`-th contact about the same category. A new ticket gets
//! knowledge-base suggestions for the agent; when the best article is similar enough and the
//! channel can carry a reply, the bot answers and the ticket waits on the customer; any reply
//! from the customer hands it to a person at once.
//!
//! Idempotency: the message id is the primary key of `messages`, and the ticket id and every
//! event id are derived from it, so a redelivered message changes nothing and only re-publishes
//! events its first run may have left in the outbox.

use std::collections::BTreeMap;

use crate::kb::KbConfig;
use crate::router::RoutingConfig;
use chrono::{Datelike, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use switchboard_contracts::{
    decode, derived_id, Direction, EnrichmentResult, Envelope, InboundMessage, OutboundReply,
    TicketChange, TicketStatus,
};
use switchboard_core::db::{ChangeActor, EventTx, Outbox};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use switchboard_models::engine::Prediction;
use switchboard_models::predictor::Predictor;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::kb::{Hit, SharedKb};
use crate::rules::{adjust, Factors, Rules};
use switchboard_tickets::row;
use switchboard_tickets::shop::Wismo;
use switchboard_tickets::store::{self, Action};

/// The knowledge-base bot.
#[derive(Debug, Clone)]
pub struct Bot {
    pub kb: SharedKb,
    pub config: KbConfig,
    /// The shop: the facts articles are filled from, and when a shipment is late.
    pub shop: std::sync::Arc<switchboard_tickets::shop::ShopConfig>,
    /// Where customers track an order themselves (`<public_url>/track`).
    pub track_url: String,
    /// Where customers start a return themselves (`<public_url>/returns`).
    pub returns_url: String,
    /// Reply drafts from solved tickets (none: not offered).
    pub drafts: Option<crate::drafts::Drafts>,
}

/// A metric label for an intent: the model's label (its heads have a fixed, small set), else
/// `none`.
fn intent_label(intent: &str) -> String {
    if intent.is_empty()
        || intent.len() > 48
        || !intent.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        "none".into()
    } else {
        intent.to_string()
    }
}

/// Intents that ask where an order is.
const WISMO_INTENTS: [&str; 2] = ["track_order", "delivery_problem"];

/// Intents that ask to send something back.
const RETURN_INTENTS: [&str; 2] = ["return_item", "exchange_item"];

/// Words that ask for a person.
const HANDOVER_WORDS: [&str; 6] = [
    "agent",
    "human",
    "person",
    "someone",
    "representative",
    "operator",
];

/// Closing line of every bot answer.
pub const BOT_FOOTER: &str =
    "If this does not solve it, reply \"agent\" and a person will take over.";

/// The running ticketing stage.
#[derive(Debug, Clone)]
pub struct Ticketing {
    pool: PgPool,
    outbox: Outbox,
    rules: Rules,
    routing: RoutingConfig,
    /// The models; without them, keyword rules triage and no enrichment is stored.
    predictor: Option<Predictor>,
    bot: Option<Bot>,
}

/// What handling one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message was stored on this ticket.
    Stored { ticket_id: Uuid, created: bool },
    /// The message was stored before (a redelivery or a client retry).
    Duplicate,
}

impl Ticketing {
    pub fn new(
        pool: PgPool,
        outbox: Outbox,
        routing: RoutingConfig,
        predictor: Option<Predictor>,
        bot: Option<Bot>,
    ) -> Self {
        Ticketing {
            pool,
            outbox,
            rules: Rules::new(&routing),
            routing,
            predictor,
            bot,
        }
    }

    /// Whether the message is stored already.
    async fn stored(&self, env: &Envelope<InboundMessage>) -> Result<bool, Error> {
        let stored: Option<i32> = sqlx::query_scalar("SELECT 1 FROM messages WHERE id = $1")
            .bind(env.payload.message_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(stored.is_some())
    }

    /// Stores one message and publishes its events.
    pub async fn process(&self, env: &Envelope<InboundMessage>) -> Result<Outcome, Error> {
        let outcome = if self.stored(env).await? {
            Outcome::Duplicate
        } else {
            // The three parts of an inbound message's time, for the per-stage breakdown.
            let t = std::time::Instant::now();
            let prediction = self.predict(&env.payload).await;
            metrics::histogram!(crate::telemetry::TICKETING_PART_SECONDS, "part" => "models")
                .record(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let hits = self.search_kb(&env.payload, prediction.as_ref()).await;
            let drafts = self.search_drafts(&env.payload, prediction.as_ref()).await;
            metrics::histogram!(crate::telemetry::TICKETING_PART_SECONDS, "part" => "knowledge_base")
                .record(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let r = match self
                .apply(env, prediction.as_ref(), &hits, drafts.as_deref())
                .await
            {
                // A rebalance handed the same message to two consumers at once: the other one's
                // commit made this one's ticket (or customer) a duplicate key. Stored by it, the
                // message is a duplicate here, not a dead letter.
                Err(e) if unique_violation(&e) && self.stored(env).await? => Outcome::Duplicate,
                r => r?,
            };
            metrics::histogram!(crate::telemetry::TICKETING_PART_SECONDS, "part" => "postgres")
                .record(t.elapsed().as_secs_f64());
            r
        };
        // Stored: published with its commit. A duplicate: the first run may have crashed before
        // publishing, so send whatever is left.
        if outcome == Outcome::Duplicate {
            let n = self.outbox.publish_pending().await?;
            debug!(message_id = %env.payload.message_id, republished = n, "duplicate message");
        }
        Ok(outcome)
    }

    /// Asks the models, before the transaction (never while holding row locks). A model failure
    /// must not cost a customer message: the ticket is then triaged by the keyword rules.
    async fn predict(&self, m: &InboundMessage) -> Option<Prediction> {
        let p = self.predictor.as_ref()?;
        let text = match &m.subject {
            Some(subject) => format!("{subject}\n{}", m.text),
            None => m.text.clone(),
        };
        match p.predict(text).await {
            Ok(pred) => Some(pred),
            Err(e) => {
                warn!(message_id = %m.message_id, error = %e, "models unavailable, triaging by rules");
                None
            }
        }
    }

    /// Knowledge-base hits for a message (before the transaction; empty without models, with an
    /// index built by another encoder version, or on a store error, which costs no message).
    async fn search_kb(&self, m: &InboundMessage, p: Option<&Prediction>) -> Vec<Hit> {
        let (Some(bot), Some(p)) = (&self.bot, p) else {
            return Vec::new();
        };
        if p.embedding.is_empty() {
            return Vec::new();
        }
        let encoder = p.model_versions.get("encoder");
        let indexed = bot.kb.encoder().await.ok().flatten();
        if indexed.as_ref() != encoder {
            debug!(index = ?indexed, encoder = ?encoder, "knowledge base built with another encoder, not searched");
            return Vec::new();
        }
        let text = format!("{} {}", m.subject.as_deref().unwrap_or_default(), m.text);
        match bot
            .kb
            .search(&p.embedding, &text, bot.config.suggestions.max(1))
            .await
        {
            Ok(hits) => hits,
            Err(e) => {
                warn!(message_id = %m.message_id, error = %e, "knowledge base search failed");
                Vec::new()
            }
        }
    }

    /// Reply drafts for a message (before the transaction): `None` when drafts are off, the
    /// message is a machine's, or the index cannot be searched (another encoder, an error: the
    /// ticket's drafts then stay as they were); else the drafts for it, maybe none.
    async fn search_drafts(
        &self,
        m: &InboundMessage,
        p: Option<&Prediction>,
    ) -> Option<Vec<switchboard_tickets::drafts::StoredDraft>> {
        let drafts = self.bot.as_ref()?.drafts.as_ref()?;
        let p = p?;
        if p.embedding.is_empty() || m.automatic().is_some() {
            return None;
        }
        let indexed = drafts.index.encoder().await.ok().flatten();
        if indexed.is_some() && indexed.as_ref() != p.model_versions.get("encoder") {
            debug!(index = ?indexed, "drafts index built with another encoder, not searched");
            return None;
        }
        let text = format!("{} {}", m.subject.as_deref().unwrap_or_default(), m.text);
        drafts.search(&p.embedding, &text).await
    }

    /// Stores a message not seen before. A concurrent instance storing it first is caught by
    /// the `messages` primary key and rolled back as a duplicate.
    async fn apply(
        &self,
        env: &Envelope<InboundMessage>,
        prediction: Option<&Prediction>,
        hits: &[Hit],
        drafts: Option<&[switchboard_tickets::drafts::StoredDraft]>,
    ) -> Result<Outcome, Error> {
        let m = &env.payload;
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("system"));
        let (customer_id, tier) = upsert_customer(tx.tx(), m).await?;
        let vip = self
            .routing
            .vip_tiers
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&tier));
        let negative = prediction
            .and_then(|p| p.sentiment.as_ref())
            .is_some_and(|s| s.score <= self.routing.escalate_sentiment);

        let existing = find_ticket(tx.tx(), m, customer_id).await?;
        // A machine's mail (an out-of-office, a bounce): kept on the ticket, nothing more.
        let automatic = m.automatic().is_some();
        // `contact`: for a new ticket, which contact about its category this is.
        let (ticket_id, number, contact) = match existing {
            Some(t) => {
                if !automatic {
                    self.follow_up(&mut tx, m, customer_id, &t, negative)
                        .await?;
                }
                (t.id, t.number, None)
            }
            None => {
                let (id, number, contact) = self
                    .create_ticket(&mut tx, m, customer_id, vip, prediction, hits)
                    .await?;
                (id, number, Some(contact))
            }
        };

        let author = m
            .customer
            .email
            .clone()
            .or_else(|| m.customer.phone.clone());
        let inserted = sqlx::query(
            "INSERT INTO messages (id, ticket_id, channel, direction, external_id, author, text, truncated, received_at,
                                   metadata, attachments)
             VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(m.message_id)
        .bind(ticket_id)
        .bind(m.channel.as_str())
        .bind(&m.external_id)
        .bind(author)
        .bind(&m.text)
        .bind(m.truncated)
        .bind(m.received_at)
        .bind(sqlx::types::Json(stored_metadata(m)))
        .bind(sqlx::types::Json(&m.attachments))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Another instance stored it between our check and now.
            tx.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        let change = TicketChange::MessageAdded {
            message_id: m.message_id,
            direction: Direction::Inbound,
            channel: m.channel,
            automatic,
        };
        add_event(
            &mut tx,
            m.message_id,
            "message_added",
            ticket_id,
            &number,
            customer_id,
            change,
        )
        .await?;
        if let Some(p) = prediction {
            enrich(&mut tx, m.message_id, ticket_id, contact.is_some(), p).await?;
        }
        if let Some(drafts) = drafts {
            // The drafts answer the customer's latest message: they replace the ones before.
            // A reopened ticket is never offered its own answer (the one that did not solve it;
            // the index may not have dropped it yet).
            let drafts: Vec<_> = drafts.iter().filter(|d| d.id != ticket_id).collect();
            sqlx::query("UPDATE tickets SET drafts = $2 WHERE id = $1")
                .bind(ticket_id)
                .bind(sqlx::types::Json(drafts))
                .execute(&mut *tx)
                .await?;
        }
        link_order(&mut tx, m, ticket_id, customer_id).await?;
        link_return(&mut tx, m, ticket_id, customer_id).await?;
        if let Some(contact) = contact {
            let repeat =
                self.routing.escalate_on_contact > 0 && contact >= self.routing.escalate_on_contact;
            let reason = match (negative, repeat) {
                (true, _) => Some("strongly negative sentiment".to_string()),
                (false, true) => Some(format!("contact {contact} about the same issue")),
                _ => None,
            };
            if let Some(reason) = reason {
                // The priority already counts these; the ticket moves up and the supervisor hears.
                let actions = [Action::MoveToSenior, Action::NotifySupervisor];
                store::escalate(
                    &mut tx,
                    ticket_id,
                    &actions,
                    &reason,
                    derived_id(m.message_id, "auto-escalate"),
                )
                .await?;
            } else if !automatic && !m.metadata.contains_key(switchboard_contracts::RETURN_ID) {
                self.maybe_bot_answer(
                    &mut tx,
                    m,
                    ticket_id,
                    &number,
                    customer_id,
                    hits,
                    prediction,
                )
                .await?;
            }
        }
        tx.commit(&self.outbox).await?;
        let created = contact.is_some();
        info!(ticket_id = %ticket_id, ticket_number = %number, message_id = %m.message_id, created, "message threaded");
        Ok(Outcome::Stored { ticket_id, created })
    }

    /// Opens a ticket for `m`: its number, triage (category, skill, priority raised by VIP, a
    /// high-value order and earlier contacts about the same category), and its `created` event.
    /// Returns the id, the number and which contact about its category this is.
    async fn create_ticket(
        &self,
        tx: &mut EventTx<'_>,
        m: &InboundMessage,
        customer_id: Uuid,
        vip: bool,
        prediction: Option<&Prediction>,
        hits: &[Hit],
    ) -> Result<(Uuid, String, u32), Error> {
        let id = derived_id(m.message_id, "ticket");
        let seq: i64 = sqlx::query_scalar("SELECT nextval('ticket_number_seq')")
            .fetch_one(&mut **tx)
            .await?;
        let number = format!("T-{}-{:06}", m.received_at.year(), seq);
        let triage = self
            .rules
            .triage_with(prediction, m.subject.as_deref(), &m.text);
        // Only a known category makes "the same issue".
        let earlier: i64 = if triage.category.is_none() {
            0
        } else {
            sqlx::query_scalar(
                "SELECT count(*) FROM tickets WHERE customer_id = $1 AND category = $2
               AND created_at > $3 - make_interval(days => $4)",
            )
            .bind(customer_id)
            .bind(&triage.category)
            .bind(m.received_at)
            .bind(self.routing.repeat_window_days as i32)
            .fetch_one(&mut **tx)
            .await?
        };
        let high_value = self.high_value_order(tx.tx(), m, customer_id).await?;
        // A valuable customer (VIP or a valuable order) whose churn risk is high moves up too.
        let churn_risk = (vip || high_value)
            && switchboard_tickets::churn::risk_of(tx.tx(), customer_id, m.received_at)
                .await?
                .score
                >= switchboard_tickets::churn::HIGH;
        let factors = Factors {
            vip,
            high_value_order: high_value,
            earlier_contacts: earlier.max(0) as u32,
            churn_risk,
        };
        let (priority, why) = adjust(triage.priority, factors);
        let contact = earlier.max(0) as u32 + 1;
        let conversation = m
            .metadata
            .get("conversation_id")
            .map(|c| format!("{}:{c}", m.channel.as_str()));
        let language = prediction.and_then(|p| p.language.clone());
        sqlx::query(
            "INSERT INTO tickets (id, number, customer_id, channel, conversation_key, subject, status,
                                  priority, priority_rank, category, required_skill, language, contact_count,
                                  kb_suggestions, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9, $10, $11, $12, $13, $14, $14)",
        )
        .bind(id)
        .bind(&number)
        .bind(customer_id)
        .bind(m.channel.as_str())
        .bind(conversation)
        .bind(&m.subject)
        .bind(priority.as_str())
        .bind(priority as i16)
        .bind(&triage.category)
        .bind(&triage.required_skill)
        .bind(&language)
        .bind(contact as i32)
        .bind(serde_json::to_value(hits).unwrap_or_default())
        .bind(m.received_at)
        .execute(&mut **tx)
        .await?;
        if !why.is_empty() {
            debug!(ticket_id = %id, base = triage.priority.as_str(), priority = priority.as_str(), why = ?why, "priority raised");
        }
        let change = TicketChange::Created {
            channel: m.channel,
            subject: m.subject.clone(),
            priority,
            category: triage.category,
            required_skill: triage.required_skill,
            language,
        };
        add_event(
            tx,
            m.message_id,
            "created",
            id,
            &number,
            customer_id,
            change,
        )
        .await?;
        Ok((id, number, contact))
    }

    /// Whether an order at or above the threshold is involved: named on the message
    /// (`metadata.order_value`, in currency units) or among the customer's orders of 90 days.
    async fn high_value_order(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        m: &InboundMessage,
        customer: Uuid,
    ) -> Result<bool, Error> {
        let threshold = self.routing.high_value_order_cents;
        if threshold <= 0 {
            return Ok(false);
        }
        if let Some(v) = m
            .metadata
            .get("order_value")
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            if v * 100.0 >= threshold as f64 {
                return Ok(true);
            }
        }
        let big: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM orders WHERE customer_id = $1 AND total_cents >= $2 AND created_at > $3 - interval '90 days' LIMIT 1",
        )
        .bind(customer)
        .bind(threshold)
        .bind(switchboard_core::clock::now())
        .fetch_optional(&mut **tx)
        .await?;
        Ok(big.is_some())
    }

    /// A message on an existing ticket: reopens or resumes it, hands a bot conversation to a
    /// person, and escalates on strongly negative sentiment.
    async fn follow_up(
        &self,
        tx: &mut EventTx<'_>,
        m: &InboundMessage,
        customer_id: Uuid,
        t: &Found,
        negative: bool,
    ) -> Result<(), Error> {
        let status = TicketStatus::parse(&t.status).unwrap_or(TicketStatus::Open);
        let bot_state = match (t.bot_state.as_deref(), status) {
            (Some("answered"), _) => Some("handed_over"),
            (Some("resolved"), TicketStatus::Resolved | TicketStatus::Closed) => Some("reopened"),
            _ => None,
        };
        let reopen = status != TicketStatus::Open;
        row::customer_wrote(tx, t.id, reopen, bot_state, switchboard_core::clock::now()).await?;
        if reopen {
            // The answer that closed it did not solve it: no longer a draft for others.
            switchboard_tickets::drafts::withdraw(tx.tx(), &[t.id]).await?;
            switchboard_tickets::churn::reopened(tx.tx(), t.id).await?;
            let change = TicketChange::StatusChanged {
                from: status,
                to: TicketStatus::Open,
            };
            add_event(
                tx,
                m.message_id,
                "status_changed",
                t.id,
                &t.number,
                customer_id,
                change,
            )
            .await?;
            if matches!(status, TicketStatus::Resolved | TicketStatus::Closed) {
                add_event(
                    tx,
                    m.message_id,
                    "reopened",
                    t.id,
                    &t.number,
                    customer_id,
                    TicketChange::Reopened,
                )
                .await?;
            }
        }
        match bot_state {
            Some("handed_over") => {
                let lower = m.text.to_lowercase();
                let asked = lower
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|w| HANDOVER_WORDS.contains(&w));
                let reason = if asked {
                    "customer asked for a person"
                } else {
                    "customer replied to the bot"
                };
                add_event(
                    tx,
                    m.message_id,
                    "handed_over",
                    t.id,
                    &t.number,
                    customer_id,
                    TicketChange::HandedOver {
                        reason: reason.into(),
                    },
                )
                .await?;
                metrics::counter!(crate::telemetry::KB_HANDOVERS_TOTAL, "intent" => intent_label(t.intent.as_deref().unwrap_or(""))).increment(1);
            }
            Some("reopened") => {
                metrics::counter!(crate::telemetry::KB_REOPENED_AFTER_BOT_TOTAL, "intent" => intent_label(t.intent.as_deref().unwrap_or(""))).increment(1)
            }
            _ => {}
        }
        if negative && t.escalated_at.is_none() {
            let actions = [
                Action::RaisePriority,
                Action::MoveToSenior,
                Action::NotifySupervisor,
            ];
            store::escalate(
                tx,
                t.id,
                &actions,
                "strongly negative sentiment",
                derived_id(m.message_id, "auto-escalate"),
            )
            .await?;
        }
        Ok(())
    }

    /// Answers a new ticket from the knowledge base when the best article is close enough.
    #[allow(clippy::too_many_arguments)]
    async fn maybe_bot_answer(
        &self,
        tx: &mut EventTx<'_>,
        m: &InboundMessage,
        ticket_id: Uuid,
        number: &str,
        customer_id: Uuid,
        hits: &[Hit],
        prediction: Option<&Prediction>,
    ) -> Result<(), Error> {
        let Some(bot) = &self.bot else { return Ok(()) };
        if !bot
            .config
            .bot_channels
            .iter()
            .any(|c| c == m.channel.as_str())
        {
            return Ok(());
        }
        let asks_where = prediction.is_some_and(|p| {
            p.intent
                .as_deref()
                .is_some_and(|i| WISMO_INTENTS.contains(&i))
                && p.intent_confidence.unwrap_or(0.0) >= bot.shop.wismo.min_confidence
        });
        if asks_where {
            if let Some(answer) = self.wismo(tx, bot, m, customer_id).await? {
                let intent = prediction.and_then(|p| p.intent.as_deref()).unwrap_or("");
                return self
                    .wismo_reply(tx, m, ticket_id, number, customer_id, answer, intent)
                    .await;
            }
        }
        let asks_return = prediction.is_some_and(|p| {
            p.intent
                .as_deref()
                .is_some_and(|i| RETURN_INTENTS.contains(&i))
                && p.intent_confidence.unwrap_or(0.0) >= bot.shop.wismo.min_confidence
        });
        if asks_return {
            if let Some(answer) = self.returns_answer(tx, bot, m, customer_id).await? {
                let intent = prediction.and_then(|p| p.intent.as_deref()).unwrap_or("");
                return self
                    .wismo_reply(tx, m, ticket_id, number, customer_id, answer, intent)
                    .await;
            }
        }
        // The closest article in meaning answers (the hits' order, for suggestions, also weighs
        // keywords: an article that repeats the words can rank first and mean something else).
        let Some(best) = hits
            .iter()
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
        else {
            return Ok(());
        };
        if best.similarity < bot.config.answer_threshold {
            return Ok(());
        }
        let Some(article) = bot.kb.get(best.article_id).await? else {
            return Ok(());
        };
        // The shop's facts go in at send time; an article naming one not configured is never
        // sent (a person answers instead).
        let body = match bot.shop.fill(&article.answer_text()) {
            Ok(b) => b,
            Err(missing) => {
                warn!(article_id = %article.id, missing = ?missing, "article names facts the shop has not configured; not sent");
                return Ok(());
            }
        };
        let text = format!("{body}\n\n{BOT_FOOTER}");
        let reply_id = derived_id(m.message_id, "bot_reply");
        let now = switchboard_core::clock::now();
        sqlx::query(
            "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at)
             VALUES ($1, $2, $3, 'outbound', 'bot', $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(reply_id)
        .bind(ticket_id)
        .bind(m.channel.as_str())
        .bind(&text)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        row::bot_answered(tx, ticket_id, now, switchboard_core::clock::now()).await?;
        let events = [
            (
                "bot_answered",
                TicketChange::BotAnswered {
                    article_id: article.id,
                    confidence: best.similarity,
                    order_number: None,
                },
            ),
            (
                "bot_message",
                TicketChange::MessageAdded {
                    message_id: reply_id,
                    direction: Direction::Outbound,
                    channel: m.channel,
                    automatic: false,
                },
            ),
            (
                "bot_pending",
                TicketChange::StatusChanged {
                    from: TicketStatus::Open,
                    to: TicketStatus::Pending,
                },
            ),
        ];
        for (tag, change) in events {
            add_event(
                tx,
                m.message_id,
                tag,
                ticket_id,
                number,
                customer_id,
                change,
            )
            .await?;
        }
        let reply = OutboundReply {
            reply_id,
            ticket_id,
            channel: m.channel,
            to: m.customer.clone(),
            text,
            author_agent_id: None,
            in_reply_to: m.external_id.clone(),
        };
        tx.add(&Envelope::new(reply_id, now, reply)).await?;
        metrics::counter!(crate::telemetry::KB_BOT_ANSWERS_TOTAL).increment(1);
        info!(ticket_id = %ticket_id, article_id = %article.id, similarity = best.similarity, "bot answered from the knowledge base");
        Ok(())
    }

    /// The where-is-my-order answer for `m`, from the shop's data: none when the bot has nothing
    /// to say from it (no order of this customer's), so the knowledge base may answer. An
    /// unverified sender learns nothing about any order: it is pointed to the tracking page.
    async fn wismo(
        &self,
        tx: &mut EventTx<'_>,
        bot: &Bot,
        m: &InboundMessage,
        customer_id: Uuid,
    ) -> Result<Option<(Wismo, Option<String>)>, Error> {
        use switchboard_tickets::shop::{wismo, OrderFacts};
        if !m.verified {
            return Ok(Some((
                Wismo::Answer(format!(
                    "I can tell you where your order is once I know it is yours: enter your order number and the email you ordered with at {}, or reply with them here and a person will check.",
                    bot.track_url
                )),
                None,
            )));
        }
        let named = switchboard_tickets::orders::named_order(tx, customer_id, &m.text).await?;
        // The order it names, else the customer's only order still on its way (placed in the
        // last 90 days, not cancelled, some parcel not delivered).
        let rows = sqlx::query(
            "SELECT coalesce(number, external_id) AS number, created_at, cancelled_at, fulfillment_status, fulfillments
               FROM orders
              WHERE customer_id = $1
                AND CASE WHEN $2::text IS NOT NULL THEN number = $2
                         ELSE cancelled_at IS NULL AND created_at > now() - interval '90 days'
                              AND NOT (jsonb_array_length(fulfillments) > 0 AND NOT EXISTS (
                                  SELECT 1 FROM jsonb_array_elements(fulfillments) f
                                   WHERE coalesce(f->>'shipment_status', '') <> 'delivered')) END
              ORDER BY created_at DESC LIMIT 5",
        )
        .bind(customer_id)
        .bind(&named)
        .fetch_all(&mut **tx)
        .await?;
        match rows.len() {
            0 => Ok(None),
            1 => {
                let r = &rows[0];
                let facts = OrderFacts {
                    number: r.try_get("number")?,
                    created_at: r.try_get("created_at")?,
                    cancelled_at: r.try_get("cancelled_at")?,
                    fulfillment_status: r.try_get("fulfillment_status")?,
                    fulfillments: r
                        .try_get::<sqlx::types::Json<Vec<switchboard_contracts::Fulfillment>>, _>(
                            "fulfillments",
                        )?
                        .0,
                };
                let answer = wismo(&facts, &bot.shop.wismo, switchboard_core::clock::now());
                Ok(Some((answer, Some(facts.number))))
            }
            _ => {
                let names: Vec<String> = rows
                    .iter()
                    .filter_map(|r| r.try_get::<String, _>("number").ok())
                    .collect();
                Ok(Some((
                    Wismo::Answer(format!(
                        "You have several orders on their way ({}). Which one do you mean? Reply with its number and I will look it up.",
                        names.join(", ")
                    )),
                    None,
                )))
            }
        }
    }

    /// The answer to "I want to return this": the return link for each of the customer's
    /// delivered orders still inside the policy's window (the one the message names, else up to
    /// three, newest first), ready with the order's number. Unverified: the help centre's page,
    /// nothing about any order. None when no order can go back (the knowledge base may answer
    /// with the policy).
    async fn returns_answer(
        &self,
        tx: &mut EventTx<'_>,
        bot: &Bot,
        m: &InboundMessage,
        customer_id: Uuid,
    ) -> Result<Option<(Wismo, Option<String>)>, Error> {
        use switchboard_tickets::returns::{OrderRow, ORDER_ROW};
        use switchboard_tickets::shop::day;
        if !m.verified {
            return Ok(Some((
                Wismo::Answer(format!(
                    "You can start a return at {} with your order number and the email you ordered with: it shows what can go back and why, and simple returns are approved at once.",
                    bot.returns_url
                )),
                None,
            )));
        }
        let named = switchboard_tickets::orders::named_order(tx, customer_id, &m.text).await?;
        let orders: Vec<OrderRow> = sqlx::query_as(&format!(
            "SELECT {ORDER_ROW} FROM orders
              WHERE customer_id = $1 AND cancelled_at IS NULL AND number IS NOT NULL
                AND ($2::text IS NULL OR number = $2)
              ORDER BY created_at DESC LIMIT 20"
        ))
        .bind(customer_id)
        .bind(&named)
        .fetch_all(&mut **tx)
        .await?;
        let now = switchboard_core::clock::now();
        let window = chrono::Duration::days(i64::from(bot.shop.returns.window_days));
        let mut lines = Vec::new();
        let mut first = None;
        for o in &orders {
            let Some(delivered) = o.delivered_at() else {
                continue;
            };
            if delivered + window < now {
                continue;
            }
            // Only an order with a line that can still go back (not final sale, not a
            // non-returnable product, not already returned), as the help centre will say.
            let verdicts = o.verdicts(tx, &bot.shop.returns, now).await?;
            if !verdicts.iter().any(|l| l.eligible) {
                continue;
            }
            let key: String =
                form_urlencoded::byte_serialize(o.number.trim().trim_start_matches('#').as_bytes())
                    .collect();
            lines.push(format!(
                "- Order {}, delivered on {}: until {}. {}?order={key}",
                o.number,
                day(delivered),
                day(delivered + window),
                bot.returns_url
            ));
            first.get_or_insert_with(|| o.number.clone());
            if lines.len() == 3 {
                break;
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            Wismo::Answer(format!(
                "You can send items back from:\n{}\n\nOpen the link, enter the email you ordered with, pick the items and tell us why. Simple returns are approved at once and the return label comes by email.",
                lines.join("\n")
            )),
            first,
        )))
    }

    /// Sends an answer from the order's data (where is my order; where to return it): an
    /// answer waits on the customer (and counts as deflected if they stay quiet); a late or stuck shipment is told and handed to a person at
    /// raised priority.
    #[allow(clippy::too_many_arguments)]
    async fn wismo_reply(
        &self,
        tx: &mut EventTx<'_>,
        m: &InboundMessage,
        ticket_id: Uuid,
        number: &str,
        customer_id: Uuid,
        (answer, order): (Wismo, Option<String>),
        intent: &str,
    ) -> Result<(), Error> {
        let handover = matches!(answer, Wismo::HandOver { .. });
        let text = if handover {
            answer.text().to_string()
        } else {
            format!("{}\n\n{BOT_FOOTER}", answer.text())
        };
        let reply_id = derived_id(m.message_id, "bot_reply");
        let now = switchboard_core::clock::now();
        sqlx::query(
            "INSERT INTO messages (id, ticket_id, channel, direction, author, text, received_at)
             VALUES ($1, $2, $3, 'outbound', 'bot', $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(reply_id)
        .bind(ticket_id)
        .bind(m.channel.as_str())
        .bind(&text)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let mut events = vec![
            (
                "bot_answered",
                TicketChange::BotAnswered {
                    article_id: Uuid::nil(),
                    confidence: 1.0,
                    order_number: order.clone(),
                },
            ),
            (
                "bot_message",
                TicketChange::MessageAdded {
                    message_id: reply_id,
                    direction: Direction::Outbound,
                    channel: m.channel,
                    automatic: false,
                },
            ),
        ];
        if let Wismo::HandOver { reason, .. } = &answer {
            sqlx::query(
                "UPDATE tickets SET bot_state = 'handed_over', first_response_at = COALESCE(first_response_at, $2),
                        updated_at = $2 WHERE id = $1",
            )
            .bind(ticket_id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            events.push((
                "handed_over",
                TicketChange::HandedOver {
                    reason: reason.clone(),
                },
            ));
        } else {
            row::bot_answered(tx, ticket_id, now, now).await?;
            events.push((
                "bot_pending",
                TicketChange::StatusChanged {
                    from: TicketStatus::Open,
                    to: TicketStatus::Pending,
                },
            ));
        }
        for (tag, change) in events {
            add_event(
                tx,
                m.message_id,
                tag,
                ticket_id,
                number,
                customer_id,
                change,
            )
            .await?;
        }
        if let Wismo::HandOver { reason, .. } = &answer {
            store::escalate(
                tx,
                ticket_id,
                &[Action::RaisePriority],
                reason,
                derived_id(m.message_id, "wismo-late"),
            )
            .await?;
        }
        let reply = OutboundReply {
            reply_id,
            ticket_id,
            channel: m.channel,
            to: m.customer.clone(),
            text,
            author_agent_id: None,
            in_reply_to: m.external_id.clone(),
        };
        tx.add(&Envelope::new(reply_id, now, reply)).await?;
        let outcome = if handover { "handed_over" } else { "answered" };
        metrics::counter!(crate::telemetry::BOT_ORDER_ANSWERS_TOTAL, "intent" => intent_label(intent), "outcome" => outcome).increment(1);
        info!(ticket_id = %ticket_id, order = ?order, outcome, "bot answered from the order's data");
        Ok(())
    }

    /// Until shutdown, every `every`: resolves quiet bot answers. (The knowledge base's index
    /// follows Postgres and the models' encoder in [`crate::kb::IndexSync`].)
    pub async fn sweep_loop(
        self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while switchboard_core::runtime::pause(every, &shutdown).await {
            match self.resolve_quiet_bot_answers().await {
                Ok(0) => {}
                Ok(n) => info!(tickets = n, "bot answers with no reply resolved"),
                Err(e) => warn!(error = %e, "bot resolve sweep failed"),
            }
        }
    }

    /// Bot answers nobody replied to within `kb.bot_resolve_after_secs` count as resolved by
    /// the bot (deflected). Returns how many.
    pub async fn resolve_quiet_bot_answers(&self) -> Result<usize, Error> {
        let Some(bot) = &self.bot else { return Ok(0) };
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("bot"));
        let rows = sqlx::query(
            "SELECT id, number, customer_id, intent FROM tickets
             WHERE bot_state = 'answered' AND status = 'pending' AND updated_at < $2 - make_interval(secs => $1)
             LIMIT 500 FOR UPDATE SKIP LOCKED",
        )
        .bind(bot.config.bot_resolve_after_secs as f64)
        .bind(switchboard_core::clock::now())
        .fetch_all(&mut *tx)
        .await?;
        let mut intents = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.try_get("id")?;
            let number: String = r.try_get("number")?;
            let customer_id: Uuid = r.try_get("customer_id")?;
            let intent: Option<String> = r.try_get("intent")?;
            intents.push(intent_label(intent.as_deref().unwrap_or("")));
            row::bot_resolved(&mut tx, id, switchboard_core::clock::now()).await?;
            let cause = derived_id(id, "bot_resolved");
            for (tag, change) in [
                (
                    "status",
                    TicketChange::StatusChanged {
                        from: TicketStatus::Pending,
                        to: TicketStatus::Resolved,
                    },
                ),
                ("resolved", TicketChange::Resolved),
            ] {
                store::add_ticket_event(
                    &mut tx,
                    derived_id(cause, tag),
                    id,
                    &number,
                    customer_id,
                    change,
                )
                .await?;
            }
        }
        tx.commit(&self.outbox).await?;
        for intent in intents {
            metrics::counter!(crate::telemetry::KB_DEFLECTED_TOTAL, "intent" => intent)
                .increment(1);
        }
        Ok(rows.len())
    }
}

/// Stores what the models said on the message (and the ticket's latest sentiment, and its intent
/// when the message opened it) and adds the enrichment event.
async fn enrich(
    tx: &mut EventTx<'_>,
    message_id: Uuid,
    ticket_id: Uuid,
    created: bool,
    p: &Prediction,
) -> Result<(), Error> {
    let versions = serde_json::to_value(&p.model_versions).unwrap_or_default();
    sqlx::query(
        "UPDATE messages SET category = $2, category_confidence = $3, intent = $4, intent_confidence = $5,
                sentiment = $6, sentiment_label = $7, language = $8, model_versions = $9 WHERE id = $1",
    )
    .bind(message_id)
    .bind(&p.category)
    .bind(p.category_confidence)
    .bind(&p.intent)
    .bind(p.intent_confidence)
    .bind(p.sentiment.as_ref().map(|s| s.score))
    .bind(p.sentiment.as_ref().map(|s| s.label.clone()))
    .bind(&p.language)
    .bind(versions)
    .execute(&mut **tx)
    .await?;
    let sentiment = p.sentiment.as_ref().map(|s| s.score);
    row::enrich(tx, ticket_id, sentiment, p.intent.as_deref(), created).await?;
    let ev = EnrichmentResult {
        message_id,
        ticket_id,
        category: p.category.clone(),
        category_confidence: p.category_confidence,
        intent: p.intent.clone(),
        intent_confidence: p.intent_confidence,
        sentiment: p.sentiment.clone(),
        language: p.language.clone(),
        model_versions: p.model_versions.clone(),
    };
    tx.add(&Envelope::new(
        derived_id(message_id, "enrichment"),
        switchboard_core::clock::now(),
        ev,
    ))
    .await
}

/// What is stored as a message's metadata: the channel's, and whether its sender was verified
/// (written here, whatever the channel put in the key).
pub fn stored_metadata(m: &InboundMessage) -> std::borrow::Cow<'_, BTreeMap<String, String>> {
    if m.verified && !m.metadata.contains_key("sender_verified") {
        return std::borrow::Cow::Borrowed(&m.metadata);
    }
    let mut md = m.metadata.clone();
    if m.verified {
        md.remove("sender_verified");
    } else {
        md.insert("sender_verified".into(), "false".into());
    }
    std::borrow::Cow::Owned(md)
}

/// The customer of a message (see `switchboard_tickets::customers`); a `customer_tier` in the metadata of
/// a verified message (set by a trusted connector) updates the tier. Returns the id and tier.
async fn upsert_customer(
    tx: &mut Transaction<'_, Postgres>,
    m: &InboundMessage,
) -> Result<(Uuid, String), Error> {
    let tier = m
        .metadata
        .get("customer_tier")
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty() && t.len() <= 32);
    let claimed = m.metadata.get("claimed_email").map(String::as_str);
    switchboard_tickets::customers::resolve_message(
        tx,
        &m.customer,
        tier.as_deref(),
        m.verified,
        claimed,
    )
    .await
}

/// An existing ticket a message joins.
#[derive(Debug)]
struct Found {
    id: Uuid,
    number: String,
    status: String,
    bot_state: Option<String>,
    escalated_at: Option<chrono::DateTime<Utc>>,
    /// The intent of the message that opened it (the bot's counters are per intent).
    intent: Option<String>,
}

async fn find_ticket(
    tx: &mut Transaction<'_, Postgres>,
    m: &InboundMessage,
    customer_id: Uuid,
) -> Result<Option<Found>, Error> {
    let row = if let Some(named) = m.ticket_id {
        // A merged ticket forwards to the one it was merged into.
        let ticket_id: Uuid = sqlx::query_scalar(
            "WITH RECURSIVE chain(id, merged_into, depth) AS (
                 SELECT id, merged_into, 0 FROM tickets WHERE id = $1
                 UNION ALL SELECT t.id, t.merged_into, c.depth + 1 FROM tickets t JOIN chain c ON t.id = c.merged_into WHERE c.depth < 16)
             SELECT id FROM chain WHERE merged_into IS NULL LIMIT 1",
        )
        .bind(named)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(named);
        let row = sqlx::query(
            "SELECT id, number, status, bot_state, escalated_at, intent FROM tickets WHERE id = $1 AND customer_id = $2 FOR UPDATE",
        )
        .bind(ticket_id)
        .bind(customer_id)
        .fetch_optional(&mut **tx)
        .await?;
        if row.is_none() {
            warn!(ticket_id = %ticket_id, message_id = %m.message_id, "referenced ticket not found for this customer, opening a new one");
        }
        row
    } else if let Some(number) = m.metadata.get("ticket_number") {
        // A ticket number the customer kept in an email subject.
        let row = sqlx::query(
            "SELECT id, number, status, bot_state, escalated_at, intent FROM tickets
             WHERE number = $1 AND customer_id = $2 AND merged_into IS NULL FOR UPDATE",
        )
        .bind(number)
        .bind(customer_id)
        .fetch_optional(&mut **tx)
        .await?;
        match row {
            Some(r) => Some(r),
            None => by_conversation(tx, m, customer_id).await?,
        }
    } else {
        by_conversation(tx, m, customer_id).await?
    };
    row.map(|r| {
        Ok(Found {
            id: r.try_get("id")?,
            number: r.try_get("number")?,
            status: r.try_get("status")?,
            bot_state: r.try_get("bot_state")?,
            escalated_at: r.try_get("escalated_at")?,
            intent: r.try_get("intent")?,
        })
    })
    .transpose()
}

/// The open ticket of the message's channel conversation, if any.
async fn by_conversation(
    tx: &mut Transaction<'_, Postgres>,
    m: &InboundMessage,
    customer_id: Uuid,
) -> Result<Option<sqlx::postgres::PgRow>, Error> {
    Ok(if let Some(conv) = m.metadata.get("conversation_id") {
        let key = format!("{}:{conv}", m.channel.as_str());
        sqlx::query(
            "SELECT id, number, status, bot_state, escalated_at, intent FROM tickets
             WHERE conversation_key = $1 AND customer_id = $2 AND status IN ('open', 'pending')
             ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
        )
        .bind(key)
        .bind(customer_id)
        .fetch_optional(&mut **tx)
        .await?
    } else {
        None
    })
}

/// A ticket event caused by a message (its id derives from the message and `tag`).
async fn add_event(
    tx: &mut EventTx<'_>,
    message_id: Uuid,
    tag: &str,
    ticket_id: Uuid,
    number: &str,
    customer_id: Uuid,
    change: TicketChange,
) -> Result<(), Error> {
    store::add_ticket_event(
        tx,
        derived_id(message_id, tag),
        ticket_id,
        number,
        customer_id,
        change,
    )
    .await
}

impl Handler for Ticketing {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = decode::<InboundMessage>(record.payload.as_deref())?;
        self.process(&env).await?;
        Ok(())
    }
}

/// Whether `e` is Postgres refusing a duplicate key (23505).
fn unique_violation(e: &Error) -> bool {
    matches!(e, Error::Postgres(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505"))
}

/// A help-centre return's message (`metadata.return_id`): the ticket it lands on becomes the
/// return's, if the return is this customer's and has no ticket yet (so agents decide it from
/// the ticket, and the customer hears the decision on it).
async fn link_return(
    tx: &mut EventTx<'_>,
    m: &InboundMessage,
    ticket_id: Uuid,
    customer_id: Uuid,
) -> Result<(), Error> {
    let Some(id) = m
        .metadata
        .get(switchboard_contracts::RETURN_ID)
        .and_then(|v| v.parse::<Uuid>().ok())
    else {
        return Ok(());
    };
    sqlx::query(
        "UPDATE returns SET ticket_id = $2 WHERE id = $1 AND customer_id = $3 AND ticket_id IS NULL",
    )
    .bind(id)
    .bind(ticket_id)
    .bind(customer_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Fills the ticket's `order_number` field when the customer's message names one of its orders
/// the shop sent us and the field is still empty (an agent's or a rule's value is never
/// replaced). A deactivated field is left alone.
async fn link_order(
    tx: &mut EventTx<'_>,
    m: &InboundMessage,
    ticket_id: Uuid,
    customer_id: Uuid,
) -> Result<(), Error> {
    let mut number = switchboard_tickets::orders::named_order(tx, customer_id, &m.text).await?;
    if number.is_none() {
        if let Some(subject) = &m.subject {
            number = switchboard_tickets::orders::named_order(tx, customer_id, subject).await?;
        }
    }
    let Some(number) = number else {
        return Ok(());
    };
    let set: Option<bool> = sqlx::query_scalar(
        "SELECT COALESCE(fields->>'order_number', '') <> '' FROM tickets WHERE id = $1",
    )
    .bind(ticket_id)
    .fetch_optional(&mut **tx)
    .await?;
    if set != Some(false) {
        return Ok(());
    }
    let values = std::collections::BTreeMap::from([(
        "order_number".to_string(),
        serde_json::Value::String(number.clone()),
    )]);
    // None: no such ticket; Some(Err): the field was deactivated by an admin.
    if let Some(Ok(_)) =
        switchboard_tickets::fields::set(tx, ticket_id, &values, switchboard_core::clock::now())
            .await?
    {
        debug!(ticket_id = %ticket_id, order = %number, "order number filled from the message");
    }
    Ok(())
}
