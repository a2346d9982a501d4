//! PostgreSQL for tests: a fresh database per test ([`TestDb`], random name, dropped with it)
//! and the SQL helpers tests read results with ([`TestApp::scalar`], …). Everything here talks
//! to the real server at [`database_server_url`].

use crate::{TestApp, clean_up, eventually};
use memberline_gateway::seed;
use memberline_schema::Migrator;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use std::time::Duration;
use uuid::Uuid;

/// The server tests create their databases on (`TEST_DATABASE_URL`, no database name).
pub fn database_server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh, migrated database with the catalogue seeded. Dropped when this value is dropped
/// (for a [`TestApp`], after the app shut down).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub conn: DatabaseConnection,
}

impl TestDb {
    /// A fresh database, migrated and seeded.
    pub async fn create() -> Self {
        Self::create_with(true).await
    }

    /// A fresh database, migrated (and seeded) only when `migrate` is true.
    pub async fn create_with(migrate: bool) -> Self {
        let name = format!("ml_test_{}", Uuid::new_v4().simple());
        let server = database_server_url();
        let admin = Database::connect(format!("{server}/postgres"))
            .await
            .expect("PostgreSQL must be running (make test starts it)");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = format!("{server}/{name}");
        let conn = Database::connect(&url)
            .await
            .expect("connect test database");
        if migrate {
            Migrator::up(&conn, None).await.expect("migrations apply");
            seed::catalogue(&conn).await.expect("catalogue seeds");
        }
        Self { name, url, conn }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

/// Drops database `name`, disconnecting whoever is still connected.
fn drop_database(name: &str) {
    let name = name.to_owned();
    clean_up(move || async move {
        if let Ok(admin) = Database::connect(format!("{}/postgres", database_server_url())).await {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            admin.close().await.ok();
        }
    });
}

impl TestApp {
    /// The id of a seeded plan by code.
    pub async fn plan_id(&self, code: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM plans WHERE code = $1",
                [code.into()],
            ))
            .await
            .unwrap()
            .expect("seeded plan");
        row.try_get("", "id").unwrap()
    }

    /// One integer from a SQL query (counts, sums).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .expect("one row");
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// One text value from a SQL query (`""` for NULL).
    pub async fn text_scalar(&self, sql: &str) -> String {
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .expect("one row");
        row.try_get_by_index::<Option<String>>(0)
            .unwrap()
            .unwrap_or_default()
    }

    /// Every outbox payload of one event type, oldest first.
    pub async fn outbox_payloads(&self, event_type: &str) -> Vec<serde_json::Value> {
        self.db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT payload FROM outbox WHERE event_type = $1 ORDER BY created_at, id",
                [event_type.into()],
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.try_get::<serde_json::Value>("", "payload").unwrap())
            .collect()
    }

    /// Waits until `sql` (one integer) returns `want`.
    pub async fn wait_for_count(&self, what: &str, sql: &str, want: i64) {
        eventually(what, Duration::from_secs(60), || async {
            (self.scalar(sql).await == want).then_some(())
        })
        .await;
    }
}
