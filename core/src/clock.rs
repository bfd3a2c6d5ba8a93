//! The time Switchboard's business rules read: SLA clocks and their poller, business hours,
//! agents' shifts, and the times stamped on inbound messages and ticket events.
//!
//! In production this is the wall clock. A simulation (`simulation.enabled`, only with every
//! listener on loopback, see [`crate::config::SimulationConfig`]) installs a compressed clock
//! once at start: simulated time = `start` + (wall time since `anchor`) x `speed`, so a whole
//! support day passes in minutes and every process given the same settings agrees on the time.
//! Timers that are not business rules (retries, timeouts, batching, rate limits, the bot's
//! resolve-after) stay on wall time.

use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};

/// A compressed clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Simulated {
    /// The wall time the simulation began.
    pub anchor: DateTime<Utc>,
    /// The simulated time at `anchor`.
    pub start: DateTime<Utc>,
    /// Simulated seconds per wall second.
    pub speed: f64,
}

impl Simulated {
    /// The simulated time at wall time `wall`.
    pub fn at(&self, wall: DateTime<Utc>) -> DateTime<Utc> {
        let elapsed = (wall - self.anchor).num_microseconds().unwrap_or(i64::MAX) as f64;
        self.start + Duration::microseconds((elapsed * self.speed) as i64)
    }

    /// Wall time that `simulated` takes at this speed.
    pub fn wall(&self, simulated: std::time::Duration) -> std::time::Duration {
        simulated.div_f64(self.speed.max(f64::MIN_POSITIVE))
    }
}

static SIMULATED: OnceLock<Simulated> = OnceLock::new();

/// How far the business clock moves while `wall` passes on the wall clock (`wall` x speed under
/// a simulated clock): for comparing a wall-time timeout with business times in the database.
pub fn business_span(wall: std::time::Duration) -> Duration {
    let speed = SIMULATED.get().map_or(1.0, |s| s.speed);
    let span = wall.as_secs_f64() * speed;
    if span.is_finite() && span < 9.0e12 {
        Duration::microseconds((span * 1e6) as i64)
    } else {
        Duration::MAX
    }
}

/// Now, for business rules.
pub fn now() -> DateTime<Utc> {
    match SIMULATED.get() {
        Some(s) => s.at(Utc::now()),
        None => Utc::now(),
    }
}

/// The installed simulation, if any.
pub fn simulated() -> Option<Simulated> {
    SIMULATED.get().copied()
}

/// Installs the simulated clock for this process. Once only: a second, different install is
/// refused (the clock must not jump).
pub fn install(sim: Simulated) -> Result<(), crate::Error> {
    if !(sim.speed.is_finite() && sim.speed > 0.0) {
        return Err(crate::Error::Invalid(format!(
            "simulation speed {} must be a positive number",
            sim.speed
        )));
    }
    let installed = SIMULATED.get_or_init(|| sim);
    if *installed != sim {
        return Err(crate::Error::Invalid(
            "a different simulated clock is already installed".into(),
        ));
    }
    tracing::warn!(start = %sim.start, speed = sim.speed, "simulated clock installed: business time is not wall time");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_runs_at_its_speed_from_its_start() {
        let anchor = Utc::now();
        let start = DateTime::parse_from_rfc3339("2026-11-23T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = Simulated {
            anchor,
            start,
            speed: 96.0,
        };
        assert_eq!(s.at(anchor), start);
        // 15 wall minutes are a day.
        assert_eq!(
            s.at(anchor + Duration::minutes(15)),
            start + Duration::days(1)
        );
        assert_eq!(
            s.wall(std::time::Duration::from_secs(96)),
            std::time::Duration::from_secs(1)
        );
        assert!(install(Simulated { speed: 0.0, ..s }).is_err());
        // Not installed: wall time.
        let before = Utc::now();
        assert!(now() >= before && now() <= Utc::now());
    }
}
