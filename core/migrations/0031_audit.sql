-- The audit log (issue 16): who changed what, when and from where. Written in the same
-- transaction as the change it records, so a change and its entry stand or fall together.
CREATE TABLE audit_log (
    id         uuid PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- `admin` (the configured token), `token:<id>` (an issued token: `role` says which),
    -- `agent:<id>`, `cli`, `system`.
    actor      text NOT NULL,
    role       text,
    -- `agent.updated`, `token.issued`, ... (dotted: the subject's kind, then what happened).
    action     text NOT NULL,
    -- `agent:<id>`, `token:<id>`, `ticket:<id>`.
    subject    text NOT NULL,
    ticket_id  uuid,
    before     jsonb,
    after      jsonb,
    ip         text,
    user_agent text
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor, at DESC, id DESC);
CREATE INDEX audit_log_subject ON audit_log (subject, at DESC, id DESC);
CREATE INDEX audit_log_ticket ON audit_log (ticket_id, at DESC, id DESC) WHERE ticket_id IS NOT NULL;
