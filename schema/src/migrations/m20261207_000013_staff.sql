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

-- The keys staff used before owners had kinds: an admin's grant, refund or revocation, told by
-- its stored answer (a buyer's purchase answers `paid` or `pending_payment`, never these) or by
-- the order it is linked to being another buyer's. Their retries stay replays.
UPDATE idempotency_keys k SET owner_kind = 'staff'
WHERE k.response_body ->> 'pay_method' = 'admin_grant'
   OR k.response_body ->> 'status' IN ('refunded', 'refund_pending')
   OR k.response_body ->> 'revoked_at' IS NOT NULL
   OR k.response_body -> 'error' ->> 'code' = 'refund_failed'
   OR EXISTS (SELECT 1 FROM orders o WHERE o.id = k.order_id AND o.buyer_id <> k.user_id);
