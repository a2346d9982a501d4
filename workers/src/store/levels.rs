//! `levels`: the member levels, read-only for the workers (the catalogue seed and admins own
//! them).

use super::one;
use sea_orm::{DatabaseTransaction, DbErr};

/// The highest level whose `min_growth` is at most `growth`; `None` when no level starts that
/// low.
pub async fn for_growth(txn: &DatabaseTransaction, growth: i64) -> Result<Option<i16>, DbErr> {
    one(
        txn,
        "SELECT id FROM levels WHERE min_growth <= $1 ORDER BY min_growth DESC LIMIT 1",
        [growth.into()],
    )
    .await?
    .map(|r| r.try_get("", "id"))
    .transpose()
}

/// The display name of level `level_id`, or `None` when there is no such level.
pub async fn name(txn: &DatabaseTransaction, level_id: i16) -> Result<Option<String>, DbErr> {
    one(
        txn,
        "SELECT name FROM levels WHERE id = $1",
        [level_id.into()],
    )
    .await?
    .map(|r| r.try_get("", "name"))
    .transpose()
}
