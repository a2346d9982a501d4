DROP INDEX IF EXISTS membership_periods_permanent_idx;
DROP INDEX IF EXISTS orders_permanent_paid_idx;
