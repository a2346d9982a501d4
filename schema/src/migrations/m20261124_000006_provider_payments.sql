-- Provider payments (WeChat Pay, Alipay): the order an idempotency key created (a replay finds
-- the provider code of its order), payments that arrive after we closed an order (refunded
-- automatically, never applied), and what became of each stored notification.
ALTER TABLE idempotency_keys ADD COLUMN order_id BIGINT REFERENCES orders (id);

ALTER TABLE orders
    -- The verified payment that came in after the order was closed (raw provider data).
    ADD COLUMN late_payment JSONB,
    -- 'pending' until the provider accepted the automatic refund, then 'refunded'.
    ADD COLUMN late_refund_status TEXT CHECK (late_refund_status IN ('pending', 'refunded')),
    ADD COLUMN late_refunded_at TIMESTAMPTZ,
    ADD CHECK ((late_refund_status IS NULL) = (late_payment IS NULL));
CREATE INDEX orders_late_refund_due_idx ON orders (id) WHERE late_refund_status = 'pending';
-- Reconciliation scans pending provider orders by age.
CREATE INDEX orders_pending_created_idx ON orders (created_at) WHERE status = 'pending_payment';

ALTER TABLE payment_notifications
    ADD COLUMN order_id BIGINT REFERENCES orders (id),
    -- Why a genuine notification was not applied (amount or merchant mismatch, unknown order);
    -- NULL when nothing is wrong with it.
    ADD COLUMN flag TEXT;
CREATE INDEX payment_notifications_flagged_idx ON payment_notifications (id) WHERE flag IS NOT NULL;
