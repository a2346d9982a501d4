-- The eligibility checks of every purchase (gateway/src/orders/statements.rs) count a buyer's
-- permanent memberships. Through the general per-buyer indexes that meant reading every order
-- and every membership period the buyer ever had, more work with each purchase. These partial
-- indexes hold only the rows the checks count, almost always none.
--
-- Migrations run in a transaction, so these block writes to the two tables while they build. On
-- a large production database, create them first by hand with CREATE INDEX CONCURRENTLY (same
-- names and definitions); this migration then finds them and does nothing.
CREATE INDEX IF NOT EXISTS orders_permanent_paid_idx ON orders (buyer_id)
    WHERE plan_kind = 'permanent' AND status IN ('paid', 'refund_pending');
CREATE INDEX IF NOT EXISTS membership_periods_permanent_idx ON membership_periods (user_id)
    WHERE permanent AND removed_at IS NULL;
