//! The catalogue as buyers see it.

use crate::http::auth::MaybeCaller;
use crate::http::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use memberline_orders::providers::Offer;
use memberline_orders::{rules, store};
use memberline_schema::ids::PlanId;
use memberline_schema::states::{PayMethod, PlanKind};
use serde::Serialize;

/// A plan on the shelf. Prices are integers: fen and points.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub id: PlanId,
    pub code: String,
    pub name: String,
    pub kind: PlanKind,
    /// Days of membership (membership plans only).
    pub duration_days: Option<i32>,
    /// Number of uses (passes only).
    pub uses: Option<i32>,
    pub original_price_fen: i64,
    pub price_fen: i64,
    /// `null` when the plan cannot be bought with points.
    pub price_points: Option<i64>,
    /// Taken with pay_method `free`, once per buyer.
    pub is_free: bool,
    pub image_url: Option<String>,
    /// The pay methods that take this plan; `null`: every one in `pay_methods` of the list.
    #[schema(value_type = Option<Vec<super::orders::OrderPayMethod>>)]
    pub pay_methods: Option<Vec<String>>,
    /// The channels that take this plan; `null`: every one in `channels` of the list.
    #[schema(value_type = Option<Vec<memberline_schema::states::PayChannel>>)]
    pub channels: Option<Vec<String>>,
    /// What the caller pays after their level discount (only with a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_price_fen: Option<i64>,
    /// What the caller pays in points after their level discount (only with a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_price_points: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub plans: Vec<PlanView>,
    /// The pay methods this shop takes: `balance`, `points`, `free`, and each payment provider
    /// it has enabled (`wechat`, `alipay`).
    #[schema(value_type = Vec<super::orders::OrderPayMethod>)]
    pub pay_methods: Vec<PayMethod>,
    /// How each provider pay method can be paid here: its channels, and for `jsapi` one entry
    /// per WeChat app (`wechat_app`). An order names one of these (`channel`, `wechat_app`).
    pub channels: Vec<Offer>,
}

/// Lists on-shelf plans in display order.
#[utoipa::path(get, path = "/v1/plans", tag = "plans",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Plans in display order; buyer prices when a token is sent", body = PlanList),
        (status = 401, description = "A token was sent but is invalid or expired (`invalid_token`, `token_expired`), or names no user (`unknown_user`)", body = crate::http::error::ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy", body = crate::http::error::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
) -> Result<Json<PlanList>, ApiError> {
    // A staff token sees the catalogue as a visitor does: it acts for no buyer.
    let buyer_level = match caller.and_then(|c| c.buyer_id().ok()) {
        Some(buyer_id) => {
            let buyer = store::catalogue::buyer(&state.db, buyer_id)
                .await?
                .ok_or_else(|| {
                    ApiError::unauthorized("unknown_user", "the token's user does not exist")
                })?;
            store::catalogue::level(&state.db, buyer.level_id).await?
        }
        None => None,
    };
    let plans = store::catalogue::on_shelf(&state.db).await?;
    let plans = plans
        .into_iter()
        .map(|p| {
            let price = buyer_level
                .as_ref()
                .map(|l| rules::price(&p, l.discount_percent));
            PlanView {
                buyer_price_fen: price.map(|x| x.fen),
                buyer_price_points: price.and_then(|x| x.points),
                id: p.id,
                code: p.code,
                name: p.name,
                kind: p.kind,
                duration_days: p.duration_days,
                uses: p.uses,
                original_price_fen: p.original_price_fen,
                price_fen: p.price_fen,
                price_points: p.price_points,
                is_free: p.is_free,
                image_url: p.image_url,
                pay_methods: p.pay_methods,
                channels: p.channels,
            }
        })
        .collect();
    let pay_methods = PayMethod::ALL
        .iter()
        .copied()
        .filter(|m| match m.provider() {
            Some(provider) => state.payments.get(provider).is_some(),
            None => *m != PayMethod::AdminGrant,
        })
        .collect();
    Ok(Json(PlanList {
        plans,
        pay_methods,
        channels: state.payments.offers().to_vec(),
    }))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/plans", get(list))
}
