//! An order as the API shows it.

use crate::providers::Started;
use chrono::{DateTime, Utc};
use memberline_schema::entities::order;
use memberline_schema::events::PlanSold;
use memberline_schema::ids::OrderId;
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod, Provider};
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

/// How the buyer pays a pending provider order: by its channel, one of `code_url` (with
/// `qr_png_url`), `jsapi_params`, `h5_url` or `pay_url`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub provider: Provider,
    pub channel: PayChannel,
    #[serde(flatten)]
    pub started: Started,
    /// `code_url` as a PNG QR image (`GET /v1/orders/{id}/qr.png`, the buyer's token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_png_url: Option<String>,
    /// Pay before this; afterwards the order is closed.
    pub expires_at: DateTime<Utc>,
}

impl PaymentView {
    /// The payment of a pending provider order whose trade is created.
    pub fn of(o: &order::Model) -> Option<Self> {
        if o.status != OrderStatus::PendingPayment {
            return None;
        }
        let provider = o.provider?;
        let started: Started = serde_json::from_value(o.provider_payload.clone()?).ok()?;
        Some(Self {
            provider,
            channel: o
                .channel
                .unwrap_or_else(|| PayChannel::default_for(provider)),
            qr_png_url: started
                .code_url
                .is_some()
                .then(|| format!("/v1/orders/{}/qr.png", o.id)),
            started,
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
