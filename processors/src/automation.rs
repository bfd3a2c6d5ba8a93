//! The team's rules at work (`switchboard_tickets::rules`, edited through `/v1/rules`).
//!
//! **Triggers** run in the stream: the `rules` stage consumes `ticket.events` and `sla.events`,
//! keyed by ticket, so a ticket's rules see its events in order. For each event the enabled
//! triggers on its kind are evaluated in their order against the ticket as it is now
//! ([`Facts`]); each one that holds fires in a transaction of its own under the ticket's row
//! lock (conditions checked again there, so a rule sees what the rules before it did). A
//! rule's changes are events by `rule:<id>`: they re-enter the stream, where they may set off
//! other rules, never the same one.
//!
//! **Automations** run on time: every `rules.automation_every_ms` each enabled automation
//! looks at the open tickets its time conditions allow (a page per pass, resuming where the
//! last pass stopped), and fires once per ticket version (its own change moves the version,
//! and the save-time check made sure that change ends its conditions).
//!
//! **Once**: a fire is a `rule_fires` row keyed by rule and cause (the event; for an
//! automation, the ticket at a version), written in the transaction of the rule's changes, so
//! a redelivered event or a restarted processor never fires a rule twice. **Loops** the
//! save-time check cannot see are cut by the ticket's fire budget: past `rules.fire_budget`
//! chained fires (set off by a rule's change, or by time) in `rules.budget_window_secs`, the
//! ticket is halted (`rules_halts`) and one `rules_halted` event says so; the halt sticks: no
//! chained fire happens on it until a person or the customer acts on the ticket. Fires on what
//! customers and people do always happen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgPool, Row};
use switchboard_contracts::{
    decode, derived_id, Priority, SlaEvent, SlaEventKind, TicketChange, TicketEvent, TicketStatus,
    Topic,
};
use switchboard_core::db::{ChangeActor, EventTx, Outbox};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use switchboard_core::Error;
use switchboard_tickets::assign::{self, Request, Target};
use switchboard_tickets::macros::{self, Context};
use switchboard_tickets::rules::{self, Action, Compiled, Facts, Kind, MessageFacts, On};
use switchboard_tickets::{fields, notes, status, store, tags, webhooks};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::sla::SlaRules;

/// The condition and order that pick, from `orders o`, the order ticket `t` names: its
/// `order_number` field among its customer's orders (the newest of that name).
macro_rules! ticket_order {
    () => {
        "o.customer_id = t.customer_id AND o.number IS NOT NULL
        AND lower(ltrim(btrim(o.number), E'# \t\r\n')) = lower(ltrim(btrim(t.fields->>'order_number'), E'# \t\r\n'))
      ORDER BY o.created_at DESC LIMIT 1"
    };
}

/// The `rules` section: how the team's rules run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Chained fires (set off by a rule or by time) one ticket may take within
    /// `budget_window_secs`; past it the chain stops.
    #[serde(default = "default_budget")]
    pub fire_budget: u32,
    #[serde(default = "default_window")]
    pub budget_window_secs: u64,
    /// How often automations look at the open tickets (ms).
    #[serde(default = "default_every")]
    pub automation_every_ms: u64,
    /// Tickets one automation looks at per pass.
    #[serde(default = "default_batch")]
    pub automation_batch: i64,
}

fn default_budget() -> u32 {
    20
}
fn default_window() -> u64 {
    3600
}
fn default_every() -> u64 {
    60_000
}
fn default_batch() -> i64 {
    500
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            fire_budget: default_budget(),
            budget_window_secs: default_window(),
            automation_every_ms: default_every(),
            automation_batch: default_batch(),
        }
    }
}

/// The enabled rules at one revision of the `rules` table.
#[derive(Debug, Default)]
struct RuleSet {
    revision: i64,
    triggers: Vec<Arc<Compiled>>,
    automations: Vec<Arc<Compiled>>,
}

/// Where an automation's pass resumes: the last ticket's `(updated_at, id)`.
type Cursor = (DateTime<Utc>, Uuid);

/// The rules stage: the trigger consumer and the automation loop share it.
#[derive(Clone)]
pub struct RulesStage {
    pool: PgPool,
    outbox: Outbox,
    cfg: RulesConfig,
    sla: SlaRules,
    public_url: String,
    set: Arc<Mutex<Arc<RuleSet>>>,
    /// Where each automation's last pass stopped: (updated_at, id).
    cursors: Arc<Mutex<HashMap<Uuid, Cursor>>>,
}

/// What a trigger runs on: the event, the ticket, who caused it.
#[derive(Debug, Clone)]
pub struct Cause {
    pub id: Uuid,
    pub ticket_id: Uuid,
    pub on: On,
    pub actor: Option<String>,
    /// Who caused it, as the `actor` condition reads it.
    pub actor_kind: String,
    /// The message the event is about (created: the ticket's first).
    pub message_id: Option<Uuid>,
    pub automatic: bool,
    /// The message that opened the ticket (its `created` event ran the `created` rules).
    pub first_message: bool,
    /// The event itself, where conditions read what it says (`csat.rating`, `order.status`).
    pub change: Option<TicketChange>,
}

impl Cause {
    /// The trigger cause of a record of `ticket.events` or `sla.events`, if it is one.
    pub fn of(record: &Record) -> Result<Option<Cause>, HandlerError> {
        match record.topic {
            Topic::SlaEvents => {
                let env = decode::<SlaEvent>(record.payload.as_deref())?;
                let on = match env.payload.kind {
                    SlaEventKind::Warning => On::SlaWarning,
                    SlaEventKind::Breached => On::SlaBreached,
                    _ => return Ok(None),
                };
                Ok(Some(Cause {
                    id: env.event_id,
                    ticket_id: env.payload.ticket_id,
                    on,
                    actor: Some("sla".into()),
                    actor_kind: "sla".into(),
                    message_id: None,
                    automatic: false,
                    first_message: false,
                    change: None,
                }))
            }
            _ => {
                let env = decode::<TicketEvent>(record.payload.as_deref())?;
                Ok(Cause::of_event(env.event_id, &env.payload))
            }
        }
    }

    /// The trigger cause of a ticket event, if it is one.
    pub fn of_event(event_id: Uuid, ev: &TicketEvent) -> Option<Cause> {
        let on = On::of(&ev.change)?;
        let (message_id, automatic) = match &ev.change {
            TicketChange::MessageAdded {
                message_id,
                automatic,
                ..
            } => (Some(*message_id), *automatic),
            _ => (None, false),
        };
        // A ticket's id derives from the message that opened it.
        let first_message = on == On::MessageReceived
            && message_id.is_some_and(|m| derived_id(m, "ticket") == ev.ticket_id);
        Some(Cause {
            id: event_id,
            ticket_id: ev.ticket_id,
            on,
            actor: ev.actor.clone(),
            actor_kind: rules::actor_kind(ev.actor.as_deref(), &ev.change),
            message_id,
            automatic,
            first_message,
            change: matches!(on, On::CsatReceived | On::OrderUpdated).then(|| ev.change.clone()),
        })
    }
}

/// What the rules at hand read beyond the ticket row.
#[derive(Debug, Clone, Copy)]
struct Needs {
    message: bool,
    order: bool,
}

/// The ticket as a rule sees it, and what its actions need.
struct Loaded {
    ticket_id: Uuid,
    customer_id: Uuid,
    /// `rules_revision` as the read saw it.
    revision: i64,
    facts: Facts,
    number: String,
    version: i32,
    ctx: Context,
}

impl std::fmt::Debug for RulesStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesStage")
            .field("cfg", &self.cfg)
            .field("revision", &self.current().revision)
            .finish()
    }
}

impl RulesStage {
    pub fn new(
        pool: PgPool,
        outbox: Outbox,
        cfg: RulesConfig,
        sla: SlaRules,
        public_url: String,
    ) -> RulesStage {
        RulesStage {
            pool,
            outbox,
            cfg,
            sla,
            public_url,
            set: Arc::new(Mutex::new(Arc::new(RuleSet {
                revision: -1,
                ..RuleSet::default()
            }))),
            cursors: Arc::default(),
        }
    }

    /// The enabled rules, reloaded when the table's revision moved (one indexed read).
    async fn rules(&self) -> Result<Arc<RuleSet>, Error> {
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM rules_revision")
            .fetch_one(&self.pool)
            .await?;
        self.at_revision(revision).await
    }

    /// The enabled rules at `revision` (the cached set when it is that one).
    async fn at_revision(&self, revision: i64) -> Result<Arc<RuleSet>, Error> {
        let current = self.current();
        if current.revision == revision {
            return Ok(current);
        }
        let rows: Vec<(Uuid, String, sqlx::types::Json<rules::Rule>)> = sqlx::query_as(
            "SELECT id, name, definition FROM rules WHERE enabled ORDER BY position, created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        // Compiling a thousand patterns is CPU work: off the async workers.
        let set = tokio::task::spawn_blocking(move || {
            let mut set = RuleSet {
                revision,
                ..RuleSet::default()
            };
            let mut patterns = 0usize;
            for (id, name, def) in rows {
                match Compiled::new(id, &name, &def.0) {
                    // Rules kept from before the budget, or written by hand: the first ones
                    // in order run, the ones past it are skipped.
                    Ok(c) if patterns + c.pattern_bytes > rules::SET_PATTERN_BUDGET => {
                        warn!(rule_id = %id, bytes = c.pattern_bytes, "the enabled rules' patterns pass their memory budget; skipped")
                    }
                    Ok(c) if c.rule.kind == Kind::Trigger => {
                        patterns += c.pattern_bytes;
                        set.triggers.push(Arc::new(c))
                    }
                    Ok(c) => {
                        patterns += c.pattern_bytes;
                        set.automations.push(Arc::new(c))
                    }
                    Err(e) => {
                        warn!(rule_id = %id, field = %e.field, why = %e.why, "stored rule no longer passes its checks; skipped")
                    }
                }
            }
            set
        })
        .await
        .map_err(|e| Error::Config(format!("compiling the rules: {e}")))?;
        info!(
            revision,
            triggers = set.triggers.len(),
            automations = set.automations.len(),
            "rules loaded"
        );
        let set = Arc::new(set);
        if let Ok(mut g) = self.set.lock() {
            *g = set.clone();
        }
        Ok(set)
    }

    fn current(&self) -> Arc<RuleSet> {
        self.set
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Runs the enabled triggers on `cause`: the rules that fired.
    pub async fn on_event(&self, cause: &Cause) -> Result<Vec<Uuid>, Error> {
        let own = rules::actor_rule(cause.actor.as_deref());
        // A person or the customer acting lifts the ticket's halt (whether or not a rule runs
        // on this event): chains may start again, and are cut again when they spend the budget
        // counted from now.
        if own.is_none() && matches!(cause.actor_kind.as_str(), "customer" | "agent" | "admin") {
            sqlx::query(
                "UPDATE rules_halts SET lifted_at = $2 WHERE ticket_id = $1 AND lifted_at IS NULL",
            )
            .bind(cause.ticket_id)
            .bind(switchboard_core::clock::now())
            .execute(&self.pool)
            .await?;
        }
        // The cached set decides what to read; the read says the revision, and a moved one
        // reloads the set and reads again (one round trip per event when nothing changed).
        let mut set = self.current();
        let (set, candidates, needs, mut loaded) = loop {
            let candidates: Vec<Arc<Compiled>> = set
                .triggers
                .iter()
                .filter(|r| r.rule.on.contains(&cause.on) && own != Some(r.id))
                // A rule on both `created` and `message_received` ran on the opening message
                // with the ticket's creation: once per message.
                .filter(|r| !(cause.first_message && r.rule.on.contains(&On::Created)))
                .cloned()
                .collect();
            if candidates.is_empty() {
                let revision: i64 = sqlx::query_scalar("SELECT revision FROM rules_revision")
                    .fetch_one(&self.pool)
                    .await?;
                if revision == set.revision {
                    return Ok(Vec::new());
                }
                set = self.at_revision(revision).await?;
                continue;
            }
            let needs = Needs {
                message: candidates.iter().any(|r| r.reads_message),
                order: candidates.iter().any(|r| r.reads_order),
            };
            let mut conn = self.pool.acquire().await?;
            let Some(loaded) = self.load(&mut conn, cause, needs, false).await? else {
                return Ok(Vec::new());
            };
            if loaded.revision != set.revision {
                set = self.at_revision(loaded.revision).await?;
                continue;
            }
            break (set, candidates, needs, loaded);
        };
        drop(set);
        let mut fired = Vec::new();
        for rule in &candidates {
            if !rule.matches(&loaded.facts) {
                continue;
            }
            if self.fire(rule, cause, None).await? {
                fired.push(rule.id);
                // The next rule sees what this one did.
                let mut conn = self.pool.acquire().await?;
                match self.load(&mut conn, cause, needs, false).await? {
                    Some(l) => loaded = l,
                    None => break,
                }
            }
        }
        Ok(fired)
    }

    /// Reads the ticket of `cause` (and what `needs` asks), locking its row when `lock`: one
    /// round trip.
    async fn load(
        &self,
        conn: &mut sqlx::PgConnection,
        cause: &Cause,
        needs: Needs,
        lock: bool,
    ) -> Result<Option<Loaded>, Error> {
        let message = needs.message.then_some(cause.message_id);
        let Some(mut l) =
            load_ticket(conn, cause.ticket_id, lock, needs.order, message, &self.sla).await?
        else {
            return Ok(None);
        };
        l.facts.actor = Some(cause.actor_kind.clone());
        if let Some(change) = &cause.change {
            l.facts.event(change);
        }
        if let Some(m) = l.facts.message.as_mut() {
            m.automatic |= cause.automatic;
        }
        Ok(Some(l))
    }

    /// Fires `rule` on `cause` (an automation: `version`, the ticket's version it looked at):
    /// conditions checked again under the row lock, the fire recorded, the budget kept, the
    /// actions done, all in one transaction. `false`: it did not fire.
    async fn fire(
        &self,
        rule: &Compiled,
        cause: &Cause,
        version: Option<i32>,
    ) -> Result<bool, Error> {
        let actor = ChangeActor::rule(&format!("rule:{}", rule.id));
        let mut tx = EventTx::begin(&self.pool).await?.by(actor);
        let needs = Needs {
            message: rule.reads_message,
            order: rule.reads_order,
        };
        let Some(loaded) = self.load(&mut tx, cause, needs, true).await? else {
            return Ok(false);
        };
        if version.is_some_and(|v| v != loaded.version) || !rule.matches(&loaded.facts) {
            return Ok(false);
        }
        let now = switchboard_core::clock::now();
        let fire_id = match version {
            Some(v) => derived_id(cause.ticket_id, &format!("automation:{}:{v}", rule.id)),
            None => cause.id,
        };
        // A fire set off by a rule (or by time) is part of a chain; chains are what loop. The
        // ticket's budget counts them: past it, no chained fire happens and one event per window
        // says so. Fires on what people and customers do are never held back.
        let chained = version.is_some() || rules::actor_rule(cause.actor.as_deref()).is_some();
        let window =
            chrono::Duration::seconds(self.cfg.budget_window_secs.clamp(1, 86_400 * 30) as i64);
        if chained {
            // A halted ticket stays halted until a person or the customer acts on it; after
            // that, the budget counts the chained fires since.
            let (halted, recent): (bool, i64) = sqlx::query_as(
                "WITH h AS (SELECT lifted_at FROM rules_halts WHERE ticket_id = $1)
                 SELECT EXISTS (SELECT 1 FROM h WHERE lifted_at IS NULL),
                        (SELECT count(*) FROM rule_fires WHERE ticket_id = $1 AND chained
                           AND fired_at > GREATEST($2, (SELECT lifted_at FROM h)))",
            )
            .bind(cause.ticket_id)
            .bind(now - window)
            .fetch_one(&mut *tx)
            .await?;
            if halted {
                metrics::counter!(crate::telemetry::RULES_HALTED_TOTAL).increment(1);
                return Ok(false);
            }
            if recent >= i64::from(self.cfg.fire_budget) {
                self.halt(tx, cause, &loaded, rule, recent, now).await?;
                return Ok(false);
            }
        }
        let described: Vec<String> = rule.rule.actions.iter().map(Action::describe).collect();
        let first = sqlx::query(
            "INSERT INTO rule_fires (rule_id, cause, ticket_id, ticket_version, fired_at, actions, chained)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(rule.id)
        .bind(fire_id)
        .bind(cause.ticket_id)
        .bind(version)
        .bind(now)
        .bind(&described)
        .bind(chained)
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            return Ok(false);
        }
        let mut actions = rule.rule.actions.clone();
        // A macro's actions run in its place.
        let mut expanded = Vec::with_capacity(actions.len());
        for a in actions.drain(..) {
            if let Action::Macro { macro_id } = a {
                let m: Option<sqlx::types::Json<Vec<macros::Action>>> = sqlx::query_scalar(
                    "SELECT actions FROM macros WHERE id = $1 AND owner_agent_id IS NULL AND team_id IS NULL",
                )
                .bind(macro_id)
                .fetch_optional(&mut *tx)
                .await?;
                match m {
                    Some(m) => expanded.extend(m.0.iter().map(Action::from_macro)),
                    None => {
                        warn!(rule_id = %rule.id, macro_id = %macro_id, "the rule's macro is gone; skipped")
                    }
                }
            } else {
                expanded.push(a);
            }
        }
        for (i, a) in expanded.iter().enumerate() {
            // A reply on the desk's own reply (a macro's, which the save-time check cannot see
            // into) would answer every answer.
            if cause.on == On::MessageSent && matches!(a, Action::Reply { .. }) {
                continue;
            }
            let id = derived_id(fire_id, &format!("rule:{}:{i}", rule.id));
            self.act(&mut tx, rule, a, id, &loaded, now).await?;
        }
        tx.commit(&self.outbox).await?;
        metrics::counter!(crate::telemetry::RULES_FIRED_TOTAL).increment(1);
        info!(rule_id = %rule.id, rule = %rule.name, ticket_id = %cause.ticket_id, on = cause.on.as_str(), actions = ?described, "rule fired");
        Ok(true)
    }

    /// The ticket's budget is spent: it is halted (`rules_halts`) with one `rules_halted` event
    /// and a record under the nil rule; a ticket halted already says nothing more.
    #[allow(clippy::too_many_arguments)]
    async fn halt(
        &self,
        mut tx: EventTx<'_>,
        cause: &Cause,
        loaded: &Loaded,
        rule: &Compiled,
        fires: i64,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        // One halt per cut: the row (re)set under the ticket's lock says whether this one is new
        // (a redelivered cause finds the ticket halted already), so the marker may name the time.
        let marker = derived_id(
            cause.ticket_id,
            &format!("rules-halted:{}:{}", cause.id, now.timestamp_micros()),
        );
        let first = sqlx::query(
            "INSERT INTO rules_halts (ticket_id, halted_at, fires) VALUES ($1, $2, $3)
             ON CONFLICT (ticket_id) DO UPDATE SET halted_at = EXCLUDED.halted_at,
                 fires = EXCLUDED.fires, lifted_at = NULL
               WHERE rules_halts.lifted_at IS NOT NULL",
        )
        .bind(cause.ticket_id)
        .bind(now)
        .bind(i32::try_from(fires).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            return Ok(());
        }
        // What the rules did on the ticket lists the halt too (under the nil rule).
        sqlx::query(
            "INSERT INTO rule_fires (rule_id, cause, ticket_id, fired_at, actions, chained)
             VALUES ($1, $2, $3, $4, '{halted}', false) ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::nil())
        .bind(marker)
        .bind(cause.ticket_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        store::add_ticket_event(
            &mut tx,
            marker,
            cause.ticket_id,
            &loaded.number,
            loaded.customer_id,
            TicketChange::RulesHalted {
                fires: u32::try_from(fires).unwrap_or(u32::MAX),
                window_secs: self.cfg.budget_window_secs,
            },
        )
        .await?;
        tx.commit(&self.outbox).await?;
        warn!(ticket_id = %cause.ticket_id, rule_id = %rule.id, fires, "rule fire budget spent: rules halted on this ticket");
        metrics::counter!(crate::telemetry::RULES_HALTED_TOTAL).increment(1);
        Ok(())
    }

    /// Does one action in `tx`. A refusal (a required field empty, an agent's constraints) skips
    /// the action and is logged; the rest of the rule still runs.
    async fn act(
        &self,
        tx: &mut EventTx<'_>,
        rule: &Compiled,
        a: &Action,
        id: Uuid,
        t: &Loaded,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let ticket_id = t.ticket_id;
        let skip = |why: String| {
            warn!(rule_id = %rule.id, ticket_id = %ticket_id, action = %a.describe(), why = %why, "rule action skipped");
        };
        match a {
            Action::Reply { text } => {
                let text = macros::render(text, &t.ctx);
                if !store::automatic_reply(tx, ticket_id, id, "rule", "rule", text, now).await? {
                    debug!(ticket_id = %ticket_id, "rule reply not sent: no way back, a machine, or sent before");
                }
            }
            Action::Note { text } => {
                let text = macros::render(text, &t.ctx);
                let author = format!("rule:{}", rule.id);
                if let Err(e) =
                    notes::add(tx, ticket_id, id, (None, &author), &text, &[], now).await?
                {
                    skip(format!("{e:?}"));
                }
            }
            Action::Status { status } => {
                let Some(to) = TicketStatus::parse(status) else {
                    return Ok(());
                };
                if let Err(r) = status::change(tx, &self.public_url, ticket_id, to, None).await? {
                    skip(format!("{r:?}"));
                }
            }
            Action::Priority { priority } => {
                if let Some(to) = Priority::parse(priority) {
                    store::set_priority(tx, ticket_id, to, &format!("rule {}", rule.name), now)
                        .await?;
                }
            }
            Action::Tags { add, remove } => {
                let norm = |l: &[String]| tags::normalise_all(l).unwrap_or_default();
                if let Some(Err(e)) =
                    tags::change(tx, ticket_id, &norm(add), &norm(remove), now).await?
                {
                    skip(e.to_string());
                }
            }
            Action::Fields { values } => {
                if let Some(Err(e)) = fields::set(tx, ticket_id, values, now).await? {
                    skip(e.to_string());
                }
            }
            Action::Team { team_id } => {
                // Already the team's: handing it over again would only take it from its agent.
                if t.facts.team == Some(*team_id) {
                    return Ok(());
                }
                self.assign(tx, rule, ticket_id, Target::Team(*team_id), now, skip)
                    .await?;
            }
            Action::Assignee { agent_id } => {
                let target = agent_id.map(Target::Agent).unwrap_or(Target::Queue);
                if t.facts.assignee == *agent_id {
                    return Ok(());
                }
                self.assign(tx, rule, ticket_id, target, now, skip).await?;
            }
            Action::Notify { to, text, via } => {
                let mut agents = Vec::new();
                for r in to {
                    match r.as_str() {
                        "assignee" => agents.extend(t.facts.assignee),
                        "team_supervisor" => {
                            if let Some(team) = t.facts.team {
                                let s: Option<Option<Uuid>> = sqlx::query_scalar(
                                    "SELECT supervisor_id FROM teams WHERE id = $1",
                                )
                                .bind(team)
                                .fetch_optional(&mut **tx)
                                .await?;
                                agents.extend(s.flatten());
                            }
                        }
                        other => agents.extend(
                            other
                                .strip_prefix("agent:")
                                .and_then(|a| Uuid::parse_str(a).ok()),
                        ),
                    }
                }
                agents.sort();
                agents.dedup();
                if agents.is_empty() {
                    skip("nobody to notify".into());
                    return Ok(());
                }
                let text = macros::render(text, &t.ctx);
                let via: Vec<String> = via.iter().filter(|v| *v != "in_app").cloned().collect();
                let channels: Vec<&str> = via.iter().map(String::as_str).collect();
                // By email and SMS as each one's preferences say, queued with the event.
                switchboard_tickets::notify::enqueue(
                    tx,
                    &switchboard_tickets::notify::Outgoing {
                        event_id: id,
                        ticket_id,
                        ticket_number: &t.number,
                        topic: "rule",
                        text: &text,
                        via: &channels,
                        people: &agents,
                    },
                    now,
                )
                .await?;
                store::add_ticket_event(
                    tx,
                    id,
                    ticket_id,
                    &t.number,
                    t.customer_id,
                    TicketChange::Notified {
                        agent_ids: agents,
                        text,
                        rule_id: rule.id,
                        via,
                    },
                )
                .await?;
            }
            Action::Survey {} => {
                // The survey asks about a resolution: only a resolved ticket gets it.
                let status: String = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
                    .bind(ticket_id)
                    .fetch_one(&mut **tx)
                    .await?;
                if status == "resolved" {
                    switchboard_tickets::survey::invite(tx, &self.public_url, ticket_id).await?;
                } else {
                    skip(format!("the ticket is {status}, not resolved"));
                }
            }
            Action::Webhook { webhook_id } => {
                let f = &t.facts;
                let data = serde_json::json!({
                    "rule": { "id": rule.id, "name": rule.name },
                    "ticket": {
                        "id": ticket_id,
                        "number": t.number,
                        "customer_id": t.customer_id,
                        "status": f.status,
                        "priority": f.priority,
                        "channel": f.channel,
                        "category": f.category,
                        "intent": f.intent,
                        "language": f.language,
                        "subject": f.subject,
                        "team_id": f.team,
                        "assignee_id": f.assignee,
                        "tags": f.tags,
                        "fields": f.fields,
                        "created_at": f.created_at,
                        "updated_at": f.updated_at,
                    },
                });
                let body = webhooks::body(webhooks::RULE_FIRED, now, &data);
                // In the fire's transaction: the call is owed exactly when the fire happened.
                let enabled: Option<bool> =
                    sqlx::query_scalar("SELECT enabled FROM webhooks WHERE id = $1")
                        .bind(webhook_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                match enabled {
                    Some(true) => {
                        webhooks::enqueue(
                            tx,
                            *webhook_id,
                            id,
                            webhooks::RULE_FIRED,
                            &body,
                            now,
                            None,
                        )
                        .await?;
                    }
                    Some(false) => skip("the webhook is disabled".into()),
                    None => skip("the webhook is gone".into()),
                }
            }
            Action::Macro { .. } => {}
            Action::Order {
                action,
                amount_cents,
            } => {
                // The order the ticket names, the customer's own: queued in this transaction
                // (the serving role runs it through the shop's Admin API).
                let order: Option<Option<Uuid>> = sqlx::query_scalar(concat!(
                    "SELECT (SELECT o.id FROM orders o WHERE ",
                    ticket_order!(),
                    ") FROM tickets t WHERE t.id = $1"
                ))
                .bind(ticket_id)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(order) = order.flatten() else {
                    skip("the ticket names no order of its customer (order_number)".into());
                    return Ok(());
                };
                sqlx::query(
                    "INSERT INTO rule_order_requests (id, rule_id, rule_name, ticket_id, order_id, kind, amount_cents, state,
                                                      next_attempt_at, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $8, $8) ON CONFLICT (id) DO NOTHING",
                )
                .bind(Uuid::new_v5(&id, a.describe().as_bytes()))
                .bind(rule.id)
                .bind(&rule.name)
                .bind(ticket_id)
                .bind(order)
                .bind(action)
                .bind(amount_cents)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    async fn assign(
        &self,
        tx: &mut EventTx<'_>,
        rule: &Compiled,
        ticket_id: Uuid,
        target: Target,
        now: DateTime<Utc>,
        skip: impl Fn(String),
    ) -> Result<(), Error> {
        let req = Request {
            target,
            reason: format!("rule {}", rule.name),
            by: format!("rule:{}", rule.id),
            by_agent: None,
            override_constraints: false,
        };
        if let Err(r) = assign::assign(tx, ticket_id, &req, now).await? {
            skip(r.to_string());
        }
        Ok(())
    }

    /// One pass of every enabled automation: how many fired.
    pub async fn automations_pass(&self) -> Result<usize, Error> {
        let set = self.rules().await?;
        let mut fired = 0;
        for rule in &set.automations {
            // One automation failing (a lock timeout, a bad row) does not stop the others.
            match self.automation_pass(rule).await {
                Ok(n) => fired += n,
                Err(e) => warn!(rule_id = %rule.id, error = %e, "automation pass failed"),
            }
        }
        Ok(fired)
    }

    async fn automation_pass(&self, rule: &Compiled) -> Result<usize, Error> {
        let p = rule.prefilter();
        let now = switchboard_core::clock::now();
        let before = |key: &str| {
            p.older_than_hours
                .get(key)
                .map(|h| now - chrono::Duration::seconds((h * 3600.0) as i64))
        };
        let statuses = p
            .statuses
            .clone()
            .unwrap_or_else(|| vec!["open".into(), "pending".into(), "resolved".into()]);
        let cursor = self
            .cursors
            .lock()
            .ok()
            .and_then(|c| c.get(&rule.id).copied());
        let (after_at, after_id) = (cursor.map(|c| c.0), cursor.map(|c| c.1));
        let rows = sqlx::query(
            "SELECT t.id, t.version, t.updated_at FROM tickets t
             WHERE t.merged_into IS NULL AND t.status = ANY($1) AND t.status <> 'closed'
               AND t.tags @> $2 AND NOT (t.tags && $3)
               AND ($4::timestamptz IS NULL OR t.created_at <= $4)
               AND ($5::timestamptz IS NULL OR t.updated_at <= $5)
               AND ($6::timestamptz IS NULL OR (t.status = 'pending' AND coalesce(t.status_changed_at, t.updated_at) <= $6))
               AND ($7::timestamptz IS NULL OR (t.status IN ('resolved', 'closed') AND t.resolved_at <= $7))
               AND ($8::timestamptz IS NULL OR (t.updated_at, t.id) > ($8, $9::uuid))
               AND NOT EXISTS (SELECT 1 FROM rule_fires f WHERE f.ticket_id = t.id AND f.rule_id = $10
                                                            AND f.ticket_version = t.version)
             ORDER BY t.updated_at, t.id LIMIT $11",
        )
        .bind(&statuses)
        .bind(&p.tags_all)
        .bind(&p.tags_none)
        .bind(before("created"))
        .bind(before("updated"))
        .bind(before("pending"))
        .bind(before("solved"))
        .bind(after_at)
        .bind(after_id)
        .bind(rule.id)
        .bind(self.cfg.automation_batch.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?;
        let full = rows.len() as i64 >= self.cfg.automation_batch.clamp(1, 10_000);
        let mut fired = 0;
        let mut last = None;
        for r in &rows {
            let ticket_id: Uuid = r.try_get("id")?;
            let version: i32 = r.try_get("version")?;
            last = Some((r.try_get::<DateTime<Utc>, _>("updated_at")?, ticket_id));
            let cause = Cause {
                id: ticket_id,
                ticket_id,
                on: On::Created,
                actor: None,
                actor_kind: "system".into(),
                message_id: None,
                automatic: false,
                first_message: false,
                change: None,
            };
            // Read without the lock first: most candidates fail a condition the index could not
            // test, and need no transaction. One ticket's error does not stop the page.
            let needs = Needs {
                message: false,
                order: rule.reads_order,
            };
            let outcome = async {
                let mut conn = self.pool.acquire().await?;
                match self.load(&mut conn, &cause, needs, false).await? {
                    Some(l) if l.version == version && rule.matches(&l.facts) => {}
                    _ => return Ok(false),
                }
                drop(conn);
                self.fire(rule, &cause, Some(version)).await
            }
            .await;
            match outcome {
                Ok(true) => fired += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(rule_id = %rule.id, ticket_id = %ticket_id, error = %e, "automation skipped a ticket")
                }
            }
        }
        if let Ok(mut c) = self.cursors.lock() {
            // A short page: the next pass starts from the beginning again.
            match (full, last) {
                (true, Some(at)) => {
                    c.insert(rule.id, at);
                }
                _ => {
                    c.remove(&rule.id);
                }
            }
        }
        Ok(fired)
    }

    /// Runs the automations every `rules.automation_every_ms` until `shutdown`.
    pub async fn automation_loop(self, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.cfg.automation_every_ms.max(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.automations_pass().await {
                Ok(0) => {}
                Ok(n) => debug!(fired = n, "automations pass"),
                Err(e) => warn!(error = %e, "automations pass failed"),
            }
        }
    }
}

/// The value and status of the order the ticket names (its `order_number` field), else the
/// value a trusted connector stated on its first message.
const ORDER_VALUE_SQL: &str = concat!(
    "(SELECT o.total_cents FROM orders o WHERE ",
    ticket_order!(),
    ") AS order_cents,
    (SELECT o.status FROM orders o WHERE ",
    ticket_order!(),
    ") AS order_status,
    (SELECT m.metadata->>'order_value' FROM messages m
      WHERE m.ticket_id = t.id AND m.direction = 'inbound' AND m.metadata ? 'order_value'
      ORDER BY m.received_at LIMIT 1) AS order_value_said"
);

/// Reads what rules know of `ticket_id` (none: no such ticket, or merged into another).
async fn load_ticket(
    conn: &mut sqlx::PgConnection,
    ticket_id: Uuid,
    lock: bool,
    order: bool,
    message: Option<Option<Uuid>>,
    sla: &SlaRules,
) -> Result<Option<Loaded>, Error> {
    // The event's message (by its id; a ticket's creation: its first customer message).
    let (message_sql, message_join) = match message {
        None => (
            "NULL::text AS m_text, NULL::text AS m_to, NULL::bool AS m_automatic",
            "",
        ),
        Some(Some(_)) => (
            "m.text AS m_text, m.metadata->>'email_to' AS m_to, m.metadata ? 'automatic' AS m_automatic",
            "LEFT JOIN messages m ON m.id = $2",
        ),
        Some(None) => (
            "m.text AS m_text, m.metadata->>'email_to' AS m_to, m.metadata ? 'automatic' AS m_automatic",
            "LEFT JOIN LATERAL (SELECT text, metadata FROM messages WHERE ticket_id = t.id AND direction = 'inbound'
                                ORDER BY received_at, id LIMIT 1) m ON true",
        ),
    };
    // The order's value and status cost three lookups: only when a rule reads them.
    let order_sql = if order {
        ORDER_VALUE_SQL
    } else {
        "NULL::bigint AS order_cents, NULL::text AS order_status, NULL::text AS order_value_said"
    };
    let sql = format!(
        "SELECT t.number, t.customer_id, t.status, t.priority, t.channel, t.subject, t.category, t.intent, t.language,
                t.sentiment::float8 AS sentiment, t.team_id, t.assigned_agent_id, t.tags, t.fields,
                t.required_skill, t.created_at, t.updated_at, t.status_changed_at, t.resolved_at,
                t.version, t.merged_into, c.tier, c.email, c.name,
                (SELECT a.name FROM agents a WHERE a.id = t.assigned_agent_id) AS agent_name,
                {order_sql}, {message_sql},
                (SELECT revision FROM rules_revision) AS revision
         FROM tickets t JOIN customers c ON c.id = t.customer_id {message_join}
         WHERE t.id = $1 {}",
        if lock { "FOR UPDATE OF t" } else { "" }
    );
    let mut q = sqlx::query(&sql).bind(ticket_id);
    if let Some(Some(id)) = message {
        q = q.bind(id);
    }
    let Some(r) = q.fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    if r.try_get::<Option<Uuid>, _>("merged_into")?.is_some() {
        return Ok(None);
    }
    let now = switchboard_core::clock::now();
    let priority: String = r.try_get("priority")?;
    let tier: String = r.try_get("tier")?;
    let skill: Option<String> = r.try_get("required_skill")?;
    let p = Priority::parse(&priority).unwrap_or(Priority::Medium);
    let cal = sla.calendar(sla.policy(p, &tier), skill.as_deref());
    let field_values: sqlx::types::Json<BTreeMap<String, serde_json::Value>> =
        r.try_get("fields")?;
    let order_cents: Option<i64> = r.try_get("order_cents")?;
    let number: String = r.try_get("number")?;
    let facts = Facts {
        status: r.try_get("status")?,
        priority,
        channel: r.try_get("channel")?,
        category: r.try_get("category")?,
        intent: r.try_get("intent")?,
        language: r.try_get("language")?,
        tier: Some(tier),
        subject: r.try_get("subject")?,
        team: r.try_get("team_id")?,
        assignee: r.try_get("assigned_agent_id")?,
        tags: r.try_get("tags")?,
        sentiment: r.try_get("sentiment")?,
        // The order the ticket names, else the value a trusted connector said (`order_value`).
        order_value: order_cents.map(|c| c as f64 / 100.0).or_else(|| {
            r.try_get::<Option<String>, _>("order_value_said")
                .ok()
                .flatten()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
        }),
        customer_email: r.try_get("email")?,
        fields: field_values.0,
        message: match r.try_get::<Option<String>, _>("m_text")? {
            Some(text) => Some(MessageFacts {
                text,
                to: r.try_get("m_to")?,
                automatic: r
                    .try_get::<Option<bool>, _>("m_automatic")?
                    .unwrap_or(false),
            }),
            None => None,
        },
        actor: None,
        business_hours: cal.next_open(now) <= now,
        now,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        status_since: r.try_get("status_changed_at")?,
        resolved_at: r.try_get("resolved_at")?,
        csat_rating: None,
        order_status: r.try_get("order_status")?,
    };
    let ctx = Context {
        customer_name: r.try_get("name")?,
        customer_email: facts.customer_email.clone(),
        ticket_number: number.clone(),
        agent_name: r.try_get("agent_name")?,
        order_name: facts
            .fields
            .get("order_number")
            .and_then(|v| v.as_str())
            // As macros fill it: the order's name itself (`#1001`).
            .map(str::to_string),
        ..Context::default()
    };
    Ok(Some(Loaded {
        facts,
        number,
        version: r.try_get("version")?,
        ctx,
        ticket_id,
        customer_id: r.try_get("customer_id")?,
        revision: r.try_get("revision")?,
    }))
}

impl Handler for RulesStage {
    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        if let Some(cause) = Cause::of(&record)? {
            self.on_event(&cause).await?;
        }
        Ok(())
    }
}

impl switchboard_core::runtime::Background for RulesStage {
    fn name(&self) -> &'static str {
        "rules-automations"
    }

    fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        self.automation_loop(shutdown)
    }
}
