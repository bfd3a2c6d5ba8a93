-- Outbound webhooks (issue 17): subscriptions per event type, signed per the Standard Webhooks
-- specification, delivered at least once from a ledger with backoff and a bounded number of
-- attempts. A delivery that used them all stays here as `failed` (the dead letter, visible and
-- redeliverable through GET/POST /v1/webhooks/{id}/deliveries).
CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    url text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- Event types (`ticket.created`, `sla.breached`, ..., `*` for all); `rule.fired` comes
    -- only from a rule's `webhook` action.
    events text[] NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    -- `whsec_<base64>`: HMAC keys (symmetric, so kept to sign with).
    secret text NOT NULL,
    -- After a rotation, the old key signs too until it expires: two valid signatures.
    previous_secret text,
    previous_expires_at timestamptz,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
    -- The `webhook-id` header: the same on every attempt, so receivers deduplicate on it.
    id uuid PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- The event (or rule fire) carried: one delivery per webhook and event, however often the
    -- event is read again.
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    -- The body exactly as signed and sent.
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    -- Attempts before the last redelivery: each redelivery gets max_attempts more, and the
    -- attempt log keeps numbering on.
    attempt_base integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL,
    delivered_at timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_list ON webhook_deliveries (webhook_id, id DESC);

-- Every attempt of a delivery: when, the answer (status, a cut of the body or the error), how long.
CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    at timestamptz NOT NULL,
    status integer,
    error text,
    duration_ms integer NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
