//! Orders: how they are shown ([`view`]), how a balance, points or free order is placed and paid
//! in one transaction ([`placement`]), and the conditional status transitions every payment
//! path shares ([`transitions`]).
//!
//! This layer speaks in [`OrderError`]s, never in HTTP: the API maps them to responses once
//! (`crate::error`).

pub mod cancel;
pub mod checkout;
pub mod grant;
mod idempotency;
pub mod lanes;
pub mod placement;
pub mod refund;
mod statements;
pub use memberline_payments::transitions;
pub mod view;

pub use cancel::cancel;
pub use checkout::{Timing, checkout};
pub use lanes::Purchases;
pub use placement::{ExpectedPrice, PlaceOrder, Placed};
pub use view::OrderView;

/// Why an order could not be placed. Each variant is something the buyer can act on, except
/// [`OrderError::Database`] and [`OrderError::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the token's user does not exist")]
    UnknownBuyer,
    #[error("no plan with id {0}")]
    PlanNotFound(i64),
    #[error("you already have a permanent membership")]
    AlreadyPermanent,
    #[error("this free plan can be claimed once per buyer, and you already claimed it")]
    FreePlanAlreadyClaimed,
    #[error("pay_method `free` is only for free plans")]
    PlanNotFree,
    #[error("{0}")]
    PayMethodNotAllowed(&'static str),
    #[error("pay_method `{0}` is not enabled on this shop")]
    PayMethodUnavailable(memberline_schema::states::PayMethod),
    #[error("the payment provider could not be reached ({0}); nothing was charged, try again")]
    ProviderUnavailable(&'static str),
    #[error("no order {0} of yours")]
    OrderNotFound(i64),
    #[error("the order is {0}, not pending payment")]
    NotPending(memberline_schema::states::OrderStatus),
    #[error("the order is {0}; only a paid order can be refunded")]
    NotRefundable(memberline_schema::states::OrderStatus),
    #[error("no user {0}")]
    UserNotFound(i64),
    #[error("this plan costs {needed} fen and your balance is {have} fen")]
    InsufficientBalance { needed: i64, have: i64 },
    #[error("this plan costs {needed} points and you have {have}")]
    InsufficientPoints { needed: i64, have: i64 },
    #[error(
        "the price changed since it was shown: it is now {fen} fen{}",
        points.map(|p| format!(" or {p} points")).unwrap_or_default()
    )]
    PriceChanged { fen: i64, points: Option<i64> },
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl OrderError {
    /// The stable code clients see (also the `outcome` label of the orders metric).
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::UnknownBuyer => "unknown_user",
            OrderError::PlanNotFound(_) => "plan_not_found",
            OrderError::AlreadyPermanent => "already_permanent",
            OrderError::FreePlanAlreadyClaimed => "free_plan_already_claimed",
            OrderError::PlanNotFree => "plan_not_free",
            OrderError::PayMethodNotAllowed(_) => "pay_method_not_allowed",
            OrderError::PayMethodUnavailable(_) => "pay_method_unavailable",
            OrderError::ProviderUnavailable(_) => "provider_unavailable",
            OrderError::OrderNotFound(_) => "order_not_found",
            OrderError::NotPending(_) => "order_not_pending",
            OrderError::NotRefundable(_) => "order_not_refundable",
            OrderError::UserNotFound(_) => "user_not_found",
            OrderError::InsufficientBalance { .. } => "insufficient_balance",
            OrderError::InsufficientPoints { .. } => "insufficient_points",
            OrderError::PriceChanged { .. } => "price_changed",
            OrderError::IdempotencyKeyReused => "idempotency_key_reused",
            OrderError::Database(e) if memberline_platform::db::is_retryable(e) => "unavailable",
            OrderError::Database(_) | OrderError::Internal(_) => "internal",
        }
    }
}
