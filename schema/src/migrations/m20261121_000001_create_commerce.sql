-- Catalogue, buyers, orders and the money ledgers.
-- Every amount is an integer in fen (1/100 yuan) or in points; every time is timestamptz (UTC).

CREATE TABLE levels (
    id               SMALLINT    PRIMARY KEY,
    name             TEXT        NOT NULL,
    min_growth       BIGINT      NOT NULL UNIQUE CHECK (min_growth >= 0),
    -- Percentage of the catalogue price a member of this level pays (100 = no discount).
    discount_percent SMALLINT    NOT NULL CHECK (discount_percent BETWEEN 1 AND 100),
    -- Multiplier (in percent) applied to consumption reward points for this level.
    points_bonus_percent SMALLINT NOT NULL DEFAULT 100 CHECK (points_bonus_percent BETWEEN 0 AND 1000)
);

CREATE TABLE users (
    id               BIGSERIAL   PRIMARY KEY,
    name             TEXT        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    -- Balances that can never be negative are enforced here, not only in code.
    points           BIGINT      NOT NULL DEFAULT 0 CONSTRAINT users_points_not_negative CHECK (points >= 0),
    balance_fen      BIGINT      NOT NULL DEFAULT 0 CONSTRAINT users_balance_not_negative CHECK (balance_fen >= 0),
    growth           BIGINT      NOT NULL DEFAULT 0 CHECK (growth >= 0),
    level_id         SMALLINT    NOT NULL DEFAULT 0 REFERENCES levels (id),
    purchase_count   INTEGER     NOT NULL DEFAULT 0 CHECK (purchase_count >= 0),
    total_paid_fen   BIGINT      NOT NULL DEFAULT 0 CHECK (total_paid_fen >= 0),
    total_saved_fen  BIGINT      NOT NULL DEFAULT 0 CHECK (total_saved_fen >= 0),
    total_saved_points BIGINT    NOT NULL DEFAULT 0 CHECK (total_saved_points >= 0),
    is_promoter      BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    id                 BIGSERIAL   PRIMARY KEY,
    code               TEXT        NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9_]{1,32}$'),
    name               TEXT        NOT NULL,
    kind               TEXT        NOT NULL CHECK (kind IN ('membership', 'permanent', 'pass')),
    duration_days      INTEGER     CHECK (duration_days > 0),
    uses               INTEGER     CHECK (uses > 0),
    original_price_fen BIGINT      NOT NULL CHECK (original_price_fen >= 0),
    price_fen          BIGINT      NOT NULL CHECK (price_fen >= 0 AND price_fen <= original_price_fen),
    -- NULL: this plan cannot be bought with points.
    price_points       BIGINT      CHECK (price_points >= 0),
    -- A free plan is taken with pay_method 'free' only, and only once per buyer.
    is_free            BOOLEAN     NOT NULL DEFAULT FALSE,
    on_shelf           BOOLEAN     NOT NULL DEFAULT TRUE,
    sort               INTEGER     NOT NULL DEFAULT 0,
    image_url          TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'membership') = (duration_days IS NOT NULL)),
    CHECK ((kind = 'pass') = (uses IS NOT NULL)),
    CHECK (NOT is_free OR price_fen = 0)
);

CREATE TABLE orders (
    id                    BIGSERIAL   PRIMARY KEY,
    order_no              TEXT        NOT NULL UNIQUE CHECK (order_no ~ '^[0-9A-Za-z_|*-]{6,32}$'),
    buyer_id              BIGINT      NOT NULL REFERENCES users (id),
    plan_id               BIGINT      NOT NULL REFERENCES plans (id),
    -- Snapshot of the plan as sold: a later catalogue edit never changes what was bought.
    plan_code             TEXT        NOT NULL,
    plan_name             TEXT        NOT NULL,
    plan_kind             TEXT        NOT NULL CHECK (plan_kind IN ('membership', 'permanent', 'pass')),
    duration_days         INTEGER,
    uses                  INTEGER,
    pay_method            TEXT        NOT NULL CHECK (pay_method IN ('balance', 'points', 'free', 'wechat', 'alipay')),
    amount_fen            BIGINT      NOT NULL DEFAULT 0 CHECK (amount_fen >= 0),
    amount_points         BIGINT      NOT NULL DEFAULT 0 CHECK (amount_points >= 0),
    original_price_fen    BIGINT      NOT NULL CHECK (original_price_fen >= 0),
    original_price_points BIGINT      CHECK (original_price_points >= 0),
    status                TEXT        NOT NULL CHECK (status IN ('pending_payment', 'paid', 'closed', 'refunded')),
    provider              TEXT        CHECK (provider IN ('wechat', 'alipay')),
    provider_txn_id       TEXT,
    provider_payload      JSONB,
    correlation_id        UUID        NOT NULL,
    expires_at            TIMESTAMPTZ,
    paid_at               TIMESTAMPTZ,
    closed_at             TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    version               INTEGER     NOT NULL DEFAULT 1,
    CHECK ((status = 'paid') <= (paid_at IS NOT NULL)),
    UNIQUE (provider, provider_txn_id)
);
CREATE INDEX orders_buyer_idx ON orders (buyer_id, id DESC);
CREATE INDEX orders_pending_expiry_idx ON orders (expires_at) WHERE status = 'pending_payment';
-- A free plan is claimable once per buyer, whatever races the requests run.
CREATE UNIQUE INDEX orders_one_free_claim ON orders (buyer_id, plan_id) WHERE pay_method = 'free';

CREATE TABLE order_status_history (
    id          BIGSERIAL   PRIMARY KEY,
    order_id    BIGINT      NOT NULL REFERENCES orders (id),
    from_status TEXT,
    to_status   TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_status_history_order_idx ON order_status_history (order_id, id);

-- Raw provider callbacks, stored before anything reads them; unique per provider event.
CREATE TABLE payment_notifications (
    id                BIGSERIAL   PRIMARY KEY,
    provider          TEXT        NOT NULL CHECK (provider IN ('wechat', 'alipay')),
    provider_event_id TEXT        NOT NULL,
    out_trade_no      TEXT,
    headers           JSONB       NOT NULL DEFAULT '{}'::jsonb,
    raw_body          TEXT        NOT NULL,
    verified          BOOLEAN     NOT NULL,
    outcome           TEXT        NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider, provider_event_id)
);

-- One period per order; a membership's expiry is derived from its periods, never stored as a flag.
CREATE TABLE membership_periods (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    order_id   BIGINT      NOT NULL UNIQUE REFERENCES orders (id),
    starts_at  TIMESTAMPTZ NOT NULL,
    -- NULL for a permanent membership.
    ends_at    TIMESTAMPTZ,
    permanent  BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (permanent = (ends_at IS NULL)),
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX membership_periods_user_idx ON membership_periods (user_id, starts_at);

CREATE TABLE user_passes (
    id         BIGSERIAL   PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    order_id   BIGINT      NOT NULL UNIQUE REFERENCES orders (id),
    plan_id    BIGINT      NOT NULL REFERENCES plans (id),
    plan_name  TEXT        NOT NULL,
    uses_total INTEGER     NOT NULL CHECK (uses_total > 0),
    uses_left  INTEGER     NOT NULL CHECK (uses_left >= 0 AND uses_left <= uses_total),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX user_passes_user_idx ON user_passes (user_id);

-- Signed entries with the balance after; one entry per order and reason.
CREATE TABLE point_ledger (
    id            BIGSERIAL   PRIMARY KEY,
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    order_id      BIGINT      REFERENCES orders (id),
    reason        TEXT        NOT NULL,
    delta         BIGINT      NOT NULL,
    balance_after BIGINT      NOT NULL CHECK (balance_after >= 0),
    -- Points earned above a daily cap are not credited; the excess is recorded here.
    flagged_excess BIGINT     NOT NULL DEFAULT 0 CHECK (flagged_excess >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_id, reason)
);
CREATE INDEX point_ledger_user_idx ON point_ledger (user_id, id DESC);

CREATE TABLE balance_ledger (
    id            BIGSERIAL   PRIMARY KEY,
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    order_id      BIGINT      REFERENCES orders (id),
    reason        TEXT        NOT NULL,
    delta         BIGINT      NOT NULL,
    balance_after BIGINT      NOT NULL CHECK (balance_after >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_id, reason)
);
CREATE INDEX balance_ledger_user_idx ON balance_ledger (user_id, id DESC);

CREATE TABLE savings_entries (
    id           BIGSERIAL   PRIMARY KEY,
    user_id      BIGINT      NOT NULL REFERENCES users (id),
    order_id     BIGINT      NOT NULL UNIQUE REFERENCES orders (id),
    saved_fen    BIGINT      NOT NULL CHECK (saved_fen >= 0),
    saved_points BIGINT      NOT NULL CHECK (saved_points >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
