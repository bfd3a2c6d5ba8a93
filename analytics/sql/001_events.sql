-- Every event from every Switchboard topic, one row each. ReplacingMergeTree keyed on the event id
-- collapses a replayed event; dashboards read with FINAL (or uniqExact(event_id)) so a replay is
-- never counted twice, even before the background merge runs.
-- Runs on ClickHouse 18.16 (Debian) and current releases alike: no DateTime64, Map, JSON or TTL.
CREATE TABLE IF NOT EXISTS events
(
    event_id     String,
    schema       String,
    version      UInt16,
    topic        String,
    key          String,
    ticket_id    String,
    kind         String,
    occurred_at  DateTime,
    occurred_ms  UInt64,
    payload      String,
    ingested_at  DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (schema, kind, event_id);
