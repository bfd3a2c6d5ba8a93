-- Retention and erasure that keep up: every lookup the retention job and an erasure make, and
-- every foreign key check a deletion of tickets or customers triggers, is served by an index
-- (without one, deleting a ticket scans all assignments and all tickets, once per row).

-- The retention job's "resolved or closed long enough ago", oldest first.
CREATE INDEX tickets_retention ON tickets ((COALESCE(resolved_at, updated_at)))
    WHERE status IN ('resolved', 'closed');
-- Tickets merged into a deleted ticket are unlinked (and the self foreign key checked).
CREATE INDEX tickets_merged_into ON tickets (merged_into) WHERE merged_into IS NOT NULL;
-- Deleting a ticket deletes its assignments (the only other index is partial: active ones).
CREATE INDEX assignments_ticket ON assignments (ticket_id);
-- The chain of merges of a customer, walked both ways by an erasure.
CREATE INDEX customers_merged_into ON customers (merged_into) WHERE merged_into IS NOT NULL;
-- Orders expire on their last update.
CREATE INDEX orders_updated ON orders (updated_at);
-- Chat sessions expire when idle.
CREATE INDEX chat_conversations_created ON chat_conversations (created_at);
-- An erasure finds the customer's deliveries and chat sessions by address.
CREATE INDEX deliveries_recipient ON deliveries (recipient);
CREATE INDEX chat_conversations_email ON chat_conversations (customer_email);
