-- Alerts when strongly negative messages spike on a channel: a 5-minute window sliding every
-- minute, more than 20 messages at or below -0.5, per channel. The alert topic is for the
-- supervisors' on-call tooling.

CREATE TABLE inbound (
    value TEXT
) WITH (
    connector = 'kafka',
    bootstrap_servers = 'localhost:9092',
    topic = 'switchboard.inbound.messages',
    type = 'source',
    format = 'raw_string',
    'source.offset' = 'latest'
);

CREATE TABLE negative_spikes (
    window_end TIMESTAMP,
    channel TEXT,
    negative_messages BIGINT
) WITH (
    connector = 'kafka',
    bootstrap_servers = 'localhost:9092',
    topic = 'switchboard.analytics.negative_spikes',
    type = 'sink',
    format = 'json'
);

INSERT INTO negative_spikes
SELECT window.end AS window_end, channel, negative_messages
FROM (
    SELECT
        hop(interval '1 minute', interval '5 minutes') AS window,
        extract_json_string(value, '$.payload.channel') AS channel,
        count(*) AS negative_messages
    FROM inbound
    WHERE sentiment(extract_json_string(value, '$.payload.text')) <= -0.5
    GROUP BY window, channel
)
WHERE negative_messages > 20;
