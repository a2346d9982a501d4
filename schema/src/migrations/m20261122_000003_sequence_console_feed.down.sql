ALTER TABLE console_feed ALTER COLUMN seq SET DEFAULT nextval(pg_get_serial_sequence('console_feed', 'seq'));
DROP TABLE IF EXISTS console_feed_counter;
