//! Orders, with a snapshot of the plan as sold.

use crate::states::{OrderStatus, PayMethod, PlanKind, Provider};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_no: String,
    pub buyer_id: i64,
    pub plan_id: i64,
    pub plan_code: String,
    pub plan_name: String,
    pub plan_kind: PlanKind,
    pub duration_days: Option<i32>,
    pub uses: Option<i32>,
    pub pay_method: PayMethod,
    pub amount_fen: i64,
    pub amount_points: i64,
    pub original_price_fen: i64,
    pub original_price_points: Option<i64>,
    pub status: OrderStatus,
    pub provider: Option<Provider>,
    pub provider_txn_id: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub provider_payload: Option<Json>,
    pub correlation_id: Uuid,
    pub expires_at: Option<DateTimeUtc>,
    pub paid_at: Option<DateTimeUtc>,
    pub closed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub version: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
