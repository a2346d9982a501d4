//! The catalogue and the buyers as orders read them: plans, levels, a buyer (locked for a
//! purchase), buyers' names and a buyer's WeChat OpenID.

use memberline_schema::entities::{level, plan, user, wechat_identity};
use memberline_schema::ids::{BuyerId, PlanId};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use std::collections::HashMap;

/// Buyer `buyer_id`, locked until `txn` ends: every purchase of one buyer waits here for the
/// one before.
pub async fn lock_buyer(
    txn: &DatabaseTransaction,
    buyer_id: BuyerId,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find_by_id(buyer_id)
        .lock_exclusive()
        .one(txn)
        .await
}

/// The names of the buyers `buyer_ids`.
pub async fn buyer_names<C: ConnectionTrait>(
    conn: &C,
    buyer_ids: Vec<BuyerId>,
) -> Result<HashMap<BuyerId, String>, DbErr> {
    Ok(user::Entity::find()
        .filter(user::Column::Id.is_in(buyer_ids))
        .all(conn)
        .await?
        .into_iter()
        .map(|u| (u.id, u.name))
        .collect())
}

/// The plans on the shelf, in display order.
pub async fn on_shelf<C: ConnectionTrait>(conn: &C) -> Result<Vec<plan::Model>, DbErr> {
    plan::Entity::find()
        .filter(plan::Column::OnShelf.eq(true))
        .order_by_asc(plan::Column::Sort)
        .order_by_asc(plan::Column::Id)
        .all(conn)
        .await
}

/// Buyer `buyer_id`.
pub async fn buyer<C: ConnectionTrait>(
    conn: &C,
    buyer_id: BuyerId,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find_by_id(buyer_id).one(conn).await
}

/// Plan `plan_id`, on the shelf or not.
pub async fn plan<C: ConnectionTrait>(
    conn: &C,
    plan_id: PlanId,
) -> Result<Option<plan::Model>, DbErr> {
    plan::Entity::find_by_id(plan_id).one(conn).await
}

/// Level `level_id`.
pub async fn level<C: ConnectionTrait>(
    conn: &C,
    level_id: i16,
) -> Result<Option<level::Model>, DbErr> {
    level::Entity::find_by_id(level_id).one(conn).await
}

/// The OpenID of buyer `buyer_id` under the WeChat app id `appid`, if they signed in there.
pub async fn wechat_openid<C: ConnectionTrait>(
    conn: &C,
    buyer_id: BuyerId,
    appid: &str,
) -> Result<Option<String>, DbErr> {
    Ok(wechat_identity::Entity::find()
        .filter(wechat_identity::Column::BuyerId.eq(buyer_id))
        .filter(wechat_identity::Column::Appid.eq(appid))
        .one(conn)
        .await?
        .map(|i| i.openid))
}
