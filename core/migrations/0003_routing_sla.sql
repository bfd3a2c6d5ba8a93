-- Routing, SLA clocks, escalation and the knowledge-base bot (issue 5).

-- Agents: seniority, shift in their own timezone, skill levels, per-channel capacity and the
-- running sums behind the satisfaction and response-time parts of the routing score.
ALTER TABLE agents
    ADD COLUMN level             text NOT NULL DEFAULT 'agent' CHECK (level IN ('agent', 'senior', 'supervisor')),
    ADD COLUMN timezone          text NOT NULL DEFAULT 'UTC',
    ADD COLUMN shift_start       time,
    ADD COLUMN shift_end         time,
    ADD COLUMN skill_levels      jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN channel_capacity  jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN channel_active    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN csat_sum          double precision NOT NULL DEFAULT 0,
    ADD COLUMN csat_count        integer NOT NULL DEFAULT 0,
    ADD COLUMN response_secs_sum double precision NOT NULL DEFAULT 0,
    ADD COLUMN response_count    integer NOT NULL DEFAULT 0;
CREATE INDEX agents_online_skills ON agents USING gin (skills) WHERE status = 'online';

-- Orders known for a customer (order webhooks land here); the largest recent one raises priority.
CREATE TABLE orders (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers(id),
    external_id  text NOT NULL UNIQUE,
    total_cents  bigint NOT NULL CHECK (total_cents >= 0),
    currency     text NOT NULL DEFAULT 'USD',
    status       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id, created_at DESC);

ALTER TABLE tickets
    ADD COLUMN queue             text NOT NULL DEFAULT 'general' CHECK (queue IN ('general', 'senior', 'supervisor')),
    ADD COLUMN escalated_at      timestamptz,
    ADD COLUMN escalation_reason text,
    ADD COLUMN first_response_at timestamptz,
    ADD COLUMN resolved_at       timestamptz,
    ADD COLUMN next_due_at       timestamptz,
    ADD COLUMN contact_count     integer NOT NULL DEFAULT 1,
    ADD COLUMN bot_state         text CHECK (bot_state IN ('answered', 'handed_over', 'resolved', 'reopened')),
    ADD COLUMN kb_suggestions    jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN version           integer NOT NULL DEFAULT 1;
DROP INDEX tickets_waiting;
CREATE INDEX tickets_waiting ON tickets (priority_rank DESC, next_due_at NULLS LAST, created_at)
    WHERE status = 'open' AND assigned_agent_id IS NULL;
CREATE INDEX tickets_customer_category ON tickets (customer_id, category, created_at DESC);
CREATE INDEX tickets_bot_answered ON tickets (updated_at) WHERE bot_state = 'answered' AND status = 'pending';

ALTER TABLE assignments
    ADD COLUMN channel        text,
    ADD COLUMN accepted_at    timestamptz,
    ADD COLUMN release_reason text;
CREATE INDEX assignments_unaccepted ON assignments (assigned_at) WHERE released_at IS NULL AND accepted_at IS NULL;

-- One SLA clock per ticket, metric and cycle (next_response starts a new cycle each time the
-- customer writes after a reply). `elapsed_secs` is business time consumed before the current
-- run; `running_since` is null while paused or stopped. `next_fire_at` is the next warning or
-- breach instant, null when nothing is due (paused, stopped, or both fired).
CREATE TABLE sla_clocks (
    ticket_id      uuid NOT NULL REFERENCES tickets(id),
    metric         text NOT NULL CHECK (metric IN ('first_response', 'next_response', 'resolution')),
    cycle          integer NOT NULL,
    policy         text NOT NULL,
    calendar       text NOT NULL,
    target_secs    bigint NOT NULL CHECK (target_secs > 0),
    started_by     uuid NOT NULL UNIQUE,
    started_at     timestamptz NOT NULL,
    elapsed_secs   double precision NOT NULL DEFAULT 0,
    running_since  timestamptz,
    warn_at        timestamptz,
    due_at         timestamptz,
    next_fire_at   timestamptz,
    warned_at      timestamptz,
    breached_at    timestamptz,
    stopped_at     timestamptz,
    PRIMARY KEY (ticket_id, metric, cycle)
);
CREATE INDEX sla_clocks_fire ON sla_clocks (next_fire_at) WHERE next_fire_at IS NOT NULL;

-- A merged ticket points at the one it was merged into; messages naming it land there.
ALTER TABLE tickets ADD COLUMN merged_into uuid REFERENCES tickets(id);
