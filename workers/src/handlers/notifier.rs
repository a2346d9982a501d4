//! Notifier: for `order.paid.v1` a message in the buyer's inbox, a template/SMS message recorded
//! for the channel sender, a sequenced merchant-console feed entry ("new paid order") and a
//! console push; for `membership.extended.v1` an inbox message and a buyer push ("membership
//! active until …"); for `level.changed.v1` an inbox message and a buyer push; for
//! `order.closed.v1` an inbox message and a buyer push; for `order.late_payment_refunded.v1` an
//! inbox message, a template/SMS message and a buyer push. The inbox row (unique per event, user
//! and kind) is the business key.
//!
//! The template/SMS message is only recorded here (`channel_deliveries`, in the effect's
//! transaction); [`crate::sender`] sends it after the commit. Nothing here waits on a receiver,
//! so a slow webhook holds no pooled connection and delays no other effect.

use super::{claim_paid_order, decode, order_paid};
use crate::decide::HandlerError;
use crate::runtime::{Effects, Handler, Incoming, Push};
use crate::store::channel_deliveries::Content;
use crate::store::notifications::{self, Note};
use crate::store::{console_feed, levels};
use memberline_schema::events::{
    CloseReason, EventType, LatePaymentRefunded, LateRefundWhy, LevelChanged, MembershipChange,
    MembershipChanged, MembershipExtended, OrderClosed, OrderRefunded, OrderReminded, PayMethod,
    Provider,
};
use memberline_schema::ids::EventId;
use memberline_schema::money::fen_to_yuan;
use memberline_schema::push::{
    AutoRefundedEntry, BuyerPush, ConsolePush, PaidEntry, RefundedEntry, RemindedEntry,
};
use memberline_schema::states::NotificationKind;
use memberline_schema::states::OrderStatus;
use memberline_schema::topology::Worker;
use sea_orm::DatabaseTransaction;

pub struct Notifier;

#[async_trait::async_trait]
impl Handler for Notifier {
    fn worker(&self) -> Worker {
        Worker::Notifier
    }

    /// `order.paid.v1` (and what [`Notifier::order_paid`] refuses) is claimed in the statement
    /// that reads the order.
    fn claims_itself(&self, msg: &Incoming) -> bool {
        matches!(
            msg.head.kind(),
            Some(EventType::OrderPaid | EventType::MembershipRevoked) | None
        )
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        match msg.head.kind() {
            Some(EventType::MembershipExtended) => self.membership_extended(txn, msg).await,
            Some(EventType::LevelChanged) => self.level_changed(txn, msg).await,
            Some(EventType::OrderClosed) => self.order_closed(txn, msg).await,
            Some(EventType::LatePaymentRefunded) => self.late_payment_refunded(txn, msg).await,
            Some(EventType::OrderRefunded) => self.order_refunded(txn, msg).await,
            Some(EventType::MembershipChanged) => self.membership_changed(txn, msg).await,
            Some(EventType::OrderReminded) => self.order_reminded(txn, msg).await,
            // An unknown type is rejected (permanently) by the `order.paid.v1` decoder.
            Some(EventType::OrderPaid | EventType::MembershipRevoked) | None => {
                self.order_paid(txn, msg).await
            }
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
        let Some(standing) = claim_paid_order(txn, Worker::Notifier, msg, e).await? else {
            return Ok(Effects::already_applied());
        };
        if standing.status == OrderStatus::Refunded {
            // Refunded before this was announced (the event waited in a retry tier): the
            // refund's own message is what the buyer and the console need.
            return Ok(Effects::already_applied());
        }
        let (title, body) = if e.pay_method == PayMethod::AdminGrant {
            (
                "Membership granted",
                format!(
                    "Order {}: {} granted by the shop.",
                    e.order_no, e.plan.plan_name
                ),
            )
        } else {
            let paid = if e.amount_points > 0 {
                format!("{} points", e.amount_points)
            } else {
                format!("¥{}", fen_to_yuan(e.amount_fen))
            };
            (
                "Payment received",
                format!("Order {}: {} paid ({paid}).", e.order_no, e.plan.plan_name),
            )
        };
        let kind = NotificationKind::OrderPaid;
        let note = Note {
            user_id: e.buyer_id,
            event_id: env.event_id,
            kind,
            title,
            body: &body,
            order_id: Some(e.order_id),
        };
        if !inbox_and_message(txn, note).await? {
            return Ok(Effects::already_applied());
        }
        let entry = PaidEntry {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            buyer_id: e.buyer_id,
            plan_name: e.plan.plan_name.clone(),
            pay_method: e.pay_method,
            amount_fen: e.amount_fen,
            amount_points: e.amount_points,
            paid_at: e.paid_at,
        };
        // Numbered last, from a counter row locked until commit, so feed numbers become
        // visible in order (see the console_feed_counter migration).
        let console = feed(txn, env.event_id, kind, &entry, chrono::Utc::now()).await?;
        let buyer = BuyerPush::OrderPaid {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
        };
        Ok(Effects::pushing(vec![console, Push::buyer(e.buyer_id, &buyer)]).with_outgoing())
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
            order_id: Some(e.order_id),
        };
        let push = BuyerPush::MembershipActive {
            order_id: e.order_id,
            permanent: e.permanent,
            until: e.ends_at,
            message: body.clone(),
        };
        inbox_then_push(txn, note, &push).await
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
            order_id: Some(e.order_id),
        };
        let push = BuyerPush::LevelChanged {
            level: name,
            message: body.clone(),
        };
        inbox_then_push(txn, note, &push).await
    }
}

impl Notifier {
    async fn order_closed(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<OrderClosed>(msg)?;
        let e = &env.payload;
        let why = match e.reason {
            CloseReason::Expired => "was not paid in time",
            CloseReason::Cancelled => "was cancelled",
        };
        let body = format!(
            "Order {} {why} and is closed; nothing was charged.",
            e.order_no
        );
        let note = Note {
            user_id: e.buyer_id,
            event_id: env.event_id,
            kind: NotificationKind::OrderClosed,
            title: "Order closed",
            body: &body,
            order_id: Some(e.order_id),
        };
        let push = BuyerPush::OrderClosed {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            reason: e.reason,
            message: body.clone(),
        };
        inbox_then_push(txn, note, &push).await
    }

    /// Money came back to the buyer: inbox, push, a template/SMS message too, and a console-feed
    /// entry ("refunded automatically") with a console push.
    async fn late_payment_refunded(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<LatePaymentRefunded>(msg)?;
        let e = &env.payload;
        let account = match e.provider {
            Provider::Wechat => "WeChat Pay",
            Provider::Alipay => "Alipay",
        };
        let why = match e.why {
            LateRefundWhy::OrderClosed => "arrived after the order was closed",
            LateRefundWhy::NotEligible => "arrived when you already had a permanent membership",
        };
        let body = format!(
            "Your payment of ¥{} for order {} {why}, so nothing was bought: it was refunded in \
             full to your {account} account.",
            fen_to_yuan(e.amount_fen),
            e.order_no
        );
        let kind = NotificationKind::LatePaymentRefunded;
        let note = Note {
            user_id: e.buyer_id,
            event_id: env.event_id,
            kind,
            title: "Payment refunded",
            body: &body,
            order_id: Some(e.order_id),
        };
        if !inbox_and_message(txn, note).await? {
            return Ok(Effects::already_applied());
        }
        let entry = AutoRefundedEntry {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            buyer_id: e.buyer_id,
            provider: e.provider,
            amount_fen: e.amount_fen,
            why: e.why,
            refunded_at: e.refunded_at,
        };
        let console = feed(txn, env.event_id, kind, &entry, e.refunded_at).await?;
        let push = BuyerPush::LatePaymentRefunded {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            amount_fen: e.amount_fen,
            message: body.clone(),
        };
        Ok(Effects::pushing(vec![console, Push::buyer(e.buyer_id, &push)]).with_outgoing())
    }
}

impl Notifier {
    /// A refunded order: the buyer's inbox, a template/SMS message, a console-feed entry
    /// ("order refunded") with a console push, and a buyer push.
    async fn order_refunded(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<OrderRefunded>(msg)?;
        let e = &env.payload;
        let back = match (e.refund_fen, e.refund_points) {
            (0, 0) => "nothing was charged, so nothing is returned".to_owned(),
            (0, points) => format!("{points} points are back in your account"),
            (fen, _) => match e.pay_method {
                PayMethod::Balance => format!("¥{} is back in your balance", fen_to_yuan(fen)),
                _ => format!("¥{} is on its way back to you", fen_to_yuan(fen)),
            },
        };
        let body = format!(
            "Order {} ({}) was refunded: {back}. Reason: {}",
            e.order_no, e.plan.plan_name, e.reason
        );
        let kind = NotificationKind::OrderRefunded;
        let note = Note {
            user_id: e.buyer_id,
            event_id: env.event_id,
            kind,
            title: "Order refunded",
            body: &body,
            order_id: Some(e.order_id),
        };
        if !inbox_and_message(txn, note).await? {
            return Ok(Effects::already_applied());
        }
        let entry = RefundedEntry {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            buyer_id: e.buyer_id,
            plan_name: e.plan.plan_name.clone(),
            pay_method: e.pay_method,
            refund_fen: e.refund_fen,
            refund_points: e.refund_points,
            reason: e.reason.clone(),
            refunded_at: e.refunded_at,
        };
        let console = feed(txn, env.event_id, kind, &entry, e.refunded_at).await?;
        let buyer = BuyerPush::OrderRefunded {
            order_id: e.order_id,
            message: body.clone(),
        };
        Ok(Effects::pushing(vec![console, Push::buyer(e.buyer_id, &buyer)]).with_outgoing())
    }

    /// A buyer's reminder: a console-feed entry ("customer reminder") and a console push (the
    /// buyer asked; nothing goes to their own inbox).
    async fn order_reminded(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<OrderReminded>(msg)?;
        let e = &env.payload;
        let kind = NotificationKind::OrderReminded;
        let entry = RemindedEntry {
            order_id: e.order_id,
            order_no: e.order_no.clone(),
            buyer_id: e.buyer_id,
            plan_name: e.plan_name.clone(),
            reminded_at: e.reminded_at,
        };
        let console = feed(txn, env.event_id, kind, &entry, e.reminded_at).await?;
        Ok(Effects::pushing(vec![console]))
    }

    /// A shortened membership: an inbox message when an admin revoked it (a refund already has
    /// its own), and a buyer push either way.
    async fn membership_changed(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        let env = decode::<MembershipChanged>(msg)?;
        let e = &env.payload;
        let now = if e.permanent {
            "Your membership is permanent.".to_owned()
        } else {
            match e.ends_at {
                Some(end) if end > chrono::Utc::now() => format!(
                    "Your membership is active until {}.",
                    end.format("%Y-%m-%d %H:%M UTC")
                ),
                _ => "You have no active membership.".to_owned(),
            }
        };
        let push = BuyerPush::MembershipChanged {
            change: e.change,
            order_id: e.order_id,
            permanent: e.permanent,
            until: e.ends_at,
            message: now.clone(),
        };
        if e.change == MembershipChange::Revoke {
            let body = format!("Your membership was ended by the shop. {now}");
            let note = Note {
                user_id: e.user_id,
                event_id: env.event_id,
                kind: NotificationKind::MembershipChanged,
                title: "Membership ended",
                body: &body,
                order_id: None,
            };
            return inbox_then_push(txn, note, &push).await;
        }
        Ok(Effects::pushing(vec![Push::buyer(e.user_id, &push)]))
    }
}

/// Puts `note` in the buyer's inbox and records the same text as a template/SMS message —
/// recorded, not sent: the sender sends it once this transaction committed (and only then),
/// with `<event id>-<kind>` as `webhook-id`. `false` when this event left the message before.
async fn inbox_and_message(
    txn: &DatabaseTransaction,
    note: Note<'_>,
) -> Result<bool, HandlerError> {
    let content = Content {
        title: note.title.to_owned(),
        body: note.body.to_owned(),
    };
    let payload = serde_json::to_value(&content)
        .map_err(|e| HandlerError::permanent(anyhow::anyhow!("message content: {e}")))?;
    let message_id = format!("{}-{}", note.event_id, note.kind);
    // The note and its message: one statement.
    Ok(notifications::add_with_message(txn, note, &message_id, payload).await?)
}

/// Puts `note` in the buyer's inbox and, unless this event left it before, pushes `push` to the
/// buyer once the transaction committed.
async fn inbox_then_push(
    txn: &DatabaseTransaction,
    note: Note<'_>,
    push: &BuyerPush,
) -> Result<Effects, HandlerError> {
    if !notifications::add(txn, note).await? {
        return Ok(Effects::already_applied());
    }
    Ok(Effects::pushing(vec![Push::buyer(note.user_id, push)]))
}

/// Appends `entry` to the console feed as a `kind` entry made at `at`: its console push.
async fn feed<E: serde::Serialize>(
    txn: &DatabaseTransaction,
    event_id: EventId,
    kind: NotificationKind,
    entry: &E,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Push, HandlerError> {
    let order = serde_json::to_value(entry)
        .map_err(|e| HandlerError::permanent(anyhow::anyhow!("console entry: {e}")))?;
    let seq = console_feed::append(txn, event_id, kind, order.clone())
        .await?
        .ok_or_else(|| HandlerError::transient(anyhow::anyhow!("console feed insert")))?;
    Ok(Push::console(&ConsolePush {
        kind,
        seq,
        at,
        order,
    }))
}
