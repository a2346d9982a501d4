//! A buyer's inbox.

use crate::ids::{BuyerId, EventId, OrderId};
use crate::states::NotificationKind;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub event_id: EventId,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub order_id: Option<OrderId>,
    pub read_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
