//! Order status transitions. Every change of `orders.status` after the insert is one of
//! [`OrderStatus::TRANSITIONS`] ([`allowed`] refuses the others), made by one conditional
//! UPDATE (`WHERE status = <from>`) in the caller's transaction, with its history row: two
//! concurrent attempts (a provider's notification and our own query, say) cannot both
//! succeed, and the loser learns it did nothing.

use chrono::{DateTime, Utc};
use memberline_schema::entities::{order, order_status_history};
use memberline_schema::ids::OrderId;
use memberline_schema::states::OrderStatus;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
};

/// Writes one status-history row.
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    order_id: OrderId,
    from: Option<OrderStatus>,
    to: OrderStatus,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    order_status_history::ActiveModel {
        order_id: Set(order_id),
        from_status: Set(from),
        to_status: Set(to),
        reason: Set(reason.to_owned()),
        at: Set(at),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// `Ok` when an order may go from `from` to `to`; otherwise the error that refuses it.
pub fn allowed(from: OrderStatus, to: OrderStatus) -> Result<(), DbErr> {
    if from.may_become(to) {
        Ok(())
    } else {
        Err(DbErr::Custom(format!(
            "an order cannot go from {from} to {to}"
        )))
    }
}

/// Moves `order_id` from `from` to `to` (one of [`OrderStatus::TRANSITIONS`]) if it is still `from`, bumping its version and writing
/// the history row; `at` also sets `paid_at` (to `Paid`), `closed_at` (to `Closed`) or
/// `refunded_at` (to `Refunded`). Returns
/// `false`, changing nothing, when the order was not in `from`.
pub async fn advance<C: ConnectionTrait>(
    conn: &C,
    order_id: OrderId,
    from: OrderStatus,
    to: OrderStatus,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    allowed(from, to)?;
    let mut update = order::Entity::update_many()
        .col_expr(order::Column::Status, Expr::value(to))
        .col_expr(order::Column::UpdatedAt, Expr::value(at))
        .col_expr(
            order::Column::Version,
            Expr::col(order::Column::Version).add(1),
        );
    match to {
        // A failed refund puts the order back to paid: it was paid when it was.
        OrderStatus::Paid if from == OrderStatus::RefundPending => {}
        OrderStatus::Paid => update = update.col_expr(order::Column::PaidAt, Expr::value(at)),
        OrderStatus::Closed => update = update.col_expr(order::Column::ClosedAt, Expr::value(at)),
        OrderStatus::Refunded => {
            update = update.col_expr(order::Column::RefundedAt, Expr::value(at));
        }
        OrderStatus::PendingPayment | OrderStatus::RefundPending => {}
    }
    let changed = update
        .filter(order::Column::Id.eq(order_id))
        .filter(order::Column::Status.eq(from))
        .exec(conn)
        .await?
        .rows_affected;
    if changed == 0 {
        return Ok(false);
    }
    record(conn, order_id, Some(from), to, reason, at).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_not_in_the_table_is_refused() {
        assert!(allowed(OrderStatus::PendingPayment, OrderStatus::Paid).is_ok());
        let refused = allowed(OrderStatus::Refunded, OrderStatus::Paid).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Custom Error: an order cannot go from refunded to paid"
        );
        assert!(allowed(OrderStatus::Closed, OrderStatus::Paid).is_err());
    }
}
