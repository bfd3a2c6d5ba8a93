-- The agent workspace (issue 15): teams of agents, tags on tickets, and saved views over the
-- tickets. Business times are bound by the writer (`clock::now()`), so no column defaults to
-- the database's clock.

-- A team: its members, a supervisor, the skills it covers and the business calendar its SLA
-- clocks run on (a name from `sla.calendars`; none: the policy's own).
CREATE TABLE teams (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    supervisor_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    skills text[] NOT NULL DEFAULT '{}',
    calendar text,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE team_members (
    team_id uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, agent_id)
);
CREATE INDEX team_members_agent ON team_members (agent_id);

-- Tags (normalised: lowercase, no spaces) and the team a ticket is with (set when it is
-- assigned to a team; its assignee's teams count too in a view's team filter).
ALTER TABLE tickets ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE tickets ADD COLUMN team_id uuid REFERENCES teams (id) ON DELETE SET NULL;
CREATE INDEX tickets_tags ON tickets USING gin (tags);
CREATE INDEX tickets_team ON tickets (team_id) WHERE team_id IS NOT NULL;
-- The views' common shapes: an agent's open work, everyone's open work by recency.
CREATE INDEX tickets_assignee_updated ON tickets (assigned_agent_id, updated_at DESC, id DESC)
    WHERE assigned_agent_id IS NOT NULL;
CREATE INDEX tickets_status_updated ON tickets (status, updated_at DESC, id DESC);

-- A saved view: a typed filter (JSON, validated by the API on every write) and a sort, personal
-- (owner set), shared with a team (team set), or shared with everyone (neither).
CREATE TABLE views (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    owner_agent_id uuid REFERENCES agents (id) ON DELETE CASCADE,
    team_id uuid REFERENCES teams (id) ON DELETE CASCADE,
    filter jsonb NOT NULL,
    sort jsonb NOT NULL,
    position integer NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 1,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CHECK (owner_agent_id IS NULL OR team_id IS NULL)
);
CREATE INDEX views_owner ON views (owner_agent_id) WHERE owner_agent_id IS NOT NULL;
CREATE INDEX views_team ON views (team_id) WHERE team_id IS NOT NULL;
