-- Mentions in internal notes (issue 15): who was named in which note, and whether they have
-- read it. A note is a `messages` row with direction 'note'; erasing or expiring its ticket's
-- messages takes its mentions with it.
CREATE TABLE note_mentions (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    ticket_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    read_at timestamptz,
    PRIMARY KEY (message_id, agent_id)
);
CREATE INDEX note_mentions_agent ON note_mentions (agent_id, created_at DESC);

-- Notes on a customer's profile (issue 15), shown beside every ticket of that customer. They
-- follow the customer through a merge and go with it when it is erased (the cascade).
CREATE TABLE customer_notes (
    id uuid PRIMARY KEY,
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    author text NOT NULL,
    text text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX customer_notes_customer ON customer_notes (customer_id, created_at DESC);
