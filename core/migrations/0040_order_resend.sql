-- Order actions may send a replacement: a new order at the shop, at no charge, for what was lost,
-- damaged or missing.
ALTER TABLE order_actions DROP CONSTRAINT order_actions_kind_check;
ALTER TABLE order_actions ADD CONSTRAINT order_actions_kind_check
    CHECK (kind IN ('cancel', 'refund', 'address', 'resend'));
