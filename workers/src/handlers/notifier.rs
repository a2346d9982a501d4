//! Notifier: for `order.paid.v1` a message in the buyer's inbox, a template/SMS message through
//! the configured channel, a sequenced merchant-console feed entry ("new paid order") and a
//! console push; for `membership.extended.v1` an inbox message and a buyer push ("membership
//! active until …"); for `level.changed.v1` an inbox message and a buyer push. The inbox row
//! (unique per event, user and kind) is the business key.

use super::{insert_once, order_paid, require_paid_order};
use crate::channel::{Channel, Message};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming, Push};
use memberline_schema::events::{Envelope, LevelChanged, MembershipExtended};
use memberline_schema::money::fen_to_yuan;
use memberline_schema::topology::Worker;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement};
use serde_json::json;

pub struct Notifier {
    pub channel: Channel,
}

/// Routing key of console pushes on the push exchange.
pub const CONSOLE_KEY: &str = "console.order_paid";

/// Routing key of a buyer's pushes on the push exchange.
pub fn buyer_key(user_id: i64) -> String {
    format!("buyer.{user_id}")
}

#[async_trait::async_trait]
impl Handler for Notifier {
    fn worker(&self) -> Worker {
        Worker::Notifier
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        match msg.head.event_type.as_str() {
            "membership.extended" => self.membership_extended(txn, msg).await,
            "level.changed" => self.level_changed(txn, msg).await,
            _ => self.order_paid(txn, msg).await,
        }
    }
}

impl Notifier {
    async fn order_paid(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = order_paid(msg)?;
        let e = &env.payload;
        require_paid_order(txn, e).await?;
        let paid = if e.amount_points > 0 {
            format!("{} points", e.amount_points)
        } else {
            format!("¥{}", fen_to_yuan(e.amount_fen))
        };
        let title = "Payment received".to_owned();
        let body = format!("Order {}: {} paid ({paid}).", e.order_no, e.plan_name);
        let inserted = insert_once(
            txn,
            "INSERT INTO notifications (user_id, event_id, kind, title, body, order_id) \
             VALUES ($1, $2, 'order_paid', $3, $4, $5) \
             ON CONFLICT (event_id, user_id, kind) DO NOTHING RETURNING id",
            vec![
                e.buyer_id.into(),
                env.event_id.into(),
                title.clone().into(),
                body.clone().into(),
                e.order_id.into(),
            ],
        )
        .await?;
        if !inserted {
            return Ok(Effects::already_applied());
        }
        let feed = json!({
            "order_id": e.order_id,
            "order_no": e.order_no,
            "buyer_id": e.buyer_id,
            "plan_name": e.plan_name,
            "pay_method": e.pay_method,
            "amount_fen": e.amount_fen,
            "amount_points": e.amount_points,
            "paid_at": e.paid_at,
        });
        // External delivery before the feed entry: if it fails, the transaction (inbox) rolls
        // back and the whole effect is retried; receivers deduplicate on the message id.
        self.channel
            .send(&Message {
                id: format!("{}-order_paid", env.event_id),
                kind: "order_paid".into(),
                user_id: e.buyer_id,
                title,
                body,
            })
            .await?;
        // Numbered last, from a counter row locked until commit, so feed numbers become
        // visible in order (see the console_feed_counter migration).
        let seq: i64 = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH next AS (UPDATE console_feed_counter SET last_seq = last_seq + 1 \
                 RETURNING last_seq) \
                 INSERT INTO console_feed (seq, event_id, kind, payload) \
                 SELECT last_seq, $1, 'order_paid', $2 FROM next RETURNING seq",
                [env.event_id.into(), feed.clone().into()],
            ))
            .await?
            .ok_or_else(|| HandlerError::transient(anyhow::anyhow!("console feed insert")))?
            .try_get("", "seq")?;
        Ok(Effects {
            already_applied: false,
            pushes: vec![
                Push {
                    routing_key: CONSOLE_KEY.into(),
                    body: json!({"type": "order_paid", "seq": seq, "order": feed}),
                },
                Push {
                    routing_key: buyer_key(e.buyer_id),
                    body: json!({"type": "order_paid", "order_id": e.order_id, "order_no": e.order_no}),
                },
            ],
        })
    }

    async fn membership_extended(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env: Envelope<MembershipExtended> = serde_json::from_value(msg.envelope.clone())
            .map_err(|e| {
                HandlerError::permanent(anyhow::anyhow!("membership.extended.v1 payload: {e}"))
            })?;
        let e = &env.payload;
        let (title, body) = if e.permanent {
            (
                "Membership active".to_owned(),
                "Your membership is now permanent.".to_owned(),
            )
        } else if let Some(until) = e.ends_at {
            (
                "Membership active".to_owned(),
                format!(
                    "Your membership is active until {}.",
                    until.format("%Y-%m-%d %H:%M UTC")
                ),
            )
        } else {
            (
                "Pass added".to_owned(),
                format!("{} use(s) added to your passes.", e.pass_uses.unwrap_or(0)),
            )
        };
        let inserted = insert_once(
            txn,
            "INSERT INTO notifications (user_id, event_id, kind, title, body, order_id) \
             VALUES ($1, $2, 'membership_extended', $3, $4, $5) \
             ON CONFLICT (event_id, user_id, kind) DO NOTHING RETURNING id",
            vec![
                e.user_id.into(),
                env.event_id.into(),
                title.into(),
                body.clone().into(),
                e.order_id.into(),
            ],
        )
        .await?;
        if !inserted {
            return Ok(Effects::already_applied());
        }
        Ok(Effects {
            already_applied: false,
            pushes: vec![Push {
                routing_key: buyer_key(e.user_id),
                body: json!({
                    "type": "membership_active",
                    "order_id": e.order_id,
                    "permanent": e.permanent,
                    "until": e.ends_at,
                    "message": body,
                }),
            }],
        })
    }

    async fn level_changed(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env: Envelope<LevelChanged> =
            serde_json::from_value(msg.envelope.clone()).map_err(|e| {
                HandlerError::permanent(anyhow::anyhow!("level.changed.v1 payload: {e}"))
            })?;
        let e = &env.payload;
        let name: String = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT name FROM levels WHERE id = $1",
                [e.to_level.into()],
            ))
            .await?
            .ok_or_else(|| {
                HandlerError::permanent(anyhow::anyhow!("unknown level {}", e.to_level))
            })?
            .try_get("", "name")?;
        let body = format!("You are now a {name} member.");
        let inserted = insert_once(
            txn,
            "INSERT INTO notifications (user_id, event_id, kind, title, body, order_id) \
             VALUES ($1, $2, 'level_changed', 'New member level', $3, $4) \
             ON CONFLICT (event_id, user_id, kind) DO NOTHING RETURNING id",
            vec![
                e.user_id.into(),
                env.event_id.into(),
                body.clone().into(),
                e.order_id.into(),
            ],
        )
        .await?;
        if !inserted {
            return Ok(Effects::already_applied());
        }
        Ok(Effects {
            already_applied: false,
            pushes: vec![Push {
                routing_key: buyer_key(e.user_id),
                body: json!({"type": "level_changed", "level": name, "message": body}),
            }],
        })
    }
}
