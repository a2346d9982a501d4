//! Database migrations, each with an `up` and a `down`.
//!
//! The SQL lives beside this file so that constraints (non-negative balances, one free claim per
//! buyer, one membership period per order) read as the database enforces them. Migrations are
//! named `mYYYYMMDD_HHMMSS_verb_noun` and applied in order by [`Migrator`].

use sea_orm_migration::prelude::*;

/// Applies every Memberline migration in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(SqlMigration {
                name: "m20261121_000001_create_commerce",
                up: include_str!("m20261121_000001_create_commerce.sql"),
                down: include_str!("m20261121_000001_create_commerce.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261121_000002_create_delivery",
                up: include_str!("m20261121_000002_create_delivery.sql"),
                down: include_str!("m20261121_000002_create_delivery.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261122_000003_sequence_console_feed",
                up: include_str!("m20261122_000003_sequence_console_feed.sql"),
                down: include_str!("m20261122_000003_sequence_console_feed.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261123_000004_harden_delivery",
                up: include_str!("m20261123_000004_harden_delivery.sql"),
                down: include_str!("m20261123_000004_harden_delivery.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000005_create_channel_deliveries",
                up: include_str!("m20261124_000005_create_channel_deliveries.sql"),
                down: include_str!("m20261124_000005_create_channel_deliveries.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000006_provider_payments",
                up: include_str!("m20261124_000006_provider_payments.sql"),
                down: include_str!("m20261124_000006_provider_payments.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000007_payment_lifecycle",
                up: include_str!("m20261124_000007_payment_lifecycle.sql"),
                down: include_str!("m20261124_000007_payment_lifecycle.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000008_refunds_and_grants",
                up: include_str!("m20261124_000008_refunds_and_grants.sql"),
                down: include_str!("m20261124_000008_refunds_and_grants.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000009_live_push",
                up: include_str!("m20261124_000009_live_push.sql"),
                down: include_str!("m20261124_000009_live_push.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261124_000010_purchase_indexes",
                up: include_str!("m20261124_000010_purchase_indexes.sql"),
                down: include_str!("m20261124_000010_purchase_indexes.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261125_000011_outbox_notify_opt_out",
                up: include_str!("m20261125_000011_outbox_notify_opt_out.sql"),
                down: include_str!("m20261125_000011_outbox_notify_opt_out.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261207_000012_pay_channels",
                up: include_str!("m20261207_000012_pay_channels.sql"),
                down: include_str!("m20261207_000012_pay_channels.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261207_000013_staff",
                up: include_str!("m20261207_000013_staff.sql"),
                down: include_str!("m20261207_000013_staff.down.sql"),
            }),
            Box::new(SqlMigration {
                name: "m20261207_000014_back_office",
                up: include_str!("m20261207_000014_back_office.sql"),
                down: include_str!("m20261207_000014_back_office.down.sql"),
            }),
        ]
    }
}

/// A migration written as plain SQL; each runs inside one transaction (PostgreSQL's DDL is
/// transactional), so a failed migration leaves nothing half-applied.
struct SqlMigration {
    name: &'static str,
    up: &'static str,
    down: &'static str,
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(self.up).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(self.down)
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
