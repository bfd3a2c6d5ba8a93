-- A reply being handed to its provider is claimed for a while: when a rebalance gives the
-- same reply to a second consumer while the first is still sending it, the second waits for
-- the first's outcome instead of sending it again. A claim whose holder died lapses.
ALTER TABLE deliveries ADD COLUMN claimed_until timestamptz NOT NULL DEFAULT now();
