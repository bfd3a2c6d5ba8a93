-- Sentiment per category over 5-minute windows, straight from the inbound topic, with the
-- Switchboard models as Arroyo UDFs (udfs/classify, udfs/sentiment). Results go to a Kafka
-- topic the ClickHouse sink or a dashboard can read.
--
-- Topic names assume the default prefix "switchboard."; the envelope is JSON
-- ({schema, version, event_id, occurred_at, payload: {text, channel, ...}}).

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

CREATE TABLE sentiment_by_category (
    window_start TIMESTAMP,
    window_end TIMESTAMP,
    category TEXT,
    messages BIGINT,
    avg_sentiment DOUBLE,
    negative_share DOUBLE
) WITH (
    connector = 'kafka',
    bootstrap_servers = 'localhost:9092',
    topic = 'switchboard.analytics.sentiment_by_category',
    type = 'sink',
    format = 'json'
);

INSERT INTO sentiment_by_category
SELECT
    window.start AS window_start,
    window.end AS window_end,
    category,
    count(*) AS messages,
    avg(score) AS avg_sentiment,
    sum(CASE WHEN score <= -0.5 THEN 1.0 ELSE 0.0 END) / count(*) AS negative_share
FROM (
    SELECT
        tumble(interval '5 minutes') AS window,
        coalesce(classify(extract_json_string(value, '$.payload.text')), 'unknown') AS category,
        sentiment(extract_json_string(value, '$.payload.text')) AS score
    FROM inbound
)
GROUP BY window, category;
