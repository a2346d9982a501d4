//! Migrations run up, down and up again, and the schema itself refuses a negative balance.

use memberline_schema::Migrator;
use memberline_tests::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;

async fn table_count(db: &TestDb) -> i64 {
    db.conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name <> 'seaql_migrations'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

#[tokio::test]
async fn migrations_run_up_down_and_up_again() {
    let db = TestDb::create_with(false).await;
    Migrator::up(&db.conn, None).await.unwrap();
    let tables = table_count(&db).await;
    assert!(
        tables >= 16,
        "the whole data model is created ({tables} tables)"
    );

    Migrator::down(&db.conn, None).await.unwrap();
    assert_eq!(table_count(&db).await, 0, "down removes every table");

    Migrator::up(&db.conn, None).await.unwrap();
    assert_eq!(table_count(&db).await, tables);
    memberline_gateway::seed::demo(&db.conn).await.unwrap();
    memberline_gateway::seed::demo(&db.conn).await.unwrap();
    let users = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FROM users",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(users, 2, "seeding twice changes nothing");
    let _ = db.conn.execute_unprepared("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn the_database_refuses_a_negative_balance_even_without_the_code() {
    let db = TestDb::create().await;
    db.conn
        .execute_unprepared(
            "INSERT INTO users (id, name, points, balance_fen) VALUES (1, 'x', 5, 5)",
        )
        .await
        .unwrap();
    for sql in [
        "UPDATE users SET points = points - 6 WHERE id = 1",
        "UPDATE users SET balance_fen = balance_fen - 6 WHERE id = 1",
        "INSERT INTO point_ledger (user_id, reason, delta, balance_after) VALUES (1, 'x', -6, -1)",
    ] {
        assert!(
            db.conn.execute_unprepared(sql).await.is_err(),
            "{sql} must fail"
        );
    }
}

#[tokio::test]
async fn an_admins_keys_stored_before_owners_had_kinds_stay_the_admins() {
    let db = TestDb::create_with(false).await;
    // Every migration before the staff one.
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261207_000013_staff")
        .expect("the staff migration") as u32;
    Migrator::up(&db.conn, Some(before)).await.unwrap();
    db.conn
        .execute_unprepared(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response_body) VALUES \
             (7, 'grant', 'h', 201, '{\"pay_method\": \"admin_grant\", \"status\": \"paid\"}'), \
             (7, 'refund', 'h', 200, '{\"pay_method\": \"balance\", \"status\": \"refunded\"}'), \
             (7, 'revoke', 'h', 202, '{\"user_id\": 3, \"revoked_at\": \"2026-12-07T00:00:00Z\"}'), \
             (7, 'buy', 'h', 201, '{\"pay_method\": \"balance\", \"status\": \"paid\"}')",
        )
        .await
        .unwrap();
    Migrator::up(&db.conn, None).await.unwrap();
    let kinds: String = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT string_agg(key || '=' || owner_kind, ',' ORDER BY key) FROM idempotency_keys",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(kinds, "buy=buyer,grant=staff,refund=staff,revoke=staff");
}
