-- Satisfaction surveys: one per resolved ticket (sent on its channel with a random token), the
-- agent it rates, and the answer once given.
CREATE TABLE csat (
    ticket_id   uuid PRIMARY KEY REFERENCES tickets(id),
    token       text NOT NULL UNIQUE,
    agent_id    uuid REFERENCES agents(id),
    rating      smallint CHECK (rating BETWEEN 1 AND 5),
    comment     text,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz
);
CREATE INDEX csat_agent ON csat (agent_id) WHERE rating IS NOT NULL;
