//! Single-use (or n-use) passes a buyer holds.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_passes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub order_id: i64,
    pub plan_id: i64,
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
