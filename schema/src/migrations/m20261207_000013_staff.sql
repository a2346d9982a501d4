-- Staff accounts, apart from buyers: a username, an argon2id password hash and a role. A
-- disabled account signs in no more.
CREATE TABLE staff (
    id            BIGSERIAL   PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9_.-]{3,32}$'),
    password_hash TEXT        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    role          TEXT        NOT NULL CHECK (role IN ('merchant', 'admin')),
    disabled_at   TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Failed sign-ins, counted per username and per address over a window to slow guessing down.
CREATE TABLE staff_sign_in_failures (
    id       BIGSERIAL   PRIMARY KEY,
    username TEXT        NOT NULL,
    address  TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX staff_sign_in_failures_by_username ON staff_sign_in_failures (username, at);
CREATE INDEX staff_sign_in_failures_by_address ON staff_sign_in_failures (address, at);

-- A staff member's Idempotency-Keys and a buyer's are kept apart, whatever their numbers.
ALTER TABLE idempotency_keys
    ADD COLUMN owner_kind TEXT NOT NULL DEFAULT 'buyer' CHECK (owner_kind IN ('buyer', 'staff'));
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (owner_kind, user_id, key);
