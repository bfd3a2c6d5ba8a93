//! Notifications that reach people outside the console: each person's preferences (which
//! topics by email and by SMS, the phone number, quiet hours in their time zone), checked here
//! for the API; and [`enqueue`], which puts a notification in the `notifications` ledger in the
//! same transaction as the event that shows it on the stream. The ingest role's notifier sends
//! the ledger: email through the relay, SMS through the provider, a digest instead of a flood.
//!
//! Topics: `mention` (an `@` in a note), `rule` (a rule's `notify` action), `sla` (an SLA
//! escalation's `notify_supervisor`). The live stream (in-app) gets every notification; email
//! and SMS only what the notification asks for (`via`) and the person accepts.

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// What a notification can be about.
pub const TOPICS: &[&str] = &["mention", "rule", "sla"];

/// Out-of-app channels.
pub const CHANNELS: &[&str] = &["email", "sms"];

/// Quiet hours: nothing by email or SMS from `start` to `end` (local time; `end` before
/// `start` spans midnight); what comes meanwhile waits for the end, in one digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM`.
    pub end: String,
    /// An IANA time zone (`Europe/Berlin`).
    pub timezone: String,
}

/// A person's notification preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Email to the agent's address.
    pub email: bool,
    /// SMS to `phone`.
    pub sms: bool,
    /// E.164 (`+4915112345678`); needed for SMS.
    #[serde(default)]
    pub phone: Option<String>,
    /// Topics that may leave the console (`mention`, `rule`, `sla`).
    pub topics: Vec<String>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
}

impl Default for Preferences {
    /// Email for every topic, no SMS, no quiet hours.
    fn default() -> Self {
        Preferences {
            email: true,
            sms: false,
            phone: None,
            topics: TOPICS.iter().map(|t| t.to_string()).collect(),
            quiet_hours: None,
        }
    }
}

fn hhmm(s: &str) -> Option<NaiveTime> {
    if s.len() != 5 {
        return None;
    }
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

impl Preferences {
    /// Checks the preferences: the field at fault and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, why: &str| Err((f.to_string(), why.to_string()));
        if let Some(p) = &self.phone {
            let digits = p.strip_prefix('+').unwrap_or("");
            if !(7..=15).contains(&digits.len())
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || digits.starts_with('0')
            {
                return bad("phone", "E.164: + and 7 to 15 digits");
            }
        }
        if self.sms && self.phone.is_none() {
            return bad("phone", "SMS needs a phone number");
        }
        if self.topics.len() > TOPICS.len() {
            return bad("topics", "mention, rule, sla");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !TOPICS.contains(&t.as_str()) {
                return Err((format!("topics[{i}]"), "mention, rule or sla".into()));
            }
        }
        if let Some(q) = &self.quiet_hours {
            if hhmm(&q.start).is_none() {
                return bad("quiet_hours.start", "HH:MM");
            }
            if hhmm(&q.end).is_none() {
                return bad("quiet_hours.end", "HH:MM");
            }
            if q.start == q.end {
                return bad("quiet_hours.end", "the end must differ from the start");
            }
            if q.timezone.parse::<chrono_tz::Tz>().is_err() {
                return bad("quiet_hours.timezone", "an IANA time zone (Europe/Berlin)");
            }
        }
        Ok(())
    }

    /// Does `channel` carry `topic` for this person?
    pub fn wants(&self, channel: &str, topic: &str) -> bool {
        let on = match channel {
            "email" => self.email,
            "sms" => self.sms && self.phone.is_some(),
            _ => false,
        };
        on && self.topics.iter().any(|t| t == topic)
    }

    /// The first moment at or after `at` outside the quiet hours (`at` itself when there are
    /// none or `at` is outside them).
    pub fn after_quiet(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let Some(q) = &self.quiet_hours else {
            return at;
        };
        let (Some(start), Some(end), Ok(tz)) = (
            hhmm(&q.start),
            hhmm(&q.end),
            q.timezone.parse::<chrono_tz::Tz>(),
        ) else {
            return at;
        };
        let local = at.with_timezone(&tz);
        let t = local.time();
        let quiet = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if !quiet {
            return at;
        }
        // The end falls today (before midnight's end of a span, or a same-day span), else
        // tomorrow.
        let day = if t < end {
            local.date_naive()
        } else {
            local.date_naive() + chrono::Duration::days(1)
        };
        let naive = day.and_time(end);
        // A local time a DST change skips: an hour later.
        tz.from_local_datetime(&naive)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(at)
    }
}

/// A notification to queue for email and SMS, beside the event that carries it to the stream.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The event it comes with: one row per event, person and channel.
    pub event_id: Uuid,
    pub ticket_id: Uuid,
    pub ticket_number: &'a str,
    /// `mention`, `rule` or `sla`.
    pub topic: &'a str,
    pub text: &'a str,
    /// The channels it asks for beside the stream (`email`, `sms`).
    pub via: &'a [&'a str],
    pub people: &'a [Uuid],
}

/// The most people one notification reaches by email and SMS.
pub const MAX_PEOPLE: usize = 50;

/// Queues `n` for each person and channel it asks for and the person's preferences accept (in
/// the caller's transaction, so it is queued exactly when its event is), due when the person's
/// quiet hours allow; the ingest role's notifier sends it. How many rows it queued.
pub async fn enqueue(
    conn: &mut PgConnection,
    n: &Outgoing<'_>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    if n.people.is_empty() || n.via.is_empty() {
        return Ok(0);
    }
    let people = &n.people[..n.people.len().min(MAX_PEOPLE)];
    let rows = sqlx::query(
        "SELECT a.id, a.email, p.preferences FROM agents a
         LEFT JOIN notification_preferences p ON p.agent_id = a.id
         WHERE a.id = ANY($1) AND a.deactivated_at IS NULL",
    )
    .bind(people)
    .fetch_all(&mut *conn)
    .await?;
    let (mut ids, mut agents, mut channels, mut recipients, mut dues) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let agent: Uuid = r.try_get("id")?;
        let email: String = r.try_get("email")?;
        let prefs: Option<sqlx::types::Json<Preferences>> = r.try_get("preferences")?;
        let prefs = prefs.map(|p| p.0).unwrap_or_default();
        for &channel in n.via {
            if !prefs.wants(channel, n.topic) {
                continue;
            }
            let recipient = match channel {
                "email" => email.clone(),
                _ => match &prefs.phone {
                    Some(p) => p.clone(),
                    None => continue,
                },
            };
            ids.push(Uuid::now_v7());
            agents.push(agent);
            channels.push(channel.to_string());
            recipients.push(recipient);
            dues.push(prefs.after_quiet(now));
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    let text = switchboard_contracts::text::cut_chars(n.text, 2000);
    let done = sqlx::query(
        "INSERT INTO notifications (id, agent_id, channel, recipient, due_at, topic, event_id, ticket_id,
                                    ticket_number, text, created_at)
         SELECT i, a, c, r, d, $6, $7, $8, $9, $10, $11
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) AS x(i, a, c, r, d)
         ON CONFLICT (event_id, agent_id, channel) DO NOTHING",
    )
    .bind(&ids)
    .bind(&agents)
    .bind(&channels)
    .bind(&recipients)
    .bind(&dues)
    .bind(n.topic)
    .bind(n.event_id)
    .bind(n.ticket_id)
    .bind(n.ticket_number)
    .bind(text.as_ref())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn quiet(start: &str, end: &str, tz: &str) -> Preferences {
        Preferences {
            quiet_hours: Some(QuietHours {
                start: start.into(),
                end: end.into(),
                timezone: tz.into(),
            }),
            ..Preferences::default()
        }
    }

    #[test]
    fn preferences_are_checked_naming_the_field() {
        assert_eq!(Preferences::default().check(), Ok(()));
        let field = |p: Preferences| p.check().err().map(|e| e.0);
        let sms = Preferences {
            sms: true,
            ..Preferences::default()
        };
        assert_eq!(field(sms.clone()).as_deref(), Some("phone"));
        for bad in [
            "12345",
            "+0123456",
            "+12ab4567",
            "+1234567890123456",
            "+١٢٣٤٥٦٧٨",
        ] {
            let p = Preferences {
                phone: Some(bad.into()),
                ..sms.clone()
            };
            assert_eq!(field(p).as_deref(), Some("phone"), "{bad}");
        }
        let p = Preferences {
            topics: vec!["rule".into(), "gossip".into()],
            ..Preferences::default()
        };
        assert_eq!(field(p).as_deref(), Some("topics[1]"));
        assert_eq!(
            field(quiet("25:00", "07:00", "UTC")).as_deref(),
            Some("quiet_hours.start")
        );
        assert_eq!(
            field(quiet("22:00", "7:00", "UTC")).as_deref(),
            Some("quiet_hours.end")
        );
        assert_eq!(
            field(quiet("22:00", "07:00", "Mars/Olympus")).as_deref(),
            Some("quiet_hours.timezone")
        );
        assert_eq!(quiet("22:00", "07:00", "Europe/Berlin").check(), Ok(()));
    }

    #[test]
    fn channels_carry_the_topics_chosen() {
        let p = Preferences {
            sms: true,
            phone: Some("+4915112345678".into()),
            topics: vec!["sla".into()],
            ..Preferences::default()
        };
        assert!(p.wants("sms", "sla"));
        assert!(p.wants("email", "sla"));
        assert!(!p.wants("email", "mention"));
        assert!(!p.wants("pager", "sla"));
    }

    #[test]
    fn quiet_hours_hold_until_they_end() {
        // 22:00-07:00 in Berlin (UTC+1 in December).
        let p = quiet("22:00", "07:00", "Europe/Berlin");
        // 20:00 local: not quiet.
        let at = utc("2026-12-02T19:00:00Z");
        assert_eq!(p.after_quiet(at), at);
        // 23:30 local: until 07:00 local tomorrow.
        assert_eq!(
            p.after_quiet(utc("2026-12-02T22:30:00Z")),
            utc("2026-12-03T06:00:00Z")
        );
        // 03:00 local: until 07:00 local today.
        assert_eq!(
            p.after_quiet(utc("2026-12-03T02:00:00Z")),
            utc("2026-12-03T06:00:00Z")
        );
        // A span within one day.
        let lunch = quiet("12:00", "13:00", "UTC");
        assert_eq!(
            lunch.after_quiet(utc("2026-12-02T12:10:00Z")),
            utc("2026-12-02T13:00:00Z")
        );
        assert_eq!(
            lunch.after_quiet(utc("2026-12-02T13:00:00Z")),
            utc("2026-12-02T13:00:00Z")
        );
        // An end a DST change skips (02:30 on 29 March 2026 in Berlin does not exist).
        let skip = quiet("01:00", "02:30", "Europe/Berlin");
        let end = skip.after_quiet(utc("2026-03-29T00:30:00Z"));
        assert_eq!(end, utc("2026-03-29T01:30:00Z"));
    }
}
