DROP TABLE wechat_identities;
ALTER TABLE orders DROP CONSTRAINT orders_channel_with_provider;
ALTER TABLE orders DROP COLUMN trade_type, DROP COLUMN channel_app_id, DROP COLUMN channel;
