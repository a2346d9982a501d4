//! What an admin did to whom, and why.

use crate::ids::{BuyerId, OrderId};
use crate::states::AuditAction;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The staff member (a token subject).
    pub actor_id: i64,
    /// Their username when they acted (`None` for a token minted for no staff account).
    pub actor_name: Option<String>,
    pub action: AuditAction,
    pub user_id: Option<BuyerId>,
    pub order_id: Option<OrderId>,
    pub reason: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub details: Json,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
