//! `[starts_at, ends_at)` per order; `ends_at` is NULL for a permanent membership.

use crate::ids::{BuyerId, OrderId};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "membership_periods")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub order_id: OrderId,
    pub starts_at: DateTimeUtc,
    pub ends_at: Option<DateTimeUtc>,
    pub permanent: bool,
    pub created_at: DateTimeUtc,
    /// Set when the period was taken away (its order refunded, or revoked before it began):
    /// it no longer counts.
    pub removed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
