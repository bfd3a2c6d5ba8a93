-- Agent lifecycle (issue 16): an admin edits an agent under an optimistic version and
-- deactivates one who leaves (signed out, tokens revoked, tickets back in the queue, history
-- kept for reports); a deactivated agent is never online, so routing never picks it.
ALTER TABLE agents
    ADD COLUMN version        integer NOT NULL DEFAULT 1,
    ADD COLUMN updated_at     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN deactivated_at timestamptz,
    ADD CONSTRAINT agents_deactivated_offline CHECK (deactivated_at IS NULL OR status = 'offline');
