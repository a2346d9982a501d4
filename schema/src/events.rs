//! The event envelope and every event type Memberline publishes.
//!
//! Names are past tense and versioned: the routing key of `OrderPaid` v1 is `order.paid.v1`.
//! A published shape never changes in place; a new shape is a new version and a new type.
//! Money travels as integers (fen, points).

use crate::ids::{BuyerId, EventId, OrderId, PlanId};
pub use crate::states::{CloseReason, EventType, PayMethod, PlanKind, Provider};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// An event type: its name, version and payload shape.
pub trait Event: Serialize + DeserializeOwned {
    /// Dotted, past-tense name, e.g. `order.paid`.
    const TYPE: EventType;
    /// The payload version; part of the routing key.
    const VERSION: u16;
    /// The aggregate this event is about (`order`, `user`).
    const AGGREGATE: &'static str;

    /// The id of the aggregate instance, as text.
    fn aggregate_id(&self) -> String;

    /// `TYPE.vVERSION`, e.g. `order.paid.v1`.
    fn routing_key() -> String {
        format!("{}.v{}", Self::TYPE.as_str(), Self::VERSION)
    }
}

/// The wrapper every event travels in, on the wire and in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique per event (UUID v7, so ids sort by creation time). Consumers deduplicate on it.
    pub event_id: EventId,
    /// e.g. `order.paid`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub version: u16,
    pub occurred_at: DateTime<Utc>,
    /// Carried from the request that started the chain (header `X-Correlation-Id`).
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<EventId>,
    pub payload: P,
}

impl<P: Event> Envelope<P> {
    /// Wraps a payload in a new envelope with a fresh v7 id.
    pub fn new(payload: P, correlation_id: Uuid, causation_id: Option<EventId>) -> Self {
        Self {
            event_id: EventId(Uuid::now_v7()),
            event_type: P::TYPE,
            version: P::VERSION,
            occurred_at: Utc::now(),
            correlation_id,
            causation_id,
            payload,
        }
    }

    /// The routing key this envelope is published under.
    pub fn routing_key(&self) -> String {
        P::routing_key()
    }
}

/// Only the header fields of an envelope: enough to route, deduplicate and dead-letter a message
/// whose payload has an unknown shape (or whose type this build does not know, so the type is
/// kept as text; [`EnvelopeHead::kind`] reads it).
#[derive(Clone, Debug, Deserialize)]
pub struct EnvelopeHead {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u16,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Option<EventId>,
}

impl EnvelopeHead {
    /// The event type, if this build knows it.
    pub fn kind(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }

    /// Whether this is `P`'s type and version.
    pub fn is<P: Event>(&self) -> bool {
        self.kind() == Some(P::TYPE) && self.version == P::VERSION
    }
}

/// The plan as it was sold: the snapshot an order keeps (and its events and API views carry), so
/// that a later catalogue change never changes what a buyer bought. Flattened into the JSON of
/// whatever carries it (`plan_id`, `plan_code`, … beside the other fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanSold {
    pub plan_id: PlanId,
    pub plan_code: String,
    pub plan_name: String,
    pub plan_kind: PlanKind,
    /// Set for `membership` plans.
    pub duration_days: Option<i32>,
    /// Set for `pass` plans.
    pub uses: Option<i32>,
}

impl PlanSold {
    /// The snapshot of a catalogue plan, at the moment it is sold.
    pub fn of_plan(plan: &crate::entities::plan::Model) -> Self {
        Self {
            plan_id: plan.id,
            plan_code: plan.code.clone(),
            plan_name: plan.name.clone(),
            plan_kind: plan.kind,
            duration_days: plan.duration_days,
            uses: plan.uses,
        }
    }

    /// The snapshot an order kept.
    pub fn of_order(order: &crate::entities::order::Model) -> Self {
        Self {
            plan_id: order.plan_id,
            plan_code: order.plan_code.clone(),
            plan_name: order.plan_name.clone(),
            plan_kind: order.plan_kind,
            duration_days: order.duration_days,
            uses: order.uses,
        }
    }
}

/// `order.paid.v1`: an order's payment is confirmed. Every follow-up effect starts here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    #[serde(flatten)]
    pub plan: PlanSold,
    pub pay_method: PayMethod,
    /// What was charged in fen (0 for points and free orders).
    pub amount_fen: i64,
    /// What was charged in points (0 unless paid with points).
    pub amount_points: i64,
    /// The catalogue's original price, before any sale or level discount.
    pub original_price_fen: i64,
    pub original_price_points: Option<i64>,
    pub paid_at: DateTime<Utc>,
}

impl Event for OrderPaid {
    const TYPE: EventType = EventType::OrderPaid;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "order";

    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

/// `membership.extended.v1`: a paid order added membership time, made it permanent, or granted
/// a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipExtended {
    pub user_id: BuyerId,
    pub order_id: OrderId,
    pub plan_kind: PlanKind,
    /// Start of the new period (stacked after the current one, or now for a lapsed member).
    pub starts_at: Option<DateTime<Utc>>,
    /// End of the new period; `None` for permanent memberships and passes.
    pub ends_at: Option<DateTime<Utc>>,
    pub permanent: bool,
    /// Uses granted (passes only).
    pub pass_uses: Option<i32>,
}

impl Event for MembershipExtended {
    const TYPE: EventType = EventType::MembershipExtended;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

/// `level.changed.v1`: a buyer's growth moved them to another member level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelChanged {
    pub user_id: BuyerId,
    pub from_level: i16,
    pub to_level: i16,
    pub growth: i64,
    /// The order whose growth caused the change.
    pub order_id: OrderId,
}

impl Event for LevelChanged {
    const TYPE: EventType = EventType::LevelChanged;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

/// `order.closed.v1`: a pending provider order was closed unpaid, at the provider and here. It
/// can no longer be paid; a payment that still arrives is refunded (`order.late_payment_refunded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderClosed {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub provider: Provider,
    pub reason: CloseReason,
    /// What the buyer would have paid, in fen.
    pub amount_fen: i64,
    pub closed_at: DateTime<Utc>,
}

impl Event for OrderClosed {
    const TYPE: EventType = EventType::OrderClosed;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "order";

    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

/// `order.late_payment_refunded.v1`: a genuine payment for an order that was already closed, or
/// that the buyer could no longer have, was refunded in full through the provider. The order
/// stays closed; nothing was bought.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatePaymentRefunded {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub provider: Provider,
    /// The provider's payment that was refunded.
    pub transaction_id: String,
    /// Our refund number (derived from the order: a retry refunds once).
    pub out_refund_no: String,
    /// The provider's refund id, when it gave one.
    pub refund_id: Option<String>,
    pub amount_fen: i64,
    pub refunded_at: DateTime<Utc>,
    /// Why it was refunded; absent in events written before it existed (`order_closed`).
    #[serde(default)]
    pub why: LateRefundWhy,
}

/// Why a payment was refunded instead of applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateRefundWhy {
    /// It came after the order was closed (expired or cancelled).
    #[default]
    OrderClosed,
    /// The buyer could no longer have the plan when it came: a permanent membership bought
    /// meanwhile (another order, or balance).
    NotEligible,
}

impl Event for LatePaymentRefunded {
    const TYPE: EventType = EventType::LatePaymentRefunded;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "order";

    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

/// `order.refunded.v1`: a paid order was refunded in full (the money or points are back with
/// the buyer). Every effect of its `order.paid.v1` is reversed, exactly once each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderRefunded {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    #[serde(flatten)]
    pub plan: PlanSold,
    pub pay_method: PayMethod,
    /// Given back in fen (the order's `amount_fen`).
    pub refund_fen: i64,
    /// Given back in points (the order's `amount_points`).
    pub refund_points: i64,
    /// The `refunds` row.
    pub refund_id: i64,
    pub reason: String,
    pub refunded_at: DateTime<Utc>,
}

impl Event for OrderRefunded {
    const TYPE: EventType = EventType::OrderRefunded;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "order";

    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

/// Why a membership was shortened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// A refunded order's period (or pass) was removed and the later periods moved earlier.
    Refund,
    /// An admin revoked the membership.
    Revoke,
}

/// `membership.changed.v1`: a buyer's membership was shortened. `ends_at`/`permanent` describe
/// it afterwards (no end and not permanent: no membership left).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipChanged {
    pub user_id: BuyerId,
    pub change: MembershipChange,
    /// The refunded order, for a refund.
    pub order_id: Option<OrderId>,
    /// Membership time taken away, in seconds.
    pub removed_secs: i64,
    /// Pass uses taken away.
    pub removed_pass_uses: i32,
    /// The end of the membership now; `None` when permanent or when none is left.
    pub ends_at: Option<DateTime<Utc>>,
    pub permanent: bool,
}

impl Event for MembershipChanged {
    const TYPE: EventType = EventType::MembershipChanged;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

/// `membership.revoked.v1`: an admin ended a buyer's membership now (the current period ends,
/// later ones are removed, a permanent membership stops).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipRevoked {
    pub user_id: BuyerId,
    /// The admin.
    pub actor_id: i64,
    pub reason: String,
    /// The audit-log entry.
    pub audit_id: i64,
    pub revoked_at: DateTime<Utc>,
}

impl Event for MembershipRevoked {
    const TYPE: EventType = EventType::MembershipRevoked;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

/// `order.reminded.v1`: a buyer asked the shop to hurry with a paid order (the merchant
/// console's "customer reminder").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderReminded {
    pub order_id: OrderId,
    pub order_no: String,
    pub buyer_id: BuyerId,
    pub plan_name: String,
    pub reminded_at: DateTime<Utc>,
}

impl Event for OrderReminded {
    const TYPE: EventType = EventType::OrderReminded;
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "order";

    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrderPaid {
        OrderPaid {
            order_id: OrderId(7),
            order_no: "ML2026112100000007".into(),
            buyer_id: BuyerId(1),
            plan: PlanSold {
                plan_id: PlanId(2),
                plan_code: "monthly".into(),
                plan_name: "Monthly".into(),
                plan_kind: PlanKind::Membership,
                duration_days: Some(30),
                uses: None,
            },
            pay_method: PayMethod::Points,
            amount_fen: 0,
            amount_points: 2700,
            original_price_fen: 3800,
            original_price_points: Some(3000),
            paid_at: Utc::now(),
        }
    }

    #[test]
    fn order_paid_routes_under_its_versioned_name() {
        assert_eq!(OrderPaid::routing_key(), "order.paid.v1");
        assert_eq!(OrderClosed::routing_key(), "order.closed.v1");
        assert_eq!(
            LatePaymentRefunded::routing_key(),
            "order.late_payment_refunded.v1"
        );
    }

    #[test]
    fn an_envelope_serializes_with_a_type_field_and_round_trips() {
        let env = Envelope::new(sample(), Uuid::now_v7(), None);
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["type"], "order.paid");
        assert_eq!(json["version"], 1);
        assert_eq!(json["payload"]["pay_method"], "points");
        // The plan snapshot is flattened: the published shape is unchanged.
        assert_eq!(json["payload"]["plan_code"], "monthly");
        assert_eq!(json["payload"]["duration_days"], 30);
        assert!(json["payload"].get("plan").is_none());
        let back: Envelope<OrderPaid> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, env);
        let head: EnvelopeHead = serde_json::from_value(json).unwrap();
        assert_eq!(head.event_id, env.event_id);
    }

    #[test]
    fn event_ids_sort_by_creation_time() {
        let a = Envelope::new(sample(), Uuid::now_v7(), None);
        let b = Envelope::new(sample(), Uuid::now_v7(), None);
        assert!(a.event_id < b.event_id);
    }
}
