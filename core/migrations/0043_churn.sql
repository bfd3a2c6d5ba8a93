-- Churn risk (issue 20): how many times a ticket was reopened (by the customer writing again or
-- by a person), one of the signals of `switchboard_tickets::churn`.
ALTER TABLE tickets ADD COLUMN reopen_count integer NOT NULL DEFAULT 0;
