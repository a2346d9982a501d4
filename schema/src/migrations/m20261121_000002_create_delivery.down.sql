DROP TABLE IF EXISTS idempotency_keys, console_feed, notifications, consumed_events, outbox CASCADE;
DROP FUNCTION IF EXISTS outbox_notify() CASCADE;
