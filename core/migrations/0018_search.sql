-- Search (issue 15): Postgres full text over the ticket's subject and tags and every message,
-- exact lookups for ticket numbers, order numbers, emails and phones, and the customer's name.
-- Why Postgres and not a separate engine: ARCHITECTURE.md, "Search", with the figures of
-- `switchboard-sim bench workspace`.
--
-- Message text is indexed up to 20,000 characters (`left`): the words a person searches for sit
-- near the start, and a tsvector has a 1 MB ceiling a pasted log would otherwise hit.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (to_tsvector('english', left(text, 20000))) STORED;
CREATE INDEX messages_search ON messages USING gin (search);

ALTER TABLE tickets ADD COLUMN search tsvector
    GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(left(subject, 2000), '')), 'A') ||
        setweight(array_to_tsvector(tags), 'B')
    ) STORED;
CREATE INDEX tickets_search ON tickets USING gin (search);

CREATE INDEX customers_name_search ON customers USING gin (to_tsvector('simple', coalesce(name, '')));
-- An order as a customer types its number (`#1001`, `1001`): what `/track` and search compare.
CREATE INDEX orders_number_key ON orders (lower(ltrim(btrim(number), '#')));
