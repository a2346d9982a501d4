//! The transactional outbox: one row per event, written with the state change it announces.

use crate::ids::EventId;
use crate::states::EventType;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: EventId,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: EventType,
    pub routing_key: String,
    pub correlation_id: Uuid,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    pub created_at: DateTimeUtc,
    pub published_at: Option<DateTimeUtc>,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// A row that failed waits until then before the relay tries it again.
    pub next_attempt_at: DateTimeUtc,
    /// Set after too many failed attempts: left out of batches until an operator releases it.
    pub quarantined_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
