-- The built-in order number field (issue 15): filled by the ticketing stage when a customer's
-- message names one of its orders the shop sent us (`tickets::orders::named_order`), and set by
-- agents, rules and the API like any text field. An admin may rename or deactivate it.
INSERT INTO fields (id, key, name, kind, position, created_at, updated_at)
VALUES ('00000000-0000-7000-8000-00000000f001', 'order_number', 'Order number', 'text', 0, now(), now())
ON CONFLICT (key) DO NOTHING;
