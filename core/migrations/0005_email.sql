-- Email threading and attachments: what a connector said about a message (its provider
-- headers, e.g. the email Message-ID and References) and its attachments' metadata (contents
-- live in the attachment store, by SHA-256).
ALTER TABLE messages ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE messages ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]';
CREATE INDEX messages_attachments ON messages USING gin (attachments jsonb_path_ops);
