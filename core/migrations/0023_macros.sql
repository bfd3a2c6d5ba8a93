-- Macros (issue 15): named sets of actions (a reply with placeholders, an internal note,
-- status, priority, tags, custom fields, team) applied to a ticket in one transaction. Shared
-- with everyone (no owner, no team), with a team's members, or personal to one agent. Canned
-- replies become macros with one reply action: the `/v1/canned-replies` routes read and write
-- those, so one table holds both.
CREATE TABLE macros (
    id uuid PRIMARY KEY,
    title text NOT NULL,
    owner_agent_id uuid REFERENCES agents (id) ON DELETE CASCADE,
    team_id uuid REFERENCES teams (id) ON DELETE CASCADE,
    actions jsonb NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    version int NOT NULL DEFAULT 1,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (owner_agent_id IS NULL OR team_id IS NULL)
);
-- Titles are unique where a person picks among them: among the shared macros, a team's, and
-- one agent's own.
CREATE UNIQUE INDEX macros_title ON macros (
    COALESCE(owner_agent_id, team_id, '00000000-0000-0000-0000-000000000000'::uuid), lower(title)
);
CREATE INDEX macros_owner ON macros (owner_agent_id) WHERE owner_agent_id IS NOT NULL;

-- Canned titles were unique as written; macro titles are unique whatever their case, so a
-- second "refund" beside "Refund" keeps its text and gets a number.
INSERT INTO macros (id, title, actions, tags, created_by, created_at, updated_at)
SELECT id,
       CASE WHEN n = 1 THEN title ELSE title || ' (' || n || ')' END,
       jsonb_build_array(jsonb_build_object('type', 'reply', 'text', body)), tags,
       'canned reply', created_at, updated_at
FROM (SELECT *, row_number() OVER (PARTITION BY lower(title) ORDER BY created_at, id) AS n
      FROM canned_replies) c;
DROP TABLE canned_replies;
