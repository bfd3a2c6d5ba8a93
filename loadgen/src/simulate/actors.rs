//! Simulated people: customers who write in through a channel, wait, answer or go quiet and
//! rate the help; agents who work shifts, take breaks, accept what they are assigned, answer
//! after a human delay and resolve. Time they wait is simulated time, slept at the run's speed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::doors::{email_raw, Chat, Delivered, Doors, Inbox, Outcome};
use super::model::{between, time_of_day, SimConfig, Texts};
use super::report::Stats;

/// What every actor shares.
pub(crate) struct World {
    pub cfg: SimConfig,
    pub doors: Doors,
    pub inbox: Inbox,
    /// Shared between capacity steps (loading them takes a second).
    pub texts: Arc<Texts>,
    pub stats: Stats,
    /// Wall time the run (simulated `cfg.start`) began.
    pub began: Instant,
    pub stop: CancellationToken,
    /// Customers who wrote before (channel, n), for repeat contacts.
    pub seen: Mutex<Vec<(String, u64)>>,
    pub next_customer: AtomicU64,
    /// Order names handed out by the simulated shop (`#<n>`).
    pub next_order: AtomicU64,
    /// The first messages of where-is-my-order contacts (external id), for the accounting of
    /// what the bot did with them.
    pub wismo: Mutex<Vec<String>>,
    /// What each email and chat customer went through (by email), for the churn behaviour.
    pub experiences: Mutex<std::collections::HashMap<String, Experience>>,
    pub run: String,
}

/// What one customer went through in the run, the worst of their contacts: what decides whether
/// they buy again (their hidden churn behaviour; Switchboard only sees its traces).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Experience {
    /// The longest a contact of theirs waited for a first answer (simulated seconds); none: a
    /// contact never got one within its 8 simulated hours.
    pub worst_wait: Option<f64>,
    pub unanswered: bool,
    /// The lowest rating they gave.
    pub rating: Option<u8>,
    /// The most messages one of their contacts took.
    pub rounds: u32,
}

impl Experience {
    fn merge(&mut self, o: Experience) {
        self.worst_wait = match (self.worst_wait, o.worst_wait) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.unanswered |= o.unanswered;
        self.rating = match (self.rating, o.rating) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.rounds = self.rounds.max(o.rounds);
    }

    /// The probability they do not buy again: a base rate, raised by a long or missing answer,
    /// a poor rating they gave and a contact that dragged on.
    pub(crate) fn churn_probability(&self) -> f64 {
        let mut z: f64 = -1.8;
        if self.unanswered {
            z += 1.6;
        } else if let Some(w) = self.worst_wait {
            if w > 3600.0 {
                z += 1.2;
            } else if w > 900.0 {
                z += 0.6;
            }
        }
        if self.rating.is_some_and(|r| r <= 2) {
            z += 1.2;
        }
        if self.rounds >= 3 {
            z += 0.4;
        }
        1.0 / (1.0 + (-z).exp())
    }
}

impl World {
    /// Simulated seconds since the start.
    pub(crate) fn sim_elapsed(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * self.cfg.speed
    }

    pub(crate) fn sim_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.cfg.start() + chrono::Duration::milliseconds((self.sim_elapsed() * 1000.0) as i64)
    }

    /// Sleeps `sim` simulated time; false when the run stopped first.
    pub(crate) async fn sleep(&self, sim: Duration) -> bool {
        let wall = sim.div_f64(self.cfg.speed);
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wall) => true,
        }
    }
}

/// Which customer writes: a repeat contact reuses an earlier customer of the channel.
fn pick_customer(world: &World, channel: &str, rng: &mut StdRng) -> u64 {
    let repeat = rng.random::<f64>() < world.cfg.customers.repeat_share;
    let seen = world.seen.lock();
    let pool: Vec<u64> = seen
        .iter()
        .filter(|(c, _)| c == channel)
        .map(|(_, n)| *n)
        .collect();
    if repeat && !pool.is_empty() {
        pool[rng.random_range(0..pool.len())]
    } else {
        world.next_customer.fetch_add(1, Ordering::Relaxed)
    }
}

/// The shop's order webhook for customer `n`'s order (tagged VIP when the customer is one).
async fn announce_order(world: &World, rng: &mut StdRng, n: u64, email: &str, vip: bool) {
    let order = json!({"id": format!("sim-{}-{n}", world.run), "name": format!("#{}", 1000 + n),
        "email": email, "total_price": format!("{}.{:02}", rng.random_range(10..900), rng.random_range(0..100)),
        "currency": "EUR", "financial_status": "paid", "fulfillment_status": "fulfilled",
        "customer": {"email": email, "first_name": "Sim", "last_name": format!("Customer {n}"), "tags": if vip { "VIP" } else { "" }},
        "fulfillments": [{"status": "success", "shipment_status": "in_transit", "tracking_company": "DHL", "tracking_number": format!("JD{n:012}")}],
        "updated_at": world.sim_now().to_rfc3339()});
    let o = world.doors.order(&order, false).await;
    world.stats.front_door("orders", &o);
}

/// What the simulated shop sold: (title, price).
const PRODUCTS: [(&str, &str); 8] = [
    ("Linen shirt", "39.90"),
    ("Hiking boots", "129.00"),
    ("Desk lamp", "54.50"),
    ("Wool scarf", "24.00"),
    ("Rain jacket", "89.00"),
    ("Coffee grinder", "149.00"),
    ("Yoga mat", "32.00"),
    ("Ceramic mug set", "28.50"),
];

/// A new order of the simulated shop: 1 to 3 lines, announced by its signed webhook.
/// `parcel` is the one fulfilment. Returns the order's name.
pub(crate) async fn announce_sale(
    world: &World,
    rng: &mut StdRng,
    n: u64,
    email: &str,
    created_at: chrono::DateTime<chrono::Utc>,
    parcel: Value,
) -> String {
    let k = world.next_order.fetch_add(1, Ordering::Relaxed);
    let lines: Vec<Value> = (0..rng.random_range(1..=3))
        .map(|i| {
            let (title, price) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
            json!({"id": k * 10 + i, "title": title, "sku": title.to_uppercase().replace(' ', "-"),
                   "quantity": rng.random_range(1..=2), "price": price})
        })
        .collect();
    let total: f64 = lines
        .iter()
        .map(|l| {
            l["price"]
                .as_str()
                .and_then(|p| p.parse::<f64>().ok())
                .unwrap_or(0.0)
                * l["quantity"].as_f64().unwrap_or(1.0)
        })
        .sum();
    let name = format!("#{k}");
    let order = json!({"id": format!("sim-{}-o{k}", world.run), "name": name, "email": email,
        "total_price": format!("{total:.2}"), "currency": "EUR", "financial_status": "paid",
        "fulfillment_status": "fulfilled", "created_at": created_at.to_rfc3339(),
        "customer": {"email": email, "first_name": "Sim", "last_name": format!("Customer {n}"), "tags": ""},
        "line_items": lines, "fulfillments": [parcel], "updated_at": world.sim_now().to_rfc3339()});
    let o = world.doors.order(&order, false).await;
    world.stats.front_door("orders", &o);
    name
}

/// A parcel on its way, late against the carrier's estimate or not.
fn parcel_on_its_way(
    rng: &mut StdRng,
    now: chrono::DateTime<chrono::Utc>,
    k: u64,
    late: bool,
) -> (Value, String) {
    let h = chrono::Duration::hours;
    let shipped = now - h(rng.random_range(30..96));
    let eta = if late {
        now - h(rng.random_range(48..120))
    } else {
        now + h(rng.random_range(12..72))
    };
    let tracking = format!("JD{k:014}");
    let parcel = json!({"status": "success", "shipment_status": "in_transit", "tracking_company": "DHL",
        "tracking_number": tracking, "tracking_url": format!("https://track.example/{tracking}"),
        "created_at": shipped.to_rfc3339(), "estimated_delivery_at": eta.to_rfc3339(),
        "last_event": {"status": "in_transit", "message": "Arrived at the sorting centre", "location": "Leipzig",
                       "at": (now - h(rng.random_range(2..20))).to_rfc3339()}});
    (parcel, tracking)
}

/// One customer's contact: the first message, then answers until the customer is done. Some
/// contacts ask where their order is, and some are a return started in the help centre
/// (`post_purchase` in the traffic model).
pub(crate) async fn customer(world: Arc<World>, channel: String, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = pick_customer(&world, &channel, &mut rng);
    world.seen.lock().push((channel.clone(), n));
    let vip = rng.random::<f64>() < world.cfg.customers.vip_share;
    let email = format!("c{n}-{}@sim.example", world.run);
    let phone = format!("+1555{:07}", n % 10_000_000);
    let wa = format!("4915{:09}", n % 1_000_000_000);
    let pp = &world.cfg.post_purchase;
    let roll = rng.random::<f64>();
    if roll < pp.return_share {
        help_centre_return(&world, &mut rng, n, &email).await;
        return;
    }
    let wismo =
        matches!(channel.as_str(), "email" | "chat") && roll < pp.return_share + pp.wismo_share;
    let (category, _intent, text) = world.texts.question();
    // A where-is-my-order question: the shop announced the order and its parcel, and the
    // customer asks about it (naming it, when the question names an order).
    let mut tracking = None;
    let (category, text) = if wismo {
        let late = rng.random::<f64>() < pp.late_share;
        let (parcel, t) =
            parcel_on_its_way(&mut rng, world.sim_now(), seed % 100_000_000_000_000, late);
        let placed = world.sim_now() - chrono::Duration::hours(rng.random_range(100..150));
        let name = announce_sale(&world, &mut rng, n, &email, placed, parcel).await;
        world.stats.count(if late {
            "wismo_asked_late"
        } else {
            "wismo_asked_on_time"
        });
        tracking = Some((t, name.clone()));
        match world.texts.wismo(&mut rng, &name) {
            Some(q) => ("ORDER".to_string(), q),
            None => (category, text),
        }
    } else {
        (category, text)
    };
    let handle = match channel.as_str() {
        "email" | "chat" => format!("email:{email}"),
        "sms" => format!("sms:{phone}"),
        "social" => format!("social:{wa}"),
        _ => format!("voice:{phone}"),
    };
    let mut mailbox = world.inbox.register(handle.clone());

    // The shop tells Switchboard about the order first (and whether the customer is a VIP).
    if matches!(channel.as_str(), "email" | "chat")
        && rng.random::<f64>() < world.cfg.customers.order_share
    {
        announce_order(&world, &mut rng, n, &email, vip).await;
    }

    let started = Instant::now();
    let mut chat = None;
    if channel == "chat" {
        match Chat::open(&world.doors, &email, &world.inbox, &handle).await {
            Ok(c) => chat = Some(c),
            Err(e) => {
                world.stats.offered("chat");
                world.stats.error("chat", format!("session: {e}"));
                return;
            }
        }
    }
    let mut seq = 0u32;
    let mut last_reply: Option<Delivered> = None;
    let mut text = text;
    let subject = text.chars().take(60).collect::<String>();
    let mut first_response_seen = false;
    let mut first_external = String::new();
    let mut experience = Experience::default();
    for round in 0..4 {
        experience.rounds = round + 1;
        seq += 1;
        let external = format!("sim-{}-{n}-{seed}-{seq}", world.run);
        let (outcome, external_id) = match channel.as_str() {
            "email" => {
                let raw = email_raw(
                    &email,
                    &world.doors.t.support_address,
                    &subject,
                    &format!("{external}@sim.example"),
                    last_reply.as_ref().and_then(|r| r.message_id.as_deref()),
                    &text,
                );
                (
                    world.doors.email(&raw, &email).await,
                    format!("{external}@sim.example"),
                )
            }
            "chat" => {
                let Some(c) = chat.as_mut() else { return };
                let o = c.send(&external, &text).await;
                (o, format!("{}:{external}", c.conversation))
            }
            "sms" => (
                world.doors.sms(&external, &phone, &text, false).await,
                external.clone(),
            ),
            "social" => {
                let at = world.sim_now().timestamp();
                (
                    world
                        .doors
                        .whatsapp(&format!("wamid.{external}"), &wa, &text, at)
                        .await,
                    format!("wamid.{external}"),
                )
            }
            _ => (
                world.doors.voice(&external, &phone, &text).await,
                external.clone(),
            ),
        };
        world.stats.offered(&channel);
        world.stats.front_door(&channel, &outcome);
        if !outcome.ok() {
            world.stats.error(
                &channel,
                format!(
                    "{} {}",
                    outcome.code,
                    outcome.body.chars().take(200).collect::<String>()
                ),
            );
            break;
        }
        if round == 0 {
            first_external = external_id.clone();
            if tracking.is_some() {
                world.wismo.lock().push(external_id.clone());
            }
        }
        world
            .stats
            .accepted(&channel, external_id.clone(), round == 0);
        if channel == "voice" {
            break; // a call transcript: the agent calls back, nothing comes in writing
        }
        // Wait for the answer: up to 8 simulated hours, or the end of the run.
        let wait = Duration::from_secs(8 * 3600).div_f64(world.cfg.speed);
        let got = tokio::select! {
            _ = world.stop.cancelled() => None,
            r = tokio::time::timeout(wait, mailbox.recv()) => r.ok().flatten(),
        };
        let Some(reply) = got else {
            if !first_response_seen && !world.stop.is_cancelled() {
                experience.unanswered = true;
            }
            break;
        };
        if !first_response_seen {
            first_response_seen = true;
            let waited = reply.at.duration_since(started).as_secs_f64() * world.cfg.speed;
            experience.worst_wait = Some(waited);
            world.stats.first_response(&first_external, waited);
        }
        // Where is my order: an answer from the shop's data ends it (the customer goes quiet;
        // the bot resolves it later); pointed to the tracking page (email is unverified), the
        // customer looks it up there; anything else goes on as any contact does.
        if let (0, Some((t, order))) = (round, tracking.as_ref()) {
            if reply.text.contains(t.as_str()) && !reply.text.contains("passed it to a person") {
                world.stats.count("wismo_answered_quiet");
                break;
            }
            // The bot's pointer to the tracking page (an unverified sender's answer), not a
            // carrier's tracking link in a hand-over.
            if reply
                .text
                .contains(&format!("{}/track", world.doors.t.serving))
            {
                if track_page(&world, &email, order).await {
                    world.stats.count("wismo_tracked_self_service");
                    break;
                }
                world.stats.count("wismo_track_page_failed");
            }
        }
        // A survey: rate it (sometimes) and stop.
        if let Some(token) = survey_token(&reply.text) {
            experience.rating =
                answer_survey(&world, &mut rng, &token, experience.worst_wait).await;
            break;
        }
        // Later answers in the same conversation may carry the survey.
        if rng.random::<f64>() >= world.cfg.customers.reply_share {
            // Quiet, but a survey may still come.
            experience.rating =
                await_survey(&world, &mut rng, &mut mailbox, experience.worst_wait).await;
            break;
        }
        let think = between(&mut rng, world.cfg.customers.think);
        if !world.sleep(think).await {
            break;
        }
        text = if rng.random::<f64>() < 0.2 {
            "Can I talk to an agent please?".to_string()
        } else {
            world.texts.follow_up(&mut rng, &category)
        };
        last_reply = Some(reply);
    }
    if let Some(c) = chat {
        c.close().await;
    }
    if matches!(channel.as_str(), "email" | "chat") && tracking.is_none() {
        world
            .experiences
            .lock()
            .entry(email)
            .or_default()
            .merge(experience);
    }
}

/// Looks the order up on the tracking page (`POST /track`): whether it showed the order.
async fn track_page(world: &World, email: &str, number: &str) -> bool {
    if number.is_empty() {
        return false;
    }
    let r = world
        .doors
        .http
        .post(format!("{}/track", world.doors.t.serving))
        .json(&json!({"order_number": number, "email": email}))
        .send()
        .await;
    matches!(r, Ok(r) if r.status().is_success())
}

/// A return started in the help centre (`/returns`): the customer's order was delivered a
/// while ago; they look it up (order number and email), pick what to send back and why, and
/// submit. The policy approves simple cases itself; a line outside the window is refused with
/// why, and the customer gives up.
async fn help_centre_return(world: &World, rng: &mut StdRng, n: u64, email: &str) {
    let pp = &world.cfg.post_purchase;
    let now = world.sim_now();
    let outside = rng.random::<f64>() < pp.outside_window_share;
    let delivered = now
        - chrono::Duration::days(if outside {
            rng.random_range(35..60)
        } else {
            rng.random_range(1..25)
        });
    let parcel = json!({"status": "success", "shipment_status": "delivered", "tracking_company": "DHL",
        "tracking_number": format!("JD{n:014}"), "created_at": (delivered - chrono::Duration::days(3)).to_rfc3339(),
        "delivered_at": delivered.to_rfc3339()});
    let name = announce_sale(
        world,
        rng,
        n,
        email,
        delivered - chrono::Duration::days(4),
        parcel,
    )
    .await;
    world.stats.count("returns_offered");
    let serving = &world.doors.t.serving;
    // The order reaches the help centre once the pipeline stored it: a few wall seconds, longer
    // while a killed instance's partitions wait to move (--chaos). Patience: two wall minutes,
    // looked at once a simulated minute.
    let mut returnable = None;
    let tries = ((120.0 * world.cfg.speed / 60.0).ceil() as u32).max(40);
    for _ in 0..tries {
        let r = world
            .doors
            .call(
                world
                    .doors
                    .http
                    .post(format!("{serving}/returns/lookup"))
                    .json(&json!({"order_number": name, "email": email})),
            )
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                returnable = r.json::<Value>().await.ok();
                break;
            }
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {}
            Ok(r) => {
                world
                    .stats
                    .error("returns", format!("lookup: {}", r.status()));
                return;
            }
            Err(e) => {
                world.stats.error("returns", format!("lookup: {e}"));
                return;
            }
        }
        if !world.sleep(Duration::from_secs(60)).await {
            return;
        }
    }
    let Some(returnable) = returnable else {
        world.stats.error(
            "returns",
            format!("order {name} never reached the help centre"),
        );
        return;
    };
    let lines: Vec<&Value> = returnable["lines"]
        .as_array()
        .map(|l| l.iter().filter(|l| l["eligible"] == true).collect())
        .unwrap_or_default();
    if lines.is_empty() {
        // Every line refused, with why (outside the window): the customer reads it and stops.
        let why = returnable["lines"][0]["why_not"]
            .as_str()
            .unwrap_or_default();
        world.stats.count(if why.is_empty() {
            "returns_refused_without_reason"
        } else {
            "returns_refused_with_reason"
        });
        return;
    }
    let reason = [
        "did_not_fit",
        "did_not_fit",
        "did_not_fit",
        "changed_mind",
        "changed_mind",
        "damaged",
        "wrong_item",
        "missing_item",
        "other",
    ][rng.random_range(0..9)];
    let take = rng.random_range(1..=lines.len());
    let items: Vec<Value> = lines[..take]
        .iter()
        .map(|l| json!({"line_item_id": l["line_item_id"], "quantity": 1}))
        .collect();
    let r = world
        .doors
        .http
        .post(format!("{serving}/returns"))
        .json(&json!({"order_number": name, "email": email, "reason": reason, "items": items}))
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => {
            let v: Value = r.json().await.unwrap_or_default();
            world.stats.count("returns_started");
            if v["status"] == "approved" && v["automatic"] == true {
                world.stats.count("returns_auto_approved");
            }
        }
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            world.stats.error(
                "returns",
                format!("{status} {}", body.chars().take(200).collect::<String>()),
            );
        }
        Err(e) => world.stats.error("returns", format!("return: {e}")),
    }
}

/// Waits up to a simulated hour for a survey on `mailbox` and answers it.
async fn await_survey(
    world: &World,
    rng: &mut StdRng,
    mailbox: &mut tokio::sync::mpsc::UnboundedReceiver<Delivered>,
    waited: Option<f64>,
) -> Option<u8> {
    let wait = Duration::from_secs(3600).div_f64(world.cfg.speed);
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, mailbox.recv()).await {
        if let Some(token) = survey_token(&r.text) {
            return answer_survey(world, rng, &token, waited).await;
        }
    }
    None
}

/// `<public_url>/csat/<64 hex>` in a message.
fn survey_token(text: &str) -> Option<String> {
    let i = text.find("/csat/")?;
    let token: String = text[i + 6..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (token.len() == 64).then_some(token)
}

/// Answers a survey (sometimes): the rating follows how long the first answer took (simulated
/// seconds). The rating given, if any.
async fn answer_survey(
    world: &World,
    rng: &mut StdRng,
    token: &str,
    waited: Option<f64>,
) -> Option<u8> {
    world.stats.count("surveys_received");
    if rng.random::<f64>() >= world.cfg.customers.csat_share {
        return None;
    }
    let choices: &[u8] = match waited {
        Some(w) if w > 3600.0 => &[3, 2, 2, 1, 1],
        Some(w) if w > 900.0 => &[4, 4, 3, 3, 2],
        _ => &[5, 5, 4, 4, 4, 3, 2, 1],
    };
    let rating = choices[rng.random_range(0..choices.len())];
    let r = world
        .doors
        .http
        .post(format!("{}/csat/{token}", world.doors.t.serving))
        .json(&json!({"rating": rating, "comment": if rating < 3 { "too slow" } else { "thanks" }}))
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => {
            world.stats.count("surveys_answered");
            Some(rating)
        }
        Ok(r) => {
            world
                .stats
                .error("csat", format!("survey answer: {}", r.status()));
            None
        }
        Err(e) => {
            world.stats.error("csat", format!("survey answer: {e}"));
            None
        }
    }
}

/// An agent as the simulation created it.
#[derive(Debug, Clone)]
pub(crate) struct AgentSeat {
    pub id: String,
    pub token: String,
    /// Shift in simulated minutes after midnight.
    pub shift: (u32, u32),
}

/// Creates the agents through the admin API (skills round-robin; in every shift the first is a
/// supervisor-level agent, so escalations have somewhere to go, and a share are senior, for
/// VIPs) and issues each a token.
pub(crate) async fn hire(world: &World) -> Result<Vec<AgentSeat>> {
    let a = &world.cfg.agents;
    let total: f64 = a.shifts.iter().map(|s| s.share).sum();
    let mut seats = Vec::with_capacity(a.count);
    // Spread over the shifts by share: (shift, place in the shift) per agent.
    let of = |i: usize| {
        let mut x = (i as f64 + 0.5) / a.count as f64 * total;
        for (n, s) in a.shifts.iter().enumerate() {
            if x < s.share {
                return n;
            }
            x -= s.share;
        }
        a.shifts.len() - 1
    };
    let mut per_shift = vec![0usize; a.shifts.len()];
    for i in 0..a.count {
        per_shift[of(i)] += 1;
    }
    let mut placed = vec![0usize; a.shifts.len()];
    for i in 0..a.count {
        let n = of(i);
        let shift = &a.shifts[n];
        let k = placed[n];
        placed[n] += 1;
        let skills = vec![
            a.skills[i % a.skills.len()].clone(),
            a.skills[(i + 1) % a.skills.len()].clone(),
        ];
        let level = if k == 0 {
            "supervisor"
        } else if (k as f64) < per_shift[n] as f64 * a.senior_share + 1.0 {
            "senior"
        } else {
            "agent"
        };
        let body = json!({"name": format!("Sim Agent {i}"), "email": format!("agent{i}-{}@sim.example", world.run),
            "skills": skills, "languages": a.languages, "max_concurrent": a.max_concurrent, "level": level,
            "timezone": "UTC", "shift_start": shift.start, "shift_end": shift.end});
        let v = admin(world, reqwest::Method::POST, "/v1/agents", Some(body)).await?;
        let id = v["id"].as_str().context("agent id")?.to_string();
        let t = admin(
            world,
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "agent", "agent_id": id, "name": format!("sim agent {i}")})),
        )
        .await?;
        seats.push(AgentSeat {
            id,
            token: t["token"].as_str().context("token")?.to_string(),
            shift: (time_of_day(&shift.start)?, time_of_day(&shift.end)?),
        });
    }
    Ok(seats)
}

pub(crate) async fn admin(
    world: &World,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut r = world
        .doors
        .http
        .request(method, format!("{}{path}", world.doors.t.serving))
        .bearer_auth(&world.doors.t.admin_token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{path}: {status} {v}");
    }
    Ok(v)
}

fn on_shift(shift: (u32, u32), minute: u32) -> bool {
    let (s, e) = shift;
    if s <= e {
        minute >= s && minute < e
    } else {
        minute >= s || minute < e
    }
}

/// One agent's working day: presence by shift and breaks, and every assigned ticket worked.
pub(crate) async fn agent(world: Arc<World>, seat: AgentSeat, seed: u64) {
    use chrono::Timelike as _;
    let mut rng = StdRng::seed_from_u64(seed);
    let (tx, mut events) = mpsc::unbounded_channel::<(String, Value)>();
    let stream = tokio::spawn(follow_stream(world.clone(), seat.clone(), tx));
    let tickets: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>> = Default::default();
    let mut status = "offline";
    let mut break_until: Option<f64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_hour_check = 0.0f64;
    loop {
        tokio::select! {
            _ = world.stop.cancelled() => break,
            _ = tick.tick() => {
                let now = world.sim_now();
                let minute = now.hour() * 60 + now.minute();
                let elapsed = world.sim_elapsed();
                if let Some(until) = break_until {
                    if elapsed >= until { break_until = None; }
                }
                // Breaks: a chance per simulated hour (checked every simulated minute).
                if status == "online" && elapsed - last_hour_check >= 60.0 {
                    last_hour_check = elapsed;
                    if rng.random::<f64>() < world.cfg.agents.break_share / 60.0 {
                        break_until = Some(elapsed + world.cfg.agents.break_length.as_secs_f64());
                        world.stats.count("agent_breaks");
                    }
                }
                let want = if !on_shift(seat.shift, minute) { "offline" } else if break_until.is_some() { "away" } else { "online" };
                if want != status && set_status(&world, &seat, want).await {
                    status = want;
                }
            }
            Some((name, v)) = events.recv() => {
                let ticket = v["ticket_id"].as_str().unwrap_or_default().to_string();
                if name == "assignment" && v["action"] == "assigned" {
                    let (ttx, trx) = mpsc::unbounded_channel();
                    tickets.lock().insert(ticket.clone(), ttx);
                    world.stats.count("assignments");
                    let (w, s, tk, seed) = (world.clone(), seat.clone(), tickets.clone(), rng.random());
                    tokio::spawn(async move {
                        work_ticket(w, s, ticket.clone(), trx, seed).await;
                        tk.lock().remove(&ticket);
                    });
                } else if name == "assignment" {
                    // Released (the agent went away, or it moved): stop working it.
                    tickets.lock().remove(&ticket);
                } else if name == "ticket" {
                    if let Some(t) = tickets.lock().get(&ticket) { let _ = t.send(v); }
                }
            }
        }
    }
    stream.abort();
}

/// Sets the agent's status through the agent API; whether it was taken.
pub(crate) async fn put_status(world: &World, seat: &AgentSeat, status: &str) -> bool {
    let r = world
        .doors
        .call(
            world
                .doors
                .http
                .put(format!(
                    "{}/v1/agents/{}/status",
                    world.doors.t.serving, seat.id
                ))
                .bearer_auth(&seat.token)
                .json(&json!({"status": status})),
        )
        .await;
    matches!(&r, Ok(r) if r.status().is_success())
}

async fn set_status(world: &World, seat: &AgentSeat, status: &str) -> bool {
    let ok = put_status(world, seat, status).await;
    world.stats.agent_call("status", ok);
    ok
}

/// Reads the agent's SSE stream (reconnecting) into `tx` as (event, data).
async fn follow_stream(
    world: Arc<World>,
    seat: AgentSeat,
    tx: mpsc::UnboundedSender<(String, Value)>,
) {
    loop {
        let r = world
            .doors
            .http
            .get(format!(
                "{}/v1/agents/{}/stream",
                world.doors.t.serving, seat.id
            ))
            .bearer_auth(&seat.token)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await;
        if let Ok(mut r) = r {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let (mut name, mut data) = (String::new(), String::new());
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            name = e.trim().to_string();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim());
                        }
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        if name == "snapshot" {
                            for a in v["assignments"].as_array().into_iter().flatten() {
                                let mut a = a.clone();
                                a["action"] = json!("assigned");
                                let _ = tx.send(("assignment".into(), a));
                            }
                        } else {
                            let _ = tx.send((name, v));
                        }
                    }
                }
            }
        }
        if world.stop.is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Works one assigned ticket: accept, read, answer after a human delay, answer follow-ups, and
/// resolve once the customer has been quiet for `resolve_after`.
async fn work_ticket(
    world: Arc<World>,
    seat: AgentSeat,
    ticket: String,
    mut updates: mpsc::UnboundedReceiver<Value>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let api = |method: reqwest::Method, path: String| {
        world
            .doors
            .http
            .request(method, format!("{}{path}", world.doors.t.serving))
            .bearer_auth(&seat.token)
    };
    // Read the ticket: the first message tells how long the pipeline took to get it here.
    let t: Value = match world
        .doors
        .call(api(reqwest::Method::GET, format!("/v1/tickets/{ticket}")))
        .await
    {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        _ => {
            world.stats.agent_call("read", false);
            return;
        }
    };
    world.stats.agent_call("read", true);
    let messages = t["messages"].as_array().cloned().unwrap_or_default();
    if let Some(first) = messages.iter().find(|m| m["direction"] == "inbound") {
        if let Some(ext) = first["external_id"].as_str() {
            world.stats.assigned(ext);
        }
    }
    let ok = world
        .doors
        .call(
            api(
                reqwest::Method::POST,
                format!(
                    "/v1/assignments/{}/accept",
                    t["assignments"]
                        .as_array()
                        .and_then(|a| a.last())
                        .and_then(|a| a["id"].as_str())
                        .unwrap_or_default()
                ),
            )
            .json(&json!({"agent_id": seat.id})),
        )
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    world.stats.agent_call("accept", ok);
    let intent = t["intent"].as_str().unwrap_or_default().to_string();
    let opened = Instant::now();
    let mut drafts = t["drafts"].as_array().cloned().unwrap_or_default();
    for round in 0..4 {
        if !world
            .sleep(between(&mut rng, world.cfg.agents.reply_delay))
            .await
        {
            return;
        }
        if round > 0 {
            // The customer wrote again: the drafts are the ones for that message.
            if let Ok(r) = world
                .doors
                .call(api(reqwest::Method::GET, format!("/v1/tickets/{ticket}")))
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    drafts = v["drafts"].as_array().cloned().unwrap_or_default();
                }
            }
        }
        // A draft is taken when it is a reply this agent would have sent for the intent (most
        // as offered, some with a line added); otherwise the agent writes its own.
        let usable = drafts.iter().find(|d| {
            d["text"]
                .as_str()
                .is_some_and(|text| world.texts.is_answer(&intent, text))
        });
        let (text, draft_id) = match usable {
            Some(d) => {
                let offered = d["text"].as_str().unwrap_or_default().to_string();
                let text = if rng.random::<f64>() < 0.2 {
                    format!("{offered}\n\nIs there anything else I can help with?")
                } else {
                    offered
                };
                (text, d["id"].as_str().map(str::to_string))
            }
            None => (world.texts.answer(&mut rng, &intent), None),
        };
        let r = world
            .doors
            .call(
                api(
                    reqwest::Method::POST,
                    format!("/v1/tickets/{ticket}/replies"),
                )
                .json(&json!({"agent_id": seat.id, "text": text, "request_id": Uuid::new_v4(), "draft_id": draft_id})),
            )
            .await;
        let ok = matches!(&r, Ok(r) if r.status().is_success());
        world.stats.agent_call("reply", ok);
        if !ok {
            // Taken away (released, merged) or refused: nothing more to do here.
            return;
        }
        if let Ok(r) = r {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(outcome) = v["draft"].as_str() {
                    world.stats.count(&format!("drafts_{outcome}"));
                }
            }
        }
        // Wait for the customer; quiet for `resolve_after` (simulated) means done.
        let quiet = world.cfg.agents.resolve_after.div_f64(world.cfg.speed);
        let deadline = tokio::time::Instant::now() + quiet;
        let mut wrote = false;
        loop {
            tokio::select! {
                _ = world.stop.cancelled() => return,
                r = tokio::time::timeout_at(deadline, updates.recv()) => match r {
                    Ok(Some(v)) => {
                        if v["kind"] == "message_added" && v["direction"] == "inbound" { wrote = true; break; }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
        }
        if !wrote {
            break;
        }
    }
    let r = world
        .doors
        .call(
            api(reqwest::Method::PUT, format!("/v1/tickets/{ticket}/status"))
                .json(&json!({"status": "resolved"})),
        )
        .await;
    let ok = matches!(&r, Ok(r) if r.status().is_success());
    world.stats.agent_call("resolve", ok);
    if ok {
        world
            .stats
            .resolution(opened.elapsed().as_secs_f64() * world.cfg.speed);
    }
}

/// A flood from one chat connection (200 frames at once): the per-connection limit answers
/// with errors. `429` when it held, `200` when more got through than the rate allows.
async fn chat_flood(world: &World, k: u64) -> Outcome {
    let d = &world.doors;
    let email = format!("flood{k}-{}@sim.example", world.run);
    let handle = format!("email:{email}");
    match Chat::open(d, &email, &world.inbox, &handle).await {
        Ok(mut c) => {
            let (acked, errors, secs) = c.flood(200).await;
            for i in 0..acked {
                world
                    .stats
                    .accepted("chat-flood", format!("{}:flood-{i}", c.conversation), false);
            }
            c.close().await;
            // Held as it should be: the connection never got more through than its rate (plus
            // one second's burst); the rest were refused (`rate_limited`) or, under load, are
            // still waiting their turn on the connection.
            let rate = f64::from(d.t.chat_rate);
            let within = (acked as f64) <= rate * (secs + 1.0) + 1.0;
            Outcome {
                code: if within { 429 } else { 200 },
                latency: Duration::ZERO,
                body: format!("{acked} accepted, {errors} refused in {secs:.1} s"),
            }
        }
        Err(e) => Outcome {
            code: 0,
            latency: Duration::ZERO,
            body: e.to_string(),
        },
    }
}

/// Hostile traffic: each kind sent once per call, checked against the answer it must get.
pub(crate) async fn hostile(world: Arc<World>, k: u64) {
    let kind = k % 12;
    let id = format!("hostile-{}-{k}", world.run);
    let d = &world.doors;
    let (name, outcome, want): (&str, Outcome, &[u16]) = match kind {
        0 => (
            "sms bad signature",
            d.sms(&id, "+15559999999", "free money", true).await,
            &[401, 403],
        ),
        1 => {
            let o = d
                .voice_body(b"{\"call_id\": 12, \"turns\": \"x\"".to_vec())
                .await;
            ("voice malformed json", o, &[400, 422])
        }
        2 => {
            let big = "A".repeat(2 << 20);
            let body = serde_json::to_vec(&json!({"call_id": id, "from": "+15559999998", "turns": [{"speaker": "customer", "text": big}]})).unwrap_or_default();
            let o = d.voice_body(body).await;
            // Refused before the whole body is read: 413, or the connection closed mid-upload.
            let o = if o.code == 0 && o.body.contains("error sending request") {
                Outcome { code: 413, ..o }
            } else {
                o
            };
            ("voice oversized body", o, &[413])
        }
        3 => {
            // A MIME bomb: multipart nested 2,000 deep (small on the wire).
            let mut body = String::new();
            for i in 0..2000 {
                body.push_str(&format!(
                    "--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{}\"\r\n\r\n",
                    i + 1
                ));
            }
            body.push_str("--b2000\r\nContent-Type: text/plain\r\n\r\nboom\r\n");
            let raw = format!("From: bomb@sim.example\r\nTo: {}\r\nSubject: bomb\r\nMessage-ID: <{id}@sim.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n{body}", d.t.support_address);
            // Kept (dead-lettered or a text ticket), never a crash: any 2xx/5xx answer that
            // leaves the server up. 250 expected: the message is stored or kept raw.
            (
                "email MIME bomb",
                d.email(raw.as_bytes(), "bomb@sim.example").await,
                &[250, 552, 554],
            )
        }
        4 => (
            "order bad signature",
            d.order(
                &json!({"id": id, "name": "#0", "total_price": "1.00", "email": "x@sim.example"}),
                true,
            )
            .await,
            &[401],
        ),
        5 => {
            let body = b"{\"object\": \"whatsapp_business_account\", \"entry\": [".to_vec();
            let o = d.meta_body(body).await;
            ("meta malformed payload", o, &[400])
        }
        7 => {
            // Characters Postgres refuses (NUL) and terminal escapes, correctly signed: accepted
            // means stored (the accounting checks it), never a dead letter after the ack.
            let from = format!("+1555{:07}", k % 10_000_000);
            let o = d
                .sms(
                    &id,
                    &from,
                    "where\u{0} is\u{7} my order\u{1b}[31m #1001?",
                    false,
                )
                .await;
            if o.ok() {
                world.stats.accepted("hostile", id.clone(), false);
            }
            ("sms with NUL and control characters", o, &[200])
        }
        8 => {
            // 600 KB of blank lines (the quote and signature cutters once went quadratic on it).
            let raw = format!(
                "From: blank{k}@sim.example\r\nTo: {}\r\nSubject: =?utf-8?b?0JPQtNC1INC80L7QuSDQt9Cw0LrQsNC3Pw==?=\r\nMessage-ID: <{id}@sim.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello{}\r\nwhere is my order?\r\n",
                d.t.support_address,
                "\r\n".repeat(300_000)
            );
            let o = d
                .email(raw.as_bytes(), &format!("blank{k}@sim.example"))
                .await;
            if o.ok() {
                world.stats.accepted("hostile", id.clone(), false);
            }
            ("email of 600 KB of blank lines", o, &[250])
        }
        9 => {
            // A quote 5,000 levels deep.
            let raw = format!(
                "From: quote{k}@sim.example\r\nTo: {}\r\nSubject: deep\r\nMessage-ID: <{id}@sim.example>\r\nReferences: {}\r\nContent-Type: text/plain\r\n\r\nmy parcel is late\r\n{}\r\n",
                d.t.support_address,
                (0..2000).map(|i| format!("<r{i}@sim.example>")).collect::<Vec<_>>().join(" "),
                ">".repeat(5000)
            );
            let o = d
                .email(raw.as_bytes(), &format!("quote{k}@sim.example"))
                .await;
            if o.ok() {
                world.stats.accepted("hostile", id.clone(), false);
            }
            ("email quoted 5,000 deep with 2,000 references", o, &[250])
        }
        10 => (
            "agent api with a forged bearer token",
            d.api_get("/v1/me", &format!("forged-{k}")).await,
            &[401],
        ),
        11 => (
            "agent api token in the query string",
            d.api_get(&format!("/v1/tickets?access_token={}", d.t.admin_token), "")
                .await,
            &[401],
        ),
        _ => (
            "chat flood (200 frames at once)",
            chat_flood(&world, k).await,
            &[429],
        ),
    };
    world.stats.hostile(name, &outcome, want);
}
