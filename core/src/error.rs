//! Errors that say whose fault they are and whether to retry (after Arroyo's `ConnectorError`).

/// Whether an operation that failed may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same input will fail the same way: dead-letter it or reject it.
    Never,
    /// A dependency is down or overloaded: back off and try again.
    WithBackoff,
}

/// The library error of Switchboard's runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("kafka: {0}")]
    Kafka(String, Retry),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    #[error("config: {0}")]
    Config(String),
    #[error("vector store: {0}")]
    VectorStore(String),
}

impl Error {
    /// Whether retrying may help.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Invalid(_) | Error::Config(_) | Error::Migrate(_) => Retry::Never,
            Error::VectorStore(_) => Retry::WithBackoff,
            Error::Kafka(_, r) => *r,
            Error::Postgres(e) => match e {
                sqlx::Error::Database(db) => {
                    // Serialization failures and deadlocks are worth another try; constraint
                    // violations and bad data are not.
                    match db.code().as_deref() {
                        Some("40001") | Some("40P01") | Some("55P03") => Retry::WithBackoff,
                        Some(code) if code.starts_with("08") || code.starts_with("57") => {
                            Retry::WithBackoff
                        }
                        _ => Retry::Never,
                    }
                }
                sqlx::Error::RowNotFound
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_) => Retry::Never,
                _ => Retry::WithBackoff,
            },
            Error::ClickHouse(_) => Retry::WithBackoff,
        }
    }

    /// Shorthand for `retry() == WithBackoff`.
    pub fn is_retryable(&self) -> bool {
        self.retry() == Retry::WithBackoff
    }
}
