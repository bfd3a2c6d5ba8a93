-- The ticket store. Written by the processors (tickets, messages, assignments, outbox) and the
-- serving role (agents). Every write path is idempotent: see ARCHITECTURE.md.

CREATE TABLE customers (
    id          uuid PRIMARY KEY,
    email       text UNIQUE,
    phone       text UNIQUE,
    name        text,
    tier        text NOT NULL DEFAULT 'standard',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (email IS NOT NULL OR phone IS NOT NULL)
);

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    email             text NOT NULL UNIQUE,
    skills            text[] NOT NULL DEFAULT '{}',
    languages         text[] NOT NULL DEFAULT '{}',
    max_concurrent    integer NOT NULL CHECK (max_concurrent > 0),
    status            text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'away', 'offline')),
    active_count      integer NOT NULL DEFAULT 0 CHECK (active_count >= 0),
    last_assigned_at  timestamptz,
    status_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (active_count <= max_concurrent)
);

CREATE SEQUENCE ticket_number_seq;

CREATE TABLE tickets (
    id                uuid PRIMARY KEY,
    number            text NOT NULL UNIQUE,
    customer_id       uuid NOT NULL REFERENCES customers(id),
    channel           text NOT NULL,
    conversation_key  text,
    subject           text,
    status            text NOT NULL CHECK (status IN ('open', 'pending', 'resolved', 'closed')),
    priority          text NOT NULL,
    priority_rank     smallint NOT NULL,
    category          text,
    required_skill    text,
    language          text,
    sentiment         real,
    assigned_agent_id uuid REFERENCES agents(id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tickets_customer ON tickets (customer_id, created_at DESC);
CREATE INDEX tickets_conversation ON tickets (conversation_key) WHERE conversation_key IS NOT NULL;
CREATE INDEX tickets_waiting ON tickets (priority_rank DESC, created_at) WHERE status = 'open' AND assigned_agent_id IS NULL;

CREATE TABLE messages (
    id           uuid PRIMARY KEY,
    ticket_id    uuid NOT NULL REFERENCES tickets(id),
    channel      text NOT NULL,
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound', 'note')),
    external_id  text,
    author       text,
    text         text NOT NULL,
    truncated    boolean NOT NULL DEFAULT false,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_ticket ON messages (ticket_id, received_at);

CREATE TABLE assignments (
    id           uuid PRIMARY KEY,
    ticket_id    uuid NOT NULL REFERENCES tickets(id),
    agent_id     uuid NOT NULL REFERENCES agents(id),
    reason       text NOT NULL,
    candidates   jsonb NOT NULL DEFAULT '[]',
    assigned_at  timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz
);
-- A ticket has at most one active assignment, whatever number of routers run.
CREATE UNIQUE INDEX assignments_one_active ON assignments (ticket_id) WHERE released_at IS NULL;
CREATE INDEX assignments_agent ON assignments (agent_id) WHERE released_at IS NULL;

-- Events written in the same transaction as the state they describe, published after commit.
CREATE TABLE outbox (
    seq         bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
