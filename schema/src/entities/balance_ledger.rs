//! Signed store-balance movements (fen) with the balance after each.

use crate::ids::{BuyerId, OrderId};
use crate::states::LedgerReason;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "balance_ledger")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub order_id: Option<OrderId>,
    pub reason: LedgerReason,
    pub delta: i64,
    pub balance_after: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
