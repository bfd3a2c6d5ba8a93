-- Split (issue 15): a ticket made from messages split off another points back at it.
ALTER TABLE tickets ADD COLUMN split_from uuid REFERENCES tickets (id) ON DELETE SET NULL;
