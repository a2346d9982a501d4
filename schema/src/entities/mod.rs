//! sea-orm entities, one module per table. Status-like columns are the enums of
//! [`crate::states`] (text in the database, with CHECK constraints where the migrations set
//! them); amounts are `i64` fen or points; times are UTC.

pub mod audit_log;
pub mod balance_ledger;
pub mod channel_delivery;
pub mod console_feed;
pub mod consumed_event;
pub mod idempotency_key;
pub mod level;
pub mod membership_period;
pub mod notification;
pub mod order;
pub mod order_status_history;
pub mod outbox;
pub mod payment_notification;
pub mod plan;
pub mod point_ledger;
pub mod refund;
pub mod savings_entry;
pub mod user;
pub mod user_pass;
pub mod wechat_identity;
