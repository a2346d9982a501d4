//! An admin grants a plan (`PUT /v1/admin/users/{id}/membership`) or revokes a buyer's
//! membership (`DELETE …`). A grant is a zero-amount order with `pay_method: admin_grant` that
//! flows through `order.paid.v1` like any other (stacking, inbox, no reward points, no saving);
//! a revocation is `membership.revoked.v1`, applied by the membership worker. Each writes its
//! audit entry in the same transaction, and each is idempotent per Idempotency-Key.

use crate::place::{PlaceOrder, check_eligibility, insert_order, lock_buyer};
use crate::rules::Charge;
use crate::store;
use crate::store::audit;
use crate::store::transitions;
use crate::{ExpectedPrice, OrderError, OrderView};
use chrono::Utc;
use memberline_platform::idempotency::{self, Answer, Claim};
use memberline_platform::outbox;
use memberline_schema::events::{Envelope, MembershipRevoked, OrderPaid, PlanSold};
use memberline_schema::ids::{BuyerId, PlanId};
use memberline_schema::states::{AuditAction, OrderStatus, PayMethod};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

/// Who asks, under which key, with which request.
pub struct AdminRequest {
    pub actor_id: i64,
    pub user_id: BuyerId,
    pub reason: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub correlation_id: Uuid,
}

impl AdminRequest {
    /// The buyer acted on, locked until `txn` ends; 404 `user_not_found` when there is none.
    pub(crate) async fn lock_buyer(
        &self,
        txn: &DatabaseTransaction,
    ) -> Result<memberline_schema::entities::user::Model, OrderError> {
        lock_buyer(txn, self.user_id).await.map_err(|e| match e {
            OrderError::UnknownBuyer => OrderError::UserNotFound(self.user_id),
            other => other,
        })
    }

    pub(crate) fn key(&self) -> idempotency::Key<'_> {
        idempotency::Key {
            owner_kind: idempotency::OwnerKind::Staff,
            owner: self.actor_id,
            key: &self.idempotency_key,
            request_hash: &self.request_hash,
        }
    }
}

/// Grants `plan_id` to the buyer: 201 with the granted (paid) order.
pub async fn grant(
    db: &DatabaseConnection,
    req: &AdminRequest,
    plan_id: PlanId,
) -> Result<Answer, OrderError> {
    one_transaction(db, req, |txn| async move {
        let buyer = req.lock_buyer(&txn).await?;
        let plan = store::catalogue::plan(&txn, plan_id)
            .await?
            .ok_or(OrderError::PlanNotFound(plan_id))?;
        check_eligibility(&txn, &buyer, &plan, PayMethod::AdminGrant).await?;
        let cmd = PlaceOrder {
            buyer_id: buyer.id,
            plan_id,
            pay_method: PayMethod::AdminGrant,
            expected: ExpectedPrice::default(),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: req.request_hash.clone(),
            correlation_id: req.correlation_id,
            channel: Default::default(),
        };
        let now = Utc::now();
        let charge = Charge { fen: 0, points: 0 };
        let order = insert_order(&txn, &cmd, &buyer, &plan, charge, now, None).await?;
        transitions::record(
            &txn,
            order.id,
            None,
            OrderStatus::Paid,
            "granted_by_admin",
            now,
        )
        .await?;
        let event = OrderPaid {
            order_id: order.id,
            order_no: order.order_no.clone(),
            buyer_id: buyer.id,
            plan: PlanSold::of_plan(&plan),
            pay_method: PayMethod::AdminGrant,
            amount_fen: 0,
            amount_points: 0,
            original_price_fen: plan.original_price_fen,
            original_price_points: plan.price_points,
            paid_at: now,
        };
        outbox::enqueue(&txn, &Envelope::new(event, req.correlation_id, None)).await?;
        audit::record(
            &txn,
            audit::Entry {
                actor_id: req.actor_id,
                action: AuditAction::MembershipGrant,
                user_id: Some(buyer.id),
                order_id: Some(order.id),
                reason: &req.reason,
                details: json!({"plan_id": plan.id, "plan_code": plan.code}),
            },
        )
        .await?;
        let body = serde_json::to_value(OrderView::from(order)).map_err(anyhow::Error::from)?;
        Ok((txn, 201, body))
    })
    .await
}

/// Ends the buyer's membership now (through the membership worker): 202 with the audit entry.
pub async fn revoke(db: &DatabaseConnection, req: &AdminRequest) -> Result<Answer, OrderError> {
    one_transaction(db, req, |txn| async move {
        req.lock_buyer(&txn).await?;
        let now = Utc::now();
        let audit_id = audit::record(
            &txn,
            audit::Entry {
                actor_id: req.actor_id,
                action: AuditAction::MembershipRevoke,
                user_id: Some(req.user_id),
                order_id: None,
                reason: &req.reason,
                details: json!({}),
            },
        )
        .await?;
        let event = MembershipRevoked {
            user_id: req.user_id,
            actor_id: req.actor_id,
            reason: req.reason.clone(),
            audit_id,
            revoked_at: now,
        };
        outbox::enqueue(&txn, &Envelope::new(event, req.correlation_id, None)).await?;
        let body = json!({
            "user_id": req.user_id,
            "audit_id": audit_id,
            "revoked_at": now,
            "status": "accepted",
        });
        Ok((txn, 202, body))
    })
    .await
}

/// Claims the key, runs `act` in the same transaction, stores its answer for replays and
/// commits; a replay answers the stored response, a refusal writes nothing.
pub(crate) async fn one_transaction<'a, F, Fut>(
    db: &DatabaseConnection,
    req: &'a AdminRequest,
    act: F,
) -> Result<Answer, OrderError>
where
    F: FnOnce(DatabaseTransaction) -> Fut,
    Fut: std::future::Future<
            Output = Result<(DatabaseTransaction, u16, serde_json::Value), OrderError>,
        > + 'a,
{
    let txn = db.begin().await?;
    match idempotency::claim(&txn, req.key()).await? {
        Claim::Claimed => {}
        Claim::Replay(answer) => {
            txn.rollback().await?;
            return Ok(answer);
        }
        Claim::InFlight { .. } => {
            txn.rollback().await?;
            return Err(anyhow::anyhow!("committed idempotency row without a response").into());
        }
    }
    // On an error the transaction is dropped, which rolls it back: nothing is written.
    let (txn, status, body) = act(txn).await?;
    let answer = Answer::fresh(status, body);
    idempotency::store(&txn, req.key(), &answer).await?;
    txn.commit().await?;
    Ok(answer)
}
