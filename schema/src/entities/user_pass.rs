//! Single-use (or n-use) passes a buyer holds.

use crate::ids::{BuyerId, OrderId, PlanId};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_passes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub order_id: OrderId,
    pub plan_id: PlanId,
    pub plan_name: String,
    pub uses_total: i32,
    pub uses_left: i32,
    pub created_at: DateTimeUtc,
    /// Set when its order was refunded: the unused uses are gone.
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
