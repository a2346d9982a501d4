-- The payment lifecycle job (workers): when it next looks at an order at its provider. Set for
-- pending provider orders (reconciliation, then expiry) and for closed orders whose late payment
-- is still to be refunded; the job claims due rows by moving this forward (a lease), so several
-- replicas never work on one order at once.
-- Defaults to now() so that a row written by a gateway of the previous release (during a
-- rolling deploy) is due at once rather than never.
ALTER TABLE orders
    ADD COLUMN payment_check_at TIMESTAMPTZ DEFAULT now(),
    -- Checks in a row that ended without a final answer (provider down or refusing, a refund
    -- still processing): the next one waits longer (exponential backoff), and a late refund the
    -- provider keeps refusing is marked failed.
    ADD COLUMN payment_check_attempts INTEGER NOT NULL DEFAULT 0,
    -- A payment the provider reports that does not match the order (or was refunded there
    -- before we applied it): the order is left to an operator and no longer checked.
    ADD COLUMN payment_flag TEXT;
UPDATE orders SET payment_check_at = now()
    WHERE status = 'pending_payment' OR late_refund_status = 'pending';
CREATE INDEX orders_payment_check_idx ON orders (payment_check_at)
    WHERE status = 'pending_payment' OR late_refund_status = 'pending';
DROP INDEX IF EXISTS orders_late_refund_due_idx;
DROP INDEX IF EXISTS orders_pending_created_idx;

-- A late payment's refund can fail at the provider (WeChat ABNORMAL/CLOSED): 'failed' waits for
-- an operator. The provider's refund id is kept once it refunded.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_late_refund_status_check;
ALTER TABLE orders
    ADD CONSTRAINT orders_late_refund_status_check
        CHECK (late_refund_status IN ('pending', 'refunded', 'failed')),
    ADD COLUMN late_refund_id TEXT;
