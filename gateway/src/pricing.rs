//! Server-side prices. The client never sends an amount that is used: every price is recomputed
//! here from the catalogue and the buyer's level.

use memberline_schema::entities::{level, plan};
use memberline_schema::money::discounted;

/// What a buyer of a given level pays for a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuyerPrice {
    pub fen: i64,
    /// `None` when the plan cannot be bought with points.
    pub points: Option<i64>,
}

/// The level discount applies to both the fen and the points price; free plans stay free.
pub fn buyer_price(plan: &plan::Model, level: &level::Model) -> BuyerPrice {
    buyer_price_at(plan, level.discount_percent)
}

/// [`buyer_price`] for a level that pays `discount_percent` % of the price.
pub fn buyer_price_at(plan: &plan::Model, discount_percent: i16) -> BuyerPrice {
    BuyerPrice {
        fen: discounted(plan.price_fen, discount_percent),
        points: plan.price_points.map(|p| discounted(p, discount_percent)),
    }
}
