-- One customer across channels. Every way to reach a person (email, phone, a social network's
-- id) is an identity pointing at one customer. A message naming identities of two customers
-- (an authenticated caller saying "this email and this phone are one person") merges them: the
-- older customer survives, the other's tickets, orders and identities move to it and its row
-- keeps `merged_into`.
CREATE TABLE customer_identities (
    kind        text NOT NULL CHECK (kind IN ('email', 'phone', 'messenger', 'instagram')),
    value       text NOT NULL,
    customer_id uuid NOT NULL REFERENCES customers(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX customer_identities_customer ON customer_identities (customer_id);

INSERT INTO customer_identities (kind, value, customer_id)
    SELECT 'email', email, id FROM customers WHERE email IS NOT NULL
    UNION ALL
    SELECT 'phone', phone, id FROM customers WHERE phone IS NOT NULL;

ALTER TABLE customers ADD COLUMN merged_into uuid REFERENCES customers(id);
ALTER TABLE customers ADD COLUMN handle text;
-- A merged customer keeps no identity of its own; a social customer may have neither email nor phone.
ALTER TABLE customers DROP CONSTRAINT customers_check;
