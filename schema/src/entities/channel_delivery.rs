//! Template/SMS/webhook messages waiting to leave: written by the notifier in its effect
//! transaction, sent after the commit by the workers' channel sender.

use crate::ids::BuyerId;
use crate::states::NotificationKind;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "channel_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The business key (event id + kind), sent as `webhook-id`.
    #[sea_orm(unique)]
    pub message_id: String,
    pub user_id: BuyerId,
    pub kind: NotificationKind,
    /// What the message says: `{"title": …, "body": …}`.
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// Send attempts so far, counted when a sender claims the row.
    pub attempts: i32,
    /// Due then; pushed forward by a claim (the lease) and by a failed attempt (the backoff).
    pub next_attempt_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
    /// Given up after the last attempt, waiting for an operator.
    pub failed_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
