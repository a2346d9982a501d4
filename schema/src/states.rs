//! The closed sets of values the system knows: order statuses, pay methods, plan kinds, ledger
//! kinds and reasons, payment providers, event types. Each is one Rust enum mapped in one place
//! to its database text (sea-orm active enum, mirrored by a CHECK constraint where the column
//! has one), to JSON (serde) and to the OpenAPI document (utoipa: the schema lists the values).
//! Nowhere else is one of these values written as a string literal.

use sea_orm::sea_query::StringLen;
use serde::{Deserialize, Serialize};

/// Declares a string-valued enum with its wire text once: sea-orm maps it to a `TEXT` column,
/// serde and utoipa to the same text, and `as_str`, `parse`, `ALL` and `Display` come with it.
/// The text is matched as a `tt`, not a `literal` fragment: utoipa reads `rename` only from a
/// plain literal token, and a `literal` fragment would reach it wrapped in an invisible group.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            sea_orm::EnumIter, sea_orm::DeriveActiveEnum,
            Serialize, Deserialize, utoipa::ToSchema,
        )]
        #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[sea_orm(string_value = $text)]
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database and sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value with this text, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where an order is in its life. After its insert it changes only along
    /// [`OrderStatus::TRANSITIONS`] (`memberline_orders::transitions`).
    pub enum OrderStatus {
        /// Created for a provider payment, waiting for the buyer to pay before `expires_at`.
        PendingPayment = "pending_payment",
        /// The payment is confirmed; `order.paid.v1` is in the outbox.
        Paid = "paid",
        /// Closed unpaid (expired or cancelled).
        Closed = "closed",
        /// Paid; a refund was asked of its provider and is not confirmed yet.
        RefundPending = "refund_pending",
        /// Paid, then refunded; `order.refunded.v1` is in the outbox.
        Refunded = "refunded",
    }
}

text_enum! {
    /// How an order is paid.
    pub enum PayMethod {
        /// Store balance, in fen.
        Balance = "balance",
        /// Points, at the plan's points price.
        Points = "points",
        /// A free plan (claimable once per buyer).
        Free = "free",
        /// WeChat Pay, by one of its channels ([`PayChannel`]: Native QR by default).
        Wechat = "wechat",
        /// Alipay, by one of its channels ([`PayChannel`]: QR precreate by default).
        Alipay = "alipay",
        /// Granted by an admin at no charge (`PUT /v1/admin/users/{id}/membership`).
        AdminGrant = "admin_grant",
    }
}

text_enum! {
    /// What a plan grants.
    pub enum PlanKind {
        /// Membership for `duration_days`, stacked after any current period.
        Membership = "membership",
        /// Membership that never ends.
        Permanent = "permanent",
        /// A pass with a number of uses.
        Pass = "pass",
    }
}

text_enum! {
    /// Which of a buyer's two ledgers.
    pub enum LedgerKind {
        /// Points, in points.
        Points = "points",
        /// Store balance, in fen.
        Balance = "balance",
    }
}

text_enum! {
    /// Why a ledger entry was written; with the order, its business key (one entry per order
    /// and reason).
    pub enum LedgerReason {
        /// The opening amount of a buyer created by an admin or the demo seed.
        OpeningBalance = "opening_balance",
        /// A purchase paid from this ledger (negative).
        OrderPayment = "order_payment",
        /// Reward points credited for a purchase.
        PurchaseReward = "purchase_reward",
        /// A refunded order's payment, given back (positive).
        OrderRefund = "order_refund",
        /// A refunded order's reward points, taken back (negative; what the buyer had already
        /// spent is recorded as the entry's shortfall).
        RewardReversal = "reward_reversal",
        /// An admin's adjustment by hand, with a reason in the audit log.
        AdminAdjustment = "admin_adjustment",
    }
}

text_enum! {
    /// A payment provider.
    pub enum Provider {
        Wechat = "wechat",
        Alipay = "alipay",
    }
}

text_enum! {
    /// Every event type Memberline publishes (the name without the version).
    pub enum EventType {
        /// An order's payment is confirmed.
        OrderPaid = "order.paid",
        /// A paid order added membership time, made it permanent, or granted a pass.
        MembershipExtended = "membership.extended",
        /// A buyer's growth moved them to another level.
        LevelChanged = "level.changed",
        /// A pending provider order was closed unpaid (expired, or cancelled by its buyer).
        OrderClosed = "order.closed",
        /// A payment that arrived after its order was closed went back to the buyer.
        LatePaymentRefunded = "order.late_payment_refunded",
        /// A paid order was refunded: its effects are reversed.
        OrderRefunded = "order.refunded",
        /// A buyer's membership was shortened (a refunded period removed, or revoked).
        MembershipChanged = "membership.changed",
        /// An admin ended a buyer's membership now.
        MembershipRevoked = "membership.revoked",
        /// A buyer asked the shop to hurry with a paid order.
        OrderReminded = "order.reminded",
    }
}

text_enum! {
    /// What a buyer's inbox message is about.
    pub enum NotificationKind {
        OrderPaid = "order_paid",
        MembershipExtended = "membership_extended",
        LevelChanged = "level_changed",
        OrderClosed = "order_closed",
        LatePaymentRefunded = "late_payment_refunded",
        OrderRefunded = "order_refunded",
        MembershipChanged = "membership_changed",
        OrderReminded = "order_reminded",
        /// An admin adjusted the buyer's balance or points by hand.
        AccountAdjusted = "account_adjusted",
    }
}

text_enum! {
    /// What became of a provider notification: stored with it (the outcomes of a verified one)
    /// and counted (all of them).
    pub enum NotificationOutcome {
        /// It paid its order.
        Applied = "applied",
        /// Already applied: a copy, or a payment the order already had.
        Duplicate = "duplicate",
        /// The order was closed before the money came: a refund is due.
        LatePayment = "late_payment",
        /// Paid when the buyer could no longer have the plan: the order is closed and the
        /// payment refunded.
        NotEligible = "not_eligible",
        /// Genuine, flagged for an operator: the amount differs from the order's.
        FlaggedAmount = "flagged_amount",
        /// Genuine, flagged: another merchant, app or provider than the order's.
        FlaggedMerchant = "flagged_merchant",
        /// Genuine, flagged: not in CNY.
        FlaggedCurrency = "flagged_currency",
        /// Genuine, flagged: no order has its number.
        FlaggedUnknownOrder = "flagged_unknown_order",
        /// Genuine, flagged: the provider refunded it before it was applied here.
        FlaggedRefunded = "flagged_refunded",
        /// Verified, and reports nothing to apply (a closed trade, say).
        Ignored = "ignored",
        /// A refund's outcome, applied.
        RefundApplied = "refund_applied",
        /// Refused before it was read: a header missing.
        RejectedMissingHeader = "rejected_missing_header",
        /// Refused: signed with a key we do not know.
        RejectedUnknownSerial = "rejected_unknown_serial",
        /// Refused: its timestamp is too far from now.
        RejectedStale = "rejected_stale",
        /// Refused: the signature does not verify.
        RejectedBadSignature = "rejected_bad_signature",
        /// Refused: it does not decrypt.
        RejectedDecrypt = "rejected_decrypt",
        /// Refused: it cannot be read.
        RejectedMalformed = "rejected_malformed",
    }
}

text_enum! {
    /// Where one refund request is.
    pub enum RefundStatus {
        /// Asked of the provider, not confirmed yet.
        Pending = "pending",
        /// Done: the money (or points) went back.
        Succeeded = "succeeded",
        /// The provider did not refund (WeChat ABNORMAL / CLOSED, a refusal).
        Failed = "failed",
    }
}

text_enum! {
    /// What an admin did (the audit log).
    pub enum AuditAction {
        OrderRefund = "order_refund",
        MembershipGrant = "membership_grant",
        MembershipRevoke = "membership_revoke",
        PlanCreate = "plan_create",
        PlanUpdate = "plan_update",
        PlanArchive = "plan_archive",
        PlanDelete = "plan_delete",
        LevelCreate = "level_create",
        LevelUpdate = "level_update",
        LevelDelete = "level_delete",
        BalanceAdjust = "balance_adjust",
        PointsAdjust = "points_adjust",
    }
}

text_enum! {
    /// Where the automatic refund of a payment that came after its order was closed is.
    pub enum LateRefundStatus {
        /// Due, or accepted by the provider and not yet done.
        Pending = "pending",
        /// The provider refunded it.
        Refunded = "refunded",
        /// The provider refused or abandoned it: an operator must act.
        Failed = "failed",
    }
}

text_enum! {
    /// Why a pending provider order was closed unpaid.
    pub enum CloseReason {
        /// Not paid before `expires_at`.
        Expired = "expired",
        /// Cancelled by its buyer.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// How a provider order is paid: the provider's product the buyer's front end uses.
    pub enum PayChannel {
        /// WeChat Native: a QR code to scan (a desktop page).
        Native = "native",
        /// WeChat JSAPI: `wx.requestPayment` in a mini-program, `WeixinJSBridge` in an
        /// official-account page (WeChat's own browser).
        Jsapi = "jsapi",
        /// WeChat H5: WeChat's cashier opened from a mobile browser outside WeChat.
        H5 = "h5",
        /// Alipay precreate: a QR code to scan.
        Qr = "qr",
        /// Alipay `alipay.trade.wap.pay`: Alipay's mobile cashier page.
        Wap = "wap",
        /// Alipay `alipay.trade.page.pay`: Alipay's desktop cashier page.
        Page = "page",
    }
}

impl PayChannel {
    /// The provider whose channel this is.
    pub fn provider(self) -> Provider {
        match self {
            PayChannel::Native | PayChannel::Jsapi | PayChannel::H5 => Provider::Wechat,
            PayChannel::Qr | PayChannel::Wap | PayChannel::Page => Provider::Alipay,
        }
    }

    /// The channel an order of `provider` takes when none is named (today's QR codes).
    pub fn default_for(provider: Provider) -> Self {
        match provider {
            Provider::Wechat => PayChannel::Native,
            Provider::Alipay => PayChannel::Qr,
        }
    }
}

text_enum! {
    /// The WeChat application a buyer pays or signs in from; each has an app id of its own.
    pub enum WechatApp {
        /// A mini-program (`wx.login`, `wx.requestPayment`).
        Miniprogram = "miniprogram",
        /// An official account's web pages (web OAuth, `WeixinJSBridge`).
        OfficialAccount = "official_account",
    }
}

impl PayMethod {
    /// The provider that collects this pay method's money, if it is not ours.
    pub fn provider(self) -> Option<Provider> {
        match self {
            PayMethod::Wechat => Some(Provider::Wechat),
            PayMethod::Alipay => Some(Provider::Alipay),
            PayMethod::Balance | PayMethod::Points | PayMethod::Free | PayMethod::AdminGrant => {
                None
            }
        }
    }
}

impl OrderStatus {
    /// Every change of status an order can make after its insert, as (from, to). Anything else
    /// is refused.
    pub const TRANSITIONS: &'static [(OrderStatus, OrderStatus)] = &[
        // A verified notification or our query confirms the payment.
        (OrderStatus::PendingPayment, OrderStatus::Paid),
        // Expired, cancelled by its buyer, or the provider failed at checkout.
        (OrderStatus::PendingPayment, OrderStatus::Closed),
        // A provider refund is asked for.
        (OrderStatus::Paid, OrderStatus::RefundPending),
        // A balance, points, free or granted order is refunded at once; or a provider's late
        // success for a refund recorded as failed.
        (OrderStatus::Paid, OrderStatus::Refunded),
        // The provider confirms the refund.
        (OrderStatus::RefundPending, OrderStatus::Refunded),
        // The provider's refund ended without the money going back.
        (OrderStatus::RefundPending, OrderStatus::Paid),
    ];

    /// Whether an order may go from `self` to `to`.
    pub fn may_become(self, to: OrderStatus) -> bool {
        Self::TRANSITIONS.contains(&(self, to))
    }

    /// Whether an order in this status never changes again (closed, refunded).
    pub fn is_final(self) -> bool {
        !Self::TRANSITIONS.iter().any(|(from, _)| *from == self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ActiveEnum;

    #[test]
    fn only_the_listed_transitions_are_allowed() {
        assert!(OrderStatus::PendingPayment.may_become(OrderStatus::Paid));
        assert!(OrderStatus::RefundPending.may_become(OrderStatus::Paid));
        // A closed or refunded order never changes again; nothing goes back to pending.
        for to in OrderStatus::ALL {
            assert!(!OrderStatus::Closed.may_become(*to));
            assert!(!OrderStatus::Refunded.may_become(*to));
            assert!(!to.may_become(OrderStatus::PendingPayment));
        }
        assert!(!OrderStatus::Paid.may_become(OrderStatus::Closed));
        let finals: Vec<_> = OrderStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [&OrderStatus::Closed, &OrderStatus::Refunded]);
    }

    #[test]
    fn every_value_has_the_same_text_in_the_database_in_json_and_in_as_str() {
        for status in OrderStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(status.to_value(), status.as_str());
            assert_eq!(OrderStatus::parse(status.as_str()), Some(*status));
        }
        assert_eq!(EventType::OrderPaid.as_str(), "order.paid");
        assert_eq!(PayMethod::parse("cash"), None);
    }
}
