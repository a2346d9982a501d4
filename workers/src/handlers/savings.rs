//! Savings: what each order saved (original price − amount paid, in fen; in points for points
//! payments), the buyer's running totals, purchase count and total paid, and promoter status
//! once the purchase count or the total paid crosses its threshold. One entry per order.

use super::{insert_once, paid_order_locked};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming};
use memberline_gateway::settings::WorkerSettings;
use memberline_schema::events::{OrderPaid, PayMethod};
use memberline_schema::topology::Worker;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};

pub struct Savings {
    pub promoter_min_purchases: i32,
    pub promoter_min_paid_fen: i64,
}

impl Savings {
    pub fn from_settings(s: &WorkerSettings) -> Self {
        Self {
            promoter_min_purchases: s.promoter_min_purchases,
            promoter_min_paid_fen: s.promoter_min_paid_fen,
        }
    }
}

/// (saved fen, saved points) for one order; never negative.
pub fn saved(e: &OrderPaid) -> (i64, i64) {
    match e.pay_method {
        PayMethod::Points => (
            0,
            (e.original_price_points.unwrap_or(0) - e.amount_points).max(0),
        ),
        _ => ((e.original_price_fen - e.amount_fen).max(0), 0),
    }
}

#[async_trait::async_trait]
impl Handler for Savings {
    fn worker(&self) -> Worker {
        Worker::Savings
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = paid_order_locked(txn, msg).await?;
        let e = &env.payload;
        let (saved_fen, saved_points) = saved(e);
        let inserted = insert_once(
            txn,
            "INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING RETURNING id",
            vec![
                e.buyer_id.into(),
                e.order_id.into(),
                saved_fen.into(),
                saved_points.into(),
            ],
        )
        .await?;
        if !inserted {
            return Ok(Effects::already_applied());
        }
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE users SET total_saved_fen = total_saved_fen + $2, \
             total_saved_points = total_saved_points + $3, \
             purchase_count = purchase_count + 1, total_paid_fen = total_paid_fen + $4, \
             is_promoter = is_promoter OR purchase_count + 1 >= $5 OR total_paid_fen + $4 >= $6, \
             updated_at = now() WHERE id = $1",
            [
                e.buyer_id.into(),
                saved_fen.into(),
                saved_points.into(),
                e.amount_fen.into(),
                self.promoter_min_purchases.into(),
                self.promoter_min_paid_fen.into(),
            ],
        ))
        .await?;
        Ok(Effects::applied())
    }
}
