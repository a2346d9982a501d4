//! Checkout with a payment provider (WeChat Pay Native, Alipay precreate).
//!
//! 1. One transaction commits the order as `pending_payment` with its `expires_at`, claims the
//!    idempotency key and links it to the order.
//! 2. The provider is called outside any transaction (a slow provider holds no lock and no
//!    connection).
//! 3. A second transaction stores the code with the order and the response for replays. If the
//!    provider failed, it closes the order instead and releases the key: nothing is charged and
//!    nothing is left pending.
//!
//! A replay of the same key returns the stored response; a replay that finds the order committed
//! but no answer stored (the first request still at the provider, or cut off there) asks the
//! provider again for the SAME `out_trade_no` and parameters, which returns the same code: there
//! is never a second provider order.

use crate::place::{Pending, charge, check_eligibility, insert_order, lock_buyer};
use crate::providers::{Payments, QrRequest};
use crate::store::{self, transitions};
use crate::{OrderError, OrderView, PlaceOrder};
use chrono::{Duration, Utc};
use memberline_platform::idempotency::{self, Answer, Claim};
use memberline_platform::settings::PaymentSettings;
use memberline_schema::entities::order;
use memberline_schema::states::OrderStatus;
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};

/// How long a provider order may stay pending, and when its provider is first asked about it
/// (`payments.order_ttl_secs`, `payments.reconcile_after_secs`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: Duration,
    pub reconcile_after: Duration,
}

impl From<&PaymentSettings> for Timing {
    fn from(p: &PaymentSettings) -> Self {
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
        Self {
            ttl: secs(p.order_ttl_secs),
            reconcile_after: secs(p.reconcile_after_secs),
        }
    }
}

/// Places a provider order and fetches its code. See the module docs.
pub async fn checkout(
    db: &DatabaseConnection,
    payments: &Payments,
    timing: Timing,
    cmd: &PlaceOrder,
) -> Result<Answer, OrderError> {
    let provider = cmd
        .pay_method
        .provider()
        .ok_or(OrderError::PayMethodUnavailable(cmd.pay_method))?;
    let client = payments
        .get(provider)
        .ok_or(OrderError::PayMethodUnavailable(cmd.pay_method))?;

    let txn = db.begin().await?;
    let order = match start(&txn, cmd, timing).await {
        Ok(Started::Order(order)) => {
            txn.commit().await?;
            *order
        }
        other => {
            if let Err(e) = txn.rollback().await {
                tracing::warn!(error = %e, "rollback failed; the connection will be discarded");
            }
            return match other? {
                Started::Replay(answer) => Ok(answer),
                Started::Order(_) => unreachable!("handled above"),
            };
        }
    };

    let request = QrRequest {
        out_trade_no: order.order_no.clone(),
        description: order.plan_name.clone(),
        amount_fen: order.amount_fen,
        expires_at: order
            .expires_at
            .ok_or_else(|| anyhow::anyhow!("pending order {} without expires_at", order.id))?,
    };
    match client.create_qr(&request).await {
        Ok(code) => {
            let txn = db.begin().await?;
            let payload = serde_json::json!({ "code_url": code.code_url });
            if !store::orders::store_code(&txn, order.id, &payload).await? {
                // Cancelled (or expired) while the provider was answering: the code must not
                // reach the buyer, whose payment would only be refunded.
                txn.rollback().await?;
                let now = store::orders::find(db, order.id)
                    .await?
                    .map_or(OrderStatus::Closed, |o| o.status);
                return Err(OrderError::NotPending(now));
            }
            let order = order::Model {
                provider_payload: Some(payload),
                ..order
            };
            let body = serde_json::to_value(OrderView::from(order)).map_err(anyhow::Error::from)?;
            let answer = Answer::fresh(201, body);
            idempotency::store(&txn, cmd.key(), &answer).await?;
            txn.commit().await?;
            Ok(answer)
        }
        Err(e) => {
            tracing::warn!(
                order_id = %order.id, provider = %provider, error = %e,
                "Provider refused or failed to create the payment; closing the order"
            );
            let txn = db.begin().await?;
            transitions::advance(
                &txn,
                order.id,
                OrderStatus::PendingPayment,
                OrderStatus::Closed,
                "provider_unavailable",
                Utc::now(),
            )
            .await?;
            // Released, so the buyer can try again with the same key.
            idempotency::release(&txn, cmd.key()).await?;
            txn.commit().await?;
            Err(OrderError::ProviderUnavailable(e.kind()))
        }
    }
}

enum Started {
    /// The pending order to fetch a code for (new, or committed by an earlier copy).
    Order(Box<order::Model>),
    /// The earlier copy's stored answer.
    Replay(Answer),
}

async fn start(
    txn: &DatabaseTransaction,
    cmd: &PlaceOrder,
    timing: Timing,
) -> Result<Started, OrderError> {
    let buyer = lock_buyer(txn, cmd.buyer_id).await?;
    match idempotency::claim(txn, cmd.key()).await? {
        Claim::Claimed => {}
        Claim::Replay(answer) => return Ok(Started::Replay(answer)),
        Claim::InFlight { order_id } => {
            let order = match order_id {
                Some(id) => store::orders::find(txn, id).await?,
                None => None,
            }
            .ok_or_else(|| anyhow::anyhow!("idempotency key without its order"))?;
            if order.status != OrderStatus::PendingPayment {
                return Err(OrderError::NotPending(order.status));
            }
            return Ok(Started::Order(Box::new(order)));
        }
    }
    let plan = store::catalogue::plan(txn, cmd.plan_id)
        .await?
        .filter(|p| p.on_shelf)
        .ok_or(OrderError::PlanNotFound(cmd.plan_id))?;
    check_eligibility(txn, &buyer, &plan, cmd.pay_method).await?;
    let charge = charge(txn, &buyer, &plan, cmd.pay_method, cmd.expected).await?;
    if charge.fen <= 0 {
        return Err(OrderError::PayMethodNotAllowed(
            "nothing to pay: take this plan with pay_method `free`",
        ));
    }
    let now = Utc::now();
    let pending = Pending {
        until: now + timing.ttl,
        check_at: (now + timing.reconcile_after).min(now + timing.ttl),
    };
    let order = insert_order(txn, cmd, &buyer, &plan, charge, now, Some(pending)).await?;
    transitions::record(
        txn,
        order.id,
        None,
        OrderStatus::PendingPayment,
        &format!("checkout_{}", cmd.pay_method),
        now,
    )
    .await?;
    idempotency::link(txn, cmd.key(), order.id).await?;
    Ok(Started::Order(Box::new(order)))
}
