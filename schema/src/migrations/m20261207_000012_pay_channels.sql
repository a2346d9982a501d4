-- Pay channels (WeChat JSAPI and H5, Alipay mobile and desktop cashiers beside the QR codes),
-- the WeChat app an order was created under, what the provider reported, and buyers' WeChat
-- identities.
ALTER TABLE orders
    ADD COLUMN channel TEXT CHECK (channel IN ('native', 'jsapi', 'h5', 'qr', 'wap', 'page')),
    -- The app id the provider trade was created under: a payment for it must carry this one.
    ADD COLUMN channel_app_id TEXT,
    -- What the provider reported the trade as (WeChat `trade_type`: NATIVE, JSAPI, MWEB).
    ADD COLUMN trade_type TEXT;

UPDATE orders SET channel = CASE pay_method WHEN 'wechat' THEN 'native' ELSE 'qr' END
    WHERE pay_method IN ('wechat', 'alipay');

ALTER TABLE orders ADD CONSTRAINT orders_channel_with_provider
    CHECK ((channel IS NULL) = (pay_method NOT IN ('wechat', 'alipay')));

-- One OpenID per buyer and app; an OpenID belongs to one buyer.
CREATE TABLE wechat_identities (
    appid      TEXT        NOT NULL CHECK (length(appid) BETWEEN 1 AND 64),
    openid     TEXT        NOT NULL CHECK (length(openid) BETWEEN 1 AND 128),
    buyer_id   BIGINT      NOT NULL REFERENCES users (id),
    unionid    TEXT        CHECK (length(unionid) BETWEEN 1 AND 128),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (appid, openid),
    CONSTRAINT wechat_identities_one_per_app UNIQUE (buyer_id, appid)
);

-- Sign-in finds the buyer of a unionid under the shop's other app.
CREATE INDEX wechat_identities_unionid ON wechat_identities (unionid) WHERE unionid IS NOT NULL;
