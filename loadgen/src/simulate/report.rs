//! What a simulation measured: front-door acknowledgments per channel, the pipeline's time to an
//! agent's assignment, first-response and resolution times, hostile requests and their answers,
//! and a timeline (load, queue depth, CPU and memory of every process) sampled while it runs.
//! Printed as text, written as JSON and as one self-contained HTML page with charts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use super::doors::Outcome;

fn hist() -> Histogram<u64> {
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
}

/// p50/p90/p99/max of a histogram, in its unit.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Pcts {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn pcts(h: &Histogram<u64>, scale: f64) -> Pcts {
    if h.is_empty() {
        return Pcts::default();
    }
    Pcts {
        count: h.len(),
        p50: h.value_at_quantile(0.5) as f64 * scale,
        p90: h.value_at_quantile(0.9) as f64 * scale,
        p99: h.value_at_quantile(0.99) as f64 * scale,
        max: h.max() as f64 * scale,
    }
}

/// One process's use at a sample.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcSample {
    pub name: String,
    /// Percent of one core since the previous sample.
    pub cpu: f64,
    pub rss_mib: f64,
}

/// The system at one moment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    pub wall_secs: f64,
    pub sim_hours: f64,
    pub offered: u64,
    pub accepted: u64,
    pub waiting: f64,
    pub procs: Vec<ProcSample>,
}

#[derive(Default)]
struct Inner {
    offered: BTreeMap<String, u64>,
    accepted: BTreeMap<String, u64>,
    tickets: u64,
    ack: BTreeMap<String, Histogram<u64>>,
    sent: HashMap<String, Instant>,
    assign: Option<Histogram<u64>>,
    first_response: Option<Histogram<u64>>,
    resolution: Option<Histogram<u64>>,
    counts: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    agent_calls: BTreeMap<String, (u64, u64)>,
    hostile: BTreeMap<String, (u64, u64, Vec<String>)>,
    timeline: Vec<Sample>,
    /// A rolling restart is under way (`--rolling-restart`): acks go to `ack_restarting`.
    restarting: bool,
    /// Every channel's acks while a rolling restart was under way, and outside it.
    ack_restarting: Option<Histogram<u64>>,
    ack_steady: Option<Histogram<u64>>,
}

/// The run's measurements (shared by every actor).
#[derive(Default)]
pub(crate) struct Stats {
    inner: Mutex<Inner>,
}

impl Stats {
    pub(crate) fn offered(&self, channel: &str) {
        *self.inner.lock().offered.entry(channel.into()).or_default() += 1;
    }

    /// A front-door answer (valid traffic): its latency when accepted.
    pub(crate) fn front_door(&self, channel: &str, o: &Outcome) {
        if o.ok() {
            let mut i = self.inner.lock();
            let us = o.latency.as_micros() as u64;
            let _ = i.ack.entry(channel.into()).or_insert_with(hist).record(us);
            let side = if i.restarting {
                &mut i.ack_restarting
            } else {
                &mut i.ack_steady
            };
            let _ = side.get_or_insert_with(hist).record(us);
        }
    }

    /// A rolling restart begins (true) or ends (false).
    pub(crate) fn restarting(&self, on: bool) {
        self.inner.lock().restarting = on;
    }

    /// An accepted message (`first`: a ticket's first message, timed to its assignment).
    pub(crate) fn accepted(&self, channel: &str, external_id: String, first: bool) {
        let mut i = self.inner.lock();
        *i.accepted.entry(channel.into()).or_default() += 1;
        if first {
            i.tickets += 1;
            i.sent.insert(external_id, Instant::now());
        }
    }

    /// An agent was assigned the ticket whose first message has `external_id`.
    pub(crate) fn assigned(&self, external_id: &str) {
        let mut i = self.inner.lock();
        if let Some(t) = i.sent.remove(external_id) {
            let ms = t.elapsed().as_millis() as u64;
            let _ = i.assign.get_or_insert_with(hist).record(ms);
        }
    }

    /// The customer got a first answer (`external_id` of the ticket's first message): a ticket
    /// the bot answered needs no assignment, so it no longer counts as waiting for one.
    pub(crate) fn first_response(&self, external_id: &str, sim_secs: f64) {
        let mut i = self.inner.lock();
        i.sent.remove(external_id);
        let _ = i
            .first_response
            .get_or_insert_with(hist)
            .record(sim_secs as u64);
    }

    pub(crate) fn resolution(&self, sim_secs: f64) {
        let _ = self
            .inner
            .lock()
            .resolution
            .get_or_insert_with(hist)
            .record(sim_secs as u64);
    }

    pub(crate) fn count(&self, what: &str) {
        *self.inner.lock().counts.entry(what.into()).or_default() += 1;
    }

    /// How many times `what` was counted.
    pub(crate) fn counted(&self, what: &str) -> u64 {
        self.inner.lock().counts.get(what).copied().unwrap_or(0)
    }

    pub(crate) fn error(&self, channel: &str, what: String) {
        let mut i = self.inner.lock();
        *i.errors.entry(channel.into()).or_default() += 1;
        if i.error_samples.len() < 20 {
            i.error_samples.push(format!("{channel}: {what}"));
        }
    }

    pub(crate) fn agent_call(&self, what: &str, ok: bool) {
        let mut i = self.inner.lock();
        let e = i.agent_calls.entry(what.into()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    pub(crate) fn hostile(&self, kind: &str, o: &Outcome, want: &[u16]) {
        let mut i = self.inner.lock();
        let e = i.hostile.entry(kind.into()).or_default();
        e.0 += 1;
        if want.contains(&o.code) {
            e.1 += 1;
        } else if e.2.len() < 3 {
            e.2.push(format!(
                "{} {}",
                o.code,
                o.body.chars().take(120).collect::<String>()
            ));
        }
    }

    pub(crate) fn sample(&self, s: Sample) {
        self.inner.lock().timeline.push(s);
    }

    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let i = self.inner.lock();
        (
            i.offered.values().sum(),
            i.accepted.values().sum(),
            i.errors.values().sum(),
        )
    }

    /// Tickets whose first message is neither assigned nor answered yet, of all tickets.
    pub(crate) fn waiting(&self) -> (usize, u64) {
        let i = self.inner.lock();
        (i.sent.len(), i.tickets)
    }

    pub(crate) fn report(&self, extra: Extra) -> Report {
        let i = self.inner.lock();
        Report {
            offered: i.offered.clone(),
            accepted: i.accepted.clone(),
            tickets: i.tickets,
            ack_ms: i
                .ack
                .iter()
                .map(|(k, h)| (k.clone(), pcts(h, 0.001)))
                .collect(),
            assign_ms: i.assign.as_ref().map(|h| pcts(h, 1.0)).unwrap_or_default(),
            ack_restarting_ms: i.ack_restarting.as_ref().map(|h| pcts(h, 0.001)),
            ack_steady_ms: i.ack_steady.as_ref().map(|h| pcts(h, 0.001)),
            never_assigned: i.sent.len(),
            first_response_sim_secs: i
                .first_response
                .as_ref()
                .map(|h| pcts(h, 1.0))
                .unwrap_or_default(),
            resolution_sim_secs: i
                .resolution
                .as_ref()
                .map(|h| pcts(h, 1.0))
                .unwrap_or_default(),
            counts: i.counts.clone(),
            errors: i.errors.clone(),
            error_samples: i.error_samples.clone(),
            agent_calls: i.agent_calls.clone(),
            hostile: i
                .hostile
                .iter()
                .map(|(k, (sent, ok, wrong))| {
                    (
                        k.clone(),
                        HostileLine {
                            sent: *sent,
                            as_expected: *ok,
                            unexpected: wrong.clone(),
                        },
                    )
                })
                .collect(),
            timeline: i.timeline.clone(),
            extra,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostileLine {
    pub sent: u64,
    pub as_expected: u64,
    pub unexpected: Vec<String>,
}

/// What the system says at the end (read from its metrics and, for the accounting, its stores).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Extra {
    pub label: String,
    pub tickets_per_day: f64,
    pub speed: f64,
    pub wall_secs: f64,
    /// Wall seconds traffic arrived for (the rest was draining).
    pub arrival_secs: f64,
    pub sim_hours: f64,
    /// Inbound messages in Postgres and in ClickHouse at the end.
    pub postgres_inbound: i64,
    pub clickhouse_inbound: i64,
    pub dead_letters: i64,
    pub sla: BTreeMap<String, i64>,
    pub bot: BTreeMap<String, f64>,
    /// Where-is-my-order contacts and help-centre returns, by what became of them.
    pub post_purchase: BTreeMap<String, f64>,
    /// Busy seconds per stage (sum of handling time) and the ticketing stage's parts.
    pub stages: BTreeMap<String, f64>,
    pub unknown_replies: u64,
    /// Replies a customer received a second time (same email Message-ID or chat message id).
    pub duplicate_replies: u64,
    pub duplicate_samples: Vec<String>,
    /// Chat messages received after a later one of their conversation.
    pub out_of_order_replies: u64,
    /// Requests the simulated callers sent again after meeting a restart (`--chaos`).
    pub retried: u64,
    /// Chat sockets the customers opened again after the server closed them.
    pub reconnects: u64,
    /// What each kill of the chaos loop cost.
    pub kills: Vec<super::chaos::Kill>,
    /// Why the latest dead letters are dead letters (at most 20, newest first).
    pub dead_letter_reasons: Vec<String>,
    /// The consumer groups' warnings from the processes' logs (rejoins, failed rebalances and
    /// flushes, unanswered broker requests), the newest 30: printed when something went missing.
    pub consumer_log: Vec<String>,
    /// Each instance's graceful restart (`--rolling-restart`), in order.
    pub restarts: Vec<super::chaos::Restart>,
    /// Totals over the run: Postgres transactions, rows and WAL bytes, ClickHouse bytes, Kafka
    /// record bytes produced and fetched, seconds in the models (per message in the text).
    pub costs: BTreeMap<String, f64>,
    /// Mean simulated seconds an assignment held an agent's slot (assignment to release), and
    /// over how many (what `switchboard-sim forecast --handle-secs` plans with).
    pub handling_secs: Option<(f64, i64)>,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub offered: BTreeMap<String, u64>,
    pub accepted: BTreeMap<String, u64>,
    pub tickets: u64,
    pub ack_ms: BTreeMap<String, Pcts>,
    pub assign_ms: Pcts,
    /// Acks (every channel) during a rolling restart, and outside it.
    pub ack_restarting_ms: Option<Pcts>,
    pub ack_steady_ms: Option<Pcts>,
    pub never_assigned: usize,
    pub first_response_sim_secs: Pcts,
    pub resolution_sim_secs: Pcts,
    pub counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub agent_calls: BTreeMap<String, (u64, u64)>,
    pub hostile: BTreeMap<String, HostileLine>,
    pub timeline: Vec<Sample>,
    pub extra: Extra,
}

/// The post-purchase lines of the report: where-is-my-order deflection and returns.
fn post_purchase_text(pp: &BTreeMap<String, f64>, counts: &BTreeMap<String, u64>) -> String {
    let mut s = String::new();
    let get = |k: &str| pp.get(k).copied().unwrap_or(0.0);
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { 0.0 };
    let asked = get("wismo_asked");
    if asked > 0.0 {
        let _ = writeln!(
            s,
            "where is my order: {asked:.0} asked ({} late parcels); deflected {:.0} ({:.1}%: the bot's answer stood), handed over {:.0}, not answered by the bot {:.0}; bot order answers {:.0} answered / {:.0} handed over; customers who went quiet on the answer {}, self-served on /track {}",
            count("wismo_asked_late"),
            get("wismo_deflected"),
            pct(get("wismo_deflected"), asked),
            get("wismo_handed_over") + get("wismo_reopened"),
            get("wismo_not_answered_by_bot"),
            get("bot_order_answers_answered"),
            get("bot_order_answers_handed_over"),
            count("wismo_answered_quiet"),
            count("wismo_tracked_self_service"),
        );
    }
    let scored = get("churn_customers");
    if scored > 0.0 {
        let _ = writeln!(
            s,
            "churn (simulated: a long or missing answer, a poor rating and a long contact make a customer leave more often): {scored:.0} email and chat customers scored, {:.0} left; Switchboard's churn score tells them apart with AUC {}",
            get("churn_left"),
            pp.get("churn_auc").map_or("- (one class only)".to_string(), |a| format!("{a:.3}")),
        );
    }
    let held = get("churn_fit_held_out");
    if held > 0.0 {
        let auc = |k: &str| pp.get(k).map_or("-".to_string(), |a| format!("{a:.3}"));
        let _ = writeln!(
            s,
            "churn fitted on outcomes (the stayers ordered again within 30 days through the order webhook): fitted on {:.0} customers, judged on {held:.0} held out ({:.0} left): AUC hand-set {}, fitted {}",
            get("churn_fit_train"),
            get("churn_fit_held_out_left"),
            auc("churn_fit_auc_hand_set"),
            auc("churn_fit_auc_fitted"),
        );
    }
    let offered = get("returns_offered");
    if offered > 0.0 {
        let stored = get("returns_stored");
        let _ = writeln!(
            s,
            "returns: {offered:.0} customers in the help centre; {stored:.0} returns stored, {:.0} auto-approved ({:.1}%); {} refused with why (outside the window)",
            get("returns_auto_approved"),
            pct(get("returns_auto_approved"), stored),
            count("returns_refused_with_reason"),
        );
    }
    s
}

fn mins(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} min", secs / 60.0)
    }
}

impl Report {
    pub(crate) fn accepted_total(&self) -> u64 {
        self.accepted.values().sum()
    }

    /// Every accepted message is in Postgres and ClickHouse, no valid request failed, no dead
    /// letter, every hostile request got the answer it should.
    pub(crate) fn clean(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let accepted = self.accepted_total() as i64;
        if self.extra.postgres_inbound < accepted {
            problems.push(format!(
                "{} accepted messages, {} in Postgres",
                accepted, self.extra.postgres_inbound
            ));
        }
        if self.extra.clickhouse_inbound < accepted {
            problems.push(format!(
                "{} accepted messages, {} in ClickHouse",
                accepted, self.extra.clickhouse_inbound
            ));
        }
        if self.extra.duplicate_replies > 0 {
            problems.push(format!(
                "{} replies delivered twice",
                self.extra.duplicate_replies
            ));
        }
        if self.extra.out_of_order_replies > 0 {
            problems.push(format!(
                "{} chat replies out of order",
                self.extra.out_of_order_replies
            ));
        }
        for r in &self.extra.restarts {
            if !r.drained || !r.ready_secs.is_finite() {
                problems.push(format!("{} did not restart cleanly", r.process));
            }
        }
        for k in &self.extra.kills {
            if !k.ready_secs.is_finite() {
                problems.push(format!("{} was not ready again after its kill", k.process));
            }
        }
        let errors: u64 = self.errors.values().sum();
        if errors > 0 {
            problems.push(format!("{errors} valid requests failed"));
        }
        // The MIME bomb is kept as a dead letter by design (raw, with the reason).
        let expected_dl = self
            .hostile
            .get("email MIME bomb")
            .map(|h| h.sent as i64)
            .unwrap_or(0);
        if self.extra.dead_letters > expected_dl {
            problems.push(format!(
                "{} dead letters ({} from MIME bombs); reasons: {}",
                self.extra.dead_letters,
                expected_dl,
                self.extra.dead_letter_reasons.join(" | ")
            ));
        }
        for (k, h) in &self.hostile {
            if h.as_expected != h.sent {
                problems.push(format!(
                    "hostile {k}: {} of {} answered as expected",
                    h.as_expected, h.sent
                ));
            }
        }
        problems
    }

    /// Mean RSS of a process over the first and the last quarter of the run (flat memory:
    /// the two agree).
    pub(crate) fn memory_trend(&self, name: &str) -> (f64, f64) {
        let v: Vec<f64> = self
            .timeline
            .iter()
            .filter_map(|s| s.procs.iter().find(|p| p.name == name).map(|p| p.rss_mib))
            .collect();
        let q = (v.len() / 4).max(1);
        if v.len() < 2 {
            return (0.0, 0.0);
        }
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            mean(&v[..q.min(v.len())]),
            mean(&v[v.len() - q.min(v.len())..]),
        )
    }

    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        let e = &self.extra;
        let _ = writeln!(s, "\n== {} ==", e.label);
        let _ = writeln!(
            s,
            "simulated {:.1} h in {:.0} s wall (x{}); {} tickets, as wall-clock load {:.0} tickets per real day (model: {:.0} per simulated day)",
            e.sim_hours,
            e.wall_secs,
            e.speed,
            self.tickets,
            self.tickets as f64 / e.arrival_secs.max(0.001) * 86_400.0,
            e.tickets_per_day
        );
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
            "channel", "offered", "accepted", "errors", "ack p50", "ack p99", "ack max"
        );
        for (c, o) in &self.offered {
            let a = self.accepted.get(c).copied().unwrap_or(0);
            let p = self.ack_ms.get(c).copied().unwrap_or_default();
            let _ = writeln!(
                s,
                "{c:<12} {o:>9} {a:>9} {:>8} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                self.errors.get(c).copied().unwrap_or(0),
                p.p50,
                p.p99,
                p.max
            );
        }
        if let Some(o) = self.ack_ms.get("orders") {
            let _ = writeln!(
                s,
                "{:<12} {:>9} {:>9} {:>8} {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                "orders",
                o.count,
                o.count,
                self.errors.get("orders").copied().unwrap_or(0),
                o.p50,
                o.p99,
                o.max
            );
        }
        let a = self.assign_ms;
        let _ = writeln!(s, "inbound -> assignment (wall): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} tickets; {} neither assigned nor answered by the bot)", a.p50, a.p99, a.max, a.count, self.never_assigned);
        let f = self.first_response_sim_secs;
        let _ = writeln!(s, "first response seen by the customer (simulated): p50 {}, p90 {}, p99 {} ({} conversations)", mins(f.p50), mins(f.p90), mins(f.p99), f.count);
        let r = self.resolution_sim_secs;
        let _ = writeln!(
            s,
            "assignment -> resolved (simulated): p50 {}, p90 {} ({} tickets)",
            mins(r.p50),
            mins(r.p90),
            r.count
        );
        if let Some((mean, n)) = e.handling_secs {
            let _ = writeln!(
                s,
                "handling (assignment to release, simulated): mean {:.0} s over {n} assignments",
                mean
            );
        }
        if !e.sla.is_empty() {
            let met = e.sla.get("met").copied().unwrap_or(0);
            let breached = e.sla.get("breached").copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "SLA: {met} met, {breached} breached, {} warned: attainment {:.1}%",
                e.sla.get("warning").copied().unwrap_or(0),
                if met + breached > 0 {
                    100.0 * met as f64 / (met + breached) as f64
                } else {
                    100.0
                }
            );
        }
        let bot = |k: &str| e.bot.get(k).copied().unwrap_or(0.0);
        let _ = writeln!(
            s,
            "bot: {:.0} answers, {:.0} deflected, {:.0} handed over, {:.0} reopened",
            bot("answers"),
            bot("deflected"),
            bot("handovers"),
            bot("reopened")
        );
        let _ = write!(s, "{}", post_purchase_text(&e.post_purchase, &self.counts));
        let n = |k: &str| self.counts.get(k).copied().unwrap_or(0);
        let (sent, edited, discarded) =
            (n("drafts_sent"), n("drafts_edited"), n("drafts_discarded"));
        let offered = sent + edited + discarded;
        let _ = writeln!(
            s,
            "reply drafts: {offered} replies answered offered drafts: {sent} sent unchanged, {edited} edited, {discarded} discarded: acceptance {:.1}%",
            if offered > 0 { 100.0 * (sent + edited) as f64 / offered as f64 } else { 0.0 }
        );
        let _ = writeln!(
            s,
            "surveys: {} received, {} answered; agent breaks: {}",
            self.counts.get("surveys_received").unwrap_or(&0),
            self.counts.get("surveys_answered").unwrap_or(&0),
            self.counts.get("agent_breaks").unwrap_or(&0)
        );
        let calls: Vec<String> = self
            .agent_calls
            .iter()
            .map(|(k, (ok, bad))| format!("{k} {ok} ok/{bad} failed"))
            .collect();
        let _ = writeln!(s, "agent API: {}", calls.join(", "));
        let _ = writeln!(
            s,
            "accounting: {} accepted; Postgres has {}, ClickHouse has {}; dead letters {}",
            self.accepted_total(),
            e.postgres_inbound,
            e.clickhouse_inbound,
            e.dead_letters
        );
        if !self.hostile.is_empty() {
            let _ = writeln!(s, "hostile traffic:");
            for (k, h) in &self.hostile {
                let _ = writeln!(
                    s,
                    "  {k:<34} {:>4} sent, {:>4} refused as expected {}",
                    h.sent,
                    h.as_expected,
                    h.unexpected.join("; ")
                );
            }
        }
        if !e.stages.is_empty() {
            let wall = e.wall_secs.max(1.0);
            let _ = writeln!(s, "where the time goes: handling time per stage, summed over its concurrent lanes (waits on Postgres, the broker and the models included), seconds and per wall second:");
            for (k, v) in &e.stages {
                let _ = writeln!(s, "  {k:<34} {:>7.1} s  ({:.2})", v, v / wall);
            }
        }
        if !e.kills.is_empty() {
            let _ = writeln!(s, "chaos: {} kills (SIGKILL, restarted after the pause); requests retried by their callers: {}", e.kills.len(), e.retried);
            let _ = writeln!(
                s,
                "  {:>7}  {:<14} {:>9} {:>9} {:>10}  {:>7}",
                "at s", "process", "ready s", "delayed", "stored s", "retried"
            );
            for k in &e.kills {
                let _ = writeln!(
                    s,
                    "  {:>7.1}  {:<14} {:>9.1} {:>9} {:>10}  {:>7}",
                    k.at_secs,
                    k.process,
                    k.ready_secs,
                    k.delayed,
                    k.caught_up_secs
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "never".into()),
                    k.retried
                );
            }
            let mut by_role: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for k in &e.kills {
                by_role
                    .entry(k.role.as_str())
                    .or_default()
                    .push(k.ready_secs);
            }
            for (role, v) in by_role {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let max = v.iter().copied().fold(0.0, f64::max);
                let _ = writeln!(
                    s,
                    "  {role:<10} {} kills, ready again after {mean:.1} s on average ({max:.1} s at most)",
                    v.len()
                );
            }
        }
        if !e.restarts.is_empty() {
            let total: f64 = e
                .restarts
                .iter()
                .map(|r| r.stopped_secs + r.ready_secs)
                .sum();
            let _ = writeln!(
                s,
                "rolling restart: {} instances one by one with SIGTERM (drain) in {total:.1} s; requests retried by their callers: {}",
                e.restarts.len(),
                e.retried
            );
            for r in &e.restarts {
                let _ = writeln!(
                    s,
                    "  {:<14} stopped after {:>5.1} s ({}), ready again after {:>5.1} s",
                    r.process,
                    r.stopped_secs,
                    if r.drained {
                        "drained"
                    } else {
                        "KILLED: did not stop in 60 s"
                    },
                    r.ready_secs
                );
            }
            if let (Some(during), Some(steady)) = (&self.ack_restarting_ms, &self.ack_steady_ms) {
                let _ = writeln!(
                    s,
                    "  ack during the restart p50 {:.1} ms, p99 {:.1} ms ({} acks) vs without it p50 {:.1} ms, p99 {:.1} ms ({} acks): p99 {:.2}x",
                    during.p50,
                    during.p99,
                    during.count,
                    steady.p50,
                    steady.p99,
                    steady.count,
                    during.p99 / steady.p99.max(0.001)
                );
            }
        }
        if e.reconnects > 0 {
            let _ = writeln!(
                s,
                "chat sockets reopened after the server closed them: {}",
                e.reconnects
            );
        }
        let _ = writeln!(
            s,
            "replies: {} delivered twice{}, {} out of order",
            e.duplicate_replies,
            if e.duplicate_samples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", e.duplicate_samples.join(", "))
            },
            e.out_of_order_replies
        );
        self.costs_text(&mut s);
        self.processes_text(&mut s);
        for e in &self.error_samples {
            let _ = writeln!(s, "error: {e}");
        }
        let problems = self.clean();
        if problems.is_empty() {
            let _ = writeln!(
                s,
                "nothing lost, nothing failed, every hostile request refused as it should be"
            );
        } else {
            let missing = problems.iter().any(|p| p.contains("accepted messages"));
            for p in problems {
                let _ = writeln!(s, "PROBLEM: {p}");
            }
            if missing && !self.extra.consumer_log.is_empty() {
                let _ = writeln!(s, "what the consumers logged (newest last):");
                for l in &self.extra.consumer_log {
                    let _ = writeln!(s, "  {l}");
                }
            }
        }
        s
    }

    /// What one accepted message (and one ticket) cost each part: CPU milliseconds per process
    /// (from the samples), then the stores', the broker's and the models' totals divided.
    fn costs_text(&self, s: &mut String) {
        let accepted = self.accepted_total().max(1) as f64;
        let tickets = self.tickets.max(1) as f64;
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        for w in self.timeline.windows(2) {
            let dt = (w[1].wall_secs - w[0].wall_secs).max(0.0);
            for p in &w[1].procs {
                *cpu.entry(p.name.clone()).or_default() += p.cpu / 100.0 * dt;
            }
        }
        let _ = writeln!(
            s,
            "cost per accepted message ({} messages, {} tickets; per ticket in brackets):",
            accepted as u64, tickets as u64
        );
        let cpu_line: Vec<String> = cpu
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| {
                format!(
                    "{k} {:.2} ({:.2})",
                    v * 1000.0 / accepted,
                    v * 1000.0 / tickets
                )
            })
            .collect();
        let _ = writeln!(s, "  CPU ms: {}", cpu_line.join(", "));
        for (k, v) in &self.extra.costs {
            let _ = writeln!(s, "  {k:<32} {:>12.2} ({:.2})", v / accepted, v / tickets);
        }
    }

    /// The processes' mean CPU and memory trend, one line each.
    fn processes_text(&self, s: &mut String) {
        let mut peak: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        let n = self.timeline.len().max(1) as f64;
        for smp in &self.timeline {
            for p in &smp.procs {
                let e = peak.entry(p.name.clone()).or_default();
                e.0 += p.cpu / n;
                e.1 = e.1.max(p.rss_mib);
            }
        }
        let _ = writeln!(
            s,
            "processes (mean CPU % of one core; RSS MiB: peak, mean over the first -> the last quarter of the run)"
        );
        for (k, (cpu, peak)) in &peak {
            let (first, last) = self.memory_trend(k);
            let _ = writeln!(
                s,
                "  {k:<12} {cpu:>6.0}%  {peak:>7.0}  {first:>7.0} -> {last:.0} ({:+.0}%)",
                if first > 0.0 {
                    (last / first - 1.0) * 100.0
                } else {
                    0.0
                }
            );
        }
    }

    /// One HTML page with SVG charts (no script, no external resource).
    pub(crate) fn html(&self) -> String {
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let xs: Vec<f64> = self.timeline.iter().map(|s| s.sim_hours).collect();
        let mut rate = Vec::new();
        for w in self.timeline.windows(2) {
            let dt = (w[1].wall_secs - w[0].wall_secs).max(0.001);
            rate.push((w[1].offered.saturating_sub(w[0].offered)) as f64 / dt);
        }
        let mut accepted_rate = Vec::new();
        for w in self.timeline.windows(2) {
            let dt = (w[1].wall_secs - w[0].wall_secs).max(0.001);
            accepted_rate.push((w[1].accepted.saturating_sub(w[0].accepted)) as f64 / dt);
        }
        let names: Vec<String> = self
            .timeline
            .last()
            .map(|s| s.procs.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        let series = |f: &dyn Fn(&ProcSample) -> f64| -> Vec<(String, Vec<f64>)> {
            names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        self.timeline
                            .iter()
                            .map(|s| s.procs.iter().find(|p| &p.name == n).map(f).unwrap_or(0.0))
                            .collect(),
                    )
                })
                .collect()
        };
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>Switchboard simulation: {}</h1><pre>{}</pre>",
            esc(&self.extra.label),
            esc(&self.text())
        );
        body.push_str(&line_chart(
            "Messages per wall second (offered, accepted)",
            "simulated hour",
            &xs[xs.len().min(1)..],
            &[("offered".into(), rate), ("accepted".into(), accepted_rate)],
        ));
        body.push_str(&line_chart(
            "Tickets waiting for an agent",
            "simulated hour",
            &xs,
            &[(
                "waiting".into(),
                self.timeline.iter().map(|s| s.waiting).collect(),
            )],
        ));
        body.push_str(&line_chart(
            "CPU (% of one core) per process",
            "simulated hour",
            &xs,
            &series(&|p| p.cpu),
        ));
        body.push_str(&line_chart(
            "Memory (RSS MiB) per process",
            "simulated hour",
            &xs,
            &series(&|p| p.rss_mib),
        ));
        let bars: Vec<(String, f64, f64)> = self
            .ack_ms
            .iter()
            .map(|(k, p)| (k.clone(), p.p50, p.p99))
            .collect();
        body.push_str(&bar_chart(
            "Acknowledgment per channel (ms): p50, p99",
            &bars,
        ));
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Switchboard simulation</title><style>body{{font:14px system-ui,sans-serif;margin:2rem;max-width:1000px}}pre{{background:#f6f8fa;padding:1rem;overflow:auto}}svg{{background:#fff;border:1px solid #ddd;margin:.5rem 0}}h2{{font-size:1rem;margin-top:1.5rem}}</style></head><body>{body}</body></html>"
        )
    }
}

const COLORS: [&str; 8] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04",
];

fn line_chart(title: &str, xlabel: &str, xs: &[f64], series: &[(String, Vec<f64>)]) -> String {
    let (w, h, l, b) = (900.0, 260.0, 60.0, 30.0);
    let xmax = xs.iter().cloned().fold(0.0, f64::max).max(0.001);
    let xmin = xs.first().copied().unwrap_or(0.0);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().cloned())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut s = format!("<h2>{title}</h2><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{title}\">");
    for k in 0..=4 {
        let y = h - b - (h - b - 10.0) * k as f64 / 4.0;
        let _ = write!(s, "<line x1=\"{l}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.0}</text>", w - 10.0, l - 4.0, y + 4.0, ymax * k as f64 / 4.0);
    }
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{xlabel} ({xmin:.1} to {xmax:.1})</text>", w / 2.0, h - 8.0);
    for (n, (name, v)) in series.iter().enumerate() {
        let pts: Vec<String> = xs
            .iter()
            .zip(v)
            .map(|(x, y)| {
                let px = l + (w - l - 10.0) * (x - xmin) / (xmax - xmin).max(0.001);
                let py = h - b - (h - b - 10.0) * y / ymax;
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let c = COLORS[n % COLORS.len()];
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{c}\">{name}</text>", pts.join(" "), l + 10.0 + 110.0 * n as f64, 14.0);
    }
    s.push_str("</svg>");
    s
}

fn bar_chart(title: &str, bars: &[(String, f64, f64)]) -> String {
    let (w, row) = (900.0, 26.0);
    let h = row * bars.len() as f64 + 20.0;
    let max = bars.iter().map(|b| b.2).fold(0.0, f64::max).max(1.0);
    let mut s = format!("<h2>{title}</h2><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{title}\">");
    for (i, (name, p50, p99)) in bars.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let sc = |v: f64| (w - 260.0) * v / max;
        let _ = write!(s, "<text x=\"90\" y=\"{}\" font-size=\"12\" text-anchor=\"end\">{name}</text><rect x=\"100\" y=\"{y}\" width=\"{:.1}\" height=\"9\" fill=\"#2563eb\"/><rect x=\"100\" y=\"{}\" width=\"{:.1}\" height=\"9\" fill=\"#dc2626\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{p50:.1} / {p99:.1} ms</text>", y + 14.0, sc(*p50), y + 10.0, sc(*p99), 110.0 + sc(*p99), y + 16.0);
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_flags_what_was_lost_and_charts_the_run() {
        let st = Stats::default();
        st.offered("sms");
        st.front_door(
            "sms",
            &Outcome {
                code: 200,
                latency: std::time::Duration::from_millis(12),
                body: String::new(),
            },
        );
        st.accepted("sms", "SM1".into(), true);
        st.assigned("SM1");
        st.hostile(
            "sms bad signature",
            &Outcome {
                code: 401,
                latency: Default::default(),
                body: String::new(),
            },
            &[401],
        );
        st.hostile(
            "order bad signature",
            &Outcome {
                code: 200,
                latency: Default::default(),
                body: "taken".into(),
            },
            &[401],
        );
        for t in 0..3 {
            st.sample(Sample {
                wall_secs: t as f64,
                sim_hours: t as f64,
                offered: t,
                accepted: t,
                waiting: 1.0,
                procs: vec![ProcSample {
                    name: "ingest".into(),
                    cpu: 50.0,
                    rss_mib: 80.0,
                }],
            });
        }
        let mut r = st.report(Extra {
            postgres_inbound: 1,
            clickhouse_inbound: 0,
            ..Default::default()
        });
        let problems = r.clean();
        assert!(
            problems.iter().any(|p| p.contains("ClickHouse")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("order bad signature")),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.contains("sms bad")),
            "{problems:?}"
        );
        assert_eq!(r.assign_ms.count, 1);
        r.extra.clickhouse_inbound = 1;
        r.hostile.remove("order bad signature");
        assert!(r.clean().is_empty(), "{:?}", r.clean());
        let html = r.html();
        assert!(html.contains("<svg") && html.contains("polyline") && !html.contains("<script"));
    }
}
