-- Search's newest matches, found without reading every match (issue 15, `bench workspace` on a
-- large desk): GIN returns every row a word matches, so a word in half the messages of a 10M-ticket
-- desk had every one of them read and sorted by time to keep the newest 5,000. The `rum` index
-- (Postgres Professional's GIN with data in its posting lists) keeps each match's time, and an
-- index scan ordered by `time <=> now()` yields the newest first and stops at the limit.
--
-- `rum` is a Debian package (postgresql-15-rum; `scripts/setup.sh` installs it) and an
-- extension many hosted Postgres services lack: where it cannot be loaded the GIN indexes stay
-- and search sorts every match (`search::Recency`), slower on common words, the same results.
--
-- A word in a large share of the rows is found sooner by reading rows newest first and checking
-- the words on each (`search::Common` decides from the planner's statistics): btrees on the times.
CREATE INDEX messages_received ON messages (received_at);
CREATE INDEX tickets_updated ON tickets (updated_at);
CREATE INDEX customers_created ON customers (created_at);

-- Customers' names get a stored tsvector of their own: `rum` indexes a column, not an expression.
ALTER TABLE customers ADD COLUMN name_search tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', coalesce(left(name, 500), ''))) STORED;
DROP INDEX customers_name_search;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'rum') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS rum;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create the rum extension (%): search keeps GIN', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'rum') THEN
        CREATE INDEX messages_search_newest ON messages
            USING rum (search rum_tsvector_addon_ops, received_at) WITH (attach = 'received_at', to = 'search');
        DROP INDEX messages_search;
        CREATE INDEX tickets_search_newest ON tickets
            USING rum (search rum_tsvector_addon_ops, updated_at) WITH (attach = 'updated_at', to = 'search');
        DROP INDEX tickets_search;
        CREATE INDEX customers_name_newest ON customers
            USING rum (name_search rum_tsvector_addon_ops, created_at) WITH (attach = 'created_at', to = 'name_search');
    ELSE
        CREATE INDEX customers_name_search ON customers USING gin (name_search);
    END IF;
END
$$;
