ALTER TABLE orders DROP COLUMN IF EXISTS late_refund_id;
UPDATE orders SET late_refund_status = 'pending' WHERE late_refund_status = 'failed';
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_late_refund_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_late_refund_status_check
    CHECK (late_refund_status IN ('pending', 'refunded'));
CREATE INDEX IF NOT EXISTS orders_pending_created_idx ON orders (created_at) WHERE status = 'pending_payment';
CREATE INDEX IF NOT EXISTS orders_late_refund_due_idx ON orders (id) WHERE late_refund_status = 'pending';
DROP INDEX IF EXISTS orders_payment_check_idx;
ALTER TABLE orders DROP COLUMN IF EXISTS payment_flag, DROP COLUMN IF EXISTS payment_check_attempts,
    DROP COLUMN IF EXISTS payment_check_at;
