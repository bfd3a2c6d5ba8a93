-- Post-purchase workflows: what the shop said about an order's shipping, the order actions taken
-- through the shop's Admin API (the ledger that makes each one idempotent), and returns (RMA).

ALTER TABLE orders
    ADD COLUMN shipping_address jsonb,
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
    ADD COLUMN cancelled_at timestamptz;

-- One row per order action: its id is the Idempotency-Key the shop sees, so a retried request
-- (the agent's, after a timeout or a 429) never acts twice.
CREATE TABLE order_actions (
    id              uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    ticket_id       uuid REFERENCES tickets (id) ON DELETE SET NULL,
    return_id       uuid,
    kind            text NOT NULL CHECK (kind IN ('cancel', 'refund', 'address')),
    params          jsonb NOT NULL,
    amount_cents    bigint CHECK (amount_cents IS NULL OR amount_cents >= 0),
    state           text NOT NULL CHECK (state IN ('awaiting_approval', 'pending', 'done', 'failed', 'rejected')),
    requested_by    text NOT NULL,
    decided_by      text,
    -- The caller's key for the request (a retry with the same key is the same action).
    request_key     text NOT NULL UNIQUE,
    attempts        integer NOT NULL DEFAULT 0,
    error           text,
    result          jsonb,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX order_actions_order ON order_actions (order_id, created_at);
CREATE INDEX order_actions_waiting ON order_actions (created_at) WHERE state = 'awaiting_approval';
CREATE INDEX order_actions_ticket ON order_actions (ticket_id) WHERE ticket_id IS NOT NULL;

CREATE SEQUENCE return_numbers START 1001;

CREATE TABLE returns (
    id            uuid PRIMARY KEY,
    number        text NOT NULL UNIQUE,
    order_id      uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    ticket_id     uuid REFERENCES tickets (id) ON DELETE SET NULL,
    status        text NOT NULL CHECK (status IN ('requested', 'approved', 'label_sent', 'in_transit', 'received',
                                                  'refunded', 'exchanged', 'rejected', 'cancelled')),
    reason        text NOT NULL CHECK (reason IN ('damaged', 'wrong_item', 'missing_item', 'did_not_fit', 'changed_mind', 'other')),
    resolution    text NOT NULL CHECK (resolution IN ('refund', 'exchange', 'store_credit')),
    -- [{line_item_id, title, quantity, price_cents}]
    items         jsonb NOT NULL,
    photos        jsonb NOT NULL DEFAULT '[]',
    note          text,
    value_cents   bigint NOT NULL CHECK (value_cents >= 0),
    customer_pays_shipping boolean NOT NULL,
    automatic     boolean NOT NULL DEFAULT false,
    source        text NOT NULL CHECK (source IN ('helpcentre', 'chat', 'email', 'agent', 'api')),
    decided_by    text,
    reject_reason text,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    approved_at   timestamptz,
    refunded_at   timestamptz
);
CREATE INDEX returns_order ON returns (order_id);
CREATE INDEX returns_status ON returns (status, created_at);
CREATE INDEX returns_ticket ON returns (ticket_id) WHERE ticket_id IS NOT NULL;
CREATE INDEX returns_customer ON returns (customer_id);
ALTER TABLE order_actions ADD CONSTRAINT order_actions_return FOREIGN KEY (return_id) REFERENCES returns (id) ON DELETE SET NULL;
