//! Business calendars: opening hours per weekday in a team's timezone, and holidays. SLA clocks
//! only run while a calendar is open; `24x7` is always open.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;

use serde::Deserialize;

/// Business hours of a team: opening hours per weekday in a timezone, and holidays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA name, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// `mon` .. `sun` to `"09:00-17:00"`; a day not listed is closed.
    pub hours: BTreeMap<String, String>,
    /// Closed dates, `YYYY-MM-DD`.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// Sent once to a customer who opens a ticket while the calendar is closed (never to mail a
    /// machine sent); `{{opens}}` becomes when it opens next, in its timezone.
    #[serde(default)]
    pub auto_reply: Option<String>,
}

/// Name of the calendar that is always open.
pub const ALWAYS: &str = "24x7";

/// A compiled calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub name: String,
    tz: Tz,
    /// Monday first: open and close as seconds from local midnight (close may be 86,400).
    hours: [Option<(u32, u32)>; 7],
    holidays: BTreeSet<NaiveDate>,
    always: bool,
    /// What a customer who writes while it is closed is told ([`CalendarConfig::auto_reply`]).
    pub auto_reply: Option<String>,
}

/// How far ahead a deadline is looked for before giving up (a calendar with no open day).
const MAX_DAYS: i64 = 3 * 366;

impl Calendar {
    pub fn always() -> Calendar {
        Calendar {
            name: ALWAYS.into(),
            tz: chrono_tz::UTC,
            hours: [Some((0, 86_400)); 7],
            holidays: BTreeSet::new(),
            always: true,
            auto_reply: None,
        }
    }

    /// Compiles a configured calendar; the error names what is wrong.
    pub fn from_config(name: &str, c: &CalendarConfig) -> Result<Calendar, String> {
        let tz: Tz = c
            .timezone
            .parse()
            .map_err(|_| format!("calendar {name}: {:?} is not an IANA timezone", c.timezone))?;
        let mut hours = [None; 7];
        for (day, span) in &c.hours {
            let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .position(|d| d == &day.to_lowercase().as_str())
                .ok_or_else(|| format!("calendar {name}: {day:?} is not a weekday (mon .. sun)"))?;
            let (open, close) = span
                .split_once('-')
                .ok_or_else(|| format!("calendar {name}: hours {span:?} are not HH:MM-HH:MM"))?;
            let (open, close) = (parse_hm(open), parse_hm(close));
            match (open, close) {
                (Some(o), Some(c)) if o < c => hours[i] = Some((o, c)),
                _ => {
                    return Err(format!(
                        "calendar {name}: hours {span:?} are not HH:MM-HH:MM with open before close"
                    ))
                }
            }
        }
        if hours.iter().all(Option::is_none) {
            return Err(format!("calendar {name}: no day is open"));
        }
        let holidays = c
            .holidays
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| format!("calendar {name}: holiday {d:?} is not YYYY-MM-DD"))
            })
            .collect::<Result<_, _>>()?;
        let auto_reply = match c.auto_reply.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) if t.chars().count() > 2_000 => {
                return Err(format!(
                    "calendar {name}: auto_reply is over 2,000 characters"
                ))
            }
            Some(t) => Some(t.to_string()),
        };
        Ok(Calendar {
            name: name.into(),
            tz,
            hours,
            holidays,
            always: false,
            auto_reply,
        })
    }

    /// When the calendar is next open at or after `at` (`at` itself while it is open).
    pub fn next_open(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.add(at, 0.0)
    }

    /// The auto-reply for a customer writing at `at`, with `{{opens}}` filled; `None` while the
    /// calendar is open or when it has no auto-reply.
    pub fn closed_reply(&self, at: DateTime<Utc>) -> Option<String> {
        let text = self.auto_reply.as_deref()?;
        let opens = self.next_open(at);
        if opens <= at {
            return None;
        }
        let local = opens.with_timezone(&self.tz);
        let when = format!("{} ({})", local.format("%A %H:%M"), self.tz.name());
        Some(text.replace("{{opens}}", &when))
    }

    /// The open window of a local date, in UTC.
    fn window(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if self.holidays.contains(&date) {
            return None;
        }
        let (open, close) = self.hours[date.weekday().num_days_from_monday() as usize]?;
        let midnight = date.and_hms_opt(0, 0, 0)?;
        let at = |secs: u32| self.local(midnight + Duration::seconds(i64::from(secs)));
        Some((at(open), at(close)))
    }

    /// A local time as UTC; a time skipped by a DST change counts as the first instant after it.
    fn local(&self, t: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&t).earliest() {
            Some(d) => d.with_timezone(&Utc),
            None => self
                .tz
                .from_local_datetime(&(t + Duration::hours(1)))
                .earliest()
                .map_or_else(|| t.and_utc(), |d| d.with_timezone(&Utc)),
        }
    }

    /// The instant `secs` of open time after `from`.
    pub fn add(&self, from: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
        let mut remaining = Duration::milliseconds((secs.max(0.0) * 1000.0).round() as i64);
        if self.always {
            return from + remaining;
        }
        let mut date = from.with_timezone(&self.tz).date_naive() - Duration::days(1);
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.window(date) {
                if close > from {
                    let start = open.max(from);
                    let avail = close - start;
                    if remaining <= avail {
                        return start + remaining;
                    }
                    remaining -= avail;
                }
            }
            date += Duration::days(1);
        }
        from + Duration::days(MAX_DAYS)
    }

    /// Open seconds between `from` and `to` (0 when `to` is not after `from`).
    pub fn open_secs(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
        if to <= from {
            return 0.0;
        }
        if self.always {
            return (to - from).num_milliseconds() as f64 / 1000.0;
        }
        let mut total = Duration::zero();
        let mut date = from.with_timezone(&self.tz).date_naive() - Duration::days(1);
        let last = to.with_timezone(&self.tz).date_naive() + Duration::days(1);
        while date <= last {
            if let Some((open, close)) = self.window(date) {
                let (s, e) = (open.max(from), close.min(to));
                if e > s {
                    total += e - s;
                }
            }
            date += Duration::days(1);
        }
        total.num_milliseconds() as f64 / 1000.0
    }
}

fn parse_hm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 3600 + m * 60)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn berlin() -> Calendar {
        let hours: BTreeMap<String, String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| (d.to_string(), "09:00-17:00".to_string()))
            .collect();
        Calendar::from_config(
            "eu",
            &CalendarConfig {
                timezone: "Europe/Berlin".into(),
                hours,
                holidays: vec!["2026-12-25".into()],
                auto_reply: Some("We are closed; we answer from {{opens}}.".into()),
            },
        )
        .unwrap()
    }

    #[test]
    fn deadlines_skip_nights_weekends_and_holidays() {
        let c = berlin();
        // Thursday 2026-12-24 16:00 Berlin (15:00 UTC) + 2 h: 1 h on Thursday, Friday is a
        // holiday, the weekend is closed, so Monday 10:00 Berlin (09:00 UTC).
        assert_eq!(
            c.add(at("2026-12-24T15:00:00Z"), 7200.0),
            at("2026-12-28T09:00:00Z")
        );
        // Before opening: the clock starts at opening.
        assert_eq!(
            c.add(at("2026-12-01T05:00:00Z"), 60.0),
            at("2026-12-01T08:01:00Z")
        );
        assert_eq!(
            c.open_secs(at("2026-12-24T15:00:00Z"), at("2026-12-28T09:00:00Z")),
            7200.0
        );
    }

    #[test]
    fn summer_time_moves_the_window() {
        let c = berlin();
        // In July Berlin is UTC+2: 09:00 local is 07:00 UTC.
        assert_eq!(
            c.add(at("2026-07-01T00:00:00Z"), 0.5),
            at("2026-07-01T07:00:00.500Z")
        );
    }

    #[test]
    fn the_closed_reply_says_when_the_desk_opens_and_only_while_it_is_closed() {
        let c = berlin();
        // Thursday 2026-12-24 18:00 Berlin: closed; Friday is a holiday, so Monday 09:00.
        assert_eq!(
            c.closed_reply(at("2026-12-24T17:00:00Z")).as_deref(),
            Some("We are closed; we answer from Monday 09:00 (Europe/Berlin).")
        );
        // Tuesday 10:00 Berlin: open, nothing to say.
        assert_eq!(c.closed_reply(at("2026-12-01T09:00:00Z")), None);
        assert_eq!(
            c.next_open(at("2026-12-01T09:00:00Z")),
            at("2026-12-01T09:00:00Z")
        );
        // Always open, or no text: never.
        assert_eq!(
            Calendar::always().closed_reply(at("2026-12-24T17:00:00Z")),
            None
        );
        let mut cfg = CalendarConfig {
            timezone: "UTC".into(),
            hours: BTreeMap::from([("mon".into(), "09:00-17:00".into())]),
            holidays: vec![],
            auto_reply: Some("   ".into()),
        };
        let quiet = Calendar::from_config("q", &cfg).unwrap();
        assert_eq!(quiet.closed_reply(at("2026-12-24T17:00:00Z")), None);
        cfg.auto_reply = Some("é".repeat(2_001));
        assert!(Calendar::from_config("q", &cfg)
            .unwrap_err()
            .contains("auto_reply"));
    }

    #[test]
    fn always_open_is_plain_time() {
        let c = Calendar::always();
        assert_eq!(
            c.add(at("2026-12-25T00:00:00Z"), 90.0),
            at("2026-12-25T00:01:30Z")
        );
        assert_eq!(
            c.open_secs(at("2026-12-25T00:00:00Z"), at("2026-12-25T01:00:00Z")),
            3600.0
        );
    }

    #[test]
    fn bad_calendars_are_named() {
        let mut cfg = CalendarConfig {
            timezone: "Mars/Olympus".into(),
            hours: BTreeMap::from([("mon".into(), "09:00-17:00".into())]),
            holidays: vec![],
            auto_reply: None,
        };
        assert!(Calendar::from_config("x", &cfg)
            .unwrap_err()
            .contains("timezone"));
        cfg.timezone = "UTC".into();
        cfg.hours = BTreeMap::from([("mon".into(), "17:00-09:00".into())]);
        assert!(Calendar::from_config("x", &cfg)
            .unwrap_err()
            .contains("open before close"));
        cfg.hours = BTreeMap::from([("someday".into(), "09:00-17:00".into())]);
        assert!(Calendar::from_config("x", &cfg)
            .unwrap_err()
            .contains("weekday"));
        cfg.hours = BTreeMap::from([("sun".into(), "00:00-24:00".into())]);
        assert!(Calendar::from_config("x", &cfg).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn add_and_open_secs_agree(start in 0i64..(400 * 86_400), secs in 0u32..(30 * 86_400)) {
            let c = berlin();
            let from = at("2026-01-01T00:00:00Z") + Duration::seconds(start);
            let due = c.add(from, f64::from(secs));
            proptest::prop_assert!(due >= from);
            proptest::prop_assert!((c.open_secs(from, due) - f64::from(secs)).abs() < 0.01);
        }
    }
}
