-- The audit log (Postgres `audit_log`), copied here by the serving role's audit export so it sits
-- beside the events for long-term reports. ReplacingMergeTree keyed on (at, id) collapses a row
-- the export sent twice (it re-reads a minute of overlap each pass); read with FINAL.
-- Runs on ClickHouse 18.16 (Debian) and current releases alike.
CREATE TABLE IF NOT EXISTS audit_log
(
    id           String,
    at           DateTime,
    at_ms        UInt64,
    actor        String,
    role         String,
    action       String,
    subject      String,
    ticket_id    String,
    before       String,
    after        String,
    ip           String,
    user_agent   String,
    exported_at  DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (at, id);
