//! The router stage: assigns open tickets to agents.
//!
//! A ticket goes to an online agent with the required skill (and language, when known) and free
//! capacity, least loaded first, then the one who waited longest since their last assignment.
//! With nobody free the ticket waits; waiting tickets are retried in priority order, then age,
//! whenever an agent comes online and on every sweep. Safety under concurrency comes from
//! Postgres: the ticket and the chosen agent are locked in one transaction, a check constraint
//! keeps `active_count <= max_concurrent`, and a unique index allows one active assignment per
//! ticket, however many routers run.

use std::time::Duration;

use chrono::Utc;
use sqlx::{PgPool, Row};
use switchboard_contracts::{
    decode, derived_id, AgentPresence, AgentStatus, Assignment, AssignmentAction, Candidate,
    Envelope, TicketChange, TicketEvent, Topic,
};
use switchboard_core::db::Outbox;
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// Settings of the router (from `routing:` in pipelines.yaml).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub sweep_interval: Duration,
}

/// The running router.
#[derive(Debug, Clone)]
pub struct Router {
    pool: PgPool,
    outbox: Outbox,
    config: RouterConfig,
}

/// The result of trying to assign one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignOutcome {
    Assigned(Uuid),
    /// Already assigned, or not open.
    NotNeeded,
    /// Nobody fits right now: the ticket waits.
    NoAgent,
}

impl Router {
    pub fn new(pool: PgPool, outbox: Outbox, config: RouterConfig) -> Self {
        Router {
            pool,
            outbox,
            config,
        }
    }

    /// Tries to assign one ticket.
    pub async fn try_assign(&self, ticket_id: Uuid) -> Result<AssignOutcome, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(ticket) = sqlx::query(
            "SELECT number, customer_id, status, assigned_agent_id, required_skill, language
             FROM tickets WHERE id = $1 FOR UPDATE",
        )
        .bind(ticket_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(AssignOutcome::NotNeeded);
        };
        let status: String = ticket.try_get("status")?;
        let assigned: Option<Uuid> = ticket.try_get("assigned_agent_id")?;
        if status != "open" || assigned.is_some() {
            return Ok(AssignOutcome::NotNeeded);
        }
        let number: String = ticket.try_get("number")?;
        let customer_id: Uuid = ticket.try_get("customer_id")?;
        let skill: Option<String> = ticket.try_get("required_skill")?;
        let language: Option<String> = ticket.try_get("language")?;

        // Everyone eligible, for the decision record.
        let candidates: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "SELECT id, active_count, max_concurrent FROM agents
             WHERE status = 'online' AND active_count < max_concurrent
               AND ($1::text IS NULL OR $1 = ANY(skills))
               AND ($2::text IS NULL OR cardinality(languages) = 0 OR $2 = ANY(languages))
             ORDER BY active_count::float8 / max_concurrent, last_assigned_at NULLS FIRST, id
             LIMIT 10",
        )
        .bind(&skill)
        .bind(&language)
        .fetch_all(&mut *tx)
        .await?;
        // The pick, locked; agents another router holds right now are skipped.
        let picked: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM agents
             WHERE status = 'online' AND active_count < max_concurrent
               AND ($1::text IS NULL OR $1 = ANY(skills))
               AND ($2::text IS NULL OR cardinality(languages) = 0 OR $2 = ANY(languages))
             ORDER BY active_count::float8 / max_concurrent, last_assigned_at NULLS FIRST, id
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&skill)
        .bind(&language)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(agent_id) = picked else {
            debug!(ticket_id = %ticket_id, skill = ?skill, "no agent available, ticket waits");
            return Ok(AssignOutcome::NoAgent);
        };
        sqlx::query("UPDATE agents SET active_count = active_count + 1, last_assigned_at = now() WHERE id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .map(|(id, active, max)| Candidate {
                agent_id: id,
                score: 1.0 - f64::from(active) / f64::from(max.max(1)),
                excluded: None,
            })
            .collect();
        let reason = match &skill {
            Some(s) => format!("online with skill {s}, least loaded"),
            None => "online, least loaded".to_string(),
        };
        let assignment_id = Uuid::now_v7();
        sqlx::query("INSERT INTO assignments (id, ticket_id, agent_id, reason, candidates) VALUES ($1, $2, $3, $4, $5)")
            .bind(assignment_id)
            .bind(ticket_id)
            .bind(agent_id)
            .bind(&reason)
            .bind(serde_json::to_value(&candidates).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE tickets SET assigned_agent_id = $1, updated_at = now() WHERE id = $2")
            .bind(agent_id)
            .bind(ticket_id)
            .execute(&mut *tx)
            .await?;
        let now = Utc::now();
        let mut seqs = Vec::new();
        let ev = TicketEvent {
            ticket_id,
            ticket_number: number.clone(),
            customer_id,
            change: TicketChange::Assigned { agent_id },
        };
        seqs.extend(
            Outbox::add(
                &mut tx,
                &Envelope::new(derived_id(assignment_id, "ticket_event"), now, ev),
            )
            .await?,
        );
        let a = Assignment {
            assignment_id,
            ticket_id,
            ticket_number: number.clone(),
            agent_id,
            action: AssignmentAction::Assigned,
            reason,
            candidates,
        };
        seqs.extend(Outbox::add(&mut tx, &Envelope::new(assignment_id, now, a)).await?);
        tx.commit().await?;
        metrics::counter!("switchboard_assignments_total").increment(1);
        info!(ticket_id = %ticket_id, ticket_number = %number, agent_id = %agent_id, "ticket assigned");
        self.outbox.publish(&seqs).await?;
        Ok(AssignOutcome::Assigned(agent_id))
    }

    /// Tries every waiting ticket, highest priority first, then oldest. Returns how many were assigned.
    pub async fn assign_waiting(&self) -> Result<usize, Error> {
        let waiting: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tickets WHERE status = 'open' AND assigned_agent_id IS NULL
             ORDER BY priority_rank DESC, created_at LIMIT 500",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut assigned = 0;
        for id in waiting {
            if let AssignOutcome::Assigned(_) = self.try_assign(id).await? {
                assigned += 1;
            }
        }
        metrics::gauge!("switchboard_tickets_waiting")
            .set(self.waiting_count().await.unwrap_or(0) as f64);
        Ok(assigned)
    }

    async fn waiting_count(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM tickets WHERE status = 'open' AND assigned_agent_id IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Retries waiting tickets every `sweep_interval` until shutdown (also publishes any outbox
    /// rows a crashed instance left behind).
    pub async fn sweep_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.sweep_interval) => {}
            }
            if let Err(e) = self.outbox.publish_pending().await {
                warn!(error = %e, "outbox sweep failed");
            }
            match self.assign_waiting().await {
                Ok(0) => {}
                Ok(n) => info!(assigned = n, "sweep assigned waiting tickets"),
                Err(e) => warn!(error = %e, "sweep failed"),
            }
        }
    }
}

impl Handler for Router {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        match record.topic {
            Topic::TicketEvents => {
                let env = decode::<TicketEvent>(record.payload.as_deref())?;
                match env.payload.change {
                    TicketChange::Created { .. }
                    | TicketChange::Reopened
                    | TicketChange::Unassigned { .. } => {
                        self.try_assign(env.payload.ticket_id).await?;
                    }
                    _ => {}
                }
            }
            Topic::AgentPresence => {
                let env = decode::<AgentPresence>(record.payload.as_deref())?;
                if env.payload.status == AgentStatus::Online {
                    self.assign_waiting().await?;
                }
            }
            other => {
                return Err(HandlerError::Permanent(format!(
                    "the router does not read topic {other}"
                )))
            }
        }
        Ok(())
    }
}
