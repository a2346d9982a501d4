//! The catalogue of member plans.

use crate::ids::PlanId;
use crate::states::PlanKind;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "plans")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: PlanId,
    pub code: String,
    pub name: String,
    pub kind: PlanKind,
    pub duration_days: Option<i32>,
    pub uses: Option<i32>,
    pub original_price_fen: i64,
    pub price_fen: i64,
    pub price_points: Option<i64>,
    pub is_free: bool,
    pub on_shelf: bool,
    pub sort: i32,
    pub image_url: Option<String>,
    pub created_at: DateTimeUtc,
    /// The pay methods that take this plan (`None`: every one the shop takes).
    pub pay_methods: Option<Vec<String>>,
    /// The provider channels that take this plan (`None`: every one the shop takes).
    pub channels: Option<Vec<String>>,
    /// When an admin archived it: off the shelf for good, kept for the orders that name it.
    pub archived_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
