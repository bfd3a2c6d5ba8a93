-- What the models said about each message, and the ticket's latest reading.
ALTER TABLE messages
    ADD COLUMN category            text,
    ADD COLUMN category_confidence real,
    ADD COLUMN intent              text,
    ADD COLUMN intent_confidence   real,
    ADD COLUMN sentiment           real,
    ADD COLUMN sentiment_label     text,
    ADD COLUMN language            text,
    ADD COLUMN model_versions      jsonb;

ALTER TABLE tickets ADD COLUMN intent text;
