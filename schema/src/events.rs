//! The event envelope and every event type Memberline publishes.
//!
//! Names are past tense and versioned: the routing key of `OrderPaid` v1 is `order.paid.v1`.
//! A published shape never changes in place; a new shape is a new version and a new type.
//! Money travels as integers (fen, points).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// An event type: its name, version and payload shape.
pub trait Event: Serialize + DeserializeOwned {
    /// Dotted, past-tense name, e.g. `order.paid`.
    const TYPE: &'static str;
    /// The payload version; part of the routing key.
    const VERSION: u16;
    /// The aggregate this event is about (`order`, `user`).
    const AGGREGATE: &'static str;

    /// The id of the aggregate instance, as text.
    fn aggregate_id(&self) -> String;

    /// `TYPE.vVERSION`, e.g. `order.paid.v1`.
    fn routing_key() -> String {
        format!("{}.v{}", Self::TYPE, Self::VERSION)
    }
}

/// The wrapper every event travels in, on the wire and in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique per event (UUID v7, so ids sort by creation time). Consumers deduplicate on it.
    pub event_id: Uuid,
    /// e.g. `order.paid`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u16,
    pub occurred_at: DateTime<Utc>,
    /// Carried from the request that started the chain (header `X-Correlation-Id`).
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    pub payload: P,
}

impl<P: Event> Envelope<P> {
    /// Wraps a payload in a new envelope with a fresh v7 id.
    pub fn new(payload: P, correlation_id: Uuid, causation_id: Option<Uuid>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: P::TYPE.to_owned(),
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
/// whose payload has an unknown shape.
#[derive(Clone, Debug, Deserialize)]
pub struct EnvelopeHead {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u16,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

/// How an order was paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayMethod {
    Balance,
    Points,
    Free,
    Wechat,
    Alipay,
}

impl PayMethod {
    pub const ALL: [PayMethod; 5] = [
        PayMethod::Balance,
        PayMethod::Points,
        PayMethod::Free,
        PayMethod::Wechat,
        PayMethod::Alipay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PayMethod::Balance => "balance",
            PayMethod::Points => "points",
            PayMethod::Free => "free",
            PayMethod::Wechat => "wechat",
            PayMethod::Alipay => "alipay",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// What a plan grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// Membership for `duration_days`, stacked after any current period.
    Membership,
    /// Membership that never ends.
    Permanent,
    /// A pass with a number of uses.
    Pass,
}

impl PlanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Membership => "membership",
            PlanKind::Permanent => "permanent",
            PlanKind::Pass => "pass",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [PlanKind::Membership, PlanKind::Permanent, PlanKind::Pass]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// `order.paid.v1`: an order's payment is confirmed. Every follow-up effect starts here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: i64,
    pub order_no: String,
    pub buyer_id: i64,
    pub plan_id: i64,
    pub plan_code: String,
    pub plan_name: String,
    pub plan_kind: PlanKind,
    /// Set for `membership` plans.
    pub duration_days: Option<i32>,
    /// Set for `pass` plans.
    pub uses: Option<i32>,
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
    const TYPE: &'static str = "order.paid";
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
    pub user_id: i64,
    pub order_id: i64,
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
    const TYPE: &'static str = "membership.extended";
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

/// `level.changed.v1`: a buyer's growth moved them to another member level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelChanged {
    pub user_id: i64,
    pub from_level: i16,
    pub to_level: i16,
    pub growth: i64,
    /// The order whose growth caused the change.
    pub order_id: i64,
}

impl Event for LevelChanged {
    const TYPE: &'static str = "level.changed";
    const VERSION: u16 = 1;
    const AGGREGATE: &'static str = "user";

    fn aggregate_id(&self) -> String {
        self.user_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OrderPaid {
        OrderPaid {
            order_id: 7,
            order_no: "ML2026112100000007".into(),
            buyer_id: 1,
            plan_id: 2,
            plan_code: "monthly".into(),
            plan_name: "Monthly".into(),
            plan_kind: PlanKind::Membership,
            duration_days: Some(30),
            uses: None,
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
    }

    #[test]
    fn an_envelope_serializes_with_a_type_field_and_round_trips() {
        let env = Envelope::new(sample(), Uuid::now_v7(), None);
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["type"], "order.paid");
        assert_eq!(json["version"], 1);
        assert_eq!(json["payload"]["pay_method"], "points");
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
