-- Collision detection (issue 15): who is looking at or typing on a ticket right now. Presence is
-- ephemeral: a row lives while its agent's console keeps sending heartbeats (it counts only
-- while `seen_at` is recent), so the table is UNLOGGED (a crash forgets who was looking, which
-- the next heartbeat restores) and is not part of any report.
CREATE UNLOGGED TABLE ticket_presence (
    ticket_id uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    state text NOT NULL CHECK (state IN ('viewing', 'typing')),
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, agent_id)
);
CREATE INDEX ticket_presence_seen ON ticket_presence (seen_at);
