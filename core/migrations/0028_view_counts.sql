-- Views' counts read from indexes alone (issue 15, `bench workspace`): a count stops at 10,000,
-- but each of those rows was a heap visit when the index lacked a column of the filter (merged
-- tickets are in no view, so `merged_into` was one). With these, and the visibility map a vacuumed
-- table keeps, the built-in views count from their index pages.
CREATE INDEX tickets_live ON tickets (status, assigned_agent_id) INCLUDE (team_id)
    WHERE merged_into IS NULL;
CREATE INDEX tickets_team_live ON tickets (team_id, status)
    WHERE team_id IS NOT NULL AND merged_into IS NULL;
CREATE INDEX tickets_solved_at ON tickets (resolved_at)
    WHERE status IN ('resolved', 'closed') AND merged_into IS NULL;
-- The running clocks that warned: "SLA at risk".
CREATE INDEX sla_clocks_at_risk ON sla_clocks (ticket_id)
    WHERE stopped_at IS NULL AND warned_at IS NOT NULL;

-- Pages in their views' order (1M-ticket bench: the unassigned queue and SLA at risk sorted
-- every match to show 50): the queue by priority, unsolved tickets by their next deadline.
CREATE INDEX tickets_unassigned_priority ON tickets (priority_rank DESC, id DESC)
    WHERE status = 'open' AND assigned_agent_id IS NULL AND merged_into IS NULL;
CREATE INDEX tickets_unsolved_due ON tickets ((COALESCE(next_due_at, 'infinity'::timestamptz)), id)
    WHERE status IN ('open', 'pending') AND merged_into IS NULL;
