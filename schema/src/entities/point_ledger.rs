//! Signed point movements with the balance after each.

use crate::ids::{BuyerId, OrderId};
use crate::states::LedgerReason;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "point_ledger")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: BuyerId,
    pub order_id: Option<OrderId>,
    pub reason: LedgerReason,
    pub delta: i64,
    pub balance_after: i64,
    pub flagged_excess: i64,
    /// For purchase rewards, the order's `paid_at`: the daily cap counts by the purchase's day.
    pub earned_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    /// Growth this entry added (a reward) or took back (a reversal).
    pub growth_delta: i64,
    /// Reward points a reversal could not take back: the buyer had spent them.
    pub shortfall: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
