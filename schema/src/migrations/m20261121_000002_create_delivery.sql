-- Event delivery: the transactional outbox, the consumers' inbox, user-facing notifications,
-- the merchant console feed and idempotency keys.

CREATE TABLE outbox (
    -- The event id (UUID v7) of the envelope stored in payload.
    id             UUID        PRIMARY KEY,
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    routing_key    TEXT        NOT NULL,
    correlation_id UUID        NOT NULL,
    payload        JSONB       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ,
    attempts       INTEGER     NOT NULL DEFAULT 0,
    last_error     TEXT
);
-- The relay only ever scans what is still waiting.
CREATE INDEX outbox_unpublished_idx ON outbox (created_at) WHERE published_at IS NULL;

-- Wake the relay the moment an outbox row commits (NOTIFY is delivered at commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('memberline_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify_after_insert AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- What each consumer has applied, written in the same transaction as the effect.
CREATE TABLE consumed_events (
    consumer    TEXT        NOT NULL,
    event_id    UUID        NOT NULL,
    event_type  TEXT        NOT NULL,
    consumed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE notifications (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    event_id   UUID        NOT NULL,
    kind       TEXT        NOT NULL,
    title      TEXT        NOT NULL,
    body       TEXT        NOT NULL,
    order_id   BIGINT      REFERENCES orders (id),
    read_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id, user_id, kind)
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);

-- Sequenced so a reconnecting console can ask for everything after the last seq it saw.
CREATE TABLE console_feed (
    seq        BIGSERIAL   PRIMARY KEY,
    event_id   UUID        NOT NULL,
    kind       TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id, kind)
);

-- A request key per buyer; the first successful response is stored in the same transaction as
-- the order it created and replayed for every retry with the same body.
CREATE TABLE idempotency_keys (
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    key           TEXT        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  TEXT        NOT NULL,
    -- Filled before the transaction commits, so a committed row always has them.
    status_code   SMALLINT,
    response_body JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
