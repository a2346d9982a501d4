//! Buyers with their points, balance and growth.

use crate::ids::BuyerId;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: BuyerId,
    pub name: String,
    pub points: i64,
    pub balance_fen: i64,
    pub growth: i64,
    pub level_id: i16,
    pub purchase_count: i32,
    pub total_paid_fen: i64,
    pub total_saved_fen: i64,
    pub total_saved_points: i64,
    pub is_promoter: bool,
    /// A phone number staff can find the buyer by (digits, an optional leading `+`).
    pub phone: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
