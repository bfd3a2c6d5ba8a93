-- Orders as the shop's webhooks describe them: the customer-facing number, payment and
-- fulfilment state, shipments with tracking, line items. `updated_at` orders the updates (an
-- older or repeated webhook changes nothing).
ALTER TABLE orders
    ADD COLUMN number             text,
    ADD COLUMN financial_status   text,
    ADD COLUMN fulfillment_status text,
    ADD COLUMN fulfillments       jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN line_items         jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN updated_at         timestamptz NOT NULL DEFAULT now();
CREATE INDEX orders_number ON orders (number);
