//! An order as the API shows it.

use chrono::{DateTime, Utc};
use memberline_schema::entities::order;
use memberline_schema::events::PlanSold;
use memberline_schema::states::{OrderStatus, PayMethod};
use serde::Serialize;

/// An order as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: i64,
    /// Merchant order number, also sent to payment providers as `out_trade_no`.
    pub order_no: String,
    /// The plan as it was sold (flattened: `plan_id`, `plan_code`, `plan_name`, `plan_kind`,
    /// `duration_days`, `uses`).
    #[serde(flatten)]
    pub plan: PlanSold,
    pub pay_method: PayMethod,
    /// Charged in fen (0 for points and free orders).
    pub amount_fen: i64,
    /// Charged in points (0 unless paid with points).
    pub amount_points: i64,
    pub original_price_fen: i64,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl From<order::Model> for OrderView {
    fn from(o: order::Model) -> Self {
        Self {
            plan: PlanSold::of_order(&o),
            id: o.id,
            order_no: o.order_no,
            pay_method: o.pay_method,
            amount_fen: o.amount_fen,
            amount_points: o.amount_points,
            original_price_fen: o.original_price_fen,
            status: o.status,
            created_at: o.created_at,
            paid_at: o.paid_at,
            expires_at: o.expires_at,
            closed_at: o.closed_at,
        }
    }
}
