//! The push contract: what the notifier publishes to the push exchange, and what every gateway
//! instance reads from it and sends to its WebSockets. Pushes are best effort (the console
//! feed is the source of truth, and a buyer's page reads its order again), so the shapes here
//! are what a socket sees, not events: they may grow fields, never lose one.
//!
//! - Console pushes (`console.<kind>`): a numbered console-feed entry ([`ConsolePush`]); every
//!   merchant console receives it as a [`ConsoleMessage`], and so does one catching up from
//!   the feed.
//! - Buyer pushes (`buyer.<id>`): a [`BuyerPush`] for one buyer's sockets.

use crate::events::{LateRefundWhy, MembershipChange};
use crate::ids::{BuyerId, OrderId};
use crate::states::{CloseReason, NotificationKind, PayMethod, Provider};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// The binding keys of a gateway instance's push queue: every console push and every buyer
/// push.
pub const BINDINGS: [&str; 2] = ["console.#", "buyer.#"];

/// Whether `routing_key` is a console push's, of any kind (one written by a newer release
/// included: the console still gets it, as a [`ConsoleMessage`] of kind 0).
pub fn is_console(routing_key: &str) -> bool {
    routing_key.starts_with("console.")
}

/// Where a push goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every merchant console: an entry of the console feed, of this kind.
    Console(NotificationKind),
    /// One buyer's sockets.
    Buyer(BuyerId),
}

impl Route {
    /// The routing key: `console.<kind>` or `buyer.<id>`.
    pub fn routing_key(self) -> String {
        match self {
            Route::Console(kind) => format!("console.{kind}"),
            Route::Buyer(id) => format!("buyer.{id}"),
        }
    }

    /// The route of a routing key; `None` for one this contract does not know.
    pub fn parse(routing_key: &str) -> Option<Self> {
        match routing_key.split_once('.')? {
            ("console", kind) => NotificationKind::parse(kind).map(Route::Console),
            ("buyer", id) => id.parse().ok().map(Route::Buyer),
            _ => None,
        }
    }
}

/// A console push: the console-feed entry `seq` of `kind`, and what it is about (`order`: a
/// [`PaidEntry`], [`RefundedEntry`], [`RemindedEntry`] or [`AutoRefundedEntry`], as stored in
/// the feed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsolePush {
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub order: Value,
}

/// A paid order, as the console feed keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaidEntry {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub plan_name: String,
    pub pay_method: PayMethod,
    pub amount_fen: i64,
    pub amount_points: i64,
    pub paid_at: DateTime<Utc>,
}

/// A refunded order, as the console feed keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefundedEntry {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub plan_name: String,
    pub pay_method: PayMethod,
    pub refund_fen: i64,
    pub refund_points: i64,
    pub reason: String,
    pub refunded_at: DateTime<Utc>,
}

/// A payment refunded automatically instead of applied (it came after its order was closed, or
/// when the buyer could no longer have the plan), as the console feed keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoRefundedEntry {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub provider: Provider,
    pub amount_fen: i64,
    pub why: LateRefundWhy,
    pub refunded_at: DateTime<Utc>,
}

/// A buyer's reminder about a paid order, as the console feed keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemindedEntry {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub plan_name: String,
    pub reminded_at: DateTime<Utc>,
}

/// What a merchant console receives for one console-feed entry, live or catching up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsoleMessage {
    pub seq: i64,
    /// `order.paid`, `order.reminded`, `order.refunded`, `order.auto_refunded`.
    #[serde(rename = "type")]
    pub message_type: Cow<'static, str>,
    /// The numeric kind older consoles switch on: 1 paid, 2 reminded, 3 refunded, 4 refunded
    /// automatically.
    pub kind: u8,
    pub order_id: Value,
    pub order_no: Value,
    /// A line to show, in Chinese and English.
    pub content: String,
    pub order: Value,
    pub at: Value,
}

impl ConsoleMessage {
    /// The message of entry `seq` of `kind` about `order` (as stored in the feed), made at `at`.
    /// An entry of a kind this release does not know (written by a newer one) still reaches
    /// the console, with kind 0 and no text.
    pub fn of(seq: i64, kind: &str, order: &Value, at: Value) -> Self {
        let no = order["order_no"].as_str().unwrap_or_default();
        let (message_type, legacy, content) = match NotificationKind::parse(kind) {
            Some(NotificationKind::OrderPaid) => (
                "order.paid",
                1,
                format!(
                    "新订单 New paid order {no}: {}",
                    order["plan_name"].as_str().unwrap_or_default()
                ),
            ),
            Some(NotificationKind::OrderReminded) => (
                "order.reminded",
                2,
                format!("客户催单 Customer reminder: {no}"),
            ),
            Some(NotificationKind::OrderRefunded) => (
                "order.refunded",
                3,
                format!("订单已退款 Order {no} refunded"),
            ),
            Some(NotificationKind::LatePaymentRefunded) => (
                "order.auto_refunded",
                4,
                format!("自动退款 Payment for order {no} refunded automatically"),
            ),
            _ => ("", 0, String::new()),
        };
        Self {
            seq,
            message_type: if legacy == 0 {
                Cow::Owned(kind.to_owned())
            } else {
                Cow::Borrowed(message_type)
            },
            kind: legacy,
            order_id: order["order_id"].clone(),
            order_no: order["order_no"].clone(),
            content,
            order: order.clone(),
            at,
        }
    }
}

/// A push to one buyer's sockets. The buyer's pages read their order again when one arrives;
/// the message is for the buyer to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuyerPush {
    /// Their order was paid.
    OrderPaid { order_id: OrderId, order_no: String },
    /// A paid order added membership time, made it permanent, or added pass uses.
    MembershipActive {
        order_id: OrderId,
        permanent: bool,
        until: Option<DateTime<Utc>>,
        message: String,
    },
    /// Their growth moved them to another level.
    LevelChanged { level: String, message: String },
    /// A pending order was closed unpaid.
    OrderClosed {
        order_id: OrderId,
        order_no: String,
        reason: CloseReason,
        message: String,
    },
    /// A payment that came after its order was closed went back to them.
    LatePaymentRefunded {
        order_id: OrderId,
        order_no: String,
        amount_fen: i64,
        message: String,
    },
    /// Their order was refunded.
    OrderRefunded { order_id: OrderId, message: String },
    /// Their membership was shortened (a refund) or ended (a revocation).
    MembershipChanged {
        change: MembershipChange,
        order_id: Option<OrderId>,
        permanent: bool,
        until: Option<DateTime<Utc>>,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_routing_keys_read_back_as_each_other() {
        for route in [
            Route::Console(NotificationKind::OrderPaid),
            Route::Console(NotificationKind::OrderRefunded),
            Route::Buyer(BuyerId(42)),
        ] {
            assert_eq!(Route::parse(&route.routing_key()), Some(route));
        }
        assert_eq!(
            Route::Console(NotificationKind::OrderReminded).routing_key(),
            "console.order_reminded"
        );
        assert_eq!(Route::parse("buyer.x"), None);
        assert_eq!(Route::parse("console.unheard_of"), None);
        assert_eq!(Route::parse("audit.1"), None);
    }

    #[test]
    fn buyer_pushes_carry_their_kind_as_type() {
        let push = BuyerPush::OrderPaid {
            order_id: OrderId(7),
            order_no: "ML1".into(),
        };
        assert_eq!(
            serde_json::to_value(&push).unwrap(),
            serde_json::json!({"type": "order_paid", "order_id": 7, "order_no": "ML1"})
        );
        let level = BuyerPush::LevelChanged {
            level: "Gold".into(),
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_value(&level).unwrap()["type"],
            NotificationKind::LevelChanged.as_str()
        );
    }

    #[test]
    fn a_console_message_names_its_entry_for_old_and_new_consoles() {
        let order = serde_json::json!({"order_id": 7, "order_no": "ML1", "plan_name": "Monthly"});
        let m = ConsoleMessage::of(3, "order_paid", &order, Value::Null);
        assert_eq!((m.message_type.as_ref(), m.kind), ("order.paid", 1));
        assert_eq!(m.content, "新订单 New paid order ML1: Monthly");
        let unknown = ConsoleMessage::of(4, "order_shipped", &order, Value::Null);
        assert_eq!(
            (unknown.message_type.as_ref(), unknown.kind),
            ("order_shipped", 0)
        );
    }
}
