-- Notifications that reach people outside the console (issue 17): their preferences, and the
-- ledger the ingest role's notifier sends from (email through the relay, SMS through the
-- provider), one message per person and channel for what is due together (a digest).
CREATE TABLE notification_preferences (
    agent_id uuid PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    -- The API's `Preferences` JSON, checked on every write.
    preferences jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    channel text NOT NULL CHECK (channel IN ('email', 'sms')),
    -- `mention`, `rule`, `sla`.
    topic text NOT NULL,
    -- The ticket event it comes from: one per person and channel however often it is read.
    event_id uuid NOT NULL,
    ticket_id uuid NOT NULL,
    ticket_number text NOT NULL,
    text text NOT NULL,
    -- Where it goes (the address or number when it was queued).
    recipient text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    created_at timestamptz NOT NULL,
    -- Not before: the digest window, or the end of the person's quiet hours.
    due_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    sent_at timestamptz,
    -- The message it went out in (a digest carries several).
    message_id uuid,
    UNIQUE (event_id, agent_id, channel)
);
CREATE INDEX notifications_due ON notifications (due_at) WHERE state = 'pending';
CREATE INDEX notifications_person ON notifications (agent_id, channel, due_at) WHERE state = 'pending';
