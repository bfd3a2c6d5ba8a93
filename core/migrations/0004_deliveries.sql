-- Replies handed to a channel provider: one row per reply, so a redelivered reply is not sent
-- again once the provider accepted it.
CREATE TABLE deliveries (
    reply_id     uuid PRIMARY KEY,
    channel      text NOT NULL,
    recipient    text NOT NULL,
    state        text NOT NULL DEFAULT 'sending' CHECK (state IN ('sending', 'sent')),
    attempts     integer NOT NULL DEFAULT 1,
    provider_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
