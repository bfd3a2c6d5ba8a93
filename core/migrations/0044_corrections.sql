-- Agents' corrections of the models' triage (issue 20): a category or intent changed by an agent,
-- a sentiment flagged, with what the model had said and which model versions said it. They are the
-- next training round's labels (`switchboard models export-training-data`). Erasing a ticket
-- erases its corrections; the message text is read at export time, so an erased message is gone.
CREATE TABLE triage_corrections (
    id             uuid PRIMARY KEY,
    ticket_id      uuid NOT NULL,
    message_id     uuid NOT NULL,
    field          text NOT NULL CHECK (field IN ('category', 'intent', 'sentiment')),
    model_value    text,
    corrected      text NOT NULL,
    model_versions jsonb NOT NULL DEFAULT '{}',
    channel        text NOT NULL,
    corrected_by   text NOT NULL,
    at             timestamptz NOT NULL
);
CREATE INDEX triage_corrections_at ON triage_corrections (at);
CREATE INDEX triage_corrections_ticket ON triage_corrections (ticket_id);
