//! What each order saved the buyer.

use crate::ids::{BuyerId, OrderId};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "savings_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub order_id: OrderId,
    pub saved_fen: i64,
    pub saved_points: i64,
    pub created_at: DateTimeUtc,
    /// Set when its order was refunded and the saving taken off the buyer's totals.
    pub reversed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
