-- Tickets whose chained rule fires are halted (issue 17): the fire budget was spent, so a loop
-- no save-time check could see is cut. The halt sticks: no fire set off by a rule or by time
-- happens on the ticket until a person or the customer acts on it (an event the rules stage
-- sees that no rule caused), which lifts it. Goes with its ticket.
CREATE TABLE rules_halts (
    ticket_id uuid PRIMARY KEY REFERENCES tickets(id) ON DELETE CASCADE,
    halted_at timestamptz NOT NULL,
    fires integer NOT NULL
);
