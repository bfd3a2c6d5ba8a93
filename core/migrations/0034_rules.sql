-- The team's own rules (issue 17): triggers run on a ticket's events, automations on time over
-- open tickets. The definition is the API's `Rule` JSON, checked on every write.
CREATE TABLE rules (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('trigger', 'automation')),
    definition jsonb NOT NULL,
    enabled boolean NOT NULL DEFAULT false,
    position integer NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 1,
    created_by text NOT NULL,
    updated_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX rules_order ON rules (position, created_at);

-- Every saved version of a rule: what it was and who saved it (the audit log says the rest).
CREATE TABLE rule_versions (
    rule_id uuid NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    definition jsonb NOT NULL,
    enabled boolean NOT NULL,
    saved_by text NOT NULL,
    saved_at timestamptz NOT NULL,
    PRIMARY KEY (rule_id, version)
);

-- What a rule did: one row per rule and cause (the event it ran on; for an automation, the
-- ticket at a version), written in the transaction of the rule's changes, so a redelivered
-- event or a second pass finds it and does nothing again. The ticket's recent rows are its
-- fire budget.
CREATE TABLE rule_fires (
    rule_id uuid NOT NULL,
    cause uuid NOT NULL,
    ticket_id uuid NOT NULL,
    -- For an automation: the ticket's version it acted on (it acts again only on a change).
    ticket_version integer,
    fired_at timestamptz NOT NULL,
    actions text[] NOT NULL,
    -- Set off by a rule's change or by time: what the ticket's fire budget counts.
    chained boolean NOT NULL DEFAULT false,
    PRIMARY KEY (rule_id, cause)
);
CREATE INDEX rule_fires_ticket ON rule_fires (ticket_id, fired_at);
CREATE INDEX rule_fires_rule ON rule_fires (rule_id, fired_at);
CREATE INDEX rule_fires_at ON rule_fires (fired_at);

-- Bumped by every change to `rules`: the processors reload their compiled rules when it moves.
CREATE TABLE rules_revision (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision bigint NOT NULL
);
INSERT INTO rules_revision VALUES (true, 0);
CREATE FUNCTION rules_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rules_revision SET revision = revision + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER rules_bump AFTER INSERT OR UPDATE OR DELETE ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION rules_bump();

-- When the status last changed ("pending for 48 hours"), kept by a trigger so no writer of the
-- status can forget it. Older tickets read `updated_at` instead.
ALTER TABLE tickets ADD COLUMN status_changed_at timestamptz;
CREATE FUNCTION tickets_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.status_changed_at := NEW.updated_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tickets_status_changed BEFORE UPDATE OF status ON tickets
    FOR EACH ROW EXECUTE FUNCTION tickets_status_changed();
-- Pending tickets from before: their last update is the best known start of the wait.
UPDATE tickets SET status_changed_at = updated_at WHERE status = 'pending';
