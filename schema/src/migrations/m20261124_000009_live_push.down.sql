ALTER TABLE orders DROP COLUMN IF EXISTS reminded_at;
DROP TABLE IF EXISTS stream_tickets;
