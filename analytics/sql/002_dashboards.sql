-- What the supervisor dashboard reads, kept current by materialized views over `events` (each
-- insert into `events` also lands here). Replays never count twice: counts are uniqExact over
-- event ids (AggregatingMergeTree states merge exactly), and the per-event fact tables are
-- ReplacingMergeTree keyed by event id, read with FINAL.
-- ClickHouse 18.16 compatible: visitParamExtract* for flat JSON fields (the sink writes compact JSON:
-- these functions expect no whitespace between a key and its value), no JSONExtract.

-- Tickets created, per hour, channel, category, priority.
CREATE TABLE IF NOT EXISTS ticket_volume_hourly
(
    hour      DateTime,
    channel   String,
    category  String,
    priority  String,
    tickets   AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, channel, category, priority);

CREATE MATERIALIZED VIEW IF NOT EXISTS ticket_volume_hourly_mv TO ticket_volume_hourly AS
SELECT toStartOfHour(occurred_at) AS hour,
       visitParamExtractString(payload, 'channel') AS channel,
       visitParamExtractString(payload, 'category') AS category,
       visitParamExtractString(payload, 'priority') AS priority,
       uniqExactState(event_id) AS tickets
FROM events
WHERE schema = 'ticket_event' AND kind = 'created'
GROUP BY hour, channel, category, priority;

-- SLA warnings, breaches and met targets, per hour and metric.
CREATE TABLE IF NOT EXISTS sla_hourly
(
    hour    DateTime,
    kind    String,
    metric  String,
    events  AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, kind, metric);

CREATE MATERIALIZED VIEW IF NOT EXISTS sla_hourly_mv TO sla_hourly AS
SELECT toStartOfHour(occurred_at) AS hour,
       kind,
       visitParamExtractString(payload, 'metric') AS metric,
       uniqExactState(event_id) AS events
FROM events
WHERE schema = 'sla_event'
GROUP BY hour, kind, metric;

-- The ticket lifecycle, one row per event: first-response and resolution times come from here
-- (as minimum times per ticket, which a replayed event cannot change, so no FINAL is needed).
-- Ordered by day first so a dashboard window reads only its days.
CREATE TABLE IF NOT EXISTS ticket_facts
(
    event_id     String,
    ticket_id    String,
    kind         String,
    occurred_at  DateTime,
    occurred_ms  UInt64,
    channel      String,
    direction    String,
    agent_id     String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), ticket_id, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS ticket_facts_mv TO ticket_facts AS
SELECT event_id, ticket_id, kind, occurred_at, occurred_ms,
       visitParamExtractString(payload, 'channel') AS channel,
       visitParamExtractString(payload, 'direction') AS direction,
       visitParamExtractString(payload, 'agent_id') AS agent_id
FROM events
WHERE schema = 'ticket_event' AND kind IN ('created', 'message_added', 'assigned', 'resolved', 'reopened');

-- Model predictions per message (sentiment trend, category mix).
CREATE TABLE IF NOT EXISTS predictions
(
    event_id     String,
    ticket_id    String,
    occurred_at  DateTime,
    category     String,
    intent       String,
    sentiment    Float32
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (occurred_at, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS predictions_mv TO predictions AS
SELECT event_id, ticket_id, occurred_at,
       visitParamExtractString(payload, 'category') AS category,
       visitParamExtractString(payload, 'intent') AS intent,
       toFloat32(visitParamExtractFloat(payload, 'score')) AS sentiment
FROM events
WHERE schema = 'enrichment_result';
