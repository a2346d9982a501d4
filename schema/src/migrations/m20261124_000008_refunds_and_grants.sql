-- Refunds and admin grants (issue 9): an order can be refunded (through its provider, or back to
-- the buyer's balance or points), a membership granted or revoked by an admin; every such act is
-- an event applied by the workers and a row in the audit log.

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending_payment', 'paid', 'closed', 'refund_pending', 'refunded'));
ALTER TABLE orders DROP CONSTRAINT orders_pay_method_check;
ALTER TABLE orders ADD CONSTRAINT orders_pay_method_check
    CHECK (pay_method IN ('balance', 'points', 'free', 'wechat', 'alipay', 'admin_grant'));
ALTER TABLE orders
    ADD COLUMN refunded_at TIMESTAMPTZ,
    ADD COLUMN refund_reason TEXT,
    -- Why a provider refund did not go through (WeChat ABNORMAL / CLOSED, a refusal): the order
    -- is paid again and waits for an operator.
    ADD COLUMN refund_flag TEXT;

-- The lifecycle job also finishes provider refunds still waiting for the provider.
DROP INDEX IF EXISTS orders_payment_check_idx;
CREATE INDEX orders_payment_check_idx ON orders (payment_check_at)
    WHERE status IN ('pending_payment', 'refund_pending') OR late_refund_status = 'pending';

-- One row per refund request. Full refunds today; the amounts and the attempt number leave room
-- for partial refunds. `out_refund_no` (the provider's refund number) is derived from the order
-- and the attempt, so a retried request refunds once.
CREATE TABLE refunds (
    id                 BIGSERIAL   PRIMARY KEY,
    order_id           BIGINT      NOT NULL REFERENCES orders (id),
    attempt            INTEGER     NOT NULL CHECK (attempt >= 1),
    out_refund_no      TEXT        NOT NULL UNIQUE,
    amount_fen         BIGINT      NOT NULL CHECK (amount_fen >= 0),
    amount_points      BIGINT      NOT NULL CHECK (amount_points >= 0),
    reason             TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    status             TEXT        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    provider_refund_id TEXT,
    failure            TEXT,
    -- The admin who asked (a token subject: not necessarily a buyer row).
    requested_by       BIGINT      NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at       TIMESTAMPTZ,
    UNIQUE (order_id, attempt)
);

-- Who did what to whom, and why: refunds, grants, revocations.
CREATE TABLE audit_log (
    id        BIGSERIAL   PRIMARY KEY,
    actor_id  BIGINT      NOT NULL,
    action    TEXT        NOT NULL CHECK (action IN ('order_refund', 'membership_grant', 'membership_revoke')),
    user_id   BIGINT      REFERENCES users (id),
    order_id  BIGINT      REFERENCES orders (id),
    reason    TEXT        NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    details   JSONB       NOT NULL DEFAULT '{}'::jsonb,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_at_idx ON audit_log (id DESC);

-- Admins are token subjects, not necessarily buyers: their idempotency keys (refunds, grants)
-- live in the same table.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_user_id_fkey;

-- Reversals keep the rows they reverse (the business keys stay, so a replayed order.paid.v1 of a
-- refunded order is still a no-op) and mark them.
ALTER TABLE membership_periods ADD COLUMN removed_at TIMESTAMPTZ;
-- The latest revocation of the buyer's membership: an order paid before it whose period is
-- only applied after it (its event waited in a retry tier) adds nothing.
ALTER TABLE users ADD COLUMN membership_revoked_at TIMESTAMPTZ;
ALTER TABLE user_passes ADD COLUMN revoked_at TIMESTAMPTZ;
ALTER TABLE savings_entries ADD COLUMN reversed_at TIMESTAMPTZ;
ALTER TABLE point_ledger
    -- Growth this entry added (reward) or took back (reversal), so a reversal takes back exactly
    -- what the reward gave whatever the settings are by then.
    ADD COLUMN growth_delta BIGINT NOT NULL DEFAULT 0,
    -- Reward points a reversal could not take back because the buyer had already spent them.
    ADD COLUMN shortfall BIGINT NOT NULL DEFAULT 0 CHECK (shortfall >= 0);
