//! The shared runtime every Switchboard role stands on.
//!
//! - [`config`]: `pipelines.yaml`, typed and versioned, layered file-then-environment, validated
//!   with line numbers.
//! - [`kafka`]: the producer ([`kafka::Publisher`]), topic creation, and the consumer loop with
//!   at-least-once commits and dead-lettering ([`kafka::run_consumer`]).
//! - [`db`]: the Postgres pool and the schema migrations (the ticket store).
//! - [`http`]: JSON errors, the strict JSON extractor, bearer auth, and the ops routes.
//! - [`error`]: the error type that says whether to retry.
//! - [`storage`]: where attachment contents live on disk.

pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod kafka;
pub mod runtime;
pub mod storage;
pub mod telemetry;

pub use error::{Error, Retry};
