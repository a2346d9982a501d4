//! Raw provider callbacks.

use crate::states::Provider;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub provider: Provider,
    pub provider_event_id: String,
    pub out_trade_no: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub headers: Json,
    pub raw_body: String,
    pub verified: bool,
    pub outcome: String,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
