//! The ClickHouse sink stage: every event, one row, written in batches.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{decode_raw, RawEnvelope, Topic};
use switchboard_core::kafka::{Handler, HandlerError, Record};
use tracing::{debug, warn};

/// The ClickHouse sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub batch_max_rows: usize,
    pub batch_max_wait_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_max_rows: 5000,
            batch_max_wait_ms: 500,
        }
    }
}

/// Starts the sink: the ClickHouse schema (waiting up to 30 s for the server), its `/readyz`
/// check, then one consumer per sink stage `(name, settings)`, batching by `cfg`.
pub async fn start(
    cfg: &SinkConfig,
    clickhouse: &switchboard_core::config::ClickHouseConfig,
    url: &str,
    stages: Vec<(String, switchboard_core::kafka::ConsumerSettings)>,
    ctx: &switchboard_core::runtime::Ctx,
    started: &mut switchboard_core::runtime::Started,
) -> Result<(), switchboard_core::runtime::StartError> {
    let mut attempt = 0;
    loop {
        match crate::migrate(clickhouse, url).await {
            Ok(()) => break,
            Err(e) if attempt < 60 => {
                attempt += 1;
                tracing::info!(error = %e, attempt, "waiting for clickhouse");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(switchboard_core::runtime::StartError::failed(
                    "cannot prepare clickhouse",
                    e,
                ))
            }
        }
    }
    let client = crate::client(clickhouse, url);
    started.ready(std::sync::Arc::new(crate::ClickHouseCheck(client.clone())));
    for (name, mut settings) in stages {
        settings.batch_max = cfg.batch_max_rows.max(1);
        settings.batch_wait = std::time::Duration::from_millis(cfg.batch_max_wait_ms);
        settings.concurrency = 1;
        started.spawn_consumer(ctx, &name, settings, ClickHouseSink::new(client.clone()));
    }
    Ok(())
}

/// A row of the `events` table.
#[derive(Debug, Clone, Row, Serialize)]
pub struct EventRow {
    pub event_id: String,
    pub schema: String,
    pub version: u16,
    pub topic: String,
    pub key: String,
    pub ticket_id: String,
    pub kind: String,
    /// Seconds since the epoch (ClickHouse `DateTime`).
    pub occurred_at: u32,
    pub occurred_ms: u64,
    pub payload: String,
}

impl EventRow {
    /// Flattens an envelope into a row.
    pub fn from_envelope(topic: Topic, key: Option<String>, env: &RawEnvelope) -> EventRow {
        let p = &env.payload;
        let ticket_id = p
            .get("ticket_id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let kind = p
            .get("kind")
            .and_then(|v| v.as_str())
            .or_else(|| p.get("action").and_then(|v| v.as_str()))
            .or_else(|| p.get("status").and_then(|v| v.as_str()))
            .unwrap_or(&env.schema)
            .to_string();
        let ms = env.occurred_at.timestamp_millis().max(0) as u64;
        EventRow {
            event_id: env.event_id.to_string(),
            schema: env.schema.clone(),
            version: env.version,
            topic: topic.base_name().to_string(),
            key: key.unwrap_or_default(),
            ticket_id,
            kind,
            occurred_at: u32::try_from(ms / 1000).unwrap_or(u32::MAX),
            occurred_ms: ms,
            payload: p.to_string(),
        }
    }
}

/// How long one chunk of an insert may take to reach the server.
const INSERT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the server may take to store an insert once it has all of it.
const INSERT_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The running sink.
pub struct ClickHouseSink {
    client: Client,
    buffer: Vec<EventRow>,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl ClickHouseSink {
    pub fn new(client: Client) -> Self {
        ClickHouseSink {
            client,
            buffer: Vec::new(),
        }
    }

    /// One insert of the buffer, bounded in time: a ClickHouse that stops answering mid-insert
    /// fails the flush (retried with backoff) instead of holding the partitions for ever.
    async fn write(&self) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert::<EventRow>("events")
            .await?
            .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
        for row in &self.buffer {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

impl Handler for ClickHouseSink {
    async fn handle(&mut self, record: Record) -> Result<(), HandlerError> {
        match decode_raw(record.payload.as_deref()) {
            Ok(env) => {
                self.buffer
                    .push(EventRow::from_envelope(record.topic, record.key, &env));
                Ok(())
            }
            // A broken dead letter must not be dead-lettered again (it would loop).
            Err(e) if record.topic == Topic::DeadLetter => {
                warn!(error = %e, offset = record.offset, "unreadable dead letter skipped");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn flush(&mut self) -> Result<(), HandlerError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.write()
            .await
            .map_err(|e| HandlerError::Transient(format!("clickhouse insert: {e}")))?;
        metrics::counter!(crate::telemetry::SINK_ROWS_TOTAL).increment(self.buffer.len() as u64);
        debug!(rows = self.buffer.len(), "batch written to clickhouse");
        self.buffer.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use switchboard_contracts::{encode, Envelope, TicketChange, TicketEvent};
    use uuid::Uuid;

    #[test]
    fn rows_carry_ticket_and_kind() {
        let ticket_id = Uuid::now_v7();
        let env = Envelope::new(
            Uuid::now_v7(),
            Utc::now(),
            TicketEvent {
                ticket_id,
                ticket_number: "T-2026-000001".into(),
                customer_id: Uuid::nil(),
                change: TicketChange::Resolved,
                actor: Some("agent:x".into()),
            },
        );
        let raw = decode_raw(Some(&encode(&env))).unwrap();
        let row = EventRow::from_envelope(Topic::TicketEvents, Some("k".into()), &raw);
        assert_eq!(row.ticket_id, ticket_id.to_string());
        assert_eq!(row.kind, "resolved");
        assert_eq!(row.schema, "ticket_event");
        assert_eq!(row.occurred_ms / 1000, u64::from(row.occurred_at));
    }
}
