//! `orders`: the workers only read an order, to check that the event they consume describes a
//! real, paid order of that buyer. Orders change state in the gateway, never here.

use super::one;
use memberline_schema::ids::{BuyerId, EventId, OrderId};
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseTransaction, DbErr};

/// Who bought an order and where it is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub buyer_id: BuyerId,
    pub status: OrderStatus,
}

/// The buyer and status of order `order_id`, or `None` when there is no such order.
pub async fn standing(
    txn: &DatabaseTransaction,
    order_id: OrderId,
) -> Result<Option<Standing>, DbErr> {
    let row = one(
        txn,
        "SELECT buyer_id, status FROM orders WHERE id = $1",
        [order_id.into()],
    )
    .await?;
    row.map(|row| read_standing(order_id, &row)).transpose()
}

/// What [`claim_standing_locking_buyer`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The consumer had consumed the event before: nothing else was looked at.
    Before,
    /// Claimed now: the order's standing (`None`: no such order) and whether the buyer's row is
    /// locked (`false` when the order is someone else's, or the buyer does not exist).
    Now(Option<(Standing, bool)>),
}

/// Claims `event_id` for `consumer` when given (see `consumed_events::claim`; `None`: claimed
/// before in this transaction) and, in the same statement (one round trip where it took up to
/// three), reads order `order_id`'s [`standing`] and, given `lock_buyer`, locks the buyer's row
/// when the order is that buyer's (see `users::lock`).
pub async fn claim_standing(
    txn: &DatabaseTransaction,
    claim: Option<(&str, EventId, &str)>,
    order_id: OrderId,
    lock_buyer: Option<BuyerId>,
) -> Result<Claimed, DbErr> {
    let row = one(
        txn,
        "WITH c AS ( \
             INSERT INTO consumed_events (consumer, event_id, event_type) \
             SELECT $3, $4, $5 WHERE $3::text IS NOT NULL \
             ON CONFLICT DO NOTHING RETURNING event_id \
         ) \
         SELECT (SELECT count(*) FROM c) AS claimed, o.buyer_id, o.status, \
                u.id IS NOT NULL AS locked \
         FROM (SELECT 1) one \
         LEFT JOIN orders o ON o.id = $1 \
         LEFT JOIN LATERAL (SELECT id FROM users WHERE id = o.buyer_id AND o.buyer_id = $2 \
                            FOR UPDATE) u ON true",
        [
            order_id.into(),
            lock_buyer.into(),
            claim.map(|(consumer, _, _)| consumer.to_owned()).into(),
            claim.map(|(_, event_id, _)| event_id).into(),
            claim.map(|(_, _, event_type)| event_type.to_owned()).into(),
        ],
    )
    .await?
    .ok_or_else(|| DbErr::Custom("the claim returned no row".into()))?;
    if claim.is_some() && row.try_get::<i64>("", "claimed")? == 0 {
        return Ok(Claimed::Before);
    }
    if row.try_get::<Option<i64>>("", "buyer_id")?.is_none() {
        return Ok(Claimed::Now(None));
    }
    Ok(Claimed::Now(Some((
        read_standing(order_id, &row)?,
        row.try_get("", "locked")?,
    ))))
}

fn read_standing(order_id: OrderId, row: &sea_orm::QueryResult) -> Result<Standing, DbErr> {
    let status: String = row.try_get("", "status")?;
    // The column's CHECK constraint admits exactly the `OrderStatus` values.
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| DbErr::Type(format!("order {order_id} has unknown status {status}")))?;
    Ok(Standing {
        buyer_id: row.try_get("", "buyer_id")?,
        status,
    })
}
