-- The merchant's back office: the catalogue edited by admins, buyers found by phone or OpenID,
-- balance and points adjusted by hand, every change audited, and the dashboard's rollups.

-- Plans: which of the shop's pay methods and channels take each (NULL: all the shop takes), and
-- archiving: a plan that was ever sold is archived (kept, off the shelf for good), never deleted.
ALTER TABLE plans
    ADD COLUMN pay_methods TEXT[] CHECK (pay_methods <@ ARRAY['balance', 'points', 'free', 'wechat', 'alipay']),
    ADD COLUMN channels    TEXT[] CHECK (channels <@ ARRAY['native', 'jsapi', 'h5', 'qr', 'wap', 'page']),
    ADD COLUMN archived_at TIMESTAMPTZ,
    ADD COLUMN updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD CONSTRAINT plans_archived_off_shelf CHECK (archived_at IS NULL OR NOT on_shelf);

-- Levels keep their discount rules; a level in use (a buyer at it) cannot be deleted.
ALTER TABLE levels ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- Buyers are found by id, name (prefix, any case), phone or OpenID.
ALTER TABLE users ADD COLUMN phone TEXT CHECK (phone ~ '^\+?[0-9]{5,20}$');
CREATE INDEX users_phone_idx ON users (phone) WHERE phone IS NOT NULL;
CREATE INDEX users_name_prefix_idx ON users (lower(name) text_pattern_ops);
CREATE INDEX wechat_identities_openid_idx ON wechat_identities (openid);

-- The audit log names the staff member (the username when the act was done) and records the
-- catalogue's changes and the manual adjustments too.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check CHECK (action IN (
    'order_refund', 'membership_grant', 'membership_revoke',
    'plan_create', 'plan_update', 'plan_archive', 'plan_delete',
    'level_create', 'level_update', 'level_delete',
    'balance_adjust', 'points_adjust'));
ALTER TABLE audit_log ADD COLUMN actor_name TEXT;
CREATE INDEX audit_log_user_idx ON audit_log (user_id, id DESC) WHERE user_id IS NOT NULL;

-- Why a membership period was removed: a refund took it back (`refund`), a revocation ended it
-- while it ran (`revoke`: its end moved to the revocation, the time before it was served) or
-- before it began (`revoke_unserved`), or it is a placeholder that was never a membership
-- (`placeholder`: refunded or revoked before its order's effect arrived). Periods removed before
-- this column are taken as refunded.
ALTER TABLE membership_periods ADD COLUMN removed_by TEXT
    CHECK (removed_by IN ('refund', 'revoke', 'revoke_unserved', 'placeholder'));

-- The dashboard's rollups, per day in the shop's time zone, kept by the membership worker from
-- the events (and rebuilt from the orders by `memberline stats rebuild`). Each day's counters are
-- split in shards, one per database session (`pg_backend_pid()`): concurrent worker
-- transactions add to rows of their own session only, so they never wait on each other (nor
-- deadlock) here. Reads sum them; a rebuild writes shard 0.
-- Sales: paid orders and their revenue on the day paid, refunds on the day refunded.
CREATE TABLE stats_sales (
    day             DATE   NOT NULL,
    pay_method      TEXT   NOT NULL,
    paid_orders     BIGINT NOT NULL DEFAULT 0,
    revenue_fen     BIGINT NOT NULL DEFAULT 0,
    revenue_points  BIGINT NOT NULL DEFAULT 0,
    refunds         BIGINT NOT NULL DEFAULT 0,
    refunded_fen    BIGINT NOT NULL DEFAULT 0,
    refunded_points BIGINT NOT NULL DEFAULT 0,
    shard           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, pay_method, shard)
);
-- Members: first memberships, renewals (every later membership order, on its paid day), and the
-- starts and lapses of continuous membership; members active at a day's end are the starts
-- minus the lapses up to it. A lapse in the future is a membership expiring then.
CREATE TABLE stats_members (
    day         DATE     NOT NULL,
    new_members BIGINT   NOT NULL DEFAULT 0,
    renewals    BIGINT   NOT NULL DEFAULT 0,
    starts      BIGINT   NOT NULL DEFAULT 0,
    lapses      BIGINT   NOT NULL DEFAULT 0,
    shard       INTEGER  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, shard)
);
-- What the sales rollup has counted, one row per order and fact: a replayed event counts once.
CREATE TABLE stats_counted (
    order_id BIGINT NOT NULL,
    fact     TEXT   NOT NULL CHECK (fact IN ('paid', 'refunded')),
    PRIMARY KEY (order_id, fact)
);
