//! An order as the API shows it.

use chrono::{DateTime, Utc};
use memberline_schema::entities::order;
use memberline_schema::events::PlanSold;
use memberline_schema::ids::OrderId;
use memberline_schema::states::{OrderStatus, PayMethod, Provider};
use serde::Serialize;

/// An order as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: OrderId,
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
    /// When the refund was done (`refunded`).
    pub refunded_at: Option<DateTime<Utc>>,
    /// Why the order is being (`refund_pending`) or was (`refunded`) refunded.
    pub refund_reason: Option<String>,
    /// How to pay a WeChat / Alipay order while it is `pending_payment`; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentView>,
}

/// The code a buyer scans to pay a provider order.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub provider: Provider,
    /// The provider's code: WeChat `weixin://wxpay/bizpayurl?pr=…`, Alipay `https://qr.alipay.com/…`.
    pub code_url: String,
    /// The same code as a PNG QR image (`GET /v1/orders/{id}/qr.png`, the buyer's token).
    pub qr_png_url: String,
    /// Pay before this; afterwards the order is closed.
    pub expires_at: DateTime<Utc>,
}

impl PaymentView {
    /// The payment of a pending provider order whose code is stored.
    pub fn of(o: &order::Model) -> Option<Self> {
        if o.status != OrderStatus::PendingPayment {
            return None;
        }
        let code_url = o.provider_payload.as_ref()?.get("code_url")?.as_str()?;
        Some(Self {
            provider: o.provider?,
            code_url: code_url.to_owned(),
            qr_png_url: format!("/v1/orders/{}/qr.png", o.id),
            expires_at: o.expires_at?,
        })
    }
}

impl From<order::Model> for OrderView {
    fn from(o: order::Model) -> Self {
        Self {
            payment: PaymentView::of(&o),
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
            refunded_at: o.refunded_at,
            refund_reason: o.refund_reason,
        }
    }
}
