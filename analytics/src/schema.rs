//! The ClickHouse schema (SQL files under `analytics/sql/`, applied in order) and the client.

use clickhouse::Client;
use futures::future::BoxFuture;
use switchboard_core::config::ClickHouseConfig;
use switchboard_core::http::ReadyCheck;
use switchboard_core::Error;
use tracing::info;

/// The schema files, in order.
pub const SCHEMA: &[(&str, &str)] = &[
    ("001_events.sql", include_str!("../sql/001_events.sql")),
    (
        "002_dashboards.sql",
        include_str!("../sql/002_dashboards.sql"),
    ),
    ("003_audit.sql", include_str!("../sql/003_audit.sql")),
    ("004_forecast.sql", include_str!("../sql/004_forecast.sql")),
];

fn ch_error(e: clickhouse::error::Error) -> Error {
    Error::ClickHouse(e.to_string())
}

/// A client for the configured database. Validation is off: it needs server features that
/// ClickHouse 18.16 lacks, and the row types here are checked by the integration tests instead.
pub fn client(cfg: &ClickHouseConfig, url: &str) -> Client {
    Client::default()
        .with_url(url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
        .with_database(&cfg.database)
        .with_validation(false)
}

/// Creates the database and applies every schema file (idempotent).
pub async fn migrate(cfg: &ClickHouseConfig, url: &str) -> Result<(), Error> {
    let server = Client::default()
        .with_url(url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
        .with_validation(false);
    if !cfg
        .database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::Config(format!(
            "clickhouse database name {:?} must be alphanumeric",
            cfg.database
        )));
    }
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))
        .execute()
        .await
        .map_err(ch_error)?;
    let db = client(cfg, url);
    for (name, sql) in SCHEMA {
        for stmt in statements(sql) {
            db.query(&stmt)
                .execute()
                .await
                .map_err(|e| Error::ClickHouse(format!("{name}: {e}")))?;
        }
    }
    info!(database = %cfg.database, "clickhouse schema up to date");
    Ok(())
}

/// Splits a SQL file into statements, dropping comment lines.
pub fn statements(sql: &str) -> Vec<String> {
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `/readyz` check for ClickHouse.
#[derive(Clone)]
pub struct ClickHouseCheck(pub Client);

impl std::fmt::Debug for ClickHouseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClickHouseCheck")
    }
}

impl ReadyCheck for ClickHouseCheck {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .query("SELECT 1")
                .execute()
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let s = statements("-- c; x\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\nSELECT 1;\n");
        assert_eq!(
            s,
            vec!["CREATE TABLE a (x UInt8) ENGINE = Memory", "SELECT 1"]
        );
        for (_, sql) in SCHEMA {
            assert!(statements(sql).iter().all(|s| s.starts_with("CREATE")));
        }
    }
}
