DROP TRIGGER outbox_notify_after_insert ON outbox;
CREATE TRIGGER outbox_notify_after_insert AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
