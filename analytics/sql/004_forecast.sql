-- The demand forecast (analytics::forecast): one row per run, series and hour ahead. A run is
-- stored under its `generated_at`, so the forecast made before a day (day-ahead) and the latest
-- re-forecast can both be read; a run written twice collapses (ReplacingMergeTree on the key).
-- `series` is `all`, `channel:<name>` or `category:<name>`.
-- Runs on ClickHouse 18.16 (Debian) and current releases alike.
CREATE TABLE IF NOT EXISTS forecasts
(
    generated_at  DateTime,
    series        String,
    hour          DateTime,
    point         Float64,
    lower         Float64,
    upper         Float64,
    level         Float64
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(generated_at)
ORDER BY (series, generated_at, hour);
