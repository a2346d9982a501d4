//! An admin adjusts a buyer's balance or points by hand (`POST /v1/admin/members/{id}/adjustments`):
//! one ledger entry with the balance after it, never below zero, the audit entry and a message in
//! the buyer's inbox, in one transaction, idempotent per Idempotency-Key.

use crate::OrderError;
use crate::grant::{AdminRequest, one_transaction};
use crate::store::audit;
use chrono::Utc;
use memberline_platform::idempotency::Answer;
use memberline_schema::money::fen_to_yuan as yuan;
use memberline_schema::states::{AuditAction, LedgerKind, LedgerReason, NotificationKind};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use uuid::Uuid;

/// Adds `delta` (negative: takes) to the buyer's `ledger`: 201 with the entry.
pub async fn adjust(
    db: &DatabaseConnection,
    req: &AdminRequest,
    ledger: LedgerKind,
    delta: i64,
) -> Result<Answer, OrderError> {
    one_transaction(db, req, |txn| async move {
        let buyer = req.lock_buyer(&txn).await?;
        let (have, column, table, action) = match ledger {
            LedgerKind::Balance => (
                buyer.balance_fen,
                "balance_fen",
                "balance_ledger",
                AuditAction::BalanceAdjust,
            ),
            LedgerKind::Points => (
                buyer.points,
                "points",
                "point_ledger",
                AuditAction::PointsAdjust,
            ),
        };
        let after = have
            .checked_add(delta)
            .filter(|a| *a >= 0)
            .ok_or(OrderError::BelowZero {
                ledger,
                have,
                taken: delta.saturating_neg(),
            })?;
        let now = Utc::now();
        let run = |sql: String, values: Vec<sea_orm::Value>| {
            let txn = &txn;
            async move {
                txn.query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql,
                    values,
                ))
                .await
            }
        };
        run(
            format!("UPDATE users SET {column} = $2, updated_at = $3 WHERE id = $1"),
            vec![buyer.id.into(), after.into(), now.into()],
        )
        .await?;
        let entry_id: i64 = run(
            format!(
                "INSERT INTO {table} (user_id, reason, delta, balance_after, created_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id"
            ),
            vec![
                buyer.id.into(),
                LedgerReason::AdminAdjustment.as_str().into(),
                delta.into(),
                after.into(),
                now.into(),
            ],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the ledger entry was not written"))?
        .try_get("", "id")?;
        let audit_id = audit::record(
            &txn,
            audit::Entry {
                actor_id: req.actor_id,
                action,
                user_id: Some(buyer.id),
                order_id: None,
                reason: &req.reason,
                details: json!({
                    "ledger": ledger,
                    "before": have,
                    "after": after,
                    "delta": delta,
                    "entry_id": entry_id,
                }),
            },
        )
        .await?;
        let (title, amount) = match ledger {
            LedgerKind::Balance => ("Balance adjusted", format!("¥{}", yuan(delta))),
            LedgerKind::Points => ("Points adjusted", format!("{delta} points")),
        };
        let now_has = match ledger {
            LedgerKind::Balance => format!("¥{}", yuan(after)),
            LedgerKind::Points => format!("{after} points"),
        };
        run(
            "INSERT INTO notifications (user_id, event_id, kind, title, body) \
             VALUES ($1, $2, $3, $4, $5)"
                .into(),
            vec![
                buyer.id.into(),
                Uuid::now_v7().into(),
                NotificationKind::AccountAdjusted.as_str().into(),
                title.into(),
                format!(
                    "{amount} by the shop: {}. You now have {now_has}.",
                    req.reason
                )
                .into(),
            ],
        )
        .await?;
        let body = json!({
            "user_id": buyer.id,
            "ledger": ledger,
            "delta": delta,
            "balance_after": after,
            "entry_id": entry_id,
            "audit_id": audit_id,
            "created_at": now,
        });
        Ok((txn, 201, body))
    })
    .await
}
