//! The order domain's one error: what a buyer or an admin can act on, or an internal failure.
//! It speaks no HTTP: the gateway maps it to a response once (`memberline_gateway::http::error`).

/// Why an order could not be placed. Each variant is something the buyer can act on, except
/// [`OrderError::Database`] and [`OrderError::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the token's user does not exist")]
    UnknownBuyer,
    #[error("no plan with id {0}")]
    PlanNotFound(memberline_schema::ids::PlanId),
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
    #[error("{0}")]
    ChannelUnavailable(String),
    #[error("{0}")]
    InvalidChannel(&'static str),
    #[error(
        "paying inside WeChat needs your OpenID under this app: sign in with WeChat there \
         (POST /v1/auth/wechat) or link it (POST /v1/me/wechat) first"
    )]
    WechatIdentityRequired,
    #[error("the payment provider could not be reached ({0}); nothing was charged, try again")]
    ProviderUnavailable(&'static str),
    #[error("no order {0} of yours")]
    OrderNotFound(memberline_schema::ids::OrderId),
    #[error("the order is {0}, not pending payment")]
    NotPending(memberline_schema::states::OrderStatus),
    #[error("the order is {0}; only a paid order can be reminded about")]
    NotPaid(memberline_schema::states::OrderStatus),
    #[error("one reminder a minute: try again in {wait_secs} s")]
    RemindTooSoon { wait_secs: i64 },
    #[error("the order is {0}; only a paid order can be refunded")]
    NotRefundable(memberline_schema::states::OrderStatus),
    #[error("no user {0}")]
    UserNotFound(memberline_schema::ids::BuyerId),
    #[error("this plan costs {needed} fen and your balance is {have} fen")]
    InsufficientBalance { needed: i64, have: i64 },
    #[error("this plan costs {needed} points and you have {have}")]
    InsufficientPoints { needed: i64, have: i64 },
    #[error(
        "the price changed since it was shown: it is now {fen} fen{}",
        points.map(|p| format!(" or {p} points")).unwrap_or_default()
    )]
    PriceChanged { fen: i64, points: Option<i64> },
    #[error("{ledger} is {have}: taking {taken} would leave it below zero")]
    BelowZero {
        ledger: memberline_schema::states::LedgerKind,
        have: i64,
        taken: i64,
    },
    #[error("the shop is too busy to take this purchase now; nothing was written, try again")]
    Overloaded,
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<memberline_platform::idempotency::ClaimError> for OrderError {
    fn from(e: memberline_platform::idempotency::ClaimError) -> Self {
        use memberline_platform::idempotency::ClaimError;
        match e {
            ClaimError::Reused(_) => OrderError::IdempotencyKeyReused,
            ClaimError::Database(e) => OrderError::Database(e),
        }
    }
}

impl From<memberline_platform::idempotency::Reused> for OrderError {
    fn from(_: memberline_platform::idempotency::Reused) -> Self {
        OrderError::IdempotencyKeyReused
    }
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
            OrderError::ChannelUnavailable(_) => "channel_unavailable",
            OrderError::InvalidChannel(_) => "channel_mismatch",
            OrderError::WechatIdentityRequired => "wechat_identity_required",
            OrderError::ProviderUnavailable(_) => "provider_unavailable",
            OrderError::OrderNotFound(_) => "order_not_found",
            OrderError::NotPending(_) => "order_not_pending",
            OrderError::NotPaid(_) => "order_not_paid",
            OrderError::RemindTooSoon { .. } => "remind_too_soon",
            OrderError::NotRefundable(_) => "order_not_refundable",
            OrderError::UserNotFound(_) => "user_not_found",
            OrderError::InsufficientBalance { .. } => "insufficient_balance",
            OrderError::InsufficientPoints { .. } => "insufficient_points",
            OrderError::PriceChanged { .. } => "price_changed",
            OrderError::BelowZero { .. } => "adjustment_below_zero",
            OrderError::IdempotencyKeyReused => "idempotency_key_reused",
            OrderError::Overloaded => "overloaded",
            OrderError::Database(e) if memberline_platform::db::is_retryable(e) => "unavailable",
            OrderError::Database(_) | OrderError::Internal(_) => "internal",
        }
    }
}
