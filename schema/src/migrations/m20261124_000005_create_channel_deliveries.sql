-- Template/SMS/webhook messages waiting to leave, written by the notifier in its effect
-- transaction and sent afterwards by the workers' channel sender. Nothing talks HTTP inside a
-- transaction: a slow receiver holds no pooled connection and no other worker's effect waits.
CREATE TABLE channel_deliveries (
    id              BIGSERIAL   PRIMARY KEY,
    -- The business key (event id + kind): sent as `webhook-id`, so receivers deduplicate on it
    -- and a redelivered event records its message once.
    message_id      TEXT        NOT NULL UNIQUE,
    user_id         BIGINT      NOT NULL REFERENCES users (id),
    kind            TEXT        NOT NULL,
    -- What the message says (title, body).
    payload         JSONB       NOT NULL,
    -- Send attempts so far, counted when a sender claims the row.
    attempts        INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Due then: a sender that claims the row pushes it forward as its lease, a failed attempt
    -- as its backoff.
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    -- Given up after the last attempt: waiting for an operator (README, Operations).
    failed_at       TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (delivered_at IS NULL OR failed_at IS NULL)
);
-- Senders only ever scan what is still due.
CREATE INDEX channel_deliveries_due_idx ON channel_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
-- What operators look for (README, Operations).
CREATE INDEX channel_deliveries_failed_idx ON channel_deliveries (failed_at)
    WHERE failed_at IS NOT NULL;
