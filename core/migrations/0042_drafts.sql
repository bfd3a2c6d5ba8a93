-- Reply drafts from solved tickets (issue 20). A resolved ticket leaves its question and the
-- last agent reply, scrubbed of personal data, as an example; the processors index the examples
-- by `revision` (a reopened, erased or expired ticket's example becomes a tombstone with a new
-- revision, emptied, so the indexes drop it). No foreign key to tickets: the tombstone outlives
-- the erased ticket.
CREATE SEQUENCE reply_example_revision_seq;
CREATE TABLE reply_examples (
    ticket_id   uuid PRIMARY KEY,
    customer_id uuid NOT NULL,
    category    text,
    intent      text,
    language    text,
    question    text NOT NULL,
    reply       text NOT NULL,
    solved_at   timestamptz NOT NULL,
    revision    bigint NOT NULL DEFAULT nextval('reply_example_revision_seq'),
    deleted_at  timestamptz
);
CREATE INDEX reply_examples_revision ON reply_examples (revision);
CREATE INDEX reply_examples_solved ON reply_examples (solved_at) WHERE deleted_at IS NULL;

-- The drafts offered on a ticket for the customer's latest message (placeholders unfilled).
ALTER TABLE tickets ADD COLUMN drafts jsonb NOT NULL DEFAULT '[]';

-- What the agent did with them: one row per reply that answered offered drafts.
CREATE TABLE draft_outcomes (
    reply_id    uuid PRIMARY KEY,
    ticket_id   uuid NOT NULL,
    draft_id    uuid,
    category    text,
    outcome     text NOT NULL CHECK (outcome IN ('sent', 'edited', 'discarded')),
    similarity  real,
    agent_id    uuid,
    at          timestamptz NOT NULL
);
CREATE INDEX draft_outcomes_at ON draft_outcomes (at);
CREATE INDEX draft_outcomes_ticket ON draft_outcomes (ticket_id);
