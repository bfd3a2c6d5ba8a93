-- Issued API tokens expire. Tokens issued before this migration get 90 days from now (the
-- default lifetime of a new token); every new token names its expiry. `revoked_at` (0008) is set
-- by `DELETE /v1/tokens/{id}`. The lookup by digest checks both.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz NOT NULL DEFAULT (now() + interval '90 days');
ALTER TABLE api_tokens ALTER COLUMN expires_at DROP DEFAULT;
CREATE INDEX api_tokens_created ON api_tokens (created_at, id);
