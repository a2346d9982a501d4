-- Console feed numbers in commit order. A BIGSERIAL is taken at insert time, so a slower
-- transaction can commit a lower number after a higher one, and a console resuming "after seq N"
-- would skip it for good. The notifier instead takes the next number from this one-row counter
-- as the last statement of its transaction; the row lock is held until commit, so numbers
-- become visible in order.
CREATE TABLE console_feed_counter (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last_seq BIGINT  NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO console_feed_counter (id, last_seq)
    SELECT TRUE, COALESCE(max(seq), 0) FROM console_feed;
ALTER TABLE console_feed ALTER COLUMN seq DROP DEFAULT;
