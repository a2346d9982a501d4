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
    let Some(row) = one(
        txn,
        "SELECT buyer_id, status FROM orders WHERE id = $1",
        [order_id.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    let status: String = row.try_get("", "status")?;
    // The column's CHECK constraint admits exactly the `OrderStatus` values.
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| DbErr::Type(format!("order {order_id} has unknown status {status}")))?;
    Ok(Some(Standing {
        buyer_id: row.try_get("", "buyer_id")?,
        status,
    }))
}
