-- Macros applied with a client's request id (issue 15): a retried application finds its row and
-- changes and sends nothing twice. Goes with its ticket.
CREATE TABLE macro_applications (
    id uuid PRIMARY KEY,
    ticket_id uuid NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    macro_id uuid NOT NULL,
    applied_at timestamptz NOT NULL
);
CREATE INDEX macro_applications_ticket ON macro_applications (ticket_id);
