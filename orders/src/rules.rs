//! The rules of a purchase, pure and tested without a database: a plan's price at a buyer's
//! level ([`price`]), who may buy what with which method ([`eligibility`]), and what a purchase
//! charges ([`charge`]). The client never sends an amount that is used: every price is
//! recomputed here from the catalogue and the buyer's level.

use crate::OrderError;
use memberline_schema::entities::{order, plan, user};
use memberline_schema::money::discounted;
use memberline_schema::states::{PayChannel, PayMethod, PlanKind};

/// What a buyer of a given level pays for a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub fen: i64,
    /// `None` when the plan cannot be bought with points.
    pub points: Option<i64>,
}

/// The price of `plan` for a level that pays `discount_percent` % of it: the level discount
/// applies to both the fen and the points price; free plans stay free. The one entry point of
/// the level discount.
pub fn price(plan: &plan::Model, discount_percent: i16) -> Price {
    Price {
        fen: discounted(plan.price_fen, discount_percent),
        points: plan.price_points.map(|p| discounted(p, discount_percent)),
    }
}

/// What the eligibility rules count for a buyer and a plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Permanent memberships held or paid for.
    pub permanent: i64,
    /// Earlier free claims of this plan.
    pub free_claims: i64,
}

/// The price a client says it showed the buyer (`expected_price_fen`, `expected_price_points`).
/// A difference from the server's price refuses the order with `price_changed`, so a catalogue
/// change between display and purchase never charges a surprise amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectedPrice {
    pub fen: Option<i64>,
    pub points: Option<i64>,
}

/// What the buyer is charged, after the level discount.
#[derive(Clone, Copy, Debug)]
pub struct Charge {
    pub fen: i64,
    pub points: i64,
}

/// Why a buyer cannot place an `admin_grant` order.
pub(crate) const ADMIN_GRANT_ONLY: &str = "admin_grant is not a pay method buyers can use: admins grant with PUT /v1/admin/users/{id}/membership";

/// Whether `plan` is sold for `pay_method` (and, for a provider, by `channel`): an admin can
/// limit a plan to some of the shop's pay methods and channels. A plan limited to none of them
/// is sold for none.
pub fn offered(
    plan: &plan::Model,
    pay_method: PayMethod,
    channel: Option<PayChannel>,
) -> Result<(), OrderError> {
    let listed = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref().is_none_or(|l| l.iter().any(|x| x == name))
    };
    if !listed(&plan.pay_methods, pay_method.as_str()) {
        return Err(OrderError::PayMethodNotAllowed(
            "this plan is not sold for that pay method: see the plan's pay_methods",
        ));
    }
    match channel {
        Some(channel) if !listed(&plan.channels, channel.as_str()) => {
            Err(OrderError::ChannelUnavailable(format!(
                "plan {} is not sold by {channel}: see the plan's channels",
                plan.code
            )))
        }
        _ => Ok(()),
    }
}

/// What eligibility looks at in a plan: the plan on the shelf when an order is placed, the
/// order's snapshot of it when a payment arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sold {
    pub kind: PlanKind,
    pub is_free: bool,
}

impl From<&plan::Model> for Sold {
    fn from(plan: &plan::Model) -> Self {
        Self {
            kind: plan.kind,
            is_free: plan.is_free,
        }
    }
}

impl From<&order::Model> for Sold {
    /// A free plan is only ever sold with pay method `free`.
    fn from(order: &order::Model) -> Self {
        Self {
            kind: order.plan_kind,
            is_free: order.pay_method == PayMethod::Free,
        }
    }
}

/// Who may buy what with which method: one permanent membership per buyer (passes aside), free
/// plans only with `free` and once, `free` only for free plans. The one entry point of
/// eligibility, applied when an order is placed and again when a provider's payment for it
/// arrives; the counts are read where the purchase reads its rows.
pub fn eligibility(plan: Sold, pay_method: PayMethod, counts: Counts) -> Result<(), OrderError> {
    if plan.kind != PlanKind::Pass && counts.permanent > 0 {
        return Err(OrderError::AlreadyPermanent);
    }
    match (pay_method, plan.is_free) {
        (PayMethod::Free, false) => Err(OrderError::PlanNotFree),
        (PayMethod::Free, true) if counts.free_claims > 0 => {
            Err(OrderError::FreePlanAlreadyClaimed)
        }
        (PayMethod::Free, true) => Ok(()),
        (_, true) => Err(OrderError::PayMethodNotAllowed(
            "a free plan is taken with pay_method `free`",
        )),
        _ => Ok(()),
    }
}

/// What a buyer at a level that pays `discount_percent` % is charged for `plan` with
/// `pay_method`: refused when it differs from the price the buyer was shown, when the plan
/// has no price in that currency, or when the buyer's funds are short. The one entry point of
/// pricing a purchase.
pub fn charge(
    buyer: &user::Model,
    plan: &plan::Model,
    discount_percent: i16,
    pay_method: PayMethod,
    expected: ExpectedPrice,
) -> Result<Charge, OrderError> {
    let price = price(plan, discount_percent);
    // The expectation of the currency this order is charged in: points for a points order,
    // fen otherwise (a free plan costs 0 fen).
    let (shown, current) = match pay_method {
        PayMethod::Points => (expected.points, price.points),
        _ => (expected.fen, Some(price.fen)),
    };
    if shown.is_some() && shown != current {
        return Err(OrderError::PriceChanged {
            fen: price.fen,
            points: price.points,
        });
    }
    let charge = match pay_method {
        PayMethod::Balance | PayMethod::Wechat | PayMethod::Alipay => Charge {
            fen: price.fen,
            points: 0,
        },
        PayMethod::Points => Charge {
            fen: 0,
            points: price.points.ok_or(OrderError::PayMethodNotAllowed(
                "this plan cannot be bought with points",
            ))?,
        },
        PayMethod::Free => Charge { fen: 0, points: 0 },
        PayMethod::AdminGrant => return Err(OrderError::PayMethodNotAllowed(ADMIN_GRANT_ONLY)),
    };
    if pay_method == PayMethod::Balance && buyer.balance_fen < charge.fen {
        return Err(OrderError::InsufficientBalance {
            needed: charge.fen,
            have: buyer.balance_fen,
        });
    }
    if buyer.points < charge.points {
        return Err(OrderError::InsufficientPoints {
            needed: charge.points,
            have: buyer.points,
        });
    }
    Ok(charge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use memberline_schema::ids::{BuyerId, PlanId};

    fn plan(kind: PlanKind, fen: i64, points: Option<i64>) -> plan::Model {
        plan::Model {
            id: PlanId(1),
            code: "monthly".into(),
            name: "Monthly".into(),
            kind,
            duration_days: Some(30),
            uses: None,
            original_price_fen: fen,
            price_fen: fen,
            price_points: points,
            is_free: fen == 0,
            on_shelf: true,
            sort: 1,
            image_url: None,
            created_at: chrono::Utc::now(),
            pay_methods: None,
            channels: None,
            archived_at: None,
            updated_at: chrono::Utc::now(),
        }
    }

    fn buyer(balance_fen: i64, points: i64) -> user::Model {
        user::Model {
            id: BuyerId(1),
            name: "Buyer".into(),
            points,
            balance_fen,
            growth: 0,
            level_id: 1,
            purchase_count: 0,
            total_paid_fen: 0,
            total_saved_fen: 0,
            total_saved_points: 0,
            is_promoter: false,
            phone: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_level_discount_applies_to_both_prices() {
        let p = price(&plan(PlanKind::Membership, 3000, Some(3000)), 90);
        assert_eq!(
            p,
            Price {
                fen: 2700,
                points: Some(2700)
            }
        );
        assert_eq!(
            price(&plan(PlanKind::Membership, 3000, None), 90).points,
            None
        );
    }

    #[test]
    fn a_permanent_member_may_buy_passes_but_no_more_membership() {
        let counts = Counts {
            permanent: 1,
            free_claims: 0,
        };
        let monthly = plan(PlanKind::Membership, 3000, None);
        assert!(matches!(
            eligibility((&monthly).into(), PayMethod::Balance, counts),
            Err(OrderError::AlreadyPermanent)
        ));
        let pass = plan(PlanKind::Pass, 500, None);
        assert!(eligibility((&pass).into(), PayMethod::Balance, counts).is_ok());
    }

    #[test]
    fn a_free_plan_is_taken_with_free_and_once() {
        let trial = plan(PlanKind::Membership, 0, None);
        let none = Counts::default();
        assert!(eligibility((&trial).into(), PayMethod::Free, none).is_ok());
        assert!(matches!(
            eligibility(
                (&trial).into(),
                PayMethod::Free,
                Counts {
                    permanent: 0,
                    free_claims: 1
                }
            ),
            Err(OrderError::FreePlanAlreadyClaimed)
        ));
        assert!(matches!(
            eligibility((&trial).into(), PayMethod::Balance, none),
            Err(OrderError::PayMethodNotAllowed(_))
        ));
        let monthly = plan(PlanKind::Membership, 3000, None);
        assert!(matches!(
            eligibility((&monthly).into(), PayMethod::Free, none),
            Err(OrderError::PlanNotFree)
        ));
    }

    #[test]
    fn a_purchase_is_charged_in_its_currency_at_the_level_price() {
        let monthly = plan(PlanKind::Membership, 3000, Some(3000));
        let rich = buyer(10_000, 10_000);
        let fen = charge(
            &rich,
            &monthly,
            90,
            PayMethod::Balance,
            ExpectedPrice::default(),
        )
        .unwrap();
        assert_eq!((fen.fen, fen.points), (2700, 0));
        let points = charge(
            &rich,
            &monthly,
            90,
            PayMethod::Points,
            ExpectedPrice::default(),
        )
        .unwrap();
        assert_eq!((points.fen, points.points), (0, 2700));
        let wechat = charge(
            &buyer(0, 0),
            &monthly,
            100,
            PayMethod::Wechat,
            ExpectedPrice::default(),
        )
        .unwrap();
        assert_eq!(wechat.fen, 3000, "a provider payment needs no balance");
    }

    #[test]
    fn a_price_other_than_the_one_shown_is_refused_with_the_current_one() {
        let monthly = plan(PlanKind::Membership, 3000, Some(3000));
        let shown = ExpectedPrice {
            fen: Some(3000),
            points: None,
        };
        assert!(matches!(
            charge(&buyer(10_000, 0), &monthly, 90, PayMethod::Balance, shown),
            Err(OrderError::PriceChanged {
                fen: 2700,
                points: Some(2700)
            })
        ));
        let right = ExpectedPrice {
            fen: Some(2700),
            points: None,
        };
        assert!(charge(&buyer(10_000, 0), &monthly, 90, PayMethod::Balance, right).is_ok());
    }

    #[test]
    fn short_funds_and_missing_points_prices_are_refused() {
        let monthly = plan(PlanKind::Membership, 3000, None);
        assert!(matches!(
            charge(
                &buyer(100, 0),
                &monthly,
                100,
                PayMethod::Balance,
                ExpectedPrice::default()
            ),
            Err(OrderError::InsufficientBalance {
                needed: 3000,
                have: 100
            })
        ));
        assert!(matches!(
            charge(
                &buyer(0, 1_000_000),
                &monthly,
                100,
                PayMethod::Points,
                ExpectedPrice::default()
            ),
            Err(OrderError::PayMethodNotAllowed(_))
        ));
        let by_points = plan(PlanKind::Membership, 3000, Some(5000));
        assert!(matches!(
            charge(
                &buyer(0, 10),
                &by_points,
                100,
                PayMethod::Points,
                ExpectedPrice::default()
            ),
            Err(OrderError::InsufficientPoints {
                needed: 5000,
                have: 10
            })
        ));
        assert!(matches!(
            charge(
                &buyer(0, 0),
                &monthly,
                100,
                PayMethod::AdminGrant,
                ExpectedPrice::default()
            ),
            Err(OrderError::PayMethodNotAllowed(_))
        ));
    }

    #[test]
    fn a_plan_limited_to_some_methods_and_channels_is_sold_by_those_only() {
        let mut plan = plan(PlanKind::Membership, 3000, Some(100));
        assert!(
            offered(&plan, PayMethod::Balance, None).is_ok(),
            "no limit: all"
        );
        plan.pay_methods = Some(vec!["wechat".into(), "points".into()]);
        plan.channels = Some(vec!["jsapi".into()]);
        assert!(offered(&plan, PayMethod::Points, None).is_ok());
        assert!(offered(&plan, PayMethod::Wechat, Some(PayChannel::Jsapi)).is_ok());
        assert!(matches!(
            offered(&plan, PayMethod::Balance, None),
            Err(OrderError::PayMethodNotAllowed(_))
        ));
        assert!(matches!(
            offered(&plan, PayMethod::Wechat, Some(PayChannel::Native)),
            Err(OrderError::ChannelUnavailable(_))
        ));
    }
}
