//! The demo catalogue and users, seeded idempotently: running it twice changes nothing, and it
//! never overwrites a user's balances once the user exists.

use crate::http::auth::Role;
use memberline_schema::states::{LedgerReason, PlanKind};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

/// Levels: (id, name, min growth, discount percent paid, points bonus percent).
const LEVELS: [(i16, &str, i64, i16, i16); 4] = [
    (0, "Regular", 0, 100, 100),
    (1, "Silver", 1_000, 95, 110),
    (2, "Gold", 5_000, 90, 125),
    (3, "Diamond", 20_000, 85, 150),
];

struct PlanSeed {
    code: &'static str,
    name: &'static str,
    kind: PlanKind,
    duration_days: Option<i32>,
    uses: Option<i32>,
    original_price_fen: i64,
    price_fen: i64,
    price_points: Option<i64>,
    is_free: bool,
    sort: i32,
}

const PLANS: [PlanSeed; 6] = [
    PlanSeed {
        code: "monthly",
        name: "Monthly membership",
        kind: PlanKind::Membership,
        duration_days: Some(30),
        uses: None,
        original_price_fen: 3_800,
        price_fen: 3_000,
        price_points: Some(3_000),
        is_free: false,
        sort: 10,
    },
    PlanSeed {
        code: "quarterly",
        name: "Quarterly membership",
        kind: PlanKind::Membership,
        duration_days: Some(90),
        uses: None,
        original_price_fen: 11_400,
        price_fen: 8_000,
        price_points: Some(8_000),
        is_free: false,
        sort: 20,
    },
    PlanSeed {
        code: "yearly",
        name: "Yearly membership",
        kind: PlanKind::Membership,
        duration_days: Some(365),
        uses: None,
        original_price_fen: 45_600,
        price_fen: 28_800,
        price_points: Some(28_800),
        is_free: false,
        sort: 30,
    },
    PlanSeed {
        code: "permanent",
        name: "Permanent membership",
        kind: PlanKind::Permanent,
        duration_days: None,
        uses: None,
        original_price_fen: 199_900,
        price_fen: 99_900,
        price_points: Some(99_900),
        is_free: false,
        sort: 40,
    },
    PlanSeed {
        code: "day_pass",
        name: "Single-use pass",
        kind: PlanKind::Pass,
        duration_days: None,
        uses: Some(1),
        original_price_fen: 1_200,
        price_fen: 990,
        price_points: Some(990),
        is_free: false,
        sort: 50,
    },
    PlanSeed {
        code: "trial",
        name: "Free 7-day trial",
        kind: PlanKind::Membership,
        duration_days: Some(7),
        uses: None,
        original_price_fen: 0,
        price_fen: 0,
        price_points: None,
        is_free: true,
        sort: 60,
    },
];

/// Demo users: (id, name, balance fen, points, growth). User 1 can buy every plan several
/// times (and is Gold, so sees a 10% discount); user 2 has nothing.
const USERS: [(i64, &str, i64, i64, i64); 2] = [
    (1, "Demo Buyer", 2_000_000, 2_000_000, 6_000),
    (2, "Empty Wallet", 0, 0, 0),
];

/// Levels and plans only: what every environment (and every test database) needs.
pub async fn catalogue(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let txn = db.begin().await?;
    for (id, name, min_growth, discount, bonus) in LEVELS {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO levels (id, name, min_growth, discount_percent, points_bonus_percent) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
             min_growth = EXCLUDED.min_growth, discount_percent = EXCLUDED.discount_percent, \
             points_bonus_percent = EXCLUDED.points_bonus_percent",
            [
                id.into(),
                name.into(),
                min_growth.into(),
                discount.into(),
                bonus.into(),
            ],
        ))
        .await?;
    }
    for p in PLANS {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO plans (code, name, kind, duration_days, uses, original_price_fen, \
             price_fen, price_points, is_free, sort) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (code) DO UPDATE SET \
             name = EXCLUDED.name, kind = EXCLUDED.kind, duration_days = EXCLUDED.duration_days, \
             uses = EXCLUDED.uses, original_price_fen = EXCLUDED.original_price_fen, \
             price_fen = EXCLUDED.price_fen, price_points = EXCLUDED.price_points, \
             is_free = EXCLUDED.is_free, sort = EXCLUDED.sort",
            [
                p.code.into(),
                p.name.into(),
                p.kind.as_str().into(),
                p.duration_days.into(),
                p.uses.into(),
                p.original_price_fen.into(),
                p.price_fen.into(),
                p.price_points.into(),
                p.is_free.into(),
                p.sort.into(),
            ],
        ))
        .await?;
    }
    txn.commit().await
}

/// The catalogue plus the demo users (with opening ledger entries the first time only).
/// The demo admin's username and password (`make run` prints them). Public: a database seeded
/// with them is a demo's.
pub const DEMO_ADMIN: (&str, &str) = ("admin", "memberline-demo-admin");

pub async fn demo(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    catalogue(db).await?;
    match crate::staff::add(db, DEMO_ADMIN.0, DEMO_ADMIN.1, Role::Admin).await {
        Ok(_) | Err(crate::staff::AddError::Taken(_)) => {}
        Err(crate::staff::AddError::Database(e)) => return Err(e),
        Err(e) => return Err(sea_orm::DbErr::Custom(e.to_string())),
    }
    let txn = db.begin().await?;
    for (id, name, balance, points, growth) in USERS {
        let level = LEVELS
            .iter()
            .filter(|l| l.2 <= growth)
            .map(|l| l.0)
            .max()
            .unwrap_or(0);
        let inserted = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO users (id, name, balance_fen, points, growth, level_id, phone) \
                 VALUES ($1, $2, $3, $4, $5, $6, '1380000' || lpad($1::text, 4, '0')) \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                [
                    id.into(),
                    name.into(),
                    balance.into(),
                    points.into(),
                    growth.into(),
                    level.into(),
                ],
            ))
            .await?;
        if inserted.is_some() {
            for (table, amount) in [("balance_ledger", balance), ("point_ledger", points)] {
                if amount > 0 {
                    txn.execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        format!(
                            "INSERT INTO {table} (user_id, reason, delta, balance_after) \
                             VALUES ($1, $2, $3, $3)"
                        ),
                        [
                            id.into(),
                            LedgerReason::OpeningBalance.as_str().into(),
                            amount.into(),
                        ],
                    ))
                    .await?;
                }
            }
        }
    }
    // Explicit ids above do not advance the sequence; make sure new users never collide.
    txn.execute_unprepared(
        "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST((SELECT max(id) FROM users), 1))",
    )
    .await?;
    txn.commit().await
}
