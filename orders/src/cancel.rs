//! A buyer cancels their own pending provider order: closed at the provider first, then here,
//! exactly as the workers' expiry does ([`memberline_orders::lifecycle::close`]): a payment
//! the provider already took is applied instead, and the cancel answers 409.

use crate::OrderError;
use crate::lifecycle::{self, Closing, LifecycleError};
use crate::providers::Payments;
use crate::store;
use memberline_schema::entities::order;
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::states::{CloseReason, OrderStatus};
use sea_orm::DatabaseConnection;

/// Cancels `order_id` of `buyer_id` and returns it closed. Cancelling an order that is already
/// closed returns it as it is (a retried cancel succeeds); a paid order is
/// [`OrderError::NotPending`].
pub async fn cancel(
    db: &DatabaseConnection,
    payments: &Payments,
    buyer_id: BuyerId,
    order_id: OrderId,
) -> Result<order::Model, OrderError> {
    let order = find(db, buyer_id, order_id).await?;
    match order.status {
        OrderStatus::Closed => return Ok(order),
        OrderStatus::Paid | OrderStatus::RefundPending | OrderStatus::Refunded => {
            return Err(OrderError::NotPending(order.status));
        }
        OrderStatus::PendingPayment => {}
    }
    let provider = order
        .provider
        .ok_or_else(|| anyhow::anyhow!("pending order {} without a provider", order.id))?;
    // A provider switched off since checkout cannot be asked: the buyer tries again later (an
    // operator re-enables it to close its remaining orders).
    let client = payments
        .get(provider)
        .ok_or(OrderError::ProviderUnavailable("disabled"))?;
    match lifecycle::close(db, client.as_ref(), &order.order_no, CloseReason::Cancelled).await {
        Ok(Closing::Closed | Closing::NotPending(_) | Closing::Paid(_)) => {}
        Err(LifecycleError::Provider(e)) => {
            tracing::warn!(%order_id, provider = %provider, error = %e, "Cancel could not reach the provider; the order stays pending");
            return Err(OrderError::ProviderUnavailable(e.kind()));
        }
        Err(LifecycleError::Database(e)) => return Err(e.into()),
        Err(e @ LifecycleError::Inconsistent(_)) => return Err(anyhow::Error::from(e).into()),
    }
    let order = find(db, buyer_id, order_id).await?;
    match order.status {
        OrderStatus::Closed => Ok(order),
        other => Err(OrderError::NotPending(other)),
    }
}

async fn find(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    order_id: OrderId,
) -> Result<order::Model, OrderError> {
    store::orders::of_buyer(db, order_id, buyer_id, false)
        .await?
        .ok_or(OrderError::OrderNotFound(order_id))
}
