//! Savings: what each order saved (original price − amount paid, in fen; in points for points
//! payments), the buyer's running totals, purchase count and total paid, and promoter status
//! once the purchase count or the total paid crosses its threshold. One entry per order.

use super::PaidOrderEffect;
use crate::decide::HandlerError;
use crate::runtime::Effects;
use crate::store::users::{PromoterThresholds, Purchase};
use crate::store::{savings_entries, users};
use memberline_platform::settings::WorkerSettings;
use memberline_schema::events::{Envelope, OrderPaid, OrderRefunded, PayMethod};
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;

pub struct Savings {
    pub promoter: PromoterThresholds,
}

impl Savings {
    pub fn from_settings(s: &WorkerSettings) -> Self {
        Self {
            promoter: PromoterThresholds {
                min_purchases: s.promoter_min_purchases,
                min_paid_fen: s.promoter_min_paid_fen,
            },
        }
    }
}

/// (saved fen, saved points) for one order; never negative.
pub fn saved(e: &OrderPaid) -> (i64, i64) {
    match e.pay_method {
        // A grant is not a purchase: nothing saved.
        PayMethod::AdminGrant => (0, 0),
        PayMethod::Points => (
            0,
            (e.original_price_points.unwrap_or(0) - e.amount_points).max(0),
        ),
        _ => ((e.original_price_fen - e.amount_fen).max(0), 0),
    }
}

#[async_trait::async_trait]
impl PaidOrderEffect for Savings {
    const WORKER: Worker = Worker::Savings;

    async fn apply_paid(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderPaid>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        let (saved_fen, saved_points) = saved(e);
        // A grant is recorded (the business key) but not counted as a purchase.
        let counted =
            (e.pay_method != PayMethod::AdminGrant).then_some((e.amount_fen, self.promoter));
        // The entry and the buyer's totals: one statement.
        let saving = (saved_fen, saved_points);
        if !savings_entries::record(txn, e.buyer_id, e.order_id, saving, counted).await? {
            return Ok(Effects::already_applied());
        }
        Ok(Effects::applied())
    }

    /// Takes the order's saving, the purchase and what it paid off the buyer's totals; promoter
    /// status follows the thresholds again.
    async fn apply_refunded(
        &self,
        txn: &DatabaseTransaction,
        env: &Envelope<OrderRefunded>,
    ) -> Result<Effects, HandlerError> {
        let e = &env.payload;
        let Some((saved_fen, saved_points)) = savings_entries::reverse(txn, e.order_id).await?
        else {
            // Reversed before, or refunded before its saving was recorded (then nothing will be).
            return Ok(
                if savings_entries::add_reversed(txn, e.buyer_id, e.order_id).await? {
                    Effects::applied()
                } else {
                    Effects::already_applied()
                },
            );
        };
        if e.pay_method != PayMethod::AdminGrant {
            let purchase = Purchase {
                saved_fen,
                saved_points,
                paid_fen: e.refund_fen,
            };
            users::remove_purchase(txn, e.buyer_id, purchase, self.promoter).await?;
        }
        Ok(Effects::applied())
    }
}
