-- Identity the customer merely asserts. A chat whose visitor the shop did not sign
-- (`channels.chat.identity_secret`) is its own customer, known by its conversation (identity
-- kind `chat`), with the typed address kept only as `claimed_email`, never matched or merged on.
-- A signed identity without an email is known by the shop's id for the visitor (kind `external`).
ALTER TABLE customer_identities DROP CONSTRAINT IF EXISTS customer_identities_kind_check;
ALTER TABLE customer_identities ADD CONSTRAINT customer_identities_kind_check
    CHECK (kind IN ('email', 'phone', 'messenger', 'instagram', 'external', 'chat'));

-- False for a customer known only from an unverified chat; the console says "unverified".
ALTER TABLE customers ADD COLUMN verified boolean NOT NULL DEFAULT true;
ALTER TABLE customers ADD COLUMN claimed_email text;

-- Whether the conversation's identity was signed by the shop (rows from before: they were not).
ALTER TABLE chat_conversations ADD COLUMN verified boolean NOT NULL DEFAULT false;
ALTER TABLE chat_conversations ADD COLUMN external_id text;
ALTER TABLE chat_conversations ALTER COLUMN customer_email DROP NOT NULL;
