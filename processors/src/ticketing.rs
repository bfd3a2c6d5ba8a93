//! The ticketing stage: threads each inbound message into a ticket.
//!
//! Threading: a message naming a ticket of the same customer joins it (reopening it if it was
//! resolved); a message with a conversation id joins that conversation's open ticket; anything
//! else opens a new ticket. Idempotency: the message id is the primary key of `messages`, and the
//! ticket id and every event id are derived from it, so a redelivered message changes nothing and
//! only re-publishes events its first run may have left in the outbox.

use chrono::{Datelike, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use switchboard_contracts::{
    decode, derived_id, Direction, EnrichmentResult, Envelope, InboundMessage, TicketChange,
    TicketEvent, TicketStatus,
};
use switchboard_core::db::Outbox;
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use switchboard_models::engine::Prediction;
use switchboard_models::predictor::Predictor;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::rules::Rules;

/// The running ticketing stage.
#[derive(Debug, Clone)]
pub struct Ticketing {
    pool: PgPool,
    outbox: Outbox,
    rules: Rules,
    /// The models; without them, keyword rules triage and no enrichment is stored.
    predictor: Option<Predictor>,
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
    pub fn new(pool: PgPool, outbox: Outbox, rules: Rules, predictor: Option<Predictor>) -> Self {
        Ticketing {
            pool,
            outbox,
            rules,
            predictor,
        }
    }

    /// Stores one message and publishes its events.
    pub async fn process(&self, env: &Envelope<InboundMessage>) -> Result<Outcome, Error> {
        let stored: Option<i32> = sqlx::query_scalar("SELECT 1 FROM messages WHERE id = $1")
            .bind(env.payload.message_id)
            .fetch_optional(&self.pool)
            .await?;
        let (outcome, seqs) = if stored.is_some() {
            (Outcome::Duplicate, Vec::new())
        } else {
            let prediction = self.predict(&env.payload).await;
            self.apply(env, prediction.as_ref()).await?
        };
        match &outcome {
            Outcome::Stored { .. } => self.outbox.publish(&seqs).await?,
            // The first run may have crashed before publishing: send whatever is left.
            Outcome::Duplicate => {
                let n = self.outbox.publish_pending().await?;
                debug!(message_id = %env.payload.message_id, republished = n, "duplicate message");
            }
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

    /// Stores a message not seen before. A concurrent instance storing it first is caught by
    /// the `messages` primary key and rolled back as a duplicate.
    async fn apply(
        &self,
        env: &Envelope<InboundMessage>,
        prediction: Option<&Prediction>,
    ) -> Result<(Outcome, Vec<i64>), Error> {
        let m = &env.payload;
        let mut tx = self.pool.begin().await?;
        let customer_id = upsert_customer(&mut tx, m).await?;
        let mut seqs = Vec::new();

        let existing = find_ticket(&mut tx, m, customer_id).await?;
        let (ticket_id, number, created) = match existing {
            Some((id, number, status)) => {
                let status = TicketStatus::parse(&status).unwrap_or(TicketStatus::Open);
                if status != TicketStatus::Open {
                    sqlx::query(
                        "UPDATE tickets SET status = 'open', updated_at = now() WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let change = TicketChange::StatusChanged {
                        from: status,
                        to: TicketStatus::Open,
                    };
                    seqs.extend(
                        add_event(
                            &mut tx,
                            m.message_id,
                            "status_changed",
                            id,
                            &number,
                            customer_id,
                            change,
                        )
                        .await?,
                    );
                    if matches!(status, TicketStatus::Resolved | TicketStatus::Closed) {
                        seqs.extend(
                            add_event(
                                &mut tx,
                                m.message_id,
                                "reopened",
                                id,
                                &number,
                                customer_id,
                                TicketChange::Reopened,
                            )
                            .await?,
                        );
                    }
                } else {
                    sqlx::query("UPDATE tickets SET updated_at = now() WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                (id, number, false)
            }
            None => {
                let id = derived_id(m.message_id, "ticket");
                let seq: i64 = sqlx::query_scalar("SELECT nextval('ticket_number_seq')")
                    .fetch_one(&mut *tx)
                    .await?;
                let number = format!("T-{}-{:06}", m.received_at.year(), seq);
                let triage = self
                    .rules
                    .triage_with(prediction, m.subject.as_deref(), &m.text);
                let conversation = m
                    .metadata
                    .get("conversation_id")
                    .map(|c| format!("{}:{c}", m.channel.as_str()));
                sqlx::query(
                    "INSERT INTO tickets (id, number, customer_id, channel, conversation_key, subject, status,
                                          priority, priority_rank, category, required_skill, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8, $9, $10, $11, $11)",
                // (intent and sentiment are set with the message below)
                )
                .bind(id)
                .bind(&number)
                .bind(customer_id)
                .bind(m.channel.as_str())
                .bind(conversation)
                .bind(&m.subject)
                .bind(triage.priority.as_str())
                .bind(triage.priority as i16)
                .bind(&triage.category)
                .bind(&triage.required_skill)
                .bind(m.received_at)
                .execute(&mut *tx)
                .await?;
                let change = TicketChange::Created {
                    channel: m.channel,
                    subject: m.subject.clone(),
                    priority: triage.priority,
                    category: triage.category,
                    required_skill: triage.required_skill,
                    language: None,
                };
                seqs.extend(
                    add_event(
                        &mut tx,
                        m.message_id,
                        "created",
                        id,
                        &number,
                        customer_id,
                        change,
                    )
                    .await?,
                );
                (id, number, true)
            }
        };

        let author = m
            .customer
            .email
            .clone()
            .or_else(|| m.customer.phone.clone());
        let inserted = sqlx::query(
            "INSERT INTO messages (id, ticket_id, channel, direction, external_id, author, text, truncated, received_at)
             VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(m.message_id)
        .bind(ticket_id)
        .bind(m.channel.as_str())
        .bind(&m.external_id)
        .bind(author)
        .bind(&m.text)
        .bind(m.truncated)
        .bind(m.received_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Another instance stored it between our check and now.
            tx.rollback().await?;
            return Ok((Outcome::Duplicate, Vec::new()));
        }
        let change = TicketChange::MessageAdded {
            message_id: m.message_id,
            direction: Direction::Inbound,
            channel: m.channel,
        };
        seqs.extend(
            add_event(
                &mut tx,
                m.message_id,
                "message_added",
                ticket_id,
                &number,
                customer_id,
                change,
            )
            .await?,
        );
        if let Some(p) = prediction {
            seqs.extend(enrich(&mut tx, m.message_id, ticket_id, created, p).await?);
        }
        tx.commit().await?;
        info!(ticket_id = %ticket_id, ticket_number = %number, message_id = %m.message_id, created, "message threaded");
        Ok((Outcome::Stored { ticket_id, created }, seqs))
    }
}

/// Stores what the models said on the message (and the ticket's latest sentiment, and its intent
/// when the message opened it) and adds the enrichment event.
async fn enrich(
    tx: &mut Transaction<'_, Postgres>,
    message_id: Uuid,
    ticket_id: Uuid,
    created: bool,
    p: &Prediction,
) -> Result<Option<i64>, Error> {
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
    sqlx::query(
        "UPDATE tickets SET sentiment = COALESCE($2, sentiment), intent = CASE WHEN $3 THEN $4 ELSE intent END WHERE id = $1",
    )
    .bind(ticket_id)
    .bind(p.sentiment.as_ref().map(|s| s.score))
    .bind(created)
    .bind(&p.intent)
    .execute(&mut **tx)
    .await?;
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
    Outbox::add(
        tx,
        &Envelope::new(derived_id(message_id, "enrichment"), Utc::now(), ev),
    )
    .await
}

async fn upsert_customer(
    tx: &mut Transaction<'_, Postgres>,
    m: &InboundMessage,
) -> Result<Uuid, Error> {
    let new_id = Uuid::now_v7();
    let row = if let Some(email) = &m.customer.email {
        sqlx::query(
            "INSERT INTO customers (id, email, name) VALUES ($1, $2, $3)
             ON CONFLICT (email) DO UPDATE SET name = COALESCE(customers.name, EXCLUDED.name) RETURNING id",
        )
        .bind(new_id)
        .bind(email)
        .bind(&m.customer.name)
        .fetch_one(&mut **tx)
        .await?
    } else if let Some(phone) = &m.customer.phone {
        sqlx::query(
            "INSERT INTO customers (id, phone, name) VALUES ($1, $2, $3)
             ON CONFLICT (phone) DO UPDATE SET name = COALESCE(customers.name, EXCLUDED.name) RETURNING id",
        )
        .bind(new_id)
        .bind(phone)
        .bind(&m.customer.name)
        .fetch_one(&mut **tx)
        .await?
    } else {
        return Err(Error::Invalid(
            "message has neither a customer email nor a phone".into(),
        ));
    };
    Ok(row.try_get("id")?)
}

async fn find_ticket(
    tx: &mut Transaction<'_, Postgres>,
    m: &InboundMessage,
    customer_id: Uuid,
) -> Result<Option<(Uuid, String, String)>, Error> {
    if let Some(ticket_id) = m.ticket_id {
        let row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, number, status FROM tickets WHERE id = $1 AND customer_id = $2 FOR UPDATE",
        )
        .bind(ticket_id)
        .bind(customer_id)
        .fetch_optional(&mut **tx)
        .await?;
        if row.is_none() {
            warn!(ticket_id = %ticket_id, message_id = %m.message_id, "referenced ticket not found for this customer, opening a new one");
        }
        return Ok(row);
    }
    if let Some(conv) = m.metadata.get("conversation_id") {
        let key = format!("{}:{conv}", m.channel.as_str());
        let row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, number, status FROM tickets
             WHERE conversation_key = $1 AND customer_id = $2 AND status IN ('open', 'pending')
             ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
        )
        .bind(key)
        .bind(customer_id)
        .fetch_optional(&mut **tx)
        .await?;
        return Ok(row);
    }
    Ok(None)
}

async fn add_event(
    tx: &mut Transaction<'_, Postgres>,
    message_id: Uuid,
    tag: &str,
    ticket_id: Uuid,
    number: &str,
    customer_id: Uuid,
    change: TicketChange,
) -> Result<Option<i64>, Error> {
    let ev = TicketEvent {
        ticket_id,
        ticket_number: number.to_string(),
        customer_id,
        change,
    };
    Outbox::add(
        tx,
        &Envelope::new(derived_id(message_id, tag), Utc::now(), ev),
    )
    .await
}

impl Handler for Ticketing {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = decode::<InboundMessage>(record.payload.as_deref())?;
        self.process(&env).await?;
        Ok(())
    }
}
