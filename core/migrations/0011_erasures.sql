-- A record of every erasure (by request or by retention): when, how much, never what.
CREATE TABLE erasures (
    id          uuid PRIMARY KEY,
    customer_id uuid,
    tickets     bigint NOT NULL,
    messages    bigint NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('request', 'retention')),
    at          timestamptz NOT NULL DEFAULT now()
);
