//! Placing and reading orders.
//!
//! [`place`] is the one place an order for balance, points or a free plan is created, and it does
//! everything in ONE transaction: lock the buyer, claim the idempotency key, check the plan and
//! the buyer's funds, debit with a ledger entry, mark the order paid, write its status history and
//! its `order.paid.v1` outbox row, and store the response for replays. Either all of it commits
//! or none of it does. It never talks to the broker.

use crate::error::{ApiError, violated_constraint};
use crate::outbox;
use crate::pricing::buyer_price;
use chrono::{DateTime, Utc};
use memberline_schema::entities::{
    balance_ledger, idempotency_key, level, membership_period, order, order_status_history, plan,
    point_ledger, user,
};
use memberline_schema::events::{Envelope, OrderPaid, PayMethod, PlanKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Set, Statement,
    TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

/// Order statuses (the database CHECK constraint allows exactly these).
pub mod status {
    pub const PENDING_PAYMENT: &str = "pending_payment";
    pub const PAID: &str = "paid";
    pub const CLOSED: &str = "closed";
    pub const REFUNDED: &str = "refunded";
}

/// An order as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: i64,
    /// Merchant order number, also sent to payment providers as `out_trade_no`.
    pub order_no: String,
    pub plan_id: i64,
    pub plan_code: String,
    pub plan_name: String,
    pub plan_kind: String,
    pub duration_days: Option<i32>,
    pub uses: Option<i32>,
    /// `balance | points | free | wechat | alipay`
    pub pay_method: String,
    /// Charged in fen (0 for points and free orders).
    pub amount_fen: i64,
    /// Charged in points (0 unless paid with points).
    pub amount_points: i64,
    pub original_price_fen: i64,
    /// `pending_payment | paid | closed | refunded`
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl From<order::Model> for OrderView {
    fn from(o: order::Model) -> Self {
        Self {
            id: o.id,
            order_no: o.order_no,
            plan_id: o.plan_id,
            plan_code: o.plan_code,
            plan_name: o.plan_name,
            plan_kind: o.plan_kind,
            duration_days: o.duration_days,
            uses: o.uses,
            pay_method: o.pay_method,
            amount_fen: o.amount_fen,
            amount_points: o.amount_points,
            original_price_fen: o.original_price_fen,
            status: o.status,
            created_at: o.created_at,
            paid_at: o.paid_at,
            expires_at: o.expires_at,
            closed_at: o.closed_at,
        }
    }
}

/// A request to buy a plan.
#[derive(Clone, Debug)]
pub struct PlaceOrder {
    pub buyer_id: i64,
    pub plan_id: i64,
    pub pay_method: PayMethod,
    pub idempotency_key: String,
    /// Hash of the canonical request body; the same key with another hash is refused.
    pub request_hash: String,
    pub correlation_id: Uuid,
}

/// What [`place`] did.
#[derive(Debug)]
pub enum Placed {
    /// A new order was created and paid; the body is what was stored for replays.
    Created(serde_json::Value),
    /// The key was used before with the same body: the first response, unchanged.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
}

/// Places an order paid with balance, points or a free plan. See the module docs.
pub async fn place(db: &DatabaseConnection, cmd: &PlaceOrder) -> Result<Placed, ApiError> {
    if matches!(cmd.pay_method, PayMethod::Wechat | PayMethod::Alipay) {
        return Err(ApiError::unprocessable(
            "pay_method_unavailable",
            format!(
                "pay_method `{}` is not available yet; use balance, points or free",
                cmd.pay_method.as_str()
            ),
        ));
    }
    let txn = db.begin().await?;
    match place_in(&txn, cmd).await {
        Ok(created @ Placed::Created(_)) => {
            txn.commit().await?;
            Ok(created)
        }
        other => {
            // A replay or a refusal writes nothing: the idempotency claim is released too, so
            // the buyer can retry the same key once the cause (say, low funds) is fixed.
            if let Err(e) = txn.rollback().await {
                tracing::warn!(error = %e, "rollback failed; the connection will be discarded");
            }
            other
        }
    }
}

async fn place_in(txn: &DatabaseTransaction, cmd: &PlaceOrder) -> Result<Placed, ApiError> {
    // Lock the buyer first: every purchase by one buyer is serialized here, so funds checked
    // below cannot be spent twice by concurrent requests.
    let buyer = user::Entity::find_by_id(cmd.buyer_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown_user", "the token's user does not exist"))?;

    // Claim the key. A committed row under the same key means this is a retry.
    let claimed = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING user_id",
            [
                cmd.buyer_id.into(),
                cmd.idempotency_key.clone().into(),
                cmd.request_hash.clone().into(),
            ],
        ))
        .await?;
    if claimed.is_none() {
        let first =
            idempotency_key::Entity::find_by_id((cmd.buyer_id, cmd.idempotency_key.clone()))
                .one(txn)
                .await?
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("idempotency row vanished")))?;
        if first.request_hash != cmd.request_hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            ));
        }
        let (Some(status), Some(body)) = (first.status_code, first.response_body) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "committed idempotency row without a response"
            )));
        };
        return Ok(Placed::Replayed {
            status: status as u16,
            body,
        });
    }

    let plan = plan::Entity::find_by_id(cmd.plan_id)
        .one(txn)
        .await?
        .filter(|p| p.on_shelf)
        .ok_or_else(|| {
            ApiError::not_found("plan_not_found", format!("no plan with id {}", cmd.plan_id))
        })?;
    let kind = PlanKind::parse(&plan.kind).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("plan {} has kind {}", plan.id, plan.kind))
    })?;

    if kind != PlanKind::Pass {
        let permanent = membership_period::Entity::find()
            .filter(membership_period::Column::UserId.eq(buyer.id))
            .filter(membership_period::Column::Permanent.eq(true))
            .count(txn)
            .await?;
        // A paid permanent order counts at once, before the membership worker has written its
        // period: otherwise two quick purchases would both be charged.
        let permanent_orders = order::Entity::find()
            .filter(order::Column::BuyerId.eq(buyer.id))
            .filter(order::Column::PlanKind.eq(PlanKind::Permanent.as_str()))
            .filter(order::Column::Status.eq(status::PAID))
            .count(txn)
            .await?;
        if permanent + permanent_orders > 0 {
            return Err(ApiError::conflict(
                "already_permanent",
                "you already have a permanent membership",
            ));
        }
    }

    match (cmd.pay_method, plan.is_free) {
        (PayMethod::Free, false) => {
            return Err(ApiError::unprocessable(
                "plan_not_free",
                "pay_method `free` is only for free plans",
            ));
        }
        (PayMethod::Free, true) => {
            let claimed_before = order::Entity::find()
                .filter(order::Column::BuyerId.eq(buyer.id))
                .filter(order::Column::PlanId.eq(plan.id))
                .filter(order::Column::PayMethod.eq(PayMethod::Free.as_str()))
                .count(txn)
                .await?;
            if claimed_before > 0 {
                return Err(free_claimed());
            }
        }
        (_, true) => {
            return Err(ApiError::unprocessable(
                "pay_method_not_allowed",
                "a free plan is taken with pay_method `free`",
            ));
        }
        _ => {}
    }

    let level = level::Entity::find_by_id(buyer.level_id)
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("level {} missing", buyer.level_id)))?;
    let price = buyer_price(&plan, &level);
    let (amount_fen, amount_points) = match cmd.pay_method {
        PayMethod::Balance => (price.fen, 0),
        PayMethod::Points => {
            let points = price.points.ok_or_else(|| {
                ApiError::unprocessable(
                    "pay_method_not_allowed",
                    "this plan cannot be bought with points",
                )
            })?;
            (0, points)
        }
        _ => (0, 0),
    };
    if buyer.balance_fen < amount_fen {
        return Err(insufficient_balance(amount_fen, buyer.balance_fen));
    }
    if buyer.points < amount_points {
        return Err(insufficient_points(amount_points, buyer.points));
    }

    let now = Utc::now();
    let order_id: i64 = txn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT nextval(pg_get_serial_sequence('orders', 'id')) AS id",
        ))
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("nextval returned no row")))?
        .try_get("", "id")?;
    let order_no = format!("ML{}{:010}", now.format("%Y%m%d"), order_id);

    let inserted = order::ActiveModel {
        id: Set(order_id),
        order_no: Set(order_no.clone()),
        buyer_id: Set(buyer.id),
        plan_id: Set(plan.id),
        plan_code: Set(plan.code.clone()),
        plan_name: Set(plan.name.clone()),
        plan_kind: Set(plan.kind.clone()),
        duration_days: Set(plan.duration_days),
        uses: Set(plan.uses),
        pay_method: Set(cmd.pay_method.as_str().to_owned()),
        amount_fen: Set(amount_fen),
        amount_points: Set(amount_points),
        original_price_fen: Set(plan.original_price_fen),
        original_price_points: Set(plan.price_points),
        status: Set(status::PAID.to_owned()),
        provider: Set(None),
        provider_txn_id: Set(None),
        provider_payload: Set(None),
        correlation_id: Set(cmd.correlation_id),
        expires_at: Set(None),
        paid_at: Set(Some(now)),
        closed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        version: Set(1),
    }
    .insert(txn)
    .await
    .map_err(|e| match violated_constraint(&e).as_deref() {
        Some("orders_one_free_claim") => free_claimed(),
        _ => ApiError::from(e),
    })?;

    // Debit with a ledger entry carrying the balance after. The CHECK constraints on `users`
    // make a negative balance impossible even if the check above were wrong.
    match cmd.pay_method {
        PayMethod::Balance if amount_fen > 0 => {
            let after = debit(txn, "balance_fen", buyer.id, amount_fen)
                .await
                .map_err(|e| match violated_constraint(&e).as_deref() {
                    Some("users_balance_not_negative") => {
                        insufficient_balance(amount_fen, buyer.balance_fen)
                    }
                    _ => ApiError::from(e),
                })?;
            balance_ledger::ActiveModel {
                user_id: Set(buyer.id),
                order_id: Set(Some(order_id)),
                reason: Set("order_payment".to_owned()),
                delta: Set(-amount_fen),
                balance_after: Set(after),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(txn)
            .await?;
        }
        PayMethod::Points if amount_points > 0 => {
            let after = debit(txn, "points", buyer.id, amount_points)
                .await
                .map_err(|e| match violated_constraint(&e).as_deref() {
                    Some("users_points_not_negative") => {
                        insufficient_points(amount_points, buyer.points)
                    }
                    _ => ApiError::from(e),
                })?;
            point_ledger::ActiveModel {
                user_id: Set(buyer.id),
                order_id: Set(Some(order_id)),
                reason: Set("order_payment".to_owned()),
                delta: Set(-amount_points),
                balance_after: Set(after),
                flagged_excess: Set(0),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(txn)
            .await?;
        }
        _ => {}
    }

    order_status_history::ActiveModel {
        order_id: Set(order_id),
        from_status: Set(None),
        to_status: Set(status::PAID.to_owned()),
        reason: Set(format!("paid_with_{}", cmd.pay_method.as_str())),
        at: Set(now),
        ..Default::default()
    }
    .insert(txn)
    .await?;

    let event = OrderPaid {
        order_id,
        order_no,
        buyer_id: buyer.id,
        plan_id: plan.id,
        plan_code: plan.code.clone(),
        plan_name: plan.name.clone(),
        plan_kind: kind,
        duration_days: plan.duration_days,
        uses: plan.uses,
        pay_method: cmd.pay_method,
        amount_fen,
        amount_points,
        original_price_fen: plan.original_price_fen,
        original_price_points: plan.price_points,
        paid_at: now,
    };
    outbox::enqueue(txn, &Envelope::new(event, cmd.correlation_id, None)).await?;

    let body = serde_json::to_value(OrderView::from(inserted))
        .map_err(|e| ApiError::internal(anyhow::Error::from(e)))?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET status_code = 201, response_body = $3 \
         WHERE user_id = $1 AND key = $2",
        [
            cmd.buyer_id.into(),
            cmd.idempotency_key.clone().into(),
            body.clone().into(),
        ],
    ))
    .await?;
    Ok(Placed::Created(body))
}

/// Subtracts `amount` from `column` of a user and returns the new value.
async fn debit(
    txn: &DatabaseTransaction,
    column: &'static str,
    user_id: i64,
    amount: i64,
) -> Result<i64, sea_orm::DbErr> {
    // `column` is one of two compile-time constants, never user input.
    let sql = format!(
        "UPDATE users SET {column} = {column} - $1, updated_at = now() WHERE id = $2 \
         RETURNING {column} AS after"
    );
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [amount.into(), user_id.into()],
        ))
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound(format!("user {user_id}")))?;
    row.try_get("", "after")
}

fn free_claimed() -> ApiError {
    ApiError::conflict(
        "free_plan_already_claimed",
        "this free plan can be claimed once per buyer, and you already claimed it",
    )
}

fn insufficient_balance(needed: i64, have: i64) -> ApiError {
    ApiError::unprocessable(
        "insufficient_balance",
        format!("this plan costs {needed} fen and your balance is {have} fen"),
    )
}

fn insufficient_points(needed: i64, have: i64) -> ApiError {
    ApiError::unprocessable(
        "insufficient_points",
        format!("this plan costs {needed} points and you have {have}"),
    )
}
