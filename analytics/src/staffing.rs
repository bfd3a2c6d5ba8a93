//! Staffing: how many agents an hour needs to meet its service level, by Erlang C, from the
//! forecast's tickets per hour and the measured handling time.
//!
//! A desk is a queue with `slots` servers: an agent works on up to `concurrency` tickets of a
//! channel at once (the routing's per-channel capacity), each for the handling time. Erlang C
//! gives the chance a new ticket waits for a slot and, from that, the share answered within
//! the target; the plan is the fewest agents whose slots reach the service level without an
//! occupancy above [`StaffingTarget::max_occupancy`] (nobody works at 100 % for an hour).
//! Erlang C assumes nobody gives up waiting, so for chat it errs on the side of more agents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `forecast.staffing:` in pipelines.yaml: what the staffing plan holds each hour to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaffingConfig {
    /// Share of tickets picked up by an agent within the channel's `answer_within_secs`.
    pub service_level: f64,
    /// Highest planned share of slot time busy.
    pub max_occupancy: f64,
    /// Per channel, seconds a ticket may wait for an agent (inside the SLA's first-response
    /// target, which also holds the agent's time to write).
    pub answer_within_secs: BTreeMap<String, f64>,
    /// For a channel not listed above.
    pub default_answer_within_secs: f64,
    /// Handling time (assignment to release) when the last 7 days hold fewer than
    /// `min_samples` assignments of a channel.
    pub default_handle_secs: f64,
    pub min_samples: u32,
}

impl Default for StaffingConfig {
    fn default() -> Self {
        StaffingConfig {
            service_level: 0.8,
            max_occupancy: 0.85,
            answer_within_secs: [
                ("chat", 60.0),
                ("voice", 30.0),
                ("sms", 900.0),
                ("social", 900.0),
                ("email", 3600.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            default_answer_within_secs: 3600.0,
            default_handle_secs: 900.0,
            min_samples: 20,
        }
    }
}

impl StaffingConfig {
    /// The error names the key that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(self.service_level > 0.0 && self.service_level < 1.0) {
            return Err("forecast.staffing.service_level must be between 0 and 1".into());
        }
        if !(self.max_occupancy > 0.0 && self.max_occupancy <= 1.0) {
            return Err("forecast.staffing.max_occupancy must be above 0 and at most 1".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if let Some((k, _)) = self.answer_within_secs.iter().find(|(_, v)| !positive(**v)) {
            return Err(format!(
                "forecast.staffing.answer_within_secs.{k} must be above 0"
            ));
        }
        if !positive(self.default_answer_within_secs) || !positive(self.default_handle_secs) {
            return Err(
                "forecast.staffing.default_answer_within_secs and default_handle_secs must be above 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// The target for `channel`.
    pub fn target(&self, channel: &str) -> StaffingTarget {
        StaffingTarget {
            service_level: self.service_level,
            answer_within_secs: self
                .answer_within_secs
                .get(channel)
                .copied()
                .unwrap_or(self.default_answer_within_secs),
            max_occupancy: self.max_occupancy,
        }
    }
}

/// What an hour must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StaffingTarget {
    /// Share of tickets picked up within `answer_within_secs` (0.8: 80 %).
    pub service_level: f64,
    pub answer_within_secs: f64,
    /// Highest share of slot time busy (0.85).
    pub max_occupancy: f64,
}

/// The work an hour brings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Tickets arriving in the hour.
    pub tickets_per_hour: f64,
    /// Mean time a ticket holds a slot, seconds.
    pub handle_secs: f64,
    /// Tickets an agent works at once (1 for voice).
    pub concurrency: u32,
}

/// The answer for an hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HourPlan {
    /// Agents needed (slots / concurrency, rounded up).
    pub agents: u32,
    /// Slots needed.
    pub slots: u32,
    /// Offered load in erlangs (busy slots on average).
    pub erlangs: f64,
    /// Share answered within the target with that many slots.
    pub service_level: f64,
    /// Share of slot time busy.
    pub occupancy: f64,
}

/// The chance an arrival waits (Erlang C) with `n` servers and `a` erlangs of load; 1 when the
/// queue is unstable (`n <= a`). Computed through Erlang B's recursion, which never overflows.
pub fn erlang_c(n: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    if f64::from(n) <= a {
        return 1.0;
    }
    let mut b = 1.0;
    for k in 1..=n {
        b = a * b / (f64::from(k) + a * b);
    }
    let n = f64::from(n);
    (n * b / (n - a * (1.0 - b))).clamp(0.0, 1.0)
}

/// Share of arrivals answered within `t` seconds with `n` servers, `a` erlangs and a mean
/// handling time `h` seconds.
pub fn service_level(n: u32, a: f64, h: f64, t: f64) -> f64 {
    if a <= 0.0 {
        return 1.0;
    }
    if f64::from(n) <= a {
        return 0.0;
    }
    let c = erlang_c(n, a);
    (1.0 - c * (-(f64::from(n) - a) * t / h.max(1e-9)).exp()).clamp(0.0, 1.0)
}

/// Most slots an hour is ever planned with (a forecast gone wild must not loop for long).
pub const MAX_SLOTS: u32 = 200_000;

/// The fewest agents for `load` to meet `target`.
pub fn plan(load: Workload, target: StaffingTarget) -> HourPlan {
    let h = load.handle_secs.max(1.0);
    let a = (load.tickets_per_hour.max(0.0) / 3600.0) * h;
    let conc = load.concurrency.max(1);
    if !a.is_finite() || a <= 0.0 {
        return HourPlan {
            agents: 0,
            slots: 0,
            erlangs: 0.0,
            service_level: 1.0,
            occupancy: 0.0,
        };
    }
    // Start where occupancy allows and the queue is stable; service level rises with slots.
    let occ = target.max_occupancy.clamp(0.05, 1.0);
    let floor = (a / occ).ceil().max(a.floor() + 1.0);
    let mut n = if floor >= f64::from(MAX_SLOTS) {
        MAX_SLOTS
    } else {
        floor as u32
    };
    let want = target.service_level.clamp(0.0, 0.9999);
    while n < MAX_SLOTS && service_level(n, a, h, target.answer_within_secs) < want {
        n += 1;
    }
    HourPlan {
        agents: n.div_ceil(conc),
        slots: n,
        erlangs: a,
        service_level: service_level(n, a, h, target.answer_within_secs),
        occupancy: a / f64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn erlang_c_matches_the_textbook() {
        // 10 erlangs on 11 servers: 68.2 % of arrivals wait.
        assert!(
            (erlang_c(11, 10.0) - 0.6821).abs() < 1e-3,
            "{}",
            erlang_c(11, 10.0)
        );
        // 2 erlangs on 3 servers: 4/9 (the closed form).
        assert!((erlang_c(3, 2.0) - 4.0 / 9.0).abs() < 1e-9);
        assert_eq!(erlang_c(5, 5.0), 1.0);
        assert_eq!(erlang_c(5, 0.0), 0.0);
    }

    #[test]
    fn the_textbook_call_centre_needs_fourteen_agents() {
        // The usual worked example: 100 calls in half an hour of 180 s each (10 erlangs), 80 %
        // answered within 20 s: 13 agents reach 79.6 %, 14 reach 88.8 %.
        let target = StaffingTarget {
            service_level: 0.8,
            answer_within_secs: 20.0,
            max_occupancy: 1.0,
        };
        let p = plan(
            Workload {
                tickets_per_hour: 200.0,
                handle_secs: 180.0,
                concurrency: 1,
            },
            target,
        );
        assert_eq!(p.slots, 14, "{p:?}");
        assert!((p.service_level - 0.888).abs() < 0.001, "{p:?}");
        assert!((service_level(13, 10.0, 180.0, 20.0) - 0.796).abs() < 0.001);
        assert!((p.erlangs - 10.0).abs() < 1e-9);
    }

    #[test]
    fn concurrency_divides_agents_and_occupancy_caps_load() {
        let target = StaffingTarget {
            service_level: 0.8,
            answer_within_secs: 60.0,
            max_occupancy: 0.85,
        };
        let load = Workload {
            tickets_per_hour: 600.0,
            handle_secs: 600.0,
            concurrency: 4,
        };
        let p = plan(load, target);
        assert!(p.occupancy <= 0.85 + 1e-9);
        assert_eq!(p.agents, p.slots.div_ceil(4));
        let alone = plan(
            Workload {
                concurrency: 1,
                ..load
            },
            target,
        );
        assert_eq!(alone.slots, p.slots);
        assert!(alone.agents > p.agents * 3);
        // No tickets, nobody.
        let none = plan(
            Workload {
                tickets_per_hour: 0.0,
                ..load
            },
            target,
        );
        assert_eq!(none.agents, 0);
    }

    proptest! {
        /// More load never needs fewer agents, the plan always meets the target it was asked
        /// for, and one slot fewer would not have.
        #[test]
        fn plans_are_minimal_and_monotone(
            tickets in 0.0..5000.0f64,
            more in 0.0..500.0f64,
            handle in 30.0..3600.0f64,
            conc in 1u32..8,
            sl in 0.5..0.95f64,
            within in 10.0..3600.0f64,
        ) {
            let target = StaffingTarget { service_level: sl, answer_within_secs: within, max_occupancy: 1.0 };
            let p = plan(Workload { tickets_per_hour: tickets, handle_secs: handle, concurrency: conc }, target);
            let q = plan(Workload { tickets_per_hour: tickets + more, handle_secs: handle, concurrency: conc }, target);
            prop_assert!(q.slots >= p.slots);
            if p.slots > 0 {
                prop_assert!(p.service_level >= sl - 1e-9);
                let fewer = service_level(p.slots - 1, p.erlangs, handle, within);
                prop_assert!(fewer < sl || (f64::from(p.slots - 1)) <= p.erlangs);
            }
        }
    }
}
