//! A buyer's OpenID under one WeChat app id (a mini-program or an official account).

use crate::ids::BuyerId;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wechat_identities")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub appid: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub openid: String,
    pub buyer_id: BuyerId,
    /// The buyer's id across the shop's apps, when WeChat sent one.
    pub unionid: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
