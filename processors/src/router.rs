//! The router stage: assigns open tickets to the best agent, and reassigns.
//!
//! Candidates are the online agents with the skill the ticket needs; [`Scorer`] applies the hard
//! constraints (shift, language, capacity per channel, seniority for VIPs and escalated queues)
//! and scores the rest on skill level, workload, satisfaction and response time. Every
//! assignment stores its ranked candidates and their scores (or why each was excluded).
//!
//! Safety with any number of routers comes from Postgres: the ticket row is locked for the
//! decision, and the chosen agent is taken with one conditional `UPDATE` that re-checks status
//! and capacity (overall and on the channel) under the row lock; a check constraint keeps
//! `active_count <= max_concurrent` and a unique index allows one active assignment per ticket.
//! If the pick was taken meanwhile, the next candidate is tried.
//!
//! Tickets nobody fits wait in a queue ordered by priority, then SLA deadline, then age. They
//! are retried when an agent comes online or frees up, and on every sweep. An agent going away
//! or offline loses their open tickets to others; an assignment not accepted within
//! `routing.accept_timeout_secs` goes to someone else, never back to the same agent.

use std::time::Duration;

use chrono::NaiveTime;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use switchboard_contracts::{
    decode, AgentPresence, AgentStatus, Candidate, TicketChange, TicketEvent, Topic,
};

use serde::Deserialize;
use switchboard_core::config::ConfigError;

use crate::rules::{CategoryRoute, CategoryRule};
use crate::scoring::RoutingWeights;
use switchboard_core::db::{ChangeActor, EventTx, Outbox};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::scoring::{AgentState, Level, Scorer, Shift, TicketNeeds};
use switchboard_tickets::store;

/// Routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Skill required when no rule matches; `null` means any agent may take it.
    #[serde(deserialize_with = "switchboard_core::config::optional_string")]
    pub default_skill: Option<String>,
    pub rules: Vec<CategoryRule>,
    /// The classifier's categories (lowercase): skill and priority. Used when the model is at
    /// least `min_confidence` sure; otherwise the keyword rules decide.
    pub categories: BTreeMap<String, CategoryRoute>,
    pub min_confidence: f32,
    /// A sentiment score at or below this raises a new ticket's priority one step.
    pub escalate_sentiment: f32,
    /// How often the router retries tickets waiting for an agent.
    pub sweep_interval_ms: u64,
    /// Weights of the agent score (normalised to sum 1).
    pub weights: RoutingWeights,
    /// An assignment not accepted within this time goes to someone else (0: never).
    pub accept_timeout_secs: u64,
    /// Response time that scores 0.5 on the response-time part (faster scores higher).
    pub target_response_secs: f64,
    /// VIP customers only go to senior agents (or supervisors).
    pub vip_requires_senior: bool,
    /// Customer tiers that count as VIP.
    pub vip_tiers: Vec<String>,
    /// An order at least this large (in cents) raises the priority one step.
    pub high_value_order_cents: i64,
    /// Contacts about the same category within this many days count as repeats.
    pub repeat_window_days: u32,
    /// The contact (counting this one) that escalates: 3 = the third contact about the same issue.
    pub escalate_on_contact: u32,
}

impl RoutingConfig {
    /// How often the sweep looks for waiting and timed-out tickets (at least 100 ms).
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(100))
    }

    /// How long an agent has to accept; zero: assignments never time out.
    pub fn accept_timeout(&self) -> Duration {
        Duration::from_secs(self.accept_timeout_secs)
    }

    /// Priorities that are not one of the five.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (name, route) in &self.categories {
            if let Some(p) = &route.priority {
                if switchboard_contracts::Priority::parse(p).is_none() {
                    errors.push(ConfigError::nowhere(format!(
                        "routing.categories.{name}.priority {p:?} is not one of low, medium, high, urgent, critical"
                    )));
                }
            }
        }
        for rule in &self.rules {
            if let Some(p) = &rule.priority {
                if switchboard_contracts::Priority::parse(p).is_none() {
                    errors.push(ConfigError::nowhere(format!(
                        "routing.rules: priority {p:?} of category {:?} is not one of low, medium, high, urgent, critical",
                        rule.category
                    )));
                }
            }
        }
        errors
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_skill: None,
            rules: Vec::new(),
            categories: BTreeMap::new(),
            min_confidence: 0.6,
            escalate_sentiment: -0.5,
            sweep_interval_ms: 2000,
            weights: RoutingWeights::default(),
            accept_timeout_secs: 120,
            target_response_secs: 120.0,
            vip_requires_senior: true,
            vip_tiers: vec!["vip".into()],
            high_value_order_cents: 50_000,
            repeat_window_days: 7,
            escalate_on_contact: 3,
        }
    }
}

/// When the spoken languages were read, and which they are.
type SpokenLanguages = (std::time::Instant, std::collections::HashSet<String>);

/// The running router.
#[derive(Debug, Clone)]
pub struct Router {
    pool: PgPool,
    outbox: Outbox,
    config: RoutingConfig,
    /// The scorer `config` compiles into.
    scorer: Scorer,
    /// `config.vip_tiers` in lower case.
    vip_tiers: Vec<String>,
    /// Languages some agent speaks (refreshed every 10 s): a ticket in a language nobody on the
    /// team speaks goes to anyone rather than waiting forever.
    spoken: std::sync::Arc<parking_lot::Mutex<Option<SpokenLanguages>>>,
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

/// How many ranked candidates (and excluded agents) a decision record keeps.
const RECORD_KEEP: usize = 10;
/// `SELECT <what the scorer needs> FROM agents <rest>`, with `$2` the ticket's channel.
macro_rules! agent_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, level, status, timezone, shift_start, shift_end, skills, skill_levels, languages,
                    max_concurrent, active_count, (channel_capacity->>$2)::int AS ch_cap,
                    COALESCE((channel_active->>$2)::int, 0) AS ch_active,
                    csat_sum, csat_count, response_secs_sum, response_count
             FROM agents WHERE ",
            $rest
        )
    };
}

/// How the release reason of an assignment that timed out begins; the router reads it back to
/// keep the ticket away from that agent.
const NOT_ACCEPTED: &str = "not accepted";

/// How many agents Postgres pre-ranks for the scorer.
const PRE_RANK: i64 = 64;
/// How many of the best candidates are tried when earlier ones were taken meanwhile.
const TRY_TOP: usize = 5;

/// An agent as [`agent_select!`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AgentRow {
    id: Uuid,
    level: String,
    status: String,
    timezone: String,
    shift_start: Option<NaiveTime>,
    shift_end: Option<NaiveTime>,
    skills: Vec<String>,
    skill_levels: serde_json::Value,
    languages: Vec<String>,
    max_concurrent: i32,
    active_count: i32,
    ch_cap: Option<i32>,
    ch_active: i32,
    csat_sum: f64,
    csat_count: i32,
    response_secs_sum: f64,
    response_count: i32,
}

impl From<AgentRow> for AgentState {
    /// What the scorer reads: a shift only with a known timezone, skill levels clamped to 1..=5
    /// (the default level for a skill without one), counts never negative.
    fn from(r: AgentRow) -> AgentState {
        let shift = match (r.shift_start, r.shift_end, r.timezone.parse()) {
            (Some(start), Some(end), Ok(tz)) => Some(Shift { tz, start, end }),
            _ => None,
        };
        let levels = r.skill_levels;
        AgentState {
            id: r.id,
            level: Level::parse(&r.level).unwrap_or(Level::Agent),
            online: r.status == "online",
            shift,
            skills: r
                .skills
                .into_iter()
                .map(|s| {
                    let l = levels
                        .get(&s)
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(u64::from(crate::scoring::DEFAULT_SKILL_LEVEL));
                    (s, l.clamp(1, 5) as u8)
                })
                .collect(),
            languages: r.languages,
            capacity: r.max_concurrent.max(0) as u32,
            active: r.active_count.max(0) as u32,
            channel_capacity: r.ch_cap.map(|c| c.max(0) as u32),
            channel_active: r.ch_active.max(0) as u32,
            csat_sum: r.csat_sum,
            csat_count: r.csat_count.max(0) as u32,
            response_secs_sum: r.response_secs_sum,
            response_count: r.response_count.max(0) as u32,
        }
    }
}

impl Router {
    /// The router over `routing:` of pipelines.yaml.
    pub fn new(pool: PgPool, outbox: Outbox, config: RoutingConfig) -> Self {
        Router {
            pool,
            outbox,
            scorer: Scorer::new(
                config.weights,
                config.target_response_secs,
                config.vip_requires_senior,
            ),
            vip_tiers: config.vip_tiers.iter().map(|t| t.to_lowercase()).collect(),
            config,
            spoken: Default::default(),
        }
    }

    /// Whether some agent (any status) speaks `language`.
    async fn spoken(&self, language: &str) -> Result<bool, Error> {
        if let Some((at, set)) = &*self.spoken.lock() {
            if at.elapsed() < std::time::Duration::from_secs(10) {
                return Ok(set.contains(language));
            }
        }
        let set: std::collections::HashSet<String> =
            sqlx::query_scalar("SELECT DISTINCT unnest(languages) FROM agents")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let known = set.contains(language);
        *self.spoken.lock() = Some((std::time::Instant::now(), set));
        Ok(known)
    }

    /// Online agents with the skill (the GIN index) that meet every hard constraint, pre-ranked
    /// in Postgres by the scorer's own formula (its weights and priors bound as parameters): only
    /// the best `PRE_RANK` travel, and the scorer re-checks and scores them exactly. Plus, for the
    /// decision record, a few online agents with the skill that were left out, so a supervisor
    /// sees why (the scorer names the reason).
    async fn candidates(
        &self,
        tx: &mut EventTx<'_>,
        needs: &TicketNeeds,
        channel: &str,
        team: Option<Uuid>,
    ) -> Result<Vec<AgentState>, Error> {
        let w = self.scorer.weights();
        let min_level = match (
            needs.vip && self.scorer.vip_requires_senior(),
            needs.min_level,
        ) {
            (true, l) => l.unwrap_or(Level::Senior).max(Level::Senior),
            (false, l) => l.unwrap_or(Level::Agent),
        };
        let rows: Vec<AgentRow> = sqlx::query_as(
            agent_select!("status = 'online' AND ($1::text IS NULL OR skills @> ARRAY[$1::text])
               AND active_count < max_concurrent
               AND COALESCE((channel_active->>$2)::int, 0) < COALESCE((channel_capacity->>$2)::int, max_concurrent)
               AND ($3::text IS NULL OR cardinality(languages) = 0 OR $3 = ANY(languages))
               AND (CASE level WHEN 'supervisor' THEN 2 WHEN 'senior' THEN 1 ELSE 0 END) >= $10
               AND NOT (id = ANY($11))
               AND ($17::uuid IS NULL OR id IN (SELECT agent_id FROM team_members WHERE team_id = $17))
               AND (shift_start IS NULL OR shift_end IS NULL OR CASE
                     WHEN shift_start <= shift_end THEN ($12::timestamptz AT TIME ZONE timezone)::time >= shift_start
                                                    AND ($12::timestamptz AT TIME ZONE timezone)::time < shift_end
                     ELSE ($12::timestamptz AT TIME ZONE timezone)::time >= shift_start
                       OR ($12::timestamptz AT TIME ZONE timezone)::time < shift_end END)
             ORDER BY
                 $4 * CASE WHEN $1::text IS NULL THEN 1.0 ELSE LEAST(GREATEST(COALESCE((skill_levels->>$1)::float8, $16::float8), 1), 5) / 5 END
               + $5 * (1 - active_count::float8 / GREATEST(max_concurrent, 1))
               + $6 * LEAST(GREATEST(((csat_sum + $13::float8 * $14::float8) / (csat_count + $14::float8) - 1) / 4, 0), 1)
               + $7 * ($8 / ($8 + (GREATEST(response_secs_sum, 0) + $8 * $15::float8) / (response_count + $15::float8))) DESC,
                 id
             LIMIT $9"),
        )
        .bind(&needs.skill)
        .bind(channel)
        .bind(&needs.language)
        .bind(w.skill)
        .bind(w.workload)
        .bind(w.satisfaction)
        .bind(w.response_time)
        .bind(self.scorer.target_response_secs())
        .bind(PRE_RANK)
        .bind(min_level as i32)
        .bind(&needs.excluded)
        .bind(switchboard_core::clock::now())
        // The scorer's priors, so the pre-rank orders by the same formula.
        .bind(crate::scoring::CSAT_PRIOR_MEAN)
        .bind(crate::scoring::CSAT_PRIOR_COUNT)
        .bind(crate::scoring::RESPONSE_PRIOR_COUNT)
        .bind(f64::from(crate::scoring::DEFAULT_SKILL_LEVEL))
        // A ticket with a team goes to the team's members only.
        .bind(team)
        .fetch_all(&mut **tx)
        .await?;
        let mut agents: Vec<AgentState> = rows.into_iter().map(AgentState::from).collect();
        let considered: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
        let others: Vec<AgentRow> = sqlx::query_as(
            agent_select!("status = 'online' AND ($1::text IS NULL OR skills @> ARRAY[$1::text]) AND NOT (id = ANY($3))
             LIMIT 10"),
        )
        .bind(&needs.skill)
        .bind(channel)
        .bind(&considered)
        .fetch_all(&mut **tx)
        .await?;
        for r in others {
            let a = AgentState::from(r);
            if self
                .scorer
                .check(&a, needs, switchboard_core::clock::now())
                .is_err()
            {
                agents.push(a);
            }
        }
        Ok(agents)
    }

    /// Tries to assign one ticket.
    pub async fn try_assign(&self, ticket_id: Uuid) -> Result<AssignOutcome, Error> {
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("router"));
        let Some(ticket) = sqlx::query(
            "SELECT t.number, t.customer_id, t.status, t.assigned_agent_id, t.required_skill, t.language, t.channel,
                    t.queue, t.team_id, c.tier
             FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1 FOR UPDATE OF t",
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
        let channel: String = ticket.try_get("channel")?;
        let queue: String = ticket.try_get("queue")?;
        let tier: String = ticket.try_get("tier")?;
        let excluded: Vec<Uuid> = sqlx::query_scalar(
            "SELECT agent_id FROM assignments
             WHERE ticket_id = $1 AND (starts_with(release_reason, $2) OR starts_with(release_reason, $3))",
        )
        .bind(ticket_id)
        .bind(NOT_ACCEPTED)
        .bind(switchboard_tickets::assign::HANDED_BACK)
        .fetch_all(&mut *tx)
        .await?;
        let language: Option<String> = ticket.try_get("language")?;
        let language = match language {
            Some(l) if self.spoken(&l).await? => Some(l),
            _ => None,
        };
        let needs = TicketNeeds {
            skill: ticket.try_get("required_skill")?,
            language,
            vip: self.vip_tiers.contains(&tier.to_lowercase()),
            min_level: crate::scoring::Level::for_queue(&queue),
            excluded,
        };
        let team: Option<Uuid> = ticket.try_get("team_id")?;
        let agents = self.candidates(&mut tx, &needs, &channel, team).await?;
        let now = switchboard_core::clock::now();
        let ranked = self.scorer.rank(&agents, &needs, now);
        let eligible: Vec<&Candidate> = ranked.iter().filter(|c| c.excluded.is_none()).collect();
        let picked = claim(&mut tx, &eligible, &channel, now).await?;
        let Some(pick) = picked else {
            debug!(ticket_id = %ticket_id, skill = ?needs.skill, candidates = agents.len(), "no agent available, ticket waits");
            return Ok(AssignOutcome::NoAgent);
        };
        let agent_id = pick.agent_id;
        let (record, reason) = decision_record(&ranked, &pick, eligible.len(), &needs);
        switchboard_tickets::assign::record(
            &mut tx,
            ticket_id,
            &number,
            customer_id,
            agent_id,
            &channel,
            &reason,
            record,
            now,
        )
        .await?;
        tx.commit(&self.outbox).await?;
        metrics::counter!(crate::telemetry::ASSIGNMENTS_TOTAL).increment(1);
        info!(ticket_id = %ticket_id, ticket_number = %number, agent_id = %agent_id, score = pick.score, "ticket assigned");
        Ok(AssignOutcome::Assigned(agent_id))
    }

    /// Tries waiting tickets in queue order (priority, then SLA deadline, then age). Stops early
    /// once `stop_after_misses` tickets in a row found nobody. Returns how many were assigned.
    pub async fn assign_waiting(
        &self,
        limit: i64,
        stop_after_misses: usize,
    ) -> Result<usize, Error> {
        let waiting: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM tickets WHERE status = 'open' AND assigned_agent_id IS NULL
             ORDER BY priority_rank DESC, next_due_at NULLS LAST, created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let (mut assigned, mut misses) = (0, 0);
        for id in waiting {
            match self.try_assign(id).await? {
                AssignOutcome::Assigned(_) => {
                    assigned += 1;
                    misses = 0;
                }
                AssignOutcome::NoAgent => {
                    misses += 1;
                    if misses >= stop_after_misses {
                        break;
                    }
                }
                AssignOutcome::NotNeeded => {}
            }
        }
        metrics::gauge!(crate::telemetry::TICKETS_WAITING)
            .set(self.waiting_count().await.unwrap_or(0) as f64);
        Ok(assigned)
    }

    /// An agent has room: gives them the first waiting tickets they can take, in queue order.
    pub async fn fill_agent(&self, agent_id: Uuid) -> Result<usize, Error> {
        let mut assigned = 0;
        for _ in 0..64 {
            // Waiting tickets whose skill this agent has, best first; the full decision (which
            // may pick a better-suited agent) runs in try_assign.
            let next: Vec<Uuid> = sqlx::query_scalar(
                "SELECT t.id FROM tickets t, agents a
                 WHERE a.id = $1 AND a.status = 'online' AND a.active_count < a.max_concurrent
                   AND t.status = 'open' AND t.assigned_agent_id IS NULL
                   AND (t.required_skill IS NULL OR t.required_skill = ANY(a.skills))
                   AND (t.team_id IS NULL OR t.team_id IN (SELECT team_id FROM team_members WHERE agent_id = a.id))
                 ORDER BY t.priority_rank DESC, t.next_due_at NULLS LAST, t.created_at LIMIT 8",
            )
            .bind(agent_id)
            .fetch_all(&self.pool)
            .await?;
            if next.is_empty() {
                break;
            }
            let mut progressed = false;
            for id in next {
                if let AssignOutcome::Assigned(_) = self.try_assign(id).await? {
                    assigned += 1;
                    progressed = true;
                    break;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(assigned)
    }

    /// Takes open tickets away from an agent who went away or offline, and reassigns them.
    pub async fn release_agent(&self, agent_id: Uuid, why: &str) -> Result<usize, Error> {
        let tickets: Vec<Uuid> = sqlx::query_scalar(
            "SELECT ticket_id FROM assignments WHERE agent_id = $1 AND released_at IS NULL",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await?;
        let mut released = 0;
        for ticket_id in tickets {
            if self.release_ticket(ticket_id, Some(agent_id), why).await? {
                released += 1;
                self.try_assign(ticket_id).await?;
            }
        }
        Ok(released)
    }

    /// Releases a ticket's assignment (only if it is still `agent`'s when given).
    async fn release_ticket(
        &self,
        ticket_id: Uuid,
        agent: Option<Uuid>,
        why: &str,
    ) -> Result<bool, Error> {
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("router"));
        let current: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT assigned_agent_id FROM tickets WHERE id = $1 FOR UPDATE")
                .bind(ticket_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(Some(current)) = current else {
            return Ok(false);
        };
        if agent.is_some_and(|a| a != current) {
            return Ok(false);
        }
        let released = store::release(&mut tx, ticket_id, why).await?.is_some();
        tx.commit(&self.outbox).await?;
        Ok(released)
    }

    /// Reassigns assignments not accepted within the timeout.
    pub async fn expire_unaccepted(&self) -> Result<usize, Error> {
        if self.config.accept_timeout().is_zero() {
            return Ok(0);
        }
        // `assigned_at` is a business time; the timeout runs on the wall clock (it is not a
        // business rule), so it is measured as the business span it takes.
        let span = switchboard_core::clock::business_span(self.config.accept_timeout());
        let Some(cutoff) = switchboard_core::clock::now().checked_sub_signed(span) else {
            return Ok(0); // a timeout longer than the calendar: nothing is that old
        };
        let stale: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT ticket_id, agent_id FROM assignments
             WHERE released_at IS NULL AND accepted_at IS NULL AND assigned_at < $1 LIMIT 500",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        let why = format!(
            "{NOT_ACCEPTED} within {} s",
            self.config.accept_timeout_secs
        );
        for (ticket_id, agent_id) in stale {
            if self.release_ticket(ticket_id, Some(agent_id), &why).await? {
                n += 1;
                metrics::counter!(crate::telemetry::ASSIGNMENTS_EXPIRED_TOTAL).increment(1);
                self.try_assign(ticket_id).await?;
            }
        }
        Ok(n)
    }

    async fn waiting_count(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM tickets WHERE status = 'open' AND assigned_agent_id IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every `sweep_interval` until shutdown: publishes outbox rows a crashed instance left,
    /// expires unaccepted assignments, retries waiting tickets.
    pub async fn sweep_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.sweep_interval()) => {}
            }
            if let Err(e) = self.outbox.publish_pending().await {
                warn!(error = %e, "outbox sweep failed");
            }
            match self.expire_unaccepted().await {
                Ok(0) => {}
                Ok(n) => info!(
                    reassigned = n,
                    "assignments not accepted in time went to others"
                ),
                Err(e) => warn!(error = %e, "accept timeout sweep failed"),
            }
            match self.assign_waiting(500, 50).await {
                Ok(0) => {}
                Ok(n) => info!(assigned = n, "sweep assigned waiting tickets"),
                Err(e) => warn!(error = %e, "sweep failed"),
            }
        }
    }
}

impl Handler for Router {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        match record.topic {
            Topic::TicketEvents => {
                let env = decode::<TicketEvent>(record.payload.as_deref())?;
                match env.payload.change {
                    TicketChange::Created { .. }
                    | TicketChange::Reopened
                    | TicketChange::HandedOver { .. }
                    | TicketChange::TeamChanged { .. }
                    | TicketChange::StatusChanged { .. } => {
                        self.try_assign(env.payload.ticket_id).await?;
                    }
                    TicketChange::Unassigned { agent_id, .. } => {
                        // The ticket needs someone, and the agent may have room for another.
                        self.try_assign(env.payload.ticket_id).await?;
                        self.fill_agent(agent_id).await?;
                    }
                    _ => {}
                }
            }
            Topic::AgentPresence => {
                let env = decode::<AgentPresence>(record.payload.as_deref())?;
                match env.payload.status {
                    AgentStatus::Online => {
                        self.fill_agent(env.payload.agent_id).await?;
                    }
                    s @ (AgentStatus::Away | AgentStatus::Offline) => {
                        let n = self
                            .release_agent(
                                env.payload.agent_id,
                                &format!("agent went {}", s.as_str()),
                            )
                            .await?;
                        if n > 0 {
                            info!(agent_id = %env.payload.agent_id, released = n, "tickets of an absent agent reassigned");
                        }
                    }
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
/// Takes a slot of the best eligible agent that still has one (a conditional update, so two
/// routers never overfill an agent); `None` when the first `TRY_TOP` are all full by now.
async fn claim(
    tx: &mut EventTx<'_>,
    eligible: &[&Candidate],
    channel: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Candidate>, Error> {
    for c in eligible.iter().take(TRY_TOP) {
        if switchboard_tickets::assign::claim(tx, c.agent_id, channel, now, true).await? {
            return Ok(Some((*c).clone()));
        }
    }
    Ok(None)
}

/// The decision as recorded and explained: the best eligible and the best excluded candidates
/// (up to `RECORD_KEEP` each, with their reasons), and a one-line reason.
fn decision_record(
    ranked: &[Candidate],
    pick: &Candidate,
    eligible: usize,
    needs: &TicketNeeds,
) -> (Vec<Candidate>, String) {
    let mut record: Vec<Candidate> = ranked
        .iter()
        .filter(|c| c.excluded.is_none())
        .take(RECORD_KEEP)
        .cloned()
        .collect();
    record.extend(
        ranked
            .iter()
            .filter(|c| c.excluded.is_some())
            .take(RECORD_KEEP)
            .cloned(),
    );
    let reason = format!(
        "best of {} eligible (score {:.3}){}{}",
        eligible,
        pick.score,
        needs
            .skill
            .as_deref()
            .map(|s| format!(", skill {s}"))
            .unwrap_or_default(),
        if needs.vip { ", vip" } else { "" },
    );
    (record, reason)
}

impl switchboard_core::runtime::Background for Router {
    fn name(&self) -> &'static str {
        "router-sweep"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.sweep_loop(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_row_maps_to_what_the_scorer_reads() {
        let row = AgentRow {
            id: Uuid::nil(),
            level: "senior".into(),
            status: "online".into(),
            timezone: "Europe/Berlin".into(),
            shift_start: NaiveTime::from_hms_opt(9, 0, 0),
            shift_end: NaiveTime::from_hms_opt(17, 0, 0),
            skills: vec!["billing".into(), "shipping".into(), "returns".into()],
            skill_levels: serde_json::json!({"billing": 9, "shipping": 0}),
            languages: vec!["de".into()],
            max_concurrent: 5,
            active_count: -1,
            ch_cap: Some(-3),
            ch_active: 2,
            csat_sum: 9.0,
            csat_count: 2,
            response_secs_sum: 60.0,
            response_count: -4,
        };
        let a = AgentState::from(row.clone());
        assert_eq!(a.level, Level::Senior);
        assert!(a.online);
        assert!(a.shift.is_some());
        // Levels clamp to 1..=5; a skill without one gets the default.
        let default = crate::scoring::DEFAULT_SKILL_LEVEL;
        assert_eq!(
            a.skills,
            vec![
                ("billing".to_string(), 5),
                ("shipping".to_string(), 1),
                ("returns".to_string(), default)
            ]
        );
        // Counts are never negative.
        assert_eq!(
            (a.active, a.channel_capacity, a.response_count),
            (0, Some(0), 0)
        );
        // No shift without a known timezone; an unknown level is an agent; away is not online.
        let b = AgentState::from(AgentRow {
            timezone: "Mars/Olympus".into(),
            level: "wizard".into(),
            status: "away".into(),
            ..row
        });
        assert!(b.shift.is_none());
        assert_eq!(b.level, Level::Agent);
        assert!(!b.online);
    }
}
