//! Agent scoring: who should take a ticket, and why.
//!
//! Pure and fast (no I/O), so the router, its property tests and the routing benchmark all run
//! the same code. Hard constraints exclude an agent with a reason (online, within shift in the
//! agent's timezone, speaks the customer's language, has the skill, under capacity overall and
//! on the ticket's channel, senior for VIP customers and the senior queue, not the agent who
//! let this ticket time out). The rest are scored on the design's four parts, weighted by
//! `routing.weights`: skill match (the agent's level in the skill), current workload, customer
//! satisfaction history and response-time performance.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use switchboard_contracts::Candidate;
use uuid::Uuid;

pub use switchboard_contracts::Level;

/// The parts of the agent score (design: 40/30/20/10).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingWeights {
    pub skill: f64,
    pub workload: f64,
    pub satisfaction: f64,
    pub response_time: f64,
}

impl Default for RoutingWeights {
    fn default() -> Self {
        RoutingWeights {
            skill: 0.4,
            workload: 0.3,
            satisfaction: 0.2,
            response_time: 0.1,
        }
    }
}

/// A working shift in the agent's own timezone; `end` before `start` crosses midnight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    pub tz: Tz,
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Shift {
    /// Whether `now` falls in the shift.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz).time();
        let local =
            NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second()).unwrap_or(local);
        if self.start <= self.end {
            local >= self.start && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }
}

/// What the router knows about an agent at decision time.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentState {
    pub id: Uuid,
    pub level: Level,
    pub online: bool,
    pub shift: Option<Shift>,
    /// Skills with a level from 1 to 5.
    pub skills: Vec<(String, u8)>,
    /// Empty: takes any language.
    pub languages: Vec<String>,
    pub capacity: u32,
    pub active: u32,
    /// Per-channel limit and load for the ticket's channel (limit None: only `capacity` applies).
    pub channel_capacity: Option<u32>,
    pub channel_active: u32,
    /// Mean rating (1 to 5) and how many ratings.
    pub csat_sum: f64,
    pub csat_count: u32,
    /// Mean seconds to respond and over how many responses.
    pub response_secs_sum: f64,
    pub response_count: u32,
}

/// What a ticket needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TicketNeeds {
    pub skill: Option<String>,
    pub language: Option<String>,
    pub vip: bool,
    /// The minimum level the ticket's queue asks for.
    pub min_level: Option<Level>,
    /// Agents that must not get this ticket again (timed out on it).
    pub excluded: Vec<Uuid>,
}

/// Why an agent cannot take a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Offline,
    OffShift,
    NoSkill,
    NoLanguage,
    AtCapacity,
    AtChannelCapacity,
    NotSenior,
    TimedOut,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exclusion::Offline => "not online",
            Exclusion::OffShift => "outside shift",
            Exclusion::NoSkill => "lacks the skill",
            Exclusion::NoLanguage => "does not speak the language",
            Exclusion::AtCapacity => "at capacity",
            Exclusion::AtChannelCapacity => "at capacity on this channel",
            Exclusion::NotSenior => "not senior enough",
            Exclusion::TimedOut => "did not accept this ticket in time",
        })
    }
}

/// The scoring parameters.
#[derive(Debug, Clone, Copy)]
pub struct Scorer {
    weights: RoutingWeights,
    target_response_secs: f64,
    vip_requires_senior: bool,
}

/// Prior for the satisfaction score: a new agent counts as this many ratings of 3 of 5. (The
/// router's Postgres pre-rank binds these same constants.)
pub const CSAT_PRIOR_COUNT: f64 = 5.0;
pub const CSAT_PRIOR_MEAN: f64 = 3.0;
/// Prior for the response-time score: this many responses at the target.
pub const RESPONSE_PRIOR_COUNT: f64 = 5.0;
/// The level (1 to 5) of a skill an agent has without a level recorded.
pub const DEFAULT_SKILL_LEVEL: u8 = 3;

impl Scorer {
    /// Weights are normalised to sum 1 (all zero or negative: the design's 40/30/20/10).
    pub fn new(
        weights: RoutingWeights,
        target_response_secs: f64,
        vip_requires_senior: bool,
    ) -> Self {
        let w = [
            weights.skill,
            weights.workload,
            weights.satisfaction,
            weights.response_time,
        ];
        let weights =
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                RoutingWeights::default()
            } else {
                let sum: f64 = w.iter().sum();
                RoutingWeights {
                    skill: w[0] / sum,
                    workload: w[1] / sum,
                    satisfaction: w[2] / sum,
                    response_time: w[3] / sum,
                }
            };
        Scorer {
            weights,
            target_response_secs: if target_response_secs > 0.0 {
                target_response_secs
            } else {
                120.0
            },
            vip_requires_senior,
        }
    }

    pub fn weights(&self) -> RoutingWeights {
        self.weights
    }

    pub fn target_response_secs(&self) -> f64 {
        self.target_response_secs
    }

    pub fn vip_requires_senior(&self) -> bool {
        self.vip_requires_senior
    }

    /// The hard constraints, cheapest first.
    pub fn check(
        &self,
        a: &AgentState,
        t: &TicketNeeds,
        now: DateTime<Utc>,
    ) -> Result<(), Exclusion> {
        if !a.online {
            return Err(Exclusion::Offline);
        }
        if a.active >= a.capacity {
            return Err(Exclusion::AtCapacity);
        }
        if a.channel_capacity.is_some_and(|c| a.channel_active >= c) {
            return Err(Exclusion::AtChannelCapacity);
        }
        let min_level = match (t.vip && self.vip_requires_senior, t.min_level) {
            (true, Some(l)) => Some(l.max(Level::Senior)),
            (true, None) => Some(Level::Senior),
            (false, l) => l,
        };
        if min_level.is_some_and(|min| a.level < min) {
            return Err(Exclusion::NotSenior);
        }
        if !t.excluded.is_empty() && t.excluded.contains(&a.id) {
            return Err(Exclusion::TimedOut);
        }
        if let Some(skill) = &t.skill {
            if !a.skills.iter().any(|(s, _)| s == skill) {
                return Err(Exclusion::NoSkill);
            }
        }
        if let Some(lang) = &t.language {
            if !a.languages.is_empty() && !a.languages.iter().any(|l| l == lang) {
                return Err(Exclusion::NoLanguage);
            }
        }
        if a.shift.is_some_and(|s| !s.contains(now)) {
            return Err(Exclusion::OffShift);
        }
        Ok(())
    }

    /// The four parts, each in [0, 1]: skill, workload, satisfaction, response time.
    pub fn parts(&self, a: &AgentState, t: &TicketNeeds) -> [f64; 4] {
        let skill = match &t.skill {
            None => 1.0,
            Some(skill) => a
                .skills
                .iter()
                .find(|(s, _)| s == skill)
                .map_or(0.0, |(_, level)| f64::from((*level).clamp(1, 5)) / 5.0),
        };
        let workload = 1.0 - f64::from(a.active.min(a.capacity)) / f64::from(a.capacity.max(1));
        let csat_mean = (a.csat_sum + CSAT_PRIOR_MEAN * CSAT_PRIOR_COUNT)
            / (f64::from(a.csat_count) + CSAT_PRIOR_COUNT);
        let satisfaction = ((csat_mean - 1.0) / 4.0).clamp(0.0, 1.0);
        let mean_response = (a.response_secs_sum.max(0.0)
            + self.target_response_secs * RESPONSE_PRIOR_COUNT)
            / (f64::from(a.response_count) + RESPONSE_PRIOR_COUNT);
        let response = self.target_response_secs / (self.target_response_secs + mean_response);
        [skill, workload, satisfaction, response.clamp(0.0, 1.0)]
    }

    /// The weighted score in [0, 1], or why the agent is out.
    pub fn score(
        &self,
        a: &AgentState,
        t: &TicketNeeds,
        now: DateTime<Utc>,
    ) -> Result<f64, Exclusion> {
        self.check(a, t, now)?;
        let [s, w, c, r] = self.parts(a, t);
        let k = self.weights;
        Ok(k.skill * s + k.workload * w + k.satisfaction * c + k.response_time * r)
    }

    /// Every agent, best first: eligible ones by score (ties: lower load, then id), then the
    /// excluded ones with their reason. This is the decision record.
    pub fn rank<'a>(
        &self,
        agents: impl IntoIterator<Item = &'a AgentState>,
        t: &TicketNeeds,
        now: DateTime<Utc>,
    ) -> Vec<Candidate> {
        let mut eligible: Vec<(f64, f64, Uuid)> = Vec::new();
        let mut excluded = Vec::new();
        for a in agents {
            match self.score(a, t, now) {
                Ok(score) => eligible.push((
                    score,
                    f64::from(a.active) / f64::from(a.capacity.max(1)),
                    a.id,
                )),
                Err(e) => excluded.push(Candidate {
                    agent_id: a.id,
                    score: 0.0,
                    excluded: Some(e.to_string()),
                }),
            }
        }
        eligible.sort_by(|x, y| {
            y.0.partial_cmp(&x.0)
                .unwrap_or(Ordering::Equal)
                .then(x.1.partial_cmp(&y.1).unwrap_or(Ordering::Equal))
                .then(x.2.cmp(&y.2))
        });
        eligible
            .into_iter()
            .map(|(score, _, agent_id)| Candidate {
                agent_id,
                score: (score * 10_000.0).round() / 10_000.0,
                excluded: None,
            })
            .chain(excluded)
            .collect()
    }

    /// The best eligible agent, without building the decision record (the hot path).
    pub fn best<'a>(
        &self,
        agents: impl IntoIterator<Item = &'a AgentState>,
        t: &TicketNeeds,
        now: DateTime<Utc>,
    ) -> Option<Uuid> {
        let mut best: Option<(f64, Uuid)> = None;
        for a in agents {
            if let Ok(s) = self.score(a, t, now) {
                if best.is_none_or(|(bs, bid)| s > bs || (s == bs && a.id < bid)) {
                    best = Some((s, a.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent(n: u128) -> AgentState {
        AgentState {
            id: Uuid::from_u128(n),
            level: Level::Agent,
            online: true,
            shift: None,
            skills: vec![("billing".into(), 3)],
            languages: vec![],
            capacity: 4,
            active: 0,
            channel_capacity: None,
            channel_active: 0,
            csat_sum: 0.0,
            csat_count: 0,
            response_secs_sum: 0.0,
            response_count: 0,
        }
    }

    fn scorer() -> Scorer {
        Scorer::new(RoutingWeights::default(), 120.0, true)
    }

    fn needs() -> TicketNeeds {
        TicketNeeds {
            skill: Some("billing".into()),
            ..TicketNeeds::default()
        }
    }

    #[test]
    fn the_design_weights_decide_the_order() {
        let now = Utc::now();
        let mut expert = agent(1);
        expert.skills = vec![("billing".into(), 5)];
        expert.active = 2; // half loaded
        let mut idle_novice = agent(2);
        idle_novice.skills = vec![("billing".into(), 1)];
        let s = scorer();
        // expert: 0.4*1.0 + 0.3*0.5 = 0.55 (+ priors); novice: 0.4*0.2 + 0.3*1.0 = 0.38 (+ priors)
        let ranked = s.rank(&[idle_novice.clone(), expert.clone()], &needs(), now);
        assert_eq!(ranked[0].agent_id, expert.id);
        assert!(ranked[0].score > ranked[1].score);
        // With workload weighted alone, the idle one wins.
        let only_load = Scorer::new(
            RoutingWeights {
                skill: 0.0,
                workload: 1.0,
                satisfaction: 0.0,
                response_time: 0.0,
            },
            120.0,
            true,
        );
        assert_eq!(
            only_load.best(&[expert, idle_novice.clone()], &needs(), now),
            Some(idle_novice.id)
        );
    }

    #[test]
    fn satisfaction_and_response_time_count() {
        let now = Utc::now();
        let mut liked = agent(1);
        liked.csat_sum = 5.0 * 50.0;
        liked.csat_count = 50;
        let mut disliked = agent(2);
        disliked.csat_sum = 1.0 * 50.0;
        disliked.csat_count = 50;
        let s = scorer();
        assert_eq!(
            s.best(&[disliked.clone(), liked.clone()], &needs(), now),
            Some(liked.id)
        );
        let mut fast = agent(3);
        fast.response_secs_sum = 30.0 * 100.0;
        fast.response_count = 100;
        let mut slow = agent(4);
        slow.response_secs_sum = 900.0 * 100.0;
        slow.response_count = 100;
        assert_eq!(s.best(&[slow, fast.clone()], &needs(), now), Some(fast.id));
    }

    #[test]
    fn hard_constraints_exclude_with_a_reason() {
        let now = Utc::now();
        let s = scorer();
        let mut offline = agent(1);
        offline.online = false;
        let mut full = agent(2);
        full.active = 4;
        let mut chat_full = agent(3);
        chat_full.channel_capacity = Some(2);
        chat_full.channel_active = 2;
        let mut french = agent(4);
        french.languages = vec!["fr".into()];
        let mut no_skill = agent(5);
        no_skill.skills = vec![("tech".into(), 5)];
        let mut off_shift = agent(6);
        let h = now.hour();
        off_shift.shift = Some(Shift {
            tz: chrono_tz::UTC,
            start: NaiveTime::from_hms_opt((h + 2) % 24, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt((h + 3) % 24, 0, 0).unwrap(),
        });
        let mut t = needs();
        t.language = Some("en".into());
        let ranked = s.rank(
            &[offline, full, chat_full, french, no_skill, off_shift],
            &t,
            now,
        );
        let reasons: Vec<_> = ranked.iter().map(|c| c.excluded.clone().unwrap()).collect();
        assert_eq!(
            reasons,
            [
                "not online",
                "at capacity",
                "at capacity on this channel",
                "does not speak the language",
                "lacks the skill",
                "outside shift"
            ]
        );
    }

    #[test]
    fn vip_and_senior_queue_need_seniority_and_timeouts_exclude() {
        let now = Utc::now();
        let s = scorer();
        let junior = agent(1);
        let mut senior = agent(2);
        senior.level = Level::Senior;
        let mut t = needs();
        t.vip = true;
        assert_eq!(
            s.best(&[junior.clone(), senior.clone()], &t, now),
            Some(senior.id)
        );
        t.vip = false;
        t.min_level = Some(Level::Supervisor);
        assert_eq!(s.best(&[junior.clone(), senior.clone()], &t, now), None);
        t.min_level = None;
        t.excluded = vec![junior.id, senior.id];
        assert_eq!(s.best(&[junior, senior], &t, now), None);
        // Without the VIP rule anyone may take a VIP.
        let lax = Scorer::new(RoutingWeights::default(), 120.0, false);
        let t = TicketNeeds {
            vip: true,
            ..needs()
        };
        assert_eq!(lax.best(&[agent(7)], &t, now), Some(Uuid::from_u128(7)));
    }

    #[test]
    fn shifts_use_the_agents_timezone_and_cross_midnight() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let berlin = Shift {
            tz: chrono_tz::Europe::Berlin,
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
        };
        // 08:30 UTC in winter is 09:30 in Berlin.
        assert!(berlin.contains(at("2026-12-01T08:30:00Z")));
        assert!(!berlin.contains(at("2026-12-01T16:30:00Z")));
        let night = Shift {
            tz: chrono_tz::UTC,
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
        };
        assert!(night.contains(at("2026-12-01T23:00:00Z")));
        assert!(night.contains(at("2026-12-01T05:59:00Z")));
        assert!(!night.contains(at("2026-12-01T12:00:00Z")));
    }

    fn arb_agent() -> impl Strategy<Value = AgentState> {
        (
            any::<u16>(),
            any::<bool>(),
            1u32..10,
            0u32..12,
            proptest::option::of(0u32..5),
            0u32..6,
            0u8..=5,
            0u32..100,
            1.0f64..5.0,
            0u32..100,
            1.0f64..2000.0,
            0u8..3,
        )
            .prop_map(
                |(
                    id,
                    online,
                    cap,
                    active,
                    ch_cap,
                    ch_active,
                    skill,
                    n_csat,
                    csat,
                    n_resp,
                    resp,
                    level,
                )| AgentState {
                    id: Uuid::from_u128(u128::from(id)),
                    level: [Level::Agent, Level::Senior, Level::Supervisor][usize::from(level)],
                    online,
                    shift: None,
                    skills: if skill == 0 {
                        vec![]
                    } else {
                        vec![("billing".into(), skill)]
                    },
                    languages: vec![],
                    capacity: cap,
                    active,
                    channel_capacity: ch_cap,
                    channel_active: ch_active,
                    csat_sum: csat * f64::from(n_csat),
                    csat_count: n_csat,
                    response_secs_sum: resp * f64::from(n_resp),
                    response_count: n_resp,
                },
            )
    }

    /// Agents are told apart by id: the generator may draw one id twice (the test then looked up
    /// the wrong agent of the two; see proptest-regressions/scoring.txt).
    fn unique_ids(agents: Vec<AgentState>) -> Vec<AgentState> {
        agents
            .into_iter()
            .enumerate()
            .map(|(i, mut a)| {
                a.id = Uuid::from_u128(i as u128 + 1);
                a
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_pick_never_breaks_a_hard_constraint(agents in proptest::collection::vec(arb_agent(), 0..40), vip in any::<bool>()) {
            let agents = unique_ids(agents);
            let s = scorer();
            let now = Utc::now();
            let t = TicketNeeds { vip, ..needs() };
            if let Some(id) = s.best(&agents, &t, now) {
                let a = agents.iter().find(|a| a.id == id).unwrap();
                prop_assert!(a.online);
                prop_assert!(a.active < a.capacity);
                prop_assert!(a.channel_capacity.is_none_or(|c| a.channel_active < c));
                prop_assert!(a.skills.iter().any(|(k, _)| k == "billing"));
                prop_assert!(!vip || a.level >= Level::Senior);
            } else {
                prop_assert!(agents.iter().all(|a| s.check(a, &t, now).is_err()));
            }
        }

        #[test]
        fn rank_agrees_with_best_and_scores_are_bounded(agents in proptest::collection::vec(arb_agent(), 1..40)) {
            let agents = unique_ids(agents);
            let s = scorer();
            let now = Utc::now();
            let ranked = s.rank(&agents, &needs(), now);
            prop_assert_eq!(ranked.len(), agents.len());
            let top = ranked.first().filter(|c| c.excluded.is_none()).map(|c| c.agent_id);
            let best = s.best(&agents, &needs(), now);
            // Equal scores may tie-break differently; the scores must then be equal.
            if top != best {
                let score = |id: Option<Uuid>| id.and_then(|id| agents.iter().find(|a| a.id == id)).map(|a| s.score(a, &needs(), now).unwrap());
                prop_assert!((score(top).unwrap() - score(best).unwrap()).abs() < 1e-9);
            }
            for c in &ranked {
                prop_assert!((0.0..=1.0).contains(&c.score));
            }
            for w in ranked.windows(2) {
                if w[0].excluded.is_none() && w[1].excluded.is_none() {
                    prop_assert!(w[0].score >= w[1].score);
                }
            }
        }

        #[test]
        fn more_load_never_scores_higher(a in arb_agent()) {
            let s = scorer();
            let mut lighter = a.clone();
            lighter.online = true;
            lighter.active = 0;
            lighter.channel_capacity = None;
            lighter.level = Level::Supervisor;
            lighter.skills = vec![("billing".into(), 3)];
            let mut heavier = lighter.clone();
            heavier.active = lighter.capacity.saturating_sub(1);
            let now = Utc::now();
            prop_assert!(s.score(&lighter, &needs(), now).unwrap() >= s.score(&heavier, &needs(), now).unwrap());
        }
    }
}
