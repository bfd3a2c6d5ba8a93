//! The SLA stage: clocks for first response, next response and resolution, warnings and
//! breaches on time, and escalation.
//!
//! Clocks live in Postgres (`sla_clocks`), so they survive restarts and any number of
//! instances share them. Ticket events drive them, at the time each event happened: created
//! starts first response and resolution; an outbound reply stops the response clocks; a
//! customer message after a reply starts the next next-response cycle; pending (waiting on the
//! customer) pauses every running clock and open resumes them; resolved stops them all;
//! reopened starts a new resolution cycle; a priority change re-targets the running clocks.
//! Targets come from the first policy matching the ticket's priority and customer tier, in
//! business time on the team's calendar. A poller takes due clocks with `FOR UPDATE SKIP
//! LOCKED` every `sla.poll_interval_ms` and fires warnings (at `sla.warn_share` of the target)
//! and breaches with the configured escalation actions, in one transaction with the outbox;
//! event ids derive from the clock, so a crash between commit and publish repeats nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use switchboard_contracts::{
    decode, derived_id, Direction, Envelope, Priority, SlaEvent, SlaEventKind, SlaMetric,
    TicketChange, TicketEvent, TicketStatus,
};

use crate::calendar::CalendarConfig;
use switchboard_core::db::{ChangeActor, EventTx, Outbox};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::calendar::{Calendar, ALWAYS};
use switchboard_tickets::store::{self, Action};

/// SLA policies, calendars and escalation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    /// A warning fires at this share of a target (0.75: three quarters of the time used).
    pub warn_share: f64,
    /// How often due clocks are looked for (a fired event is at most this late, plus work).
    pub poll_interval_ms: u64,
    /// Business calendars by name; `24x7` always exists.
    pub calendars: BTreeMap<String, CalendarConfig>,
    /// The calendar of a team, by the skill its tickets need (overrides the policy's calendar).
    pub team_calendars: BTreeMap<String, String>,
    /// First matching policy wins; the last should match everything.
    pub policies: Vec<SlaPolicyConfig>,
    /// Escalation actions on a warning and on a breach: `raise_priority`, `move_to_senior`,
    /// `move_to_supervisor`, `notify_supervisor`.
    pub on_warning: Vec<String>,
    pub on_breach: Vec<String>,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            warn_share: 0.75,
            poll_interval_ms: 250,
            calendars: BTreeMap::new(),
            team_calendars: BTreeMap::new(),
            policies: Vec::new(),
            on_warning: vec!["notify_supervisor".into()],
            on_breach: vec![
                "raise_priority".into(),
                "move_to_senior".into(),
                "notify_supervisor".into(),
            ],
        }
    }
}

/// Targets for tickets of some priorities and customer tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicyConfig {
    pub name: String,
    /// Priorities this policy covers; empty: all.
    #[serde(default)]
    pub priorities: Vec<String>,
    /// Customer tiers this policy covers; empty: all.
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default = "default_calendar")]
    pub calendar: String,
    /// Durations such as `15m`, `4h`, `2d` (business time on the calendar).
    pub first_response: String,
    pub next_response: String,
    pub resolution: String,
}

fn default_calendar() -> String {
    "24x7".into()
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    priorities: Vec<Priority>,
    tiers: Vec<String>,
    calendar: String,
    first_response: f64,
    next_response: f64,
    resolution: f64,
}

impl Policy {
    pub fn target(&self, metric: SlaMetric) -> f64 {
        match metric {
            SlaMetric::FirstResponse => self.first_response,
            SlaMetric::NextResponse => self.next_response,
            SlaMetric::Resolution => self.resolution,
        }
    }
}

/// Policies, calendars and escalation actions, checked once at start.
#[derive(Debug, Clone)]
pub struct SlaRules {
    policies: Vec<Policy>,
    calendars: HashMap<String, Calendar>,
    team_calendars: HashMap<String, String>,
    warn_share: f64,
    on_warning: Vec<Action>,
    on_breach: Vec<Action>,
    poll_interval: Duration,
}

fn metric_str(m: SlaMetric) -> &'static str {
    match m {
        SlaMetric::FirstResponse => "first_response",
        SlaMetric::NextResponse => "next_response",
        SlaMetric::Resolution => "resolution",
    }
}

fn parse_metric(s: &str) -> SlaMetric {
    match s {
        "first_response" => SlaMetric::FirstResponse,
        "next_response" => SlaMetric::NextResponse,
        _ => SlaMetric::Resolution,
    }
}

fn parse_duration(policy: &str, field: &str, s: &str) -> Result<f64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("sla policy {policy}: {field} {s:?} is not a duration ({e})"))?;
    if d.is_zero() {
        return Err(format!(
            "sla policy {policy}: {field} must be more than zero"
        ));
    }
    Ok(d.as_secs_f64())
}

impl SlaRules {
    /// Compiles `sla:`; every problem is reported, naming the policy, calendar or field.
    pub fn compile(cfg: &SlaConfig) -> Result<SlaRules, Vec<String>> {
        let mut errors = Vec::new();
        let mut calendars = HashMap::from([(ALWAYS.to_string(), Calendar::always())]);
        for (name, c) in &cfg.calendars {
            match Calendar::from_config(name, c) {
                Ok(c) => {
                    calendars.insert(name.clone(), c);
                }
                Err(e) => errors.push(e),
            }
        }
        if !(cfg.warn_share > 0.0 && cfg.warn_share < 1.0) {
            errors.push(format!(
                "sla.warn_share {} must be between 0 and 1",
                cfg.warn_share
            ));
        }
        let mut policies = Vec::new();
        for p in &cfg.policies {
            let mut priorities = Vec::new();
            for s in &p.priorities {
                match Priority::parse(s) {
                    Some(pr) => priorities.push(pr),
                    None => errors.push(format!("sla policy {}: {s:?} is not a priority", p.name)),
                }
            }
            if !calendars.contains_key(&p.calendar) && !cfg.calendars.contains_key(&p.calendar) {
                errors.push(format!(
                    "sla policy {}: calendar {:?} is not defined",
                    p.name, p.calendar
                ));
            }
            let durations = (
                parse_duration(&p.name, "first_response", &p.first_response),
                parse_duration(&p.name, "next_response", &p.next_response),
                parse_duration(&p.name, "resolution", &p.resolution),
            );
            match durations {
                (Ok(first_response), Ok(next_response), Ok(resolution)) => policies.push(Policy {
                    name: p.name.clone(),
                    priorities,
                    tiers: p.tiers.iter().map(|t| t.to_lowercase()).collect(),
                    calendar: p.calendar.clone(),
                    first_response,
                    next_response,
                    resolution,
                }),
                (a, b, c) => errors.extend([a.err(), b.err(), c.err()].into_iter().flatten()),
            }
        }
        for (skill, cal) in &cfg.team_calendars {
            if !calendars.contains_key(cal) && !cfg.calendars.contains_key(cal) {
                errors.push(format!(
                    "sla.team_calendars.{skill}: calendar {cal:?} is not defined"
                ));
            }
        }
        let on_warning =
            Action::parse_all("sla.on_warning", &cfg.on_warning).map_err(|e| errors.push(e));
        let on_breach =
            Action::parse_all("sla.on_breach", &cfg.on_breach).map_err(|e| errors.push(e));
        if !errors.is_empty() {
            return Err(errors);
        }
        // Whatever matches nothing gets the fallback policy.
        policies.push(Policy {
            name: "fallback".into(),
            priorities: Vec::new(),
            tiers: Vec::new(),
            calendar: ALWAYS.into(),
            first_response: 3600.0,
            next_response: 4.0 * 3600.0,
            resolution: 24.0 * 3600.0,
        });
        Ok(SlaRules {
            policies,
            calendars,
            team_calendars: cfg.team_calendars.clone().into_iter().collect(),
            warn_share: cfg.warn_share,
            on_warning: on_warning.unwrap_or_default(),
            on_breach: on_breach.unwrap_or_default(),
            poll_interval: Duration::from_millis(cfg.poll_interval_ms.max(10)),
        })
    }

    /// The first policy covering this priority and tier.
    pub fn policy(&self, priority: Priority, tier: &str) -> &Policy {
        let tier = tier.to_lowercase();
        self.policies
            .iter()
            .find(|p| {
                (p.priorities.is_empty() || p.priorities.contains(&priority))
                    && (p.tiers.is_empty() || p.tiers.contains(&tier))
            })
            .unwrap_or_else(|| &self.policies[self.policies.len() - 1])
    }

    /// The calendar: the team's (by the skill the ticket needs), else the policy's.
    pub fn calendar(&self, policy: &Policy, skill: Option<&str>) -> &Calendar {
        skill
            .and_then(|s| self.team_calendars.get(s))
            .and_then(|c| self.calendars.get(c))
            .or_else(|| self.calendars.get(&policy.calendar))
            .unwrap_or_else(|| &self.calendars[ALWAYS])
    }

    fn calendar_named(&self, name: &str) -> &Calendar {
        self.calendars
            .get(name)
            .unwrap_or_else(|| &self.calendars[ALWAYS])
    }

    /// Warning and due instants of a clock running since `since` with `elapsed` open seconds
    /// already used.
    pub fn schedule(
        &self,
        cal: &Calendar,
        since: DateTime<Utc>,
        elapsed: f64,
        target: f64,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        let warn = cal.add(since, (target * self.warn_share - elapsed).max(0.0));
        let due = cal.add(since, (target - elapsed).max(0.0));
        (warn, due)
    }
}

/// One clock row.
#[derive(Debug, Clone)]
struct Clock {
    ticket_id: Uuid,
    metric: SlaMetric,
    cycle: i32,
    policy: String,
    calendar: String,
    target_secs: i64,
    started_by: Uuid,
    elapsed_secs: f64,
    running_since: Option<DateTime<Utc>>,
    warn_at: Option<DateTime<Utc>>,
    due_at: Option<DateTime<Utc>>,
    warned_at: Option<DateTime<Utc>>,
    breached_at: Option<DateTime<Utc>>,
}

impl Clock {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<Clock, sqlx::Error> {
        Ok(Clock {
            ticket_id: r.try_get("ticket_id")?,
            metric: parse_metric(r.try_get::<String, _>("metric")?.as_str()),
            cycle: r.try_get("cycle")?,
            policy: r.try_get("policy")?,
            calendar: r.try_get("calendar")?,
            target_secs: r.try_get("target_secs")?,
            started_by: r.try_get("started_by")?,
            elapsed_secs: r.try_get("elapsed_secs")?,
            running_since: r.try_get("running_since")?,
            warn_at: r.try_get("warn_at")?,
            due_at: r.try_get("due_at")?,
            warned_at: r.try_get("warned_at")?,
            breached_at: r.try_get("breached_at")?,
        })
    }

    /// The next instant something fires, if anything still can.
    fn next_fire(&self) -> Option<DateTime<Utc>> {
        self.running_since?;
        if self.warned_at.is_none() {
            self.warn_at
        } else if self.breached_at.is_none() {
            self.due_at
        } else {
            None
        }
    }
}

const CLOCK_COLUMNS: &str =
    "ticket_id, metric, cycle, policy, calendar, target_secs, started_by, elapsed_secs,
     running_since, warn_at, due_at, warned_at, breached_at";

/// The running SLA stage.
#[derive(Debug, Clone)]
pub struct Sla {
    pool: PgPool,
    outbox: Outbox,
    rules: SlaRules,
}

impl Sla {
    pub fn new(pool: PgPool, outbox: Outbox, rules: SlaRules) -> Self {
        Sla {
            pool,
            outbox,
            rules,
        }
    }

    pub fn rules(&self) -> &SlaRules {
        &self.rules
    }

    /// Applies one ticket event to the clocks.
    pub async fn apply(&self, env: &Envelope<TicketEvent>) -> Result<(), Error> {
        let ev = &env.payload;
        let at = env.occurred_at;
        // Most events leave the clocks alone: no transaction for them.
        let relevant = matches!(
            ev.change,
            TicketChange::Created { .. }
                | TicketChange::MessageAdded {
                    direction: Direction::Inbound,
                    automatic: false,
                    ..
                }
                | TicketChange::MessageAdded {
                    direction: Direction::Outbound,
                    automatic: false,
                    ..
                }
                | TicketChange::StatusChanged { .. }
                | TicketChange::Resolved
                | TicketChange::Reopened
                | TicketChange::PriorityChanged { .. }
        );
        if !relevant {
            return Ok(());
        }
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("sla"));
        // The ticket row lock orders this against the poller and the agent API.
        let Some(t) = sqlx::query(
            "SELECT t.priority, t.required_skill, t.status, c.tier FROM tickets t JOIN customers c ON c.id = t.customer_id
             WHERE t.id = $1 FOR UPDATE OF t",
        )
        .bind(ev.ticket_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(());
        };
        let priority = Priority::parse(t.try_get::<String, _>("priority")?.as_str())
            .unwrap_or(Priority::Medium);
        let skill: Option<String> = t.try_get("required_skill")?;
        let tier: String = t.try_get("tier")?;
        match &ev.change {
            TicketChange::Created { priority, .. } => {
                for metric in [SlaMetric::FirstResponse, SlaMetric::Resolution] {
                    self.start(
                        tx.tx(),
                        ev.ticket_id,
                        metric,
                        0,
                        env.event_id,
                        at,
                        *priority,
                        &tier,
                        skill.as_deref(),
                    )
                    .await?;
                }
                let policy = self.rules.policy(*priority, &tier);
                let cal = self.rules.calendar(policy, skill.as_deref());
                if let Some(text) = cal.closed_reply(at) {
                    closed_reply(&mut tx, ev, text, at).await?;
                }
            }
            TicketChange::MessageAdded {
                direction: Direction::Outbound,
                ..
            } => {
                for metric in [SlaMetric::FirstResponse, SlaMetric::NextResponse] {
                    self.stop(&mut tx, ev, Some(metric), at).await?;
                }
            }
            TicketChange::MessageAdded {
                direction: Direction::Inbound,
                ..
            } => {
                // A customer message after a reply waits for the next response.
                let first_done: Option<bool> = sqlx::query_scalar(
                    "SELECT stopped_at IS NOT NULL FROM sla_clocks WHERE ticket_id = $1 AND metric = 'first_response' AND cycle = 0",
                )
                .bind(ev.ticket_id)
                .fetch_optional(&mut *tx)
                .await?;
                let waiting: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM sla_clocks WHERE ticket_id = $1 AND metric = 'next_response' AND stopped_at IS NULL LIMIT 1",
                )
                .bind(ev.ticket_id)
                .fetch_optional(&mut *tx)
                .await?;
                if first_done == Some(true) && waiting.is_none() {
                    let cycle = self
                        .next_cycle(tx.tx(), ev.ticket_id, SlaMetric::NextResponse)
                        .await?;
                    self.start(
                        tx.tx(),
                        ev.ticket_id,
                        SlaMetric::NextResponse,
                        cycle,
                        env.event_id,
                        at,
                        priority,
                        &tier,
                        skill.as_deref(),
                    )
                    .await?;
                }
            }
            TicketChange::StatusChanged { to, .. } => match to {
                TicketStatus::Pending => self.pause(tx.tx(), ev.ticket_id, at).await?,
                TicketStatus::Open => self.resume(tx.tx(), ev.ticket_id, at).await?,
                TicketStatus::Resolved | TicketStatus::Closed => {
                    self.stop(&mut tx, ev, None, at).await?
                }
            },
            TicketChange::Resolved => self.stop(&mut tx, ev, None, at).await?,
            TicketChange::Reopened => {
                let cycle = self
                    .next_cycle(tx.tx(), ev.ticket_id, SlaMetric::Resolution)
                    .await?;
                self.start(
                    tx.tx(),
                    ev.ticket_id,
                    SlaMetric::Resolution,
                    cycle,
                    env.event_id,
                    at,
                    priority,
                    &tier,
                    skill.as_deref(),
                )
                .await?;
            }
            TicketChange::PriorityChanged { to, .. } => {
                self.retarget(tx.tx(), ev.ticket_id, *to, &tier, at).await?;
            }
            _ => {}
        }
        update_ticket_due(tx.tx(), ev.ticket_id).await?;
        tx.commit(&self.outbox).await?;
        Ok(())
    }

    async fn next_cycle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
        metric: SlaMetric,
    ) -> Result<i32, Error> {
        let max: Option<i32> = sqlx::query_scalar(
            "SELECT max(cycle) FROM sla_clocks WHERE ticket_id = $1 AND metric = $2",
        )
        .bind(ticket)
        .bind(metric_str(metric))
        .fetch_one(&mut **tx)
        .await?;
        Ok(max.map_or(0, |m| m + 1))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
        metric: SlaMetric,
        cycle: i32,
        cause: Uuid,
        at: DateTime<Utc>,
        priority: Priority,
        tier: &str,
        skill: Option<&str>,
    ) -> Result<(), Error> {
        let policy = self.rules.policy(priority, tier);
        let cal = self.rules.calendar(policy, skill);
        let target = policy.target(metric);
        let (warn, due) = self.rules.schedule(cal, at, 0.0, target);
        // `started_by` is unique: a redelivered event starts nothing twice.
        sqlx::query(
            "INSERT INTO sla_clocks (ticket_id, metric, cycle, policy, calendar, target_secs, started_by, started_at,
                                     running_since, warn_at, due_at, next_fire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $9) ON CONFLICT DO NOTHING",
        )
        .bind(ticket)
        .bind(metric_str(metric))
        .bind(cycle)
        .bind(&policy.name)
        .bind(&cal.name)
        .bind(target.round() as i64)
        .bind(derived_id(cause, &format!("sla:{}", metric_str(metric))))
        .bind(at)
        .bind(warn)
        .bind(due)
        .execute(&mut **tx)
        .await?;
        debug!(ticket_id = %ticket, metric = metric_str(metric), cycle, %due, "sla clock started");
        Ok(())
    }

    async fn open_clocks(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
    ) -> Result<Vec<Clock>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {CLOCK_COLUMNS} FROM sla_clocks WHERE ticket_id = $1 AND stopped_at IS NULL"
        ))
        .bind(ticket)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.iter().map(Clock::from_row).collect::<Result<_, _>>()?)
    }

    /// Stops the open clocks of a metric (all metrics when `None`); a clock stopped before its
    /// breach publishes `met`.
    async fn stop(
        &self,
        tx: &mut EventTx<'_>,
        ev: &TicketEvent,
        metric: Option<SlaMetric>,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        for c in self.open_clocks(tx.tx(), ev.ticket_id).await? {
            if metric.is_some_and(|m| m != c.metric) {
                continue;
            }
            let cal = self.rules.calendar_named(&c.calendar);
            let elapsed = c.elapsed_secs + c.running_since.map_or(0.0, |s| cal.open_secs(s, at));
            sqlx::query(
                "UPDATE sla_clocks SET stopped_at = $4, elapsed_secs = $5, running_since = NULL, next_fire_at = NULL
                 WHERE ticket_id = $1 AND metric = $2 AND cycle = $3",
            )
            .bind(c.ticket_id)
            .bind(metric_str(c.metric))
            .bind(c.cycle)
            .bind(at)
            .bind(elapsed)
            .execute(&mut **tx)
            .await?;
            if c.breached_at.is_none() {
                let e = SlaEvent {
                    ticket_id: c.ticket_id,
                    policy: c.policy.clone(),
                    metric: c.metric,
                    kind: SlaEventKind::Met,
                    target_at: c.due_at.unwrap_or(at),
                    cycle: c.cycle.max(0) as u32,
                    actions: Vec::new(),
                };
                tx.add(&Envelope::new(derived_id(c.started_by, "met"), at, e))
                    .await?;
                metrics::counter!(crate::telemetry::SLA_EVENTS_TOTAL, "kind" => "met", "metric" => metric_str(c.metric)).increment(1);
            }
        }
        Ok(())
    }

    async fn pause(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        for c in self.open_clocks(tx, ticket).await? {
            let Some(since) = c.running_since else {
                continue;
            };
            let cal = self.rules.calendar_named(&c.calendar);
            sqlx::query(
                "UPDATE sla_clocks SET elapsed_secs = $4, running_since = NULL, next_fire_at = NULL
                 WHERE ticket_id = $1 AND metric = $2 AND cycle = $3",
            )
            .bind(c.ticket_id)
            .bind(metric_str(c.metric))
            .bind(c.cycle)
            .bind(c.elapsed_secs + cal.open_secs(since, at))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn resume(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        for mut c in self.open_clocks(tx, ticket).await? {
            if c.running_since.is_some() {
                continue;
            }
            c.running_since = Some(at);
            self.reschedule(tx, &mut c).await?;
        }
        Ok(())
    }

    async fn retarget(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ticket: Uuid,
        priority: Priority,
        tier: &str,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let policy = self.rules.policy(priority, tier).clone();
        for mut c in self.open_clocks(tx, ticket).await? {
            // A breach is final: the clock that breached keeps its target.
            if c.breached_at.is_some() {
                continue;
            }
            c.policy = policy.name.clone();
            c.target_secs = policy.target(c.metric).round() as i64;
            if let Some(since) = c.running_since {
                // Re-base on now so the elapsed time is counted once.
                let cal = self.rules.calendar_named(&c.calendar);
                c.elapsed_secs += cal.open_secs(since, at);
                c.running_since = Some(at);
            }
            self.reschedule(tx, &mut c).await?;
        }
        Ok(())
    }

    /// Writes a clock's policy, target, run state and its warning and due instants.
    async fn reschedule(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        c: &mut Clock,
    ) -> Result<(), Error> {
        if let Some(since) = c.running_since {
            let cal = self.rules.calendar_named(&c.calendar);
            let (warn, due) = self
                .rules
                .schedule(cal, since, c.elapsed_secs, c.target_secs as f64);
            c.warn_at = Some(warn);
            c.due_at = Some(due);
        }
        sqlx::query(
            "UPDATE sla_clocks SET policy = $4, target_secs = $5, elapsed_secs = $6, running_since = $7, warn_at = $8,
                    due_at = $9, next_fire_at = $10
             WHERE ticket_id = $1 AND metric = $2 AND cycle = $3",
        )
        .bind(c.ticket_id)
        .bind(metric_str(c.metric))
        .bind(c.cycle)
        .bind(&c.policy)
        .bind(c.target_secs)
        .bind(c.elapsed_secs)
        .bind(c.running_since)
        .bind(c.warn_at)
        .bind(c.due_at)
        .bind(c.next_fire())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Fires every warning and breach that is due. Returns how many events fired.
    pub async fn fire_due(&self) -> Result<usize, Error> {
        let now = switchboard_core::clock::now();
        let mut tx = EventTx::begin(&self.pool)
            .await?
            .by(ChangeActor::rule("sla"));
        // Clock and ticket rows are both locked, skipping any another instance or the event
        // handler holds: this statement never waits, so it cannot deadlock with them.
        let rows = sqlx::query(
            "SELECT c.ticket_id, c.metric, c.cycle, c.policy, c.calendar, c.target_secs, c.started_by, c.elapsed_secs,
                    c.running_since, c.warn_at, c.due_at, c.warned_at, c.breached_at
             FROM sla_clocks c JOIN tickets t ON t.id = c.ticket_id
             WHERE c.next_fire_at <= $1
             ORDER BY c.next_fire_at LIMIT 500 FOR UPDATE OF c, t SKIP LOCKED",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut fired = 0;
        for row in &rows {
            let mut c = Clock::from_row(row)?;
            let mut kinds = Vec::new();
            if c.warned_at.is_none() && c.warn_at.is_some_and(|w| w <= now) {
                c.warned_at = Some(now);
                kinds.push((
                    SlaEventKind::Warning,
                    c.warn_at.unwrap_or(now),
                    self.rules.on_warning.clone(),
                ));
            }
            if c.breached_at.is_none() && c.due_at.is_some_and(|d| d <= now) {
                c.breached_at = Some(now);
                c.warned_at.get_or_insert(now);
                kinds.push((
                    SlaEventKind::Breached,
                    c.due_at.unwrap_or(now),
                    self.rules.on_breach.clone(),
                ));
            }
            sqlx::query(
                "UPDATE sla_clocks SET warned_at = $4, breached_at = $5, next_fire_at = $6
                 WHERE ticket_id = $1 AND metric = $2 AND cycle = $3",
            )
            .bind(c.ticket_id)
            .bind(metric_str(c.metric))
            .bind(c.cycle)
            .bind(c.warned_at)
            .bind(c.breached_at)
            .bind(c.next_fire())
            .execute(&mut *tx)
            .await?;
            for (kind, planned, actions) in kinds {
                let tag = if kind == SlaEventKind::Warning {
                    "warning"
                } else {
                    "breached"
                };
                let lateness = (now - planned).num_milliseconds().max(0) as f64 / 1000.0;
                metrics::histogram!(crate::telemetry::SLA_FIRE_LATENESS_SECONDS).record(lateness);
                metrics::counter!(crate::telemetry::SLA_EVENTS_TOTAL, "kind" => tag, "metric" => metric_str(c.metric)).increment(1);
                let cause = derived_id(c.started_by, tag);
                if !actions.is_empty() {
                    let reason = format!("sla {} {tag} ({})", metric_str(c.metric), c.policy);
                    store::escalate(&mut tx, c.ticket_id, &actions, &reason, cause).await?;
                }
                let e = SlaEvent {
                    ticket_id: c.ticket_id,
                    policy: c.policy.clone(),
                    metric: c.metric,
                    kind,
                    target_at: planned,
                    cycle: c.cycle.max(0) as u32,
                    actions: actions.iter().map(|a| a.as_str().to_string()).collect(),
                };
                tx.add(&Envelope::new(cause, now, e)).await?;
                info!(ticket_id = %c.ticket_id, metric = metric_str(c.metric), kind = tag, lateness_s = lateness, "sla event");
                fired += 1;
            }
            update_ticket_due(tx.tx(), c.ticket_id).await?;
        }
        tx.commit(&self.outbox).await?;
        Ok(fired)
    }

    /// Polls for due clocks until shutdown.
    pub async fn timer_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.rules.poll_interval) => {}
            }
            loop {
                match self.fire_due().await {
                    // A full batch: there may be more right now.
                    Ok(n) if n >= 500 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        warn!(error = %e, "sla poll failed");
                        break;
                    }
                }
            }
        }
    }
}

/// Tells the customer who opened `ev`'s ticket while its calendar is closed when it opens
/// (`text`), once per ticket (the reply's id is the ticket's), on the ticket's channel when it
/// has a way back, and never to a machine ([`store::automatic_reply`]).
async fn closed_reply(
    tx: &mut EventTx<'_>,
    ev: &TicketEvent,
    text: String,
    at: DateTime<Utc>,
) -> Result<(), Error> {
    let reply_id = derived_id(ev.ticket_id, "closed-hours-reply");
    if store::automatic_reply(
        tx,
        ev.ticket_id,
        reply_id,
        "auto-reply",
        "closed_hours",
        text,
        at,
    )
    .await?
    {
        info!(ticket_id = %ev.ticket_id, "closed-hours reply sent");
    }
    Ok(())
}

/// Keeps the ticket's SLA columns (`next_due_at`, the queue's second sort key; `sla_warned`
/// and `sla_breached`, the at-risk view's) true to its clocks.
async fn update_ticket_due(tx: &mut Transaction<'_, Postgres>, ticket: Uuid) -> Result<(), Error> {
    switchboard_tickets::row::refresh_sla(tx, ticket).await?;
    Ok(())
}

impl Handler for Sla {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        let env = decode::<TicketEvent>(record.payload.as_deref())?;
        self.apply(&env).await?;
        Ok(())
    }
}

impl switchboard_core::runtime::Background for Sla {
    fn name(&self) -> &'static str {
        "sla-timer"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.timer_loop(shutdown)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::calendar::CalendarConfig;
    use crate::sla::SlaPolicyConfig;

    use super::*;

    fn cfg() -> SlaConfig {
        SlaConfig {
            calendars: BTreeMap::from([(
                "eu".to_string(),
                CalendarConfig {
                    timezone: "Europe/Berlin".into(),
                    hours: BTreeMap::from([("mon".into(), "09:00-17:00".into())]),
                    holidays: vec![],
                    auto_reply: None,
                },
            )]),
            team_calendars: BTreeMap::from([("billing".into(), "eu".into())]),
            policies: vec![
                SlaPolicyConfig {
                    name: "vip".into(),
                    priorities: vec![],
                    tiers: vec!["vip".into()],
                    calendar: "24x7".into(),
                    first_response: "5m".into(),
                    next_response: "10m".into(),
                    resolution: "2h".into(),
                },
                SlaPolicyConfig {
                    name: "urgent".into(),
                    priorities: vec!["urgent".into(), "critical".into()],
                    tiers: vec![],
                    calendar: "24x7".into(),
                    first_response: "15m".into(),
                    next_response: "30m".into(),
                    resolution: "4h".into(),
                },
            ],
            ..SlaConfig::default()
        }
    }

    #[test]
    fn policies_match_tier_then_priority_then_fall_back() {
        let r = SlaRules::compile(&cfg()).unwrap();
        assert_eq!(r.policy(Priority::Low, "VIP").name, "vip");
        assert_eq!(r.policy(Priority::Urgent, "standard").name, "urgent");
        assert_eq!(r.policy(Priority::Low, "standard").name, "fallback");
        let p = r.policy(Priority::Urgent, "standard");
        assert_eq!(p.target(SlaMetric::FirstResponse), 900.0);
        assert_eq!(r.calendar(p, Some("billing")).name, "eu");
        assert_eq!(r.calendar(p, Some("tech")).name, "24x7");
    }

    #[test]
    fn warnings_come_at_the_share_and_elapsed_time_counts() {
        let r = SlaRules::compile(&cfg()).unwrap();
        let t0 = Utc::now();
        let (warn, due) = r.schedule(&Calendar::always(), t0, 0.0, 400.0);
        assert_eq!((warn - t0).num_seconds(), 300);
        assert_eq!((due - t0).num_seconds(), 400);
        // Resumed after 350 s used: the warning is already due, the breach in 50 s.
        let (warn, due) = r.schedule(&Calendar::always(), t0, 350.0, 400.0);
        assert_eq!(warn, t0);
        assert_eq!((due - t0).num_seconds(), 50);
    }

    #[test]
    fn bad_config_is_reported_whole() {
        let mut c = cfg();
        c.policies[0].first_response = "soon".into();
        c.policies[1].calendar = "mars".into();
        c.policies[1].priorities.push("whenever".into());
        c.on_breach.push("panic".into());
        c.warn_share = 1.5;
        let errors = SlaRules::compile(&c).unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "\"soon\"",
            "\"mars\"",
            "\"whenever\"",
            "\"panic\"",
            "warn_share",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
    }
}
