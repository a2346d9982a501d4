DROP INDEX IF EXISTS payment_notifications_flagged_idx;
ALTER TABLE payment_notifications DROP COLUMN IF EXISTS flag, DROP COLUMN IF EXISTS order_id;
DROP INDEX IF EXISTS orders_pending_created_idx;
DROP INDEX IF EXISTS orders_late_refund_due_idx;
ALTER TABLE orders DROP COLUMN IF EXISTS late_refunded_at, DROP COLUMN IF EXISTS late_refund_status,
    DROP COLUMN IF EXISTS late_payment;
ALTER TABLE idempotency_keys DROP COLUMN IF EXISTS order_id;
