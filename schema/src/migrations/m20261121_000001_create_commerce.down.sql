DROP TABLE IF EXISTS savings_entries, balance_ledger, point_ledger, user_passes, membership_periods,
    payment_notifications, order_status_history, orders, plans, users, levels CASCADE;
