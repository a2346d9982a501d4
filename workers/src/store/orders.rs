//! `orders`: the workers only read an order, to check that the event they consume describes a
//! real, paid order of that buyer. Orders change state in the gateway, never here.

use super::one;
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseTransaction, DbErr};

/// Who bought an order and where it is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub buyer_id: i64,
    pub status: OrderStatus,
}

/// The buyer and status of order `order_id`, or `None` when there is no such order.
pub async fn standing(txn: &DatabaseTransaction, order_id: i64) -> Result<Option<Standing>, DbErr> {
    let row = one(
        txn,
        "SELECT buyer_id, status FROM orders WHERE id = $1",
        [order_id.into()],
    )
    .await?;
    row.map(|row| read_standing(order_id, &row)).transpose()
}

/// [`standing`], and in the same statement (one round trip) the lock on the buyer's row when
/// the order is `buyer_id`'s (see `users::lock`): `(standing, locked)`. `locked` is `false`
/// when the order is someone else's, or the buyer does not exist.
pub async fn standing_locking_buyer(
    txn: &DatabaseTransaction,
    order_id: i64,
    buyer_id: i64,
) -> Result<Option<(Standing, bool)>, DbErr> {
    let row = one(
        txn,
        "SELECT o.buyer_id, o.status, u.id IS NOT NULL AS locked FROM orders o \
         LEFT JOIN LATERAL (SELECT id FROM users WHERE id = o.buyer_id AND o.buyer_id = $2 \
                            FOR UPDATE) u ON true \
         WHERE o.id = $1",
        [order_id.into(), buyer_id.into()],
    )
    .await?;
    row.map(|row| Ok((read_standing(order_id, &row)?, row.try_get("", "locked")?)))
        .transpose()
}

fn read_standing(order_id: i64, row: &sea_orm::QueryResult) -> Result<Standing, DbErr> {
    let status: String = row.try_get("", "status")?;
    // The column's CHECK constraint admits exactly the `OrderStatus` values.
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| DbErr::Type(format!("order {order_id} has unknown status {status}")))?;
    Ok(Standing {
        buyer_id: row.try_get("", "buyer_id")?,
        status,
    })
}
