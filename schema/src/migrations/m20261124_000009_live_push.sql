-- Live push (issue 10): single-use tickets that let a browser open a WebSocket without putting
-- a long-lived token in a URL, and the buyer's reminders to the shop (at most one a minute per
-- order).

-- Only the SHA-256 of a ticket is kept: the ticket itself is shown once, to its owner.
CREATE TABLE stream_tickets (
    hash       TEXT        PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    role       TEXT        NOT NULL CHECK (role IN ('user', 'merchant', 'admin')),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stream_tickets_expires_idx ON stream_tickets (expires_at);

ALTER TABLE orders ADD COLUMN reminded_at TIMESTAMPTZ;
