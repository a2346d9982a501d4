-- Hardening of the delivery path: per-row relay backoff and quarantine, indexes for the
-- retention job, and the purchase time on reward entries for the daily points cap.

-- A row that fails to publish waits `next_attempt_at` (growing with its attempts) instead of
-- being retried at the head of every batch; after too many attempts it is quarantined: left out
-- of batches until an operator releases it.
ALTER TABLE outbox
    ADD COLUMN next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN quarantined_at  TIMESTAMPTZ;
DROP INDEX outbox_unpublished_idx;
-- In the relay's order (oldest first), over what it may take; rows still backing off are
-- filtered on the way (there are few of them).
CREATE INDEX outbox_due_idx ON outbox (created_at, id)
    WHERE published_at IS NULL AND quarantined_at IS NULL;
CREATE INDEX outbox_quarantined_idx ON outbox (quarantined_at) WHERE quarantined_at IS NOT NULL;

-- The retention job deletes by age, in small batches.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX consumed_events_consumed_at_idx ON consumed_events (consumed_at);
CREATE INDEX console_feed_created_at_idx ON console_feed (created_at);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Reward points are capped per buyer per UTC day of the purchase (not of the worker's clock):
-- each reward entry carries the order's paid_at.
ALTER TABLE point_ledger ADD COLUMN earned_at TIMESTAMPTZ;
UPDATE point_ledger p SET earned_at = o.paid_at
    FROM orders o WHERE p.order_id = o.id AND p.reason = 'purchase_reward';
CREATE INDEX point_ledger_earned_idx ON point_ledger (user_id, earned_at)
    WHERE earned_at IS NOT NULL;
