-- A lifted halt is kept with when it was lifted (issue 17): the fire budget after a person or
-- the customer acts counts only the chained fires since, so the chain they set off is not cut
-- at once by the fires that caused the halt. A halted ticket: a row with `lifted_at` null.
ALTER TABLE rules_halts ADD COLUMN lifted_at timestamptz;
