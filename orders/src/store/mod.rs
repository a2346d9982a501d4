//! The order domain's SQL: each module is the statements of one concern, called inside the
//! transaction its caller opened.

pub mod audit;
pub mod catalogue;
pub mod notifications;
pub mod orders;
pub mod payment_checks;
pub(crate) mod purchase;
pub mod refunds;
pub mod transitions;

/// A page cut from `rows`, read newest first with one row more than `limit`: the page, and the
/// cursor of the next one (the last row's `id`) when that extra row shows there is one.
pub(crate) fn cut_page<T>(
    mut rows: Vec<T>,
    limit: u64,
    id: impl Fn(&T) -> i64,
) -> (Vec<T>, Option<i64>) {
    if rows.len() as u64 <= limit {
        return (rows, None);
    }
    rows.truncate(limit as usize);
    let next = rows.last().map(id);
    (rows, next)
}
