DROP TABLE stats_counted;
DROP TABLE stats_members;
DROP TABLE stats_sales;
ALTER TABLE membership_periods DROP COLUMN removed_by;
DROP INDEX audit_log_user_idx;
ALTER TABLE audit_log DROP COLUMN actor_name;
DELETE FROM audit_log WHERE action NOT IN ('order_refund', 'membership_grant', 'membership_revoke');
ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('order_refund', 'membership_grant', 'membership_revoke'));
DROP INDEX wechat_identities_openid_idx;
DROP INDEX users_name_prefix_idx;
DROP INDEX users_phone_idx;
ALTER TABLE users DROP COLUMN phone;
ALTER TABLE levels DROP COLUMN updated_at;
ALTER TABLE plans
    DROP CONSTRAINT plans_archived_off_shelf,
    DROP COLUMN updated_at,
    DROP COLUMN archived_at,
    DROP COLUMN channels,
    DROP COLUMN pay_methods;
