//! The traffic model: what a support day looks like (`deploy/simulate/*.yaml`, typed and
//! versioned, unknown keys refused), the arrival process that follows it, and the texts
//! customers and agents write (drawn from the Bitext datasets in `../shared/data`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};
use serde::Deserialize;

/// A simulation's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimConfig {
    pub version: u32,
    /// Same seed, same texts and choices; none: a different run every time.
    #[serde(default)]
    pub seed: Option<u64>,
    /// New tickets on an average day (before the curve and bursts shape it).
    pub tickets_per_day: f64,
    /// Simulated time to run (`24h`, `2h`).
    #[serde(deserialize_with = "dur")]
    pub duration: Duration,
    /// Simulated seconds per wall second (96: a day in 15 minutes).
    pub speed: f64,
    /// The simulated time the run starts at (RFC 3339; a Monday midnight by default).
    #[serde(default = "default_start")]
    pub start: String,
    /// 24 relative weights, one per hour of the simulated day (normalised to average 1).
    pub curve: Vec<f64>,
    /// 7 relative weights, Monday first (normalised to average 1); unset: every day alike.
    #[serde(default)]
    pub weekly: Option<Vec<f64>>,
    /// Days with less (or more) traffic: a holiday.
    #[serde(default)]
    pub holidays: Vec<Holiday>,
    #[serde(default)]
    pub bursts: Vec<Burst>,
    /// Share of new tickets per channel: email, chat, sms, social, voice.
    pub channels: BTreeMap<String, f64>,
    pub customers: CustomerModel,
    pub agents: AgentModel,
    #[serde(default)]
    pub hostile: HostileModel,
    /// Questions after a purchase: where is my order, and returns.
    #[serde(default)]
    pub post_purchase: PostPurchaseModel,
    /// Where the Bitext CSV files are (relative to the repository).
    #[serde(default = "default_texts")]
    pub texts: PathBuf,
    /// The latency goals `--find-max` holds the system to.
    #[serde(default)]
    pub goals: Goals,
}

fn default_start() -> String {
    "2026-11-23T00:00:00Z".into()
}

fn default_texts() -> PathBuf {
    PathBuf::from("../shared/data/bitext")
}

/// A stretch of the day with more traffic (a campaign, an outage).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Burst {
    /// Simulated time of day, `HH:MM`.
    pub at: String,
    pub minutes: u32,
    pub factor: f64,
    /// Only on these dates (`YYYY-MM-DD`); unset: every day.
    #[serde(default)]
    pub on: Option<Vec<chrono::NaiveDate>>,
}

/// A day whose whole volume is scaled (a public holiday: 0.3).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Holiday {
    pub date: chrono::NaiveDate,
    pub factor: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerModel {
    /// Share of customers tagged VIP by the shop (their order webhook carries the tag).
    pub vip_share: f64,
    /// Share of new tickets from a customer who wrote before.
    pub repeat_share: f64,
    /// After each answer, the chance the customer writes back (else they go quiet).
    pub reply_share: f64,
    /// Share of surveys answered.
    pub csat_share: f64,
    /// Share of email and chat customers whose order reaches Switchboard first (order webhook).
    pub order_share: f64,
    /// How long a customer takes to write back (simulated), `[min, max]`.
    #[serde(deserialize_with = "humantime_pair::deserialize")]
    pub think: (Duration, Duration),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentModel {
    pub count: usize,
    pub max_concurrent: i32,
    /// Skills handed out round-robin (each agent gets two).
    pub skills: Vec<String>,
    pub languages: Vec<String>,
    /// Shifts in simulated time of day; agents are spread over them by share.
    pub shifts: Vec<Shift>,
    /// Time to read and answer (simulated), `[min, max]`.
    #[serde(deserialize_with = "humantime_pair::deserialize")]
    pub reply_delay: (Duration, Duration),
    /// Quiet time after the agent's answer before resolving (simulated).
    #[serde(deserialize_with = "dur")]
    pub resolve_after: Duration,
    /// Chance per simulated hour that an agent takes a break (status away: its tickets move).
    pub break_share: f64,
    #[serde(deserialize_with = "dur")]
    pub break_length: Duration,
    /// Share of agents who are senior (VIP tickets need one).
    pub senior_share: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shift {
    pub start: String,
    pub end: String,
    pub share: f64,
}

/// Hostile traffic sent beside the valid traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HostileModel {
    /// Hostile requests per valid new ticket.
    pub share: f64,
}

impl Default for HostileModel {
    fn default() -> Self {
        HostileModel { share: 0.02 }
    }
}

/// After the purchase: customers who ask where their order is (the shop announces the order
/// with its parcel first), and customers who return something in the help centre.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PostPurchaseModel {
    /// Share of new email and chat contacts that ask where the customer's order is.
    pub wismo_share: f64,
    /// Of those parcels, the share past the carrier's estimate (the bot should hand over).
    pub late_share: f64,
    /// Share of new contacts that are, instead of a message, a return started in the help
    /// centre (order number and email) for a delivered order.
    pub return_share: f64,
    /// Of those orders, the share delivered longer ago than a 30-day window (the help centre
    /// should refuse every line, with why).
    pub outside_window_share: f64,
    /// The where-is-my-order questions: the hand-written held-out messages (never trained on)
    /// whose intent is `track_order` or `delivery_problem`, relative to the repository.
    pub texts: PathBuf,
}

impl Default for PostPurchaseModel {
    fn default() -> Self {
        PostPurchaseModel {
            wismo_share: 0.0,
            late_share: 0.1,
            return_share: 0.0,
            outside_window_share: 0.1,
            texts: PathBuf::from("models/testsets/postpurchase_heldout.jsonl"),
        }
    }
}

/// Latency goals: the highest rate that holds all of them is the capacity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Goals {
    /// Front-door acknowledgment p99, milliseconds (the design's 2 s).
    pub ack_p99_ms: f64,
    /// First message to the agent's assignment p99, wall seconds (the pipeline keeping up).
    pub assign_p99_secs: f64,
    /// Share of offered tickets that must be acknowledged.
    pub accepted_share: f64,
}

impl Default for Goals {
    fn default() -> Self {
        Goals {
            ack_p99_ms: 2000.0,
            assign_p99_secs: 10.0,
            accepted_share: 0.999,
        }
    }
}

fn dur<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

mod humantime_pair {
    use std::time::Duration;

    use serde::Deserialize as _;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<(Duration, Duration), D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        let [a, b] = v.as_slice() else {
            return Err(serde::de::Error::custom("expected [min, max]"));
        };
        let p = |s: &str| humantime::parse_duration(s).map_err(serde::de::Error::custom);
        let (a, b) = (p(a)?, p(b)?);
        if a > b {
            return Err(serde::de::Error::custom("min is above max"));
        }
        Ok((a, b))
    }
}

pub(crate) const CHANNELS: [&str; 5] = ["email", "chat", "sms", "social", "voice"];

impl SimConfig {
    pub(crate) fn load(path: &Path) -> Result<SimConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: SimConfig = marked_yaml::from_yaml(0, &text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if self.version != 1 {
            bail!("version {} is not supported (1)", self.version);
        }
        if !self.tickets_per_day.is_finite() || self.tickets_per_day <= 0.0 {
            bail!("tickets_per_day must be positive");
        }
        if !(self.speed > 0.0 && self.speed <= 10_000.0) {
            bail!("speed must be above 0 and at most 10000");
        }
        if self.curve.len() != 24 || self.curve.iter().any(|w| !w.is_finite() || *w < 0.0) {
            bail!("curve needs 24 weights, none negative");
        }
        if self.curve.iter().sum::<f64>() <= 0.0 {
            bail!("curve: some hour needs traffic");
        }
        for c in self.channels.keys() {
            if !CHANNELS.contains(&c.as_str()) {
                bail!("channels.{c}: not one of {}", CHANNELS.join(", "));
            }
        }
        if self.channels.values().sum::<f64>() <= 0.0 {
            bail!("channels: some channel needs a share");
        }
        for b in &self.bursts {
            time_of_day(&b.at).with_context(|| format!("bursts.at {:?}", b.at))?;
            if !(b.factor.is_finite() && b.factor >= 0.0) {
                bail!("bursts.factor must be 0 or more");
            }
        }
        if let Some(w) = &self.weekly {
            if w.len() != 7
                || w.iter().any(|x| !x.is_finite() || *x < 0.0)
                || w.iter().sum::<f64>() <= 0.0
            {
                bail!("weekly needs 7 weights (Monday first), none negative, some above 0");
            }
        }
        for h in &self.holidays {
            if !(h.factor.is_finite() && h.factor >= 0.0) {
                bail!("holidays.factor must be 0 or more ({})", h.date);
            }
        }
        for s in &self.agents.shifts {
            time_of_day(&s.start).with_context(|| format!("agents.shifts.start {:?}", s.start))?;
            time_of_day(&s.end).with_context(|| format!("agents.shifts.end {:?}", s.end))?;
        }
        if self.agents.count == 0 || self.agents.shifts.is_empty() || self.agents.skills.is_empty()
        {
            bail!("agents: count, shifts and skills are needed");
        }
        DateTime::parse_from_rfc3339(&self.start).context("start")?;
        let pp = &self.post_purchase;
        for (name, v) in [
            ("wismo_share", pp.wismo_share),
            ("late_share", pp.late_share),
            ("return_share", pp.return_share),
            ("outside_window_share", pp.outside_window_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("post_purchase.{name} must be between 0 and 1");
            }
        }
        if pp.wismo_share + pp.return_share > 1.0 {
            bail!("post_purchase: wismo_share + return_share must be at most 1");
        }
        Ok(())
    }

    /// Takes the agents' count and shifts from a staffing plan file (`count:`, `shifts:` as in
    /// the model), checked as the model's are.
    pub(crate) fn use_plan(&mut self, path: &Path) -> Result<()> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Plan {
            count: usize,
            shifts: Vec<Shift>,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let plan: Plan = marked_yaml::from_yaml(0, &text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        self.agents.count = plan.count;
        self.agents.shifts = plan.shifts;
        self.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub(crate) fn start(&self) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&self.start)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// New tickets per simulated second at simulated time `t`.
    pub(crate) fn rate_at(&self, t: DateTime<Utc>) -> f64 {
        let mean = self.curve.iter().sum::<f64>() / 24.0;
        let hour = t.hour() as usize;
        let mut r = self.tickets_per_day / 86_400.0 * self.curve[hour] / mean;
        if let Some(w) = &self.weekly {
            let mean = w.iter().sum::<f64>() / 7.0;
            r *= w[t.weekday().num_days_from_monday() as usize] / mean;
        }
        let date = t.date_naive();
        for h in &self.holidays {
            if h.date == date {
                r *= h.factor;
            }
        }
        let minute = t.hour() * 60 + t.minute();
        for b in &self.bursts {
            if b.on.as_ref().is_some_and(|d| !d.contains(&date)) {
                continue;
            }
            if let Ok(at) = time_of_day(&b.at) {
                if minute >= at && minute < at + b.minutes {
                    r *= b.factor;
                }
            }
        }
        r
    }

    /// Every arrival over `hours` simulated hours from `start`, without sending anything: the
    /// simulator's arrival process (exponential gaps over the integrated rate, each arrival's
    /// channel drawn by share). Each is (seconds since the epoch, channel).
    pub(crate) fn arrivals(
        &self,
        start: DateTime<Utc>,
        hours: u32,
        rng: &mut StdRng,
    ) -> Vec<(i64, &'static str)> {
        let step = 10.0;
        let end = f64::from(hours) * 3600.0;
        let mut out = Vec::new();
        let (mut acc, mut t) = (0.0, 0.0);
        let mut next_gap = -f64::ln(1.0 - rng.random::<f64>());
        while t < end {
            let at = start + chrono::Duration::milliseconds((t * 1000.0) as i64);
            acc += self.rate_at(at) * step;
            while acc >= next_gap {
                acc -= next_gap;
                next_gap = -f64::ln(1.0 - rng.random::<f64>());
                // Spread within the step (the rate is flat across it).
                let secs = start.timestamp() + (t + rng.random::<f64>() * step) as i64;
                let ch = pick_weighted(rng, &self.channels);
                let ch = CHANNELS
                    .iter()
                    .find(|c| **c == ch)
                    .copied()
                    .unwrap_or("email");
                out.push((secs, ch));
            }
            t += step;
        }
        out.sort_unstable_by_key(|a| a.0);
        out
    }

    /// A flat day at `tickets_per_day` (the capacity search's steps).
    pub(crate) fn flat(&self, tickets_per_day: f64) -> SimConfig {
        SimConfig {
            tickets_per_day,
            curve: vec![1.0; 24],
            weekly: None,
            holidays: Vec::new(),
            bursts: Vec::new(),
            ..self.clone()
        }
    }
}

/// `HH:MM` as minutes after midnight.
pub(crate) fn time_of_day(s: &str) -> Result<u32> {
    let (h, m) = s.split_once(':').context("expected HH:MM")?;
    let (h, m): (u32, u32) = (h.parse()?, m.parse()?);
    if h > 23 || m > 59 {
        bail!("expected HH:MM");
    }
    Ok(h * 60 + m)
}

/// The random source of a run.
pub(crate) fn rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    }
}

/// Picks a key by weight.
pub(crate) fn pick_weighted<'a>(rng: &mut StdRng, weights: &'a BTreeMap<String, f64>) -> &'a str {
    let total: f64 = weights.values().sum();
    let mut x = rng.random::<f64>() * total;
    for (k, w) in weights {
        if x < *w {
            return k;
        }
        x -= w;
    }
    weights.keys().last().map(String::as_str).unwrap_or("email")
}

/// A uniformly random duration in `[a, b]`.
pub(crate) fn between(rng: &mut StdRng, (a, b): (Duration, Duration)) -> Duration {
    a + (b - a).mul_f64(rng.random::<f64>())
}

/// Customer questions by category and agent answers by intent, shuffled per run.
#[derive(Debug, Default)]
pub(crate) struct Texts {
    /// (category, intent, text)
    questions: Vec<(String, String, String)>,
    by_category: BTreeMap<String, Vec<usize>>,
    answers: BTreeMap<String, Vec<String>>,
    /// The answers by intent, whitespace-normalised, to tell a draft an agent would send.
    answer_set: BTreeMap<String, std::collections::HashSet<String>>,
    next: std::sync::atomic::AtomicUsize,
    /// Where-is-my-order questions (hand-written, held out from training).
    wismo: Vec<String>,
}

impl Texts {
    /// Reads the Bitext files under `dir` (utterances and the answers of the LLM file).
    pub(crate) fn load(dir: &Path, rng: &mut StdRng) -> Result<Texts> {
        let mut t = Texts::default();
        let mut seen = std::collections::HashSet::new();
        for file in [
            "bitext_customer_service_8k.csv",
            "bitext_20k_utterances.csv",
        ] {
            let path = dir.join(file);
            let mut r = csv::Reader::from_path(&path).with_context(|| {
                format!(
                    "cannot read {} (the simulator draws customer texts from the Bitext datasets; set texts: in the simulation file)",
                    path.display()
                )
            })?;
            let headers = r.headers()?.clone();
            let col = |name: &str| {
                headers
                    .iter()
                    .position(|h| h.trim_start_matches('\u{feff}') == name)
                    .with_context(|| format!("{} has no {name} column", path.display()))
            };
            let (u, c, i) = (col("utterance")?, col("category")?, col("intent")?);
            for rec in r.records() {
                let rec = rec?;
                let text = rec.get(u).unwrap_or_default().trim().to_string();
                if text.len() < 8 || !seen.insert(text.to_lowercase()) {
                    continue;
                }
                t.questions.push((
                    rec.get(c).unwrap_or_default().to_string(),
                    rec.get(i).unwrap_or_default().to_string(),
                    text,
                ));
            }
        }
        let llm = dir.join("bitext_llm_v2023-09_4514.csv");
        if let Ok(mut r) = csv::Reader::from_path(&llm) {
            let headers = r.headers()?.clone();
            let pos = |n: &str| headers.iter().position(|h| h == n);
            if let (Some(i), Some(resp)) = (pos("intent"), pos("response")) {
                for rec in r.records().flatten() {
                    let answer = rec.get(resp).unwrap_or_default();
                    if answer.len() > 20 {
                        t.answers
                            .entry(rec.get(i).unwrap_or_default().to_string())
                            .or_default()
                            .push(answer.replace("{{", "").replace("}}", ""));
                    }
                }
            }
        }
        if t.questions.is_empty() {
            bail!("no customer texts under {}", dir.display());
        }
        t.answer_set = t
            .answers
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|a| normalized(a)).collect()))
            .collect();
        t.questions.shuffle(rng);
        for (n, (c, _, _)) in t.questions.iter().enumerate() {
            t.by_category.entry(c.clone()).or_default().push(n);
        }
        Ok(t)
    }

    pub(crate) fn len(&self) -> usize {
        self.questions.len()
    }

    /// Adds the where-is-my-order questions of a labelled JSON-lines file (`text`, `intent`):
    /// those whose intent is `track_order` or `delivery_problem`, written for chat, email or SMS.
    pub(crate) fn load_wismo(&mut self, path: &Path) -> Result<usize> {
        #[derive(Deserialize)]
        struct Line {
            text: String,
            intent: String,
            #[serde(default)]
            channel: String,
        }
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (post_purchase.texts: the where-is-my-order questions)",
                path.display()
            )
        })?;
        for (n, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let l: Line = serde_json::from_str(l)
                .with_context(|| format!("{} line {}", path.display(), n + 1))?;
            if matches!(l.intent.as_str(), "track_order" | "delivery_problem")
                && matches!(l.channel.as_str(), "chat" | "email" | "sms" | "")
            {
                self.wismo.push(l.text);
            }
        }
        if self.wismo.is_empty() {
            bail!("{}: no where-is-my-order questions", path.display());
        }
        Ok(self.wismo.len())
    }

    /// A where-is-my-order question about the order named `number` (`#1042`): an order
    /// number the text names is replaced by it.
    pub(crate) fn wismo(&self, rng: &mut StdRng, number: &str) -> Option<String> {
        self.wismo
            .choose(rng)
            .map(|t| name_order(t, number.trim_start_matches('#')))
    }

    /// The next first message (category, intent, text): the shuffled stream, wrapping around.
    pub(crate) fn question(&self) -> (String, String, String) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.questions[n % self.questions.len()].clone()
    }

    /// A follow-up in the same category.
    pub(crate) fn follow_up(&self, rng: &mut StdRng, category: &str) -> String {
        self.by_category
            .get(category)
            .and_then(|v| v.choose(rng))
            .map(|n| self.questions[*n].2.clone())
            .unwrap_or_else(|| "Any news on this?".into())
    }

    /// Whether `text` is one of the answers an agent gives for `intent` (whitespace aside).
    pub(crate) fn is_answer(&self, intent: &str, text: &str) -> bool {
        self.answer_set
            .get(intent)
            .is_some_and(|s| s.contains(&normalized(text)))
    }

    /// An agent's answer for the intent.
    pub(crate) fn answer(&self, rng: &mut StdRng, intent: &str) -> String {
        self.answers
            .get(intent)
            .and_then(|v| v.choose(rng))
            .cloned()
            .unwrap_or_else(|| {
                "Thanks for reaching out. I have looked into this and sorted it for you; let me know if anything else comes up.".into()
            })
    }
}

/// `s` with every run of whitespace one space, trimmed.
fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` with every order-like number (4 to 10 digits, maybe after `#`) replaced by `number`.
pub(crate) fn name_order(text: &str, number: &str) -> String {
    let mut out = String::with_capacity(text.len() + number.len());
    let mut digits = String::new();
    let flush = |out: &mut String, digits: &mut String| {
        if (4..=10).contains(&digits.len()) {
            out.push_str(number);
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    let mut prev_alnum = false;
    for c in text.chars() {
        if c.is_ascii_digit() && (!digits.is_empty() || !prev_alnum) {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() && c.is_alphanumeric() {
            // part of a word (a tracking code): kept as written
            out.push_str(&digits);
            digits.clear();
        } else {
            flush(&mut out, &mut digits);
        }
        prev_alnum = c.is_alphanumeric();
        out.push(c);
    }
    flush(&mut out, &mut digits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig::load(&crate::simulate::repo_file("deploy/simulate/day.yaml")).unwrap()
    }

    #[test]
    fn the_shipped_day_loads_and_its_rate_follows_the_curve() {
        let c = cfg();
        // The average over the day is the configured volume (bursts add on top).
        let start = c.start();
        let flat = c.flat(86_400.0);
        let day: f64 = (0..24 * 60)
            .map(|m| flat.rate_at(start + chrono::Duration::minutes(m)) * 60.0)
            .sum();
        assert!((day - 86_400.0).abs() < 1.0, "{day}");
        let total: f64 = (0..24 * 60)
            .map(|m| c.rate_at(start + chrono::Duration::minutes(m)) * 60.0)
            .sum();
        assert!(total > c.tickets_per_day, "bursts add traffic: {total}");
        // Quiet at night, busy at 10:00.
        let at = |h| c.rate_at(start + chrono::Duration::hours(h));
        assert!(at(10) > 4.0 * at(3));
    }

    #[test]
    fn weeks_follow_the_weekly_weights_holidays_and_dated_bursts() {
        let text = r#"
version: 1
seed: 7
tickets_per_day: 2400
duration: 24h
speed: 96
curve: [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]
weekly: [2, 1, 1, 1, 1, 0.5, 0.5]
holidays: [{ date: "2026-11-25", factor: 0.25 }]
bursts: [{ at: "10:00", minutes: 60, factor: 4, on: ["2026-11-26"] }]
channels: { email: 1, chat: 1 }
customers: { vip_share: 0, repeat_share: 0, reply_share: 0, csat_share: 0, order_share: 0, think: [1m, 2m] }
agents: { count: 1, max_concurrent: 1, skills: [a], languages: [en], shifts: [{ start: "00:00", end: "08:00", share: 1 }], reply_delay: [1m, 2m], resolve_after: 1m, break_share: 0, break_length: 1m, senior_share: 0 }
"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, text).unwrap();
        let c = SimConfig::load(&path).unwrap();
        let start = c.start();
        let arrivals = c.arrivals(start, 7 * 24, &mut rng(Some(1)));
        let per_day = |d: i64| {
            arrivals
                .iter()
                .filter(|(s, _)| (s - start.timestamp()) / 86_400 == d)
                .count() as f64
        };
        // Weights average 1: Monday twice the mean, the weekend half of it.
        let mon = per_day(0);
        assert!((mon - 4800.0).abs() < 480.0, "{mon}");
        assert!(
            per_day(2) < 0.35 * per_day(1),
            "holiday {} vs tuesday {}",
            per_day(2),
            per_day(1)
        );
        // Thursday's burst: 3 extra hours' worth at 10:00.
        assert!(
            per_day(3) > 1.08 * per_day(1),
            "{} vs {}",
            per_day(3),
            per_day(1)
        );
        assert!(per_day(5) < 0.6 * per_day(1));
        // Only the model's channels, in time order, inside the window.
        assert!(arrivals
            .iter()
            .all(|(_, ch)| *ch == "email" || *ch == "chat"));
        assert!(arrivals.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(arrivals
            .iter()
            .all(|(s, _)| *s >= start.timestamp() && *s < start.timestamp() + 7 * 86_400));
    }

    #[test]
    fn a_staffing_plan_replaces_the_agents_shifts_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.yaml");
        std::fs::write(
            &plan,
            "count: 12\nshifts:\n  - { start: \"06:00\", end: \"14:00\", share: 0.75 }\n  - { start: \"14:00\", end: \"22:00\", share: 0.25 }\n",
        )
        .unwrap();
        let mut c = cfg();
        c.use_plan(&plan).unwrap();
        assert_eq!(c.agents.count, 12);
        assert_eq!(c.agents.shifts.len(), 2);
        assert_eq!(c.agents.shifts[0].start, "06:00");
        // A bad time, an unknown key, no shifts: refused with the file named.
        for bad in [
            "count: 3\nshifts:\n  - { start: \"25:00\", end: \"14:00\", share: 1 }\n",
            "count: 3\nagents: 2\nshifts: []\n",
            "count: 3\nshifts: []\n",
        ] {
            std::fs::write(&plan, bad).unwrap();
            let e = cfg().use_plan(&plan).unwrap_err().to_string();
            assert!(e.contains("plan.yaml"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(crate::simulate::repo_file("deploy/simulate/day.yaml"))
            .unwrap();
        for (from, to, want) in [
            ("version: 1", "version: 2", "version 2"),
            (
                "tickets_per_day:",
                "tickets_perday:",
                "Unknown field `tickets_perday`",
            ),
            ("email: 0.35", "fax: 0.35", "channels.fax"),
            (
                "wismo_share: 0.15",
                "wismo_share: 1.5",
                "post_purchase.wismo_share",
            ),
            ("return_share: 0.04", "return_share: 0.9", "at most 1"),
        ] {
            assert!(text.contains(from), "{from}");
            let p = dir.path().join("x.yaml");
            std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
            let e = SimConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn order_numbers_in_a_question_become_the_simulated_order() {
        assert_eq!(
            name_order("where is order #60417? placed 3 days ago", "2051"),
            "where is order #2051? placed 3 days ago"
        );
        assert_eq!(name_order("order 60417.", "7"), "order 7.");
        // Short numbers, tracking codes and non-ASCII stay as written.
        assert_eq!(
            name_order("JD0123456789 in 12 days, Zürich 8001", "9"),
            "JD0123456789 in 12 days, Zürich 9"
        );
        assert_eq!(name_order("", "9"), "");
        assert_eq!(name_order("12345678901234", "9"), "12345678901234");
    }

    #[test]
    fn the_wismo_questions_are_the_held_out_ones() {
        let mut t = Texts::default();
        let n = t
            .load_wismo(&crate::simulate::repo_file(
                "models/testsets/postpurchase_heldout.jsonl",
            ))
            .unwrap();
        assert!(n >= 40, "{n}");
        let q = t.wismo(&mut rng(Some(1)), "#4242").unwrap();
        assert!(!q.is_empty());
        // None of them is a training example.
        let train = std::fs::read_to_string(crate::simulate::repo_file(
            "models/training/postpurchase_train.jsonl",
        ))
        .unwrap();
        assert!(t
            .wismo
            .iter()
            .all(|w| !train.contains(&serde_json::to_string(w).unwrap())));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"text\": \"hi\", \"intent\": \"thanks\"}\n").unwrap();
        assert!(Texts::default().load_wismo(&p).is_err());
        std::fs::write(&p, "{\"text\": 1}\n").unwrap();
        let e = Texts::default().load_wismo(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn texts_come_from_the_datasets_in_a_seeded_order() {
        let dir = crate::simulate::repo_file("../shared/data/bitext");
        if !dir.exists() {
            return; // the datasets live beside the repository on the project's machines
        }
        let a = Texts::load(&dir, &mut rng(Some(7))).unwrap();
        let b = Texts::load(&dir, &mut rng(Some(7))).unwrap();
        let c = Texts::load(&dir, &mut rng(Some(8))).unwrap();
        assert!(a.len() > 20_000, "{}", a.len());
        let take = |t: &Texts| (0..5).map(|_| t.question().2).collect::<Vec<_>>();
        let (x, y, z) = (take(&a), take(&b), take(&c));
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert!(!a.answer(&mut rng(None), "cancel_order").contains("{{"));
    }
}
