//! One refund request of an order (full today; the amounts leave room for partial refunds).

use crate::ids::OrderId;
use crate::states::RefundStatus;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refunds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_id: OrderId,
    /// 1 for the first request of the order, 2 after a failed one, …
    pub attempt: i32,
    /// The provider's refund number, `<order_no>R<attempt>`: a retry refunds once.
    pub out_refund_no: String,
    pub amount_fen: i64,
    pub amount_points: i64,
    pub reason: String,
    pub status: RefundStatus,
    pub provider_refund_id: Option<String>,
    pub failure: Option<String>,
    pub requested_by: i64,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
