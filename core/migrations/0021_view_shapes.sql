-- The views' two-status shapes (issue 15), found slow by `switchboard-sim bench workspace`: a
-- filter on open and pending (or resolved and closed) ordered by time sorted every match. Partial
-- indexes in the views' order let a page stop at its 50th row and a capped count at its cap.
CREATE INDEX tickets_unsolved_updated ON tickets (updated_at DESC, id DESC)
    WHERE status IN ('open', 'pending') AND merged_into IS NULL;
CREATE INDEX tickets_solved_updated ON tickets (updated_at DESC, id DESC)
    WHERE status IN ('resolved', 'closed') AND merged_into IS NULL;
CREATE INDEX tickets_escalated ON tickets (updated_at DESC, id DESC)
    WHERE escalated_at IS NOT NULL AND merged_into IS NULL;
