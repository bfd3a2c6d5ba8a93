-- Single sign-on (issue 16): people sign in at the organisation's OpenID Provider and get a
-- server-side session; machines keep their bearer tokens.

-- Who a person is at the IdP: (issuer, subject) names one agent for good, whatever the email
-- later says.
CREATE TABLE agent_identities (
    issuer text NOT NULL,
    subject text NOT NULL,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX agent_identities_agent ON agent_identities (agent_id);

-- A sign-in on its way through the IdP: the `state` it comes back with, the `nonce` its ID token
-- must carry, the PKCE verifier of its code, and the SHA-256 of the binder cookie of the browser
-- that started it (a callback from any other browser is refused: no login CSRF). Used once
-- (deleted when the IdP answers), and given up after ten minutes.
CREATE TABLE sso_logins (
    state_sha256 bytea PRIMARY KEY,
    binder_sha256 bytea NOT NULL,
    nonce text NOT NULL,
    pkce_verifier text NOT NULL,
    return_to text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX sso_logins_created ON sso_logins (created_at);

-- A signed-in person. The cookie carries a random secret stored here only as its SHA-256; state
-- changes also need the CSRF token whose SHA-256 is kept beside it. A session ends when revoked
-- (sign-out, an admin, deactivation, the IdP no longer granting a role), when idle for longer
-- than the configured idle time, or at its absolute expiry.
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    secret_sha256 bytea NOT NULL UNIQUE,
    csrf_sha256 bytea NOT NULL,
    agent_id uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
    issuer text NOT NULL,
    subject text NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    idle_secs integer NOT NULL CHECK (idle_secs > 0),
    expires_at timestamptz NOT NULL,
    -- The IdP is asked again (refresh token) after this: a role taken away there ends the session.
    refreshed_at timestamptz NOT NULL,
    -- Sealed with a key derived from the client secret (AES-256-GCM): a copy of the table
    -- alone cannot be replayed at the IdP.
    refresh_token_sealed bytea,
    id_token text,
    ip text,
    user_agent text,
    revoked_at timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_agent ON sessions (agent_id, created_at DESC);
CREATE INDEX sessions_live ON sessions (expires_at) WHERE revoked_at IS NULL;
