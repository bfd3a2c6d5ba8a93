//! Analytics: the Kafka-to-ClickHouse sink and the ClickHouse schema.
//!
//! [`sink::ClickHouseSink`] buffers every event it consumes and writes a batch per flush; offsets
//! are committed only after ClickHouse accepted the batch. A replayed event keeps its event id,
//! and the `events` table (a ReplacingMergeTree on that id, see `sql/`) collapses it, so counts
//! read with `FINAL` never double.
//!
//! [`forecast`] fits the demand forecast on the hourly history (augurs' MSTL with an ETS trend)
//! and [`staffing`] turns tickets per hour into agents per hour (Erlang C).

pub mod forecast;
pub mod schema;
pub mod sink;
pub mod staffing;
pub mod telemetry;

pub use schema::{client, migrate, ClickHouseCheck};
