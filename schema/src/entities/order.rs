//! Orders, with a snapshot of the plan as sold.

use crate::ids::{BuyerId, OrderId, PlanId};
use crate::states::{LateRefundStatus, OrderStatus, PayChannel, PayMethod, PlanKind, Provider};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub plan_id: PlanId,
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
    /// The verified payment that came after the order was closed (raw provider data).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub late_payment: Option<Json>,
    pub late_refund_status: Option<LateRefundStatus>,
    pub late_refunded_at: Option<DateTimeUtc>,
    pub late_refund_id: Option<String>,
    /// When the payment lifecycle job next looks at this order at its provider.
    pub payment_check_at: Option<DateTimeUtc>,
    /// Checks in a row without a final answer (the backoff of the next one).
    pub payment_check_attempts: i32,
    /// Why a payment the provider reports was not applied; the order waits for an operator.
    pub payment_flag: Option<String>,
    pub refunded_at: Option<DateTimeUtc>,
    pub refund_reason: Option<String>,
    /// Why a provider refund did not go through; the order is paid again, for an operator.
    pub refund_flag: Option<String>,
    /// The buyer's latest reminder to the shop (`POST /v1/orders/{id}/remind`).
    pub reminded_at: Option<DateTimeUtc>,
    /// How a provider order is paid (`None` for balance, points, free and granted orders).
    pub channel: Option<PayChannel>,
    /// The app id the provider trade was created under; its payment must carry it.
    pub channel_app_id: Option<String>,
    /// What the provider reported the trade as (WeChat `trade_type`), once paid.
    pub trade_type: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
