//! `switchboard agents import FILE`: agents from a CSV file, each row checked as
//! `POST /v1/agents` checks it and created (with its team) in a transaction of its own, with a
//! report line per row on stdout.
//!
//! Columns (a header row names them, in any order, any case): `name`, `email`,
//! `max_concurrent` (required); `skills` (`shipping:4; billing`: a level 1-5 after a colon),
//! `languages` (`en; de`), `level` (agent, senior, supervisor), `timezone` (IANA), `shift`
//! (`09:00-17:00` in the timezone), `channel_capacity` (`chat:3; email:5`), `team` (a team's
//! name). An unknown column refuses the file before any row is read.
//!
//! Rows stream one at a time; an address that is an agent's already is reported `exists` and
//! left as it is, so an import can be run again.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use switchboard_core::http::ApiError;
use switchboard_serving::agents::{create_agent, validate, NewAgent};
use uuid::Uuid;

/// The columns a file may have.
const COLUMNS: &[&str] = &[
    "name",
    "email",
    "max_concurrent",
    "skills",
    "languages",
    "level",
    "timezone",
    "shift",
    "channel_capacity",
    "team",
];

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(Uuid),
    /// Checked and would be created (`--dry-run`).
    Valid,
    /// The email is an agent's already; nothing changed.
    Exists,
    /// Refused, naming the column.
    Refused {
        field: String,
        message: String,
    },
}

/// A row's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The row's line in the file (the header is line 1).
    pub line: u64,
    pub email: String,
    pub outcome: Outcome,
}

fn refused(field: &str, message: impl Into<String>) -> Outcome {
    Outcome::Refused {
        field: field.into(),
        message: message.into(),
    }
}

/// `a; b; c` (or commas) as trimmed, non-empty items.
fn items(v: &str) -> Vec<String> {
    v.split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The request a row describes, and its team's name; or the column that is wrong.
pub fn parse_row(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(NewAgent, Option<String>), Outcome> {
    let max_concurrent = match get("max_concurrent") {
        None => return Err(refused("max_concurrent", "required")),
        Some(v) => v
            .trim()
            .parse::<i32>()
            .map_err(|_| refused("max_concurrent", format!("{v:?} is not a whole number")))?,
    };
    let mut skills = Vec::new();
    let mut skill_levels = BTreeMap::new();
    for item in items(&get("skills").unwrap_or_default()) {
        match item.split_once(':') {
            None => skills.push(item),
            Some((skill, level)) => {
                let level: u8 = level.trim().parse().map_err(|_| {
                    refused("skills", format!("{item:?}: a level is a number 1 to 5"))
                })?;
                skills.push(skill.trim().to_string());
                skill_levels.insert(skill.trim().to_lowercase(), level);
            }
        }
    }
    let mut channel_capacity = BTreeMap::new();
    for item in items(&get("channel_capacity").unwrap_or_default()) {
        let Some((channel, n)) = item.split_once(':') else {
            return Err(refused(
                "channel_capacity",
                format!("{item:?} is not channel:number"),
            ));
        };
        let n: i32 = n.trim().parse().map_err(|_| {
            refused(
                "channel_capacity",
                format!("{item:?} is not channel:number"),
            )
        })?;
        channel_capacity.insert(channel.trim().to_lowercase(), n);
    }
    let (shift_start, shift_end) = match get("shift") {
        None => (None, None),
        Some(v) => match v.split_once('-') {
            Some((a, b)) => (Some(a.trim().to_string()), Some(b.trim().to_string())),
            None => return Err(refused("shift", format!("{v:?} is not HH:MM-HH:MM"))),
        },
    };
    let req = NewAgent {
        name: get("name").unwrap_or_default(),
        email: get("email").unwrap_or_default(),
        skills,
        languages: items(&get("languages").unwrap_or_default()),
        max_concurrent,
        level: get("level"),
        timezone: get("timezone"),
        shift_start,
        shift_end,
        skill_levels,
        channel_capacity,
    };
    // The API's names for the fields that are columns of another name here.
    validate(&req).map_err(|e| {
        let field = e.field.unwrap_or_default();
        let column = match field.split(['.', '[']).next().unwrap_or("") {
            "skill_levels" => "skills",
            "shift_start" | "shift_end" => "shift",
            other => other,
        }
        .to_string();
        Outcome::Refused {
            field: column,
            message: e.message,
        }
    })?;
    Ok((req, get("team")))
}

/// Imports `file` into `pool`; with `dry_run`, checks every row and changes nothing. Calls
/// `report` for every row, in order.
pub async fn import(
    pool: &sqlx::PgPool,
    file: &Path,
    dry_run: bool,
    mut report: impl FnMut(&Report) -> Result<()>,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let headers: Vec<String> = reader
        .byte_headers()
        .context("the first row must name the columns")?
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_lowercase())
        .collect();
    for h in &headers {
        if !COLUMNS.contains(&h.as_str()) {
            bail!(
                "unknown column {h:?}: the columns are {}",
                COLUMNS.join(", ")
            );
        }
    }
    for required in ["name", "email", "max_concurrent"] {
        if !headers.iter().any(|h| h == required) {
            bail!("the file has no {required:?} column");
        }
    }
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        let read = reader.read_byte_record(&mut record);
        let outcome_email = match read {
            Ok(false) => break,
            Err(e) => {
                // A broken row (a wrong number of fields, an unclosed quote) is reported and
                // the rest still read; an I/O error ends the import.
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(e).context("cannot read the file");
                }
                let at = e.position().map_or(line, csv::Position::line);
                (refused("row", e.to_string()), at, String::new())
            }
            Ok(true) => {
                let line = record.position().map_or(line, csv::Position::line);
                let mut values: BTreeMap<&str, String> = BTreeMap::new();
                let mut bad_utf8 = None;
                for (h, v) in headers.iter().zip(record.iter()) {
                    match std::str::from_utf8(v) {
                        Ok(v) if !v.is_empty() => {
                            values.insert(h.as_str(), v.to_string());
                        }
                        Ok(_) => {}
                        Err(_) => bad_utf8 = Some(h.clone()),
                    }
                }
                let email = values.get("email").cloned().unwrap_or_default();
                let outcome = match bad_utf8 {
                    Some(h) => refused(&h, "not UTF-8"),
                    None => row(pool, &values, dry_run).await?,
                };
                report(&Report {
                    line,
                    email,
                    outcome,
                })?;
                continue;
            }
        };
        let (outcome, line, email) = outcome_email;
        report(&Report {
            line,
            email,
            outcome,
        })?;
    }
    Ok(())
}

/// One row: checked, then created with its team in one transaction.
async fn row(
    pool: &sqlx::PgPool,
    values: &BTreeMap<&str, String>,
    dry_run: bool,
) -> Result<Outcome> {
    let get = |k: &str| values.get(k).cloned();
    let (req, team) = match parse_row(&get) {
        Ok(r) => r,
        Err(o) => return Ok(o),
    };
    let mut tx = pool.begin().await?;
    let team_id: Option<Uuid> = match &team {
        None => None,
        Some(name) => {
            let id: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM teams WHERE lower(name) = lower($1)")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            match id {
                Some(id) => Some(id),
                None => return Ok(refused("team", format!("no team is named {name:?}"))),
            }
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM agents WHERE email = lower($1))")
            .bind(req.email.trim())
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        return Ok(Outcome::Exists);
    }
    if dry_run {
        return Ok(Outcome::Valid);
    }
    let id = match create_agent(
        &mut tx,
        &switchboard_serving::audit::Actor::local("cli"),
        req,
    )
    .await
    {
        Ok(id) => id,
        Err(ApiError { status, .. }) if status.as_u16() == 409 => return Ok(Outcome::Exists),
        Err(e) => {
            return Ok(Outcome::Refused {
                field: e.field.unwrap_or_default(),
                message: e.message,
            })
        }
    };
    if let Some(team_id) = team_id {
        sqlx::query("INSERT INTO team_members (team_id, agent_id) VALUES ($1, $2)")
            .bind(team_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Outcome::Created(id))
}

/// `switchboard agents import`: the report as CSV on stdout (`line,email,outcome,field,message`),
/// a summary on stderr; `false` if any row was refused.
pub async fn run(pool: &sqlx::PgPool, file: &Path, dry_run: bool) -> Result<bool> {
    let stdout = std::io::stdout();
    let mut out = csv::Writer::from_writer(stdout.lock());
    out.write_record(["line", "email", "outcome", "field", "message"])?;
    let (mut created, mut exists, mut refused_rows) = (0u64, 0u64, 0u64);
    import(pool, file, dry_run, |r| {
        let (outcome, field, message) = match &r.outcome {
            Outcome::Created(id) => {
                created += 1;
                ("created".to_string(), String::new(), id.to_string())
            }
            Outcome::Valid => {
                created += 1;
                ("valid".to_string(), String::new(), String::new())
            }
            Outcome::Exists => {
                exists += 1;
                (
                    "exists".to_string(),
                    "email".to_string(),
                    "an agent with this email exists".to_string(),
                )
            }
            Outcome::Refused { field, message } => {
                refused_rows += 1;
                ("refused".to_string(), field.clone(), message.clone())
            }
        };
        out.write_record([r.line.to_string(), r.email.clone(), outcome, field, message])?;
        Ok(())
    })
    .await?;
    out.flush()?;
    let mut err = std::io::stderr();
    writeln!(
        err,
        "{} {created}, {exists} existed already, {refused_rows} refused",
        if dry_run { "valid" } else { "created" }
    )?;
    Ok(refused_rows == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<(NewAgent, Option<String>), Outcome> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        parse_row(&|k| map.get(k).cloned())
    }

    fn field(o: Result<(NewAgent, Option<String>), Outcome>) -> String {
        match o {
            Err(Outcome::Refused { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_row_becomes_the_request_of_post_agents() {
        let (req, team) = parse(&[
            ("name", "Zoë Ångström"),
            ("email", "Zoe@Example.com"),
            ("max_concurrent", "4"),
            ("skills", "shipping:4; Billing"),
            ("languages", "en, de"),
            ("shift", "09:00-17:30"),
            ("timezone", "Europe/Berlin"),
            ("channel_capacity", "chat:2; email:4"),
            ("team", "Returns"),
        ])
        .unwrap();
        assert_eq!(req.skills, ["shipping", "Billing"]);
        assert_eq!(req.skill_levels.get("shipping"), Some(&4));
        assert_eq!(req.languages, ["en", "de"]);
        assert_eq!(
            (req.shift_start.as_deref(), req.shift_end.as_deref()),
            (Some("09:00"), Some("17:30"))
        );
        assert_eq!(req.channel_capacity.get("chat"), Some(&2));
        assert_eq!(team.as_deref(), Some("Returns"));
    }

    #[test]
    fn each_bad_cell_names_its_column() {
        let base = [
            ("name", "A"),
            ("email", "a@example.com"),
            ("max_concurrent", "3"),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut p: Vec<(&str, &str)> = base.iter().copied().filter(|(b, _)| *b != k).collect();
            p.push((k, v));
            parse(&p)
        };
        assert_eq!(field(with("max_concurrent", "three")), "max_concurrent");
        assert_eq!(field(with("max_concurrent", "0")), "max_concurrent");
        assert_eq!(field(with("email", "not an email")), "email");
        assert_eq!(field(with("name", "")), "name");
        assert_eq!(field(with("name", "A\u{7}B")), "name");
        assert_eq!(field(with("skills", "billing:9")), "skills");
        assert_eq!(field(with("skills", "billing:x")), "skills");
        assert_eq!(field(with("shift", "9 to 5")), "shift");
        assert_eq!(field(with("shift", "09:00-25:00")), "shift");
        assert_eq!(field(with("timezone", "Mars/Olympus")), "timezone");
        assert_eq!(
            field(with("channel_capacity", "pigeon:2")),
            "channel_capacity"
        );
        assert_eq!(field(with("channel_capacity", "chat")), "channel_capacity");
        assert_eq!(field(with("level", "boss")), "level");
        let huge = "x".repeat(1_000_000);
        let p = [
            ("name", huge.as_str()),
            ("email", "a@example.com"),
            ("max_concurrent", "3"),
        ];
        assert_eq!(field(parse(&p)), "name");
        assert_eq!(
            field(parse(&[("name", "A"), ("email", "a@example.com")])),
            "max_concurrent"
        );
    }
}
