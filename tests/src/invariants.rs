//! What must hold after any run, however it was disturbed, read where no unique constraint
//! stands guard: an effect applied twice is stopped by a constraint on its ledger entry or its
//! delivery record, so counting those rows can never show one; a total kept beside them can.
//! The chaos tests, `make bench` and `make chaos` check these.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// Buyers whose totals disagree with the rows they are the sum of.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// Points or balance other than the sum of the buyer's point or balance ledger.
    pub ledgers: i64,
    /// A purchase count or saved amount other than what the buyer's standing savings entries
    /// add up to (the savings worker writes both in one statement).
    pub purchases: i64,
}

impl Drift {
    /// Buyers out of step, all checks together.
    pub fn total(self) -> i64 {
        self.ledgers + self.purchases
    }
}

const LEDGERS: &str = "\
SELECT count(*) FROM users u
WHERE {buyers} AND (u.points <> (SELECT COALESCE(sum(delta), 0) FROM point_ledger WHERE user_id = u.id)
   OR u.balance_fen <> (SELECT COALESCE(sum(delta), 0) FROM balance_ledger WHERE user_id = u.id))";

const PURCHASES: &str = "\
SELECT count(*) FROM users u
LEFT JOIN (SELECT user_id, count(*) AS n, sum(saved_fen) AS saved
           FROM savings_entries WHERE reversed_at IS NULL GROUP BY user_id) s ON s.user_id = u.id
WHERE {buyers} AND (u.purchase_count <> COALESCE(s.n, 0) OR u.total_saved_fen <> COALESCE(s.saved, 0))";

/// How far the database's totals drifted from their rows (all zero when nothing was doubled or
/// lost in between).
pub async fn drift(db: &DatabaseConnection) -> Drift {
    drift_where(db, "true").await
}

/// [`drift`], of `buyers` only.
pub async fn drift_of(db: &DatabaseConnection, buyers: &[i64]) -> Drift {
    if buyers.is_empty() {
        return Drift::default();
    }
    let ids = buyers.iter().map(i64::to_string).collect::<Vec<_>>();
    drift_where(db, &format!("u.id IN ({})", ids.join(","))).await
}

async fn drift_where(db: &DatabaseConnection, buyers: &str) -> Drift {
    let count = |sql: &'static str| async move {
        let sql = sql.replace("{buyers}", buyers);
        db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .expect("invariant query")
            .expect("one row")
            .try_get_by_index::<i64>(0)
            .expect("a count")
    };
    Drift {
        ledgers: count(LEDGERS).await,
        purchases: count(PURCHASES).await,
    }
}
