-- API tokens issued by an admin: the role they carry and, for agents, whose they are. Only the
-- SHA-256 of a token is kept.
CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    token_sha256  bytea NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
    agent_id      uuid REFERENCES agents(id),
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);
