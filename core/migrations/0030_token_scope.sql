-- Token scopes (issue 16): a machine that only reads (a reporting job, a dashboard) gets a
-- token that can do nothing else. `full`: whatever its role may do; `read`: GET alone.
ALTER TABLE api_tokens
    ADD COLUMN scope text NOT NULL DEFAULT 'full' CHECK (scope IN ('full', 'read'));
