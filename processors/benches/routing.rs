//! Routing decisions with 10K agents and 100K queued tickets, on one core.
//!
//! A decision takes the head of the queue (priority, then SLA deadline, then age), looks up the
//! agents with the skill it needs (an index by skill, as the Postgres GIN index serves the
//! router), applies the hard constraints and the weighted score, and books the winner. `best`
//! is the hot path; `rank` also builds the full decision record the router stores.
//!
//! `cargo bench -p switchboard-processors --bench routing` prints, before criterion's own
//! figures, decisions/s over the whole queue and the p50/p99 of single decisions.

#![allow(clippy::unwrap_used, missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_processors::scoring::RoutingWeights;
use switchboard_processors::scoring::{AgentState, Level, Scorer, TicketNeeds};
use uuid::Uuid;

const AGENTS: usize = 10_000;
const TICKETS: usize = 100_000;
const SKILLS: usize = 20;
const LANGS: [&str; 5] = ["en", "es", "de", "fr", "pt"];

/// A small deterministic generator (no dependency for a benchmark's data).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn agents(rng: &mut Lcg) -> Vec<AgentState> {
    (0..AGENTS)
        .map(|i| {
            let skills = (0..3)
                .map(|_| {
                    (
                        format!("skill{}", rng.below(SKILLS)),
                        (1 + rng.below(5)) as u8,
                    )
                })
                .collect();
            AgentState {
                id: Uuid::from_u128(i as u128 + 1),
                level: if rng.below(5) == 0 {
                    Level::Senior
                } else {
                    Level::Agent
                },
                online: rng.below(10) < 8,
                shift: None,
                skills,
                languages: vec![LANGS[rng.below(5)].to_string(), "en".to_string()],
                capacity: 5,
                active: rng.below(3) as u32,
                channel_capacity: Some(3),
                channel_active: rng.below(2) as u32,
                csat_sum: 4.2 * 20.0,
                csat_count: 20,
                response_secs_sum: (60 + rng.below(300)) as f64 * 50.0,
                response_count: 50,
            }
        })
        .collect()
}

/// Queue entries: (priority, Reverse(deadline), Reverse(age)) so the max is the next ticket.
type Entry = (u8, Reverse<u64>, Reverse<u64>, usize);

fn queue(rng: &mut Lcg) -> (BinaryHeap<Entry>, Vec<TicketNeeds>) {
    let mut heap = BinaryHeap::with_capacity(TICKETS);
    let mut needs = Vec::with_capacity(TICKETS);
    for i in 0..TICKETS {
        heap.push((
            rng.below(5) as u8,
            Reverse(rng.next() % 86_400),
            Reverse(i as u64),
            i,
        ));
        needs.push(TicketNeeds {
            skill: Some(format!("skill{}", rng.below(SKILLS))),
            language: Some(LANGS[rng.below(5)].to_string()),
            vip: rng.below(20) == 0,
            min_level: None,
            excluded: Vec::new(),
        });
    }
    (heap, needs)
}

/// Positions of the agents holding each skill.
fn by_skill(agents: &[AgentState]) -> HashMap<String, Vec<usize>> {
    let mut m: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        for (s, _) in &a.skills {
            m.entry(s.clone()).or_default().push(i);
        }
    }
    m
}

fn scorer() -> Scorer {
    Scorer::new(RoutingWeights::default(), 120.0, true)
}

/// Drains the queue, booking each decision; returns (decisions, assigned, per-decision ns).
fn drain(
    agents: &mut [AgentState],
    index: &HashMap<String, Vec<usize>>,
    mut heap: BinaryHeap<Entry>,
    needs: &[TicketNeeds],
) -> (usize, usize, Vec<u64>) {
    let by_id: HashMap<Uuid, usize> = agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
    let s = scorer();
    let now = Utc::now();
    let (mut decisions, mut assigned) = (0, 0);
    let mut times = Vec::with_capacity(heap.len());
    while let Some((_, _, _, i)) = heap.pop() {
        let t = &needs[i];
        let start = Instant::now();
        let pool = index
            .get(t.skill.as_deref().unwrap_or_default())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(id) = s.best(pool.iter().map(|&k| &agents[k]), t, now) {
            let a = &mut agents[by_id[&id]];
            a.active += 1;
            a.channel_active += 1;
            assigned += 1;
        }
        times.push(start.elapsed().as_nanos() as u64);
        decisions += 1;
    }
    (decisions, assigned, times)
}

fn report() {
    let mut rng = Lcg(7);
    let mut agents = agents(&mut rng);
    let (heap, needs) = queue(&mut rng);
    let index = by_skill(&agents);
    let start = Instant::now();
    let (decisions, assigned, mut times) = drain(&mut agents, &index, heap, &needs);
    let secs = start.elapsed().as_secs_f64();
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!(
        "routing: {AGENTS} agents, {TICKETS} queued tickets, one core: {decisions} decisions in {secs:.2} s = {:.0} decisions/s \
         ({assigned} assigned, the rest found every candidate full or unfit); per decision p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        decisions as f64 / secs,
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}

fn bench(c: &mut Criterion) {
    report();
    let mut rng = Lcg(11);
    let agents = agents(&mut rng);
    let (_, needs) = queue(&mut rng);
    let index = by_skill(&agents);
    let s = scorer();
    let now = Utc::now();
    let mut i = 0;
    c.bench_function("best agent (10K agents, skill index)", |b| {
        b.iter(|| {
            i = (i + 1) % needs.len();
            let t = &needs[i];
            s.best(
                index[t.skill.as_deref().unwrap_or_default()]
                    .iter()
                    .map(|&i| &agents[i]),
                t,
                now,
            )
        })
    });
    c.bench_function("ranked decision record (10K agents, skill index)", |b| {
        b.iter(|| {
            i = (i + 1) % needs.len();
            let t = &needs[i];
            let pool = index[t.skill.as_deref().unwrap_or_default()]
                .iter()
                .map(|&k| &agents[k]);
            s.rank(pool, t, now).len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
