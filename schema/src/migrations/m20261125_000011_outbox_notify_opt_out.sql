-- PostgreSQL serializes the commits of every transaction that NOTIFYs, database-wide, through
-- the commit's WAL flush: on 2 cores a transaction that inserts one row commits about 9,000
-- times a second without the outbox trigger's NOTIFY and 4,500 with it. A writer whose relay it
-- wakes itself (the gateway with the embedded relay, woken in-process after the commit) sets
-- `memberline.outbox_notify` to 'off' for its transaction (`set_config(…, true)`) and so takes
-- no part in that queue; every other writer (workers, a gateway beside a standalone relay,
-- operators' SQL) still NOTIFYs as before.
DROP TRIGGER outbox_notify_after_insert ON outbox;
CREATE TRIGGER outbox_notify_after_insert AFTER INSERT ON outbox
    FOR EACH STATEMENT
    WHEN (current_setting('memberline.outbox_notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION outbox_notify();
