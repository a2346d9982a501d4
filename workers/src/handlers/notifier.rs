//! Notifier: for `order.paid.v1` a message in the buyer's inbox, a template/SMS message recorded
//! for the channel sender, a sequenced merchant-console feed entry ("new paid order") and a
//! console push; for `membership.extended.v1` an inbox message and a buyer push ("membership
//! active until …"); for `level.changed.v1` an inbox message and a buyer push. The inbox row
//! (unique per event, user and kind) is the business key.
//!
//! The template/SMS message is only recorded here (`channel_deliveries`, in the effect's
//! transaction); [`crate::sender`] sends it after the commit. Nothing here waits on a receiver,
//! so a slow webhook holds no pooled connection and delays no other effect.

use super::{decode, order_paid, require_paid_order};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming, Push};
use crate::store::channel_deliveries::{self, Content};
use crate::store::notifications::{self, Note};
use crate::store::{console_feed, levels};
use memberline_schema::events::{EventType, LevelChanged, MembershipExtended};
use memberline_schema::money::fen_to_yuan;
use memberline_schema::states::NotificationKind;
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;
use serde_json::json;

pub struct Notifier;

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
        match msg.head.kind() {
            Some(EventType::MembershipExtended) => self.membership_extended(txn, msg).await,
            Some(EventType::LevelChanged) => self.level_changed(txn, msg).await,
            // An unknown type is rejected (permanently) by the `order.paid.v1` decoder.
            Some(EventType::OrderPaid) | None => self.order_paid(txn, msg).await,
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
        let kind = NotificationKind::OrderPaid;
        let note = Note {
            user_id: e.buyer_id,
            event_id: env.event_id,
            kind,
            title: "Payment received",
            body: &format!("Order {}: {} paid ({paid}).", e.order_no, e.plan.plan_name),
            order_id: e.order_id,
        };
        if !notifications::add(txn, note).await? {
            return Ok(Effects::already_applied());
        }
        let feed = json!({
            "order_id": e.order_id,
            "order_no": e.order_no,
            "buyer_id": e.buyer_id,
            "plan_name": e.plan.plan_name,
            "pay_method": e.pay_method,
            "amount_fen": e.amount_fen,
            "amount_points": e.amount_points,
            "paid_at": e.paid_at,
        });
        // Recorded, not sent: the sender sends it once this transaction committed (and only
        // then), with the message id as `webhook-id`.
        let content = Content {
            title: note.title.to_owned(),
            body: note.body.to_owned(),
        };
        let message_id = format!("{}-{kind}", env.event_id);
        channel_deliveries::record(txn, &message_id, e.buyer_id, kind, &content).await?;
        // Numbered last, from a counter row locked until commit, so feed numbers become
        // visible in order (see the console_feed_counter migration).
        let seq = console_feed::append(txn, env.event_id, kind, feed.clone())
            .await?
            .ok_or_else(|| HandlerError::transient(anyhow::anyhow!("console feed insert")))?;
        Ok(Effects::pushing(vec![
            Push {
                routing_key: CONSOLE_KEY.into(),
                body: json!({"type": kind, "seq": seq, "order": feed}),
            },
            Push {
                routing_key: buyer_key(e.buyer_id),
                body: json!({"type": kind, "order_id": e.order_id, "order_no": e.order_no}),
            },
        ])
        .with_outgoing())
    }

    async fn membership_extended(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<MembershipExtended>(msg)?;
        let e = &env.payload;
        let (title, body) = if e.permanent {
            (
                "Membership active",
                "Your membership is now permanent.".to_owned(),
            )
        } else if let Some(until) = e.ends_at {
            (
                "Membership active",
                format!(
                    "Your membership is active until {}.",
                    until.format("%Y-%m-%d %H:%M UTC")
                ),
            )
        } else {
            (
                "Pass added",
                format!("{} use(s) added to your passes.", e.pass_uses.unwrap_or(0)),
            )
        };
        let note = Note {
            user_id: e.user_id,
            event_id: env.event_id,
            kind: NotificationKind::MembershipExtended,
            title,
            body: &body,
            order_id: e.order_id,
        };
        let push = json!({
            "type": "membership_active",
            "order_id": e.order_id,
            "permanent": e.permanent,
            "until": e.ends_at,
            "message": body,
        });
        inbox_then_push(txn, note, push).await
    }

    async fn level_changed(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<LevelChanged>(msg)?;
        let e = &env.payload;
        let name = levels::name(txn, e.to_level).await?.ok_or_else(|| {
            HandlerError::permanent(anyhow::anyhow!("unknown level {}", e.to_level))
        })?;
        let body = format!("You are now a {name} member.");
        let note = Note {
            user_id: e.user_id,
            event_id: env.event_id,
            kind: NotificationKind::LevelChanged,
            title: "New member level",
            body: &body,
            order_id: e.order_id,
        };
        let push = json!({"type": note.kind, "level": name, "message": body});
        inbox_then_push(txn, note, push).await
    }
}

/// Puts `note` in the buyer's inbox and, unless this event left it before, pushes `push` to the
/// buyer once the transaction committed.
async fn inbox_then_push(
    txn: &DatabaseTransaction,
    note: Note<'_>,
    push: serde_json::Value,
) -> Result<Effects, HandlerError> {
    if !notifications::add(txn, note).await? {
        return Ok(Effects::already_applied());
    }
    Ok(Effects::pushing(vec![Push {
        routing_key: buyer_key(note.user_id),
        body: push,
    }]))
}
