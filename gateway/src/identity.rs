//! Buyers' WeChat identities: who an OpenID under one of the shop's apps is. Signing in finds
//! the buyer of an OpenID, or the buyer of its unionid under the shop's other app, or creates
//! one; a signed-in buyer can also link an OpenID to themselves. An OpenID belongs to one buyer
//! and a buyer has at most one OpenID per app (the table's keys say so).

use memberline_orders::providers::wechat::WechatIdentity;
use memberline_platform::db::violated_constraint;
use memberline_schema::entities::user;
use memberline_schema::ids::BuyerId;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Statement, TransactionTrait,
};

/// Who signed in.
pub struct SignedIn {
    pub buyer: user::Model,
    /// Whether this sign-in created the buyer.
    pub created: bool,
}

/// The buyer that `identity` belongs to: by its OpenID, else by its unionid under another of
/// the shop's apps (the identity is then linked to them), else a new buyer. Two first sign-ins
/// of one OpenID at once create one buyer: the loser of the insert finds the winner's.
pub async fn sign_in(
    db: &DatabaseConnection,
    identity: &WechatIdentity,
) -> Result<SignedIn, DbErr> {
    for _ in 0..2 {
        let txn = db.begin().await?;
        if let Some(buyer_id) = owner(&txn, identity).await? {
            if identity.unionid.is_some() {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE wechat_identities SET unionid = $3 \
                     WHERE appid = $1 AND openid = $2 AND unionid IS NULL",
                    [
                        identity.appid.clone().into(),
                        identity.openid.clone().into(),
                        identity.unionid.clone().into(),
                    ],
                ))
                .await?;
            }
            let buyer = user::Entity::find_by_id(buyer_id)
                .one(&txn)
                .await?
                .ok_or_else(|| DbErr::RecordNotFound(format!("buyer {buyer_id}")))?;
            txn.commit().await?;
            return Ok(SignedIn {
                buyer,
                created: false,
            });
        }
        let (buyer_id, created) = match by_unionid(&txn, identity).await? {
            Some(buyer_id) => (buyer_id, false),
            None => (new_buyer(&txn, identity).await?, true),
        };
        match insert(&txn, identity, buyer_id).await {
            Ok(()) => {
                let buyer = user::Entity::find_by_id(buyer_id)
                    .one(&txn)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound(format!("buyer {buyer_id}")))?;
                txn.commit().await?;
                return Ok(SignedIn { buyer, created });
            }
            // Signed in at the same moment by another request, which linked it first.
            Err(e) if violated_constraint(&e).is_some() => txn.rollback().await?,
            Err(e) => return Err(e),
        }
    }
    Err(DbErr::Custom(
        "a WeChat identity kept changing during sign-in".into(),
    ))
}

/// What linking an OpenID to a buyer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Linked {
    /// Linked now, or linked to this buyer before.
    Linked,
    /// The OpenID belongs to another buyer.
    TakenByAnother,
    /// The buyer already has another OpenID under this app.
    AppAlreadyLinked,
}

/// Links `identity` to `buyer_id`.
pub async fn link(
    db: &DatabaseConnection,
    buyer_id: BuyerId,
    identity: &WechatIdentity,
) -> Result<Linked, DbErr> {
    let txn = db.begin().await?;
    if let Some(owner) = owner(&txn, identity).await? {
        txn.rollback().await?;
        return Ok(if owner == buyer_id {
            Linked::Linked
        } else {
            Linked::TakenByAnother
        });
    }
    match insert(&txn, identity, buyer_id).await {
        Ok(()) => {
            txn.commit().await?;
            Ok(Linked::Linked)
        }
        Err(e) => {
            txn.rollback().await?;
            match violated_constraint(&e).as_deref() {
                Some("wechat_identities_one_per_app") => Ok(Linked::AppAlreadyLinked),
                // Linked by someone else at the same moment: ask again who has it.
                Some("wechat_identities_pkey") => Box::pin(link(db, buyer_id, identity)).await,
                _ => Err(e),
            }
        }
    }
}

/// The buyer the OpenID belongs to.
async fn owner<C: ConnectionTrait>(
    conn: &C,
    identity: &WechatIdentity,
) -> Result<Option<BuyerId>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT buyer_id FROM wechat_identities WHERE appid = $1 AND openid = $2",
            [
                identity.appid.clone().into(),
                identity.openid.clone().into(),
            ],
        ))
        .await?;
    row.map(|r| r.try_get("", "buyer_id")).transpose()
}

/// The buyer who signed in with the same unionid under another app and has no OpenID under
/// this one.
async fn by_unionid<C: ConnectionTrait>(
    conn: &C,
    identity: &WechatIdentity,
) -> Result<Option<BuyerId>, DbErr> {
    let Some(unionid) = &identity.unionid else {
        return Ok(None);
    };
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT buyer_id FROM wechat_identities u WHERE unionid = $1 \
             AND NOT EXISTS (SELECT 1 FROM wechat_identities o \
                             WHERE o.buyer_id = u.buyer_id AND o.appid = $2) \
             ORDER BY created_at LIMIT 1",
            [unionid.clone().into(), identity.appid.clone().into()],
        ))
        .await?;
    row.map(|r| r.try_get("", "buyer_id")).transpose()
}

/// A new buyer for a first sign-in, named after the end of their OpenID until they say more.
async fn new_buyer<C: ConnectionTrait>(
    conn: &C,
    identity: &WechatIdentity,
) -> Result<BuyerId, DbErr> {
    let tail: String = identity
        .openid
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO users (name) VALUES ($1) RETURNING id",
            [format!("WeChat buyer {tail}").into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the buyer insert returned no row".into()))?;
    row.try_get("", "id")
}

async fn insert<C: ConnectionTrait>(
    conn: &C,
    identity: &WechatIdentity,
    buyer_id: BuyerId,
) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO wechat_identities (appid, openid, buyer_id, unionid) VALUES ($1, $2, $3, $4)",
        [
            identity.appid.clone().into(),
            identity.openid.clone().into(),
            buyer_id.into(),
            identity.unionid.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}
