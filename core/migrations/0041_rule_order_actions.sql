-- Order actions the team's rules ask for: queued in the rule fire's transaction (one row per fire
-- and action: a redelivered event queues nothing more), run by the serving role through the same
-- code as an agent's request, with `rule:<request id>` as the action's request key.
CREATE TABLE rule_order_requests (
    id              uuid PRIMARY KEY,
    rule_id         uuid NOT NULL,
    rule_name       text NOT NULL,
    ticket_id       uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('cancel', 'refund', 'resend')),
    amount_cents    bigint CHECK (amount_cents IS NULL OR amount_cents > 0),
    state           text NOT NULL CHECK (state IN ('queued', 'done', 'failed')),
    -- The order action it became (done: run, or waiting for a supervisor).
    action_id       uuid,
    attempts        integer NOT NULL DEFAULT 0,
    error           text,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX rule_order_requests_queued ON rule_order_requests (next_attempt_at) WHERE state = 'queued';
