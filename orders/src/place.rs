//! Placing an order paid with balance, points or a free plan.
//!
//! [`place_together`] does everything for a purchase in ONE transaction: lock the buyer, claim
//! the idempotency key, check the plan and the buyer's eligibility and funds, insert the order
//! as paid, debit with a ledger entry, write its status history and its `order.paid.v1` outbox
//! row, and store the response for replays. Either all of it commits or none of it does. It
//! never talks to the broker. It takes several purchases of different buyers at once, with the
//! same statements (`crate::store::purchase`): that is how the purchase lanes
//! spend one commit on purchases that arrive together.

use crate::checkout::ChannelChoice;
use crate::rules::{self, Charge, ExpectedPrice};
use crate::store::{self, purchase as statements};
use crate::{OrderError, OrderView};
use chrono::{DateTime, SubsecRound, Utc};
use memberline_platform::db::violated_constraint;
use memberline_platform::idempotency::{self, Answer, Claim};
use memberline_platform::outbox::{self, Wake};
use memberline_schema::entities::{order, plan, user};
use memberline_schema::events::{Envelope, OrderPaid, PlanSold};
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use uuid::Uuid;

/// A request to buy a plan.
#[derive(Clone, Debug)]
pub struct PlaceOrder {
    pub buyer_id: BuyerId,
    pub plan_id: PlanId,
    pub pay_method: PayMethod,
    /// What the buyer's page showed; never used as the price, only compared with it.
    pub expected: ExpectedPrice,
    pub idempotency_key: String,
    /// Hash of the canonical request body; the same key with another hash is refused.
    pub request_hash: String,
    pub correlation_id: Uuid,
    /// How a provider order is paid; empty for the others.
    pub channel: ChannelChoice,
}

/// Why `cmd` is not a purchase [`place_together`] takes: admin grants and provider payments
/// have paths of their own.
pub(crate) fn refuse_other_methods(cmd: &PlaceOrder) -> Result<(), OrderError> {
    if cmd.pay_method == PayMethod::AdminGrant {
        return Err(OrderError::PayMethodNotAllowed(rules::ADMIN_GRANT_ONLY));
    }
    if cmd.channel.channel.is_some() || cmd.channel.wechat_app.is_some() {
        return Err(OrderError::InvalidChannel(
            "channel and wechat_app are only for wechat and alipay orders",
        ));
    }
    if cmd.pay_method.provider().is_some() {
        // Provider orders are placed by `checkout`, which calls the provider between two
        // transactions.
        return Err(OrderError::PayMethodUnavailable(cmd.pay_method));
    }
    Ok(())
}

/// Places orders paid with balance, points or a free plan, of different buyers, in ONE
/// transaction: one answer per purchase, in order. The gateway's purchases come here through
/// the purchase lanes, which give purchases that arrive together one transaction.
///
/// `wake`: how the commit wakes the relay ([`Wake`]: in-process, the transaction opting out of
/// the outbox trigger's NOTIFY, or by that NOTIFY).
///
/// The refusals and replays among them write nothing; every other purchase commits with the
/// transaction, or none does. `Err` when the transaction failed: with one purchase, that is
/// its answer; with several, the caller places each again on its own (anything committed
/// already is then found by its idempotency key and replayed, so nothing is applied twice).
pub(crate) async fn place_together(
    db: &DatabaseConnection,
    cmds: &[&PlaceOrder],
    wake: &Wake,
) -> Result<Vec<Result<Answer, OrderError>>, OrderError> {
    let txn = db.begin().await?;
    match decide_and_write(&txn, cmds, wake).await {
        Ok((answers, true)) => {
            txn.commit().await?;
            wake.committed();
            Ok(answers)
        }
        other => {
            // Refusals and replays write nothing: the idempotency claims are released too,
            // so a buyer can retry the same key once the cause (say, low funds) is fixed.
            if let Err(e) = txn.rollback().await {
                tracing::warn!(error = %e, "rollback failed; the connection will be discarded");
            }
            other.map(|(answers, _)| answers)
        }
    }
}

/// A purchase the checks accepted, ready to write.
struct Accepted {
    at: usize,
    order: order::Model,
    charge: Charge,
    history_reason: String,
    outbox: outbox::Row,
    body: serde_json::Value,
}

/// Locks the buyers, checks every purchase, writes the accepted ones; the answers, and
/// whether anything was written (to commit).
async fn decide_and_write(
    txn: &DatabaseTransaction,
    cmds: &[&PlaceOrder],
    wake: &Wake,
) -> Result<(Vec<Result<Answer, OrderError>>, bool), OrderError> {
    let mut buyer_ids: Vec<BuyerId> = cmds.iter().map(|c| c.buyer_id).collect();
    buyer_ids.sort_unstable();
    buyer_ids.dedup();
    if buyer_ids.len() != cmds.len() {
        return Err(
            anyhow::anyhow!("purchases sharing a transaction must have different buyers").into(),
        );
    }
    let buyers = statements::lock(txn, &buyer_ids).await?;
    let asked: Vec<statements::Asked<'_>> = cmds
        .iter()
        .map(|c| statements::Asked {
            buyer_id: c.buyer_id,
            plan_id: c.plan_id,
            key: &c.idempotency_key,
        })
        .collect();
    let checked = statements::check(txn, &asked, wake).await?;
    let mut answers: Vec<Result<Answer, OrderError>> = Vec::with_capacity(cmds.len());
    let mut accepted = Vec::new();
    for (at, (cmd, checked)) in cmds.iter().zip(checked).enumerate() {
        let buyer = buyers.iter().find(|b| b.id == cmd.buyer_id);
        match decide(at, cmd, buyer, checked) {
            Ok(Decision::Accept(a)) => {
                // Replaced by the order once written.
                answers.push(Err(anyhow::anyhow!("not written").into()));
                accepted.push(*a);
            }
            Ok(Decision::Answer(answer)) => answers.push(Ok(answer)),
            Err(e) => answers.push(Err(e)),
        }
    }
    if accepted.is_empty() {
        return Ok((answers, false));
    }
    let purchases: Vec<statements::Purchase<'_>> = accepted
        .iter()
        .map(|a| {
            let cmd = cmds[a.at];
            statements::Purchase {
                buyer: buyers
                    .iter()
                    .find(|b| b.id == cmd.buyer_id)
                    .expect("an accepted purchase has its buyer"),
                order: &a.order,
                charge: a.charge,
                history_reason: &a.history_reason,
                outbox: &a.outbox,
                key: cmd.key(),
                response: &a.body,
            }
        })
        .collect();
    if !statements::write(txn, &purchases).await? {
        let [cmd] = cmds else {
            return Err(anyhow::anyhow!("an idempotency key was claimed meanwhile").into());
        };
        // Claimed meanwhile by a request that does not lock this buyer (an admin's request
        // under the same numeric id): its answer, and the purchase is rolled back.
        let asked = [statements::Asked {
            buyer_id: cmd.buyer_id,
            plan_id: cmd.plan_id,
            key: &cmd.idempotency_key,
        }];
        let stored = statements::check(txn, &asked, wake)
            .await?
            .pop()
            .and_then(|c| c.stored)
            .ok_or_else(|| anyhow::anyhow!("idempotency row vanished"))?;
        return Ok((vec![replay(stored, cmd.key())], false));
    }
    for a in accepted {
        answers[a.at] = Ok(Answer::fresh(201, a.body));
    }
    Ok((answers, true))
}

/// What the checks decided for one purchase.
enum Decision {
    Accept(Box<Accepted>),
    /// A replay: nothing to write.
    Answer(Answer),
}

/// The rules, on what [`statements::check`] read for purchase `at`.
fn decide(
    at: usize,
    cmd: &PlaceOrder,
    buyer: Option<&user::Model>,
    checked: statements::Checked,
) -> Result<Decision, OrderError> {
    let buyer = buyer.ok_or(OrderError::UnknownBuyer)?;
    if let Some(stored) = checked.stored {
        return replay(stored, cmd.key()).map(Decision::Answer);
    }
    let plan = checked
        .plan
        .filter(|p| p.on_shelf)
        .ok_or(OrderError::PlanNotFound(cmd.plan_id))?;
    rules::offered(&plan, cmd.pay_method, None)?;
    rules::eligibility((&plan).into(), cmd.pay_method, checked.counts)?;
    let discount_percent = checked
        .discount_percent
        .ok_or_else(|| anyhow::anyhow!("the buyer's level is missing"))?;
    let charge = rules::charge(buyer, &plan, discount_percent, cmd.pay_method, cmd.expected)?;

    // Microseconds, as PostgreSQL keeps them: the response stored now is what reads show later.
    let now = Utc::now().trunc_subsecs(6);
    let order = order_model(cmd, buyer, &plan, charge, checked.order_id, now, None);
    let event = OrderPaid {
        order_id: order.id,
        order_no: order.order_no.clone(),
        buyer_id: buyer.id,
        plan: PlanSold::of_plan(&plan),
        pay_method: cmd.pay_method,
        amount_fen: charge.fen,
        amount_points: charge.points,
        original_price_fen: plan.original_price_fen,
        original_price_points: plan.price_points,
        paid_at: now,
    };
    let outbox = outbox::Row::of(&Envelope::new(event, cmd.correlation_id, None))?;
    let body = serde_json::to_value(OrderView::from(order.clone())).map_err(anyhow::Error::from)?;
    Ok(Decision::Accept(Box::new(Accepted {
        at,
        order,
        charge,
        history_reason: format!("paid_with_{}", cmd.pay_method),
        outbox,
        body,
    })))
}

/// A purchase whose key was used before: the first answer, or why there is none.
fn replay(stored: idempotency::Stored, key: idempotency::Key<'_>) -> Result<Answer, OrderError> {
    match stored.claim(key)? {
        Claim::Replay(replay) => Ok(replay),
        Claim::Claimed | Claim::InFlight { .. } => {
            Err(anyhow::anyhow!("committed idempotency row without a response").into())
        }
    }
}

/// Locks the buyer row. Taken first by every purchase: all of one buyer's purchases are
/// serialized here, so funds checked afterwards cannot be spent twice by concurrent requests.
pub(crate) async fn lock_buyer(
    txn: &DatabaseTransaction,
    buyer_id: BuyerId,
) -> Result<user::Model, OrderError> {
    store::catalogue::lock_buyer(txn, buyer_id)
        .await?
        .ok_or(OrderError::UnknownBuyer)
}

impl PlaceOrder {
    pub(crate) fn key(&self) -> idempotency::Key<'_> {
        idempotency::Key {
            owner_kind: idempotency::OwnerKind::Buyer,
            owner: self.buyer_id.0,
            key: &self.idempotency_key,
            request_hash: &self.request_hash,
        }
    }
}

/// [`rules::eligibility`] on the counts it needs, read in `txn`.
pub(crate) async fn check_eligibility(
    txn: &DatabaseTransaction,
    buyer: &user::Model,
    plan: &plan::Model,
    pay_method: PayMethod,
) -> Result<(), OrderError> {
    let counts = store::orders::counts(txn, buyer.id, plan.id).await?;
    rules::eligibility(plan.into(), pay_method, counts)
}

/// [`rules::charge`] at the buyer's level, read in `txn`.
pub(crate) async fn charge(
    txn: &DatabaseTransaction,
    buyer: &user::Model,
    plan: &plan::Model,
    pay_method: PayMethod,
    expected: ExpectedPrice,
) -> Result<Charge, OrderError> {
    let level = store::catalogue::level(txn, buyer.level_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("level {} missing", buyer.level_id))?;
    rules::charge(buyer, plan, level.discount_percent, pay_method, expected)
}

/// Inserts the order with a snapshot of the plan as sold: paid at once, or — with
/// `pending_until` — waiting for a provider payment until then.
/// When a pending provider order expires, and when the payment lifecycle job first asks its
/// provider about it (reconciliation, or expiry if that comes first).
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub until: DateTime<Utc>,
    pub check_at: DateTime<Utc>,
    /// How it is paid, and the app id its trade is created under (JSAPI).
    pub channel: PayChannel,
    pub app_id: Option<String>,
}

pub(crate) async fn insert_order(
    txn: &DatabaseTransaction,
    cmd: &PlaceOrder,
    buyer: &user::Model,
    plan: &plan::Model,
    charge: Charge,
    now: DateTime<Utc>,
    pending: Option<Pending>,
) -> Result<order::Model, OrderError> {
    let order_id = store::orders::next_id(txn).await?;
    let order = order_model(cmd, buyer, plan, charge, order_id, now, pending);
    store::orders::insert(txn, order)
        .await
        .map_err(|e| match violated_constraint(&e).as_deref() {
            Some("orders_one_free_claim") => OrderError::FreePlanAlreadyClaimed,
            _ => e.into(),
        })
}

/// The order as placed: a snapshot of the plan as sold, paid at `now` or — with `pending` —
/// waiting for a provider payment.
pub(crate) fn order_model(
    cmd: &PlaceOrder,
    buyer: &user::Model,
    plan: &plan::Model,
    charge: Charge,
    order_id: OrderId,
    now: DateTime<Utc>,
    pending: Option<Pending>,
) -> order::Model {
    let pending_until = pending.as_ref().map(|p| p.until);
    order::Model {
        id: order_id,
        order_no: order_no(now, order_id),
        buyer_id: buyer.id,
        plan_id: plan.id,
        plan_code: plan.code.clone(),
        plan_name: plan.name.clone(),
        plan_kind: plan.kind,
        duration_days: plan.duration_days,
        uses: plan.uses,
        pay_method: cmd.pay_method,
        amount_fen: charge.fen,
        amount_points: charge.points,
        original_price_fen: plan.original_price_fen,
        original_price_points: plan.price_points,
        status: match pending {
            Some(_) => OrderStatus::PendingPayment,
            None => OrderStatus::Paid,
        },
        provider: cmd.pay_method.provider(),
        provider_txn_id: None,
        provider_payload: None,
        correlation_id: cmd.correlation_id,
        expires_at: pending_until,
        paid_at: pending_until.is_none().then_some(now),
        closed_at: None,
        created_at: now,
        updated_at: now,
        version: 1,
        late_payment: None,
        late_refund_status: None,
        late_refunded_at: None,
        late_refund_id: None,
        payment_check_at: pending.as_ref().map(|p| p.check_at),
        payment_check_attempts: 0,
        payment_flag: None,
        refunded_at: None,
        refund_reason: None,
        refund_flag: None,
        reminded_at: None,
        channel: pending.as_ref().map(|p| p.channel),
        channel_app_id: pending.and_then(|p| p.app_id),
        trade_type: None,
    }
}

/// The merchant order number (also the providers' `out_trade_no`): `ML`, the UTC date, and the
/// order id, 20 characters of `[0-9A-Z]`.
pub fn order_no(at: DateTime<Utc>, order_id: OrderId) -> String {
    format!("ML{}{:010}", at.format("%Y%m%d"), order_id)
}
