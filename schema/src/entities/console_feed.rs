//! The merchant console feed, sequenced for replay on reconnect.

use crate::ids::EventId;
use crate::states::NotificationKind;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "console_feed")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub event_id: EventId,
    pub kind: NotificationKind,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
