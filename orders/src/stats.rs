//! The dashboard: per day in the shop's time zone, sales by pay method and the members' comings
//! and goings, kept as rollups that the membership worker updates from the events in the
//! transaction of each effect (so a replayed event counts once), and read by
//! `GET /v1/admin/stats` without scanning orders. [`rebuild`] recomputes them from the orders and
//! the membership periods, and must reproduce exactly what the events built.
//!
//! - **Sales**: a paid order counts on the day it was paid, a refund on the day it was refunded
//!   (admin grants are not sales). `stats_counted` holds what was counted, one row per order and
//!   fact: a second event for the same order adds nothing.
//! - **Members**, from a buyer's membership periods as they stand (a refund or a revocation
//!   takes back what it removed, history included): the first period makes a new member on the
//!   day it starts; every later one is a renewal on the day its order was paid; each run of
//!   back-to-back periods starts on its first day and lapses on its end (a permanent one never
//!   lapses). Members active at a day's end are the starts minus the lapses up to that day; a
//!   lapse in the future is a membership expiring then.
//!
//! Counters are split in shards, one per database session, so concurrent worker transactions
//! never queue on one row per day; reads add the shards up.

use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use memberline_schema::events::{OrderPaid, OrderRefunded};
use memberline_schema::ids::BuyerId;
use memberline_schema::states::PayMethod;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait, Value,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// The shard of the current database session: its own rows, which no other session writes.
const SHARD: &str = "pg_backend_pid()";

/// The day of `at` in the shop's time zone.
pub fn day_of(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A sale or a refund to count once: what the sales rollup adds for one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    order_id: i64,
    /// `paid` or `refunded`: with the order, the business key of the count.
    fact: &'static str,
    day: NaiveDate,
    pay_method: PayMethod,
    /// The three counters it adds to, and by how much.
    columns: [&'static str; 3],
    amounts: [i64; 3],
}

/// Paid order `e` on the day it was paid; `None` for an admin grant, which is not a sale.
pub fn paid(e: &OrderPaid, tz: Tz) -> Option<Sale> {
    (e.pay_method != PayMethod::AdminGrant).then(|| Sale {
        order_id: e.order_id.0,
        fact: "paid",
        day: day_of(e.paid_at, tz),
        pay_method: e.pay_method,
        columns: ["paid_orders", "revenue_fen", "revenue_points"],
        amounts: [1, e.amount_fen, e.amount_points],
    })
}

/// Refunded order `e` on the day it was refunded; `None` for an admin grant.
pub fn refunded(e: &OrderRefunded, tz: Tz) -> Option<Sale> {
    (e.pay_method != PayMethod::AdminGrant).then(|| Sale {
        order_id: e.order_id.0,
        fact: "refunded",
        day: day_of(e.refunded_at, tz),
        pay_method: e.pay_method,
        columns: ["refunds", "refunded_fen", "refunded_points"],
        amounts: [1, e.refund_fen, e.refund_points],
    })
}

/// One membership period, as the members' rollup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub starts_at: DateTime<Utc>,
    /// `None`: permanent.
    pub ends_at: Option<DateTime<Utc>>,
    /// When its order was paid.
    pub paid_at: DateTime<Utc>,
    /// Not removed: it counts for the membership as it stands. A period a revocation ended
    /// while it ran is not live but still counts, up to its shortened end, as served time.
    pub live: bool,
}

/// A buyer's membership periods that were served or stand (not refunded, not revoked before
/// they began, not placeholders), in start order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership(pub Vec<Period>);

impl Membership {
    /// The end of the latest live period, if any (a permanent one has none and is not counted):
    /// where a new timed period stacks.
    pub fn latest_end(&self) -> Option<DateTime<Utc>> {
        self.0
            .iter()
            .filter(|p| p.live)
            .filter_map(|p| p.ends_at)
            .max()
    }

    /// This membership with `period` added.
    pub fn with(&self, period: Period) -> Self {
        let mut periods = self.0.clone();
        let at = periods.partition_point(|p| p.starts_at <= period.starts_at);
        periods.insert(at, period);
        Self(periods)
    }
}

/// The periods the members' rollup counts (`p`): standing, or ended by a revocation while
/// they ran.
const COUNTED: &str = "(p.removed_at IS NULL OR p.removed_by = 'revoke')";

const PERIODS: &str = "SELECT p.user_id, p.starts_at, p.ends_at, \
        coalesce(o.paid_at, p.starts_at) AS paid_at, p.removed_at IS NULL AS live \
    FROM membership_periods p JOIN orders o ON o.id = p.order_id";

fn period(row: &sea_orm::QueryResult) -> Result<Period, DbErr> {
    Ok(Period {
        starts_at: row.try_get("", "starts_at")?,
        ends_at: row.try_get("", "ends_at")?,
        paid_at: row.try_get("", "paid_at")?,
        live: row.try_get("", "live")?,
    })
}

/// Buyer `buyer_id`'s membership (with the buyer locked by the caller).
pub async fn membership<C: ConnectionTrait>(
    conn: &C,
    buyer_id: BuyerId,
) -> Result<Membership, DbErr> {
    let rows = conn
        .query_all_raw(statement(
            &format!("{PERIODS} WHERE {COUNTED} AND p.user_id = $1 ORDER BY p.starts_at, p.id"),
            vec![buyer_id.into()],
        ))
        .await?;
    Ok(Membership(
        rows.iter().map(period).collect::<Result<_, _>>()?,
    ))
}

/// The members' counters of one day: new members, renewals, starts and lapses.
pub type MemberCounts = [i64; 4];
const NEW: usize = 0;
const RENEWAL: usize = 1;
const START: usize = 2;
const LAPSE: usize = 3;

/// What one buyer's membership adds to the members' rollup, by day.
pub fn member_days(membership: &Membership, tz: Tz) -> BTreeMap<NaiveDate, MemberCounts> {
    let mut days = BTreeMap::<NaiveDate, MemberCounts>::new();
    let mut add = |at: DateTime<Utc>, counter: usize| {
        days.entry(day_of(at, tz)).or_default()[counter] += 1;
    };
    let periods = &membership.0;
    if let Some(first) = periods.first() {
        add(first.starts_at, NEW);
    }
    for p in periods.iter().skip(1) {
        add(p.paid_at, RENEWAL);
    }
    // Runs of back-to-back (or overlapping) periods: (start, end; None = never ends).
    let mut run: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = None;
    for p in periods {
        run = match run {
            None => Some((p.starts_at, p.ends_at)),
            Some((start, None)) => Some((start, None)),
            Some((start, Some(end))) if p.starts_at <= end => {
                Some((start, p.ends_at.map(|e| e.max(end))))
            }
            Some((start, Some(end))) => {
                add(start, START);
                add(end, LAPSE);
                Some((p.starts_at, p.ends_at))
            }
        };
    }
    if let Some((start, end)) = run {
        add(start, START);
        if let Some(end) = end {
            add(end, LAPSE);
        }
    }
    days
}

/// How a buyer's part of the members' rollup moves when their membership goes from `before` to
/// `after`: only the days that change.
pub fn moved(before: &Membership, after: &Membership, tz: Tz) -> BTreeMap<NaiveDate, MemberCounts> {
    if before == after {
        return BTreeMap::new();
    }
    let mut delta = member_days(after, tz);
    for (day, counts) in member_days(before, tz) {
        let row = delta.entry(day).or_default();
        for (d, c) in row.iter_mut().zip(counts) {
            *d -= c;
        }
    }
    delta.retain(|_, counts| counts.iter().any(|c| *c != 0));
    delta
}

/// `days` as rows of `INSERT INTO stats_members`, their parameters numbered from `first`.
fn member_rows(
    days: &BTreeMap<NaiveDate, MemberCounts>,
    shard: &str,
    first: usize,
    values: &mut Vec<Value>,
) -> String {
    let rows: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, (day, c))| {
            values.push((*day).into());
            values.extend(c.iter().map(|n| Value::from(*n)));
            let at = first + i * 5;
            format!(
                "(${at}::date, {shard}, ${}::bigint, ${}::bigint, ${}::bigint, ${}::bigint)",
                at + 1,
                at + 2,
                at + 3,
                at + 4
            )
        })
        .collect();
    rows.join(", ")
}

const MEMBERS_UPSERT: &str = "INSERT INTO stats_members (day, shard, new_members, renewals, \
        starts, lapses) VALUES {rows} ON CONFLICT (day, shard) DO UPDATE SET \
        new_members = stats_members.new_members + EXCLUDED.new_members, \
        renewals = stats_members.renewals + EXCLUDED.renewals, \
        starts = stats_members.starts + EXCLUDED.starts, \
        lapses = stats_members.lapses + EXCLUDED.lapses";

/// Adds `sale` (once per order and fact: a replayed event counts nothing) and the members'
/// counts that `members` moved, in one statement, to this session's rows. `true` when it added
/// anything: the effect changed the dashboard even where its own business key said "done".
pub async fn record(
    txn: &DatabaseTransaction,
    sale: Option<Sale>,
    members: &BTreeMap<NaiveDate, MemberCounts>,
) -> Result<bool, DbErr> {
    let mut values: Vec<Value> = Vec::new();
    let mut ctes: Vec<String> = Vec::new();
    let mut counted = Vec::new();
    if let Some(sale) = sale {
        let [a, b, c] = sale.columns;
        values.extend([
            sale.order_id.into(),
            sale.fact.into(),
            sale.day.into(),
            sale.pay_method.as_str().into(),
            sale.amounts[0].into(),
            sale.amounts[1].into(),
            sale.amounts[2].into(),
        ]);
        ctes.push(
            "counted AS (INSERT INTO stats_counted (order_id, fact) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1)"
                .to_owned(),
        );
        ctes.push(format!(
            "sale AS (INSERT INTO stats_sales (day, pay_method, shard, {a}, {b}, {c}) \
             SELECT $3, $4, {SHARD}, $5, $6, $7 FROM counted \
             ON CONFLICT (day, pay_method, shard) DO UPDATE SET \
                 {a} = stats_sales.{a} + EXCLUDED.{a}, {b} = stats_sales.{b} + EXCLUDED.{b}, \
                 {c} = stats_sales.{c} + EXCLUDED.{c} RETURNING 1)"
        ));
        counted.push("(SELECT count(*) FROM sale)");
    }
    if !members.is_empty() {
        let first = values.len() + 1;
        let rows = member_rows(members, SHARD, first, &mut values);
        ctes.push(format!(
            "members AS ({} RETURNING 1)",
            MEMBERS_UPSERT.replace("{rows}", &rows)
        ));
        counted.push("(SELECT count(*) FROM members)");
    }
    if ctes.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "WITH {} SELECT ({})::bigint AS added",
        ctes.join(", "),
        counted.join(" + ")
    );
    let added: i64 = txn
        .query_one_raw(statement(&sql, values))
        .await?
        .map(|r| r.try_get("", "added"))
        .transpose()?
        .unwrap_or(0);
    Ok(added > 0)
}

/// Adds `days` to the members' rollup in shard `shard` (an SQL expression), in day order.
async fn add_member_days<C: ConnectionTrait>(
    conn: &C,
    days: &BTreeMap<NaiveDate, MemberCounts>,
    shard: &str,
) -> Result<(), DbErr> {
    let days: Vec<_> = days.iter().map(|(d, c)| (*d, *c)).collect();
    for chunk in days.chunks(1000) {
        let chunk: BTreeMap<NaiveDate, MemberCounts> = chunk.iter().copied().collect();
        let mut values = Vec::with_capacity(chunk.len() * 5);
        let rows = member_rows(&chunk, shard, 1, &mut values);
        conn.execute_raw(statement(&MEMBERS_UPSERT.replace("{rows}", &rows), values))
            .await?;
    }
    Ok(())
}

/// What [`rebuild`] wrote.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rebuilt {
    pub paid_orders: i64,
    pub refunds: i64,
    pub members: i64,
}

/// Statuses of orders that were paid (and so had `order.paid.v1`).
const WAS_PAID: &str = "status IN ('paid', 'refund_pending', 'refunded') AND paid_at IS NOT NULL \
    AND pay_method <> 'admin_grant'";

/// Recomputes every rollup from the orders, their refunds and the membership periods, in one
/// transaction that holds the workers' updates back meanwhile (they wait, then add to the
/// rebuilt rows what they were applying). Run it once after upgrading to the release that added
/// the dashboard, so the rollups start from the shop's history.
pub async fn rebuild(db: &DatabaseConnection, tz: Tz) -> Result<Rebuilt, DbErr> {
    // One snapshot for every read, taken once the lock is held: an order paid meanwhile is
    // either in every count below or in none (its worker then counts it after this commits).
    let txn = db
        .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
        .await?;
    let run = |sql: String, values: Vec<Value>| {
        let txn = &txn;
        async move { txn.execute_raw(statement(&sql, values)).await }
    };
    run(
        "LOCK TABLE stats_counted, stats_sales, stats_members IN EXCLUSIVE MODE".into(),
        vec![],
    )
    .await?;
    for table in ["stats_counted", "stats_sales", "stats_members"] {
        run(format!("DELETE FROM {table}"), vec![]).await?;
    }
    let zone: Value = tz.name().into();
    let paid = run(
        format!(
            "INSERT INTO stats_counted (order_id, fact) SELECT id, 'paid' FROM orders \
             WHERE {WAS_PAID}"
        ),
        vec![],
    )
    .await?
    .rows_affected();
    run(
        format!(
            "INSERT INTO stats_sales (day, pay_method, shard, paid_orders, revenue_fen, \
                 revenue_points) \
             SELECT (paid_at AT TIME ZONE $1)::date, pay_method, 0, count(*), sum(amount_fen), \
                 sum(amount_points) \
             FROM orders WHERE {WAS_PAID} GROUP BY 1, 2"
        ),
        vec![zone.clone()],
    )
    .await?;
    let refunded = "FROM refunds r JOIN orders o ON o.id = r.order_id \
        WHERE r.status = 'succeeded' AND o.pay_method <> 'admin_grant'";
    let refunds = run(
        format!(
            "INSERT INTO stats_counted (order_id, fact) SELECT DISTINCT r.order_id, 'refunded' \
             {refunded}"
        ),
        vec![],
    )
    .await?
    .rows_affected();
    run(
        format!(
            "INSERT INTO stats_sales (day, pay_method, shard, refunds, refunded_fen, \
                 refunded_points) \
             SELECT (r.completed_at AT TIME ZONE $1)::date, o.pay_method, 0, count(*), \
                 sum(r.amount_fen), sum(r.amount_points) {refunded} GROUP BY 1, 2 \
             ON CONFLICT (day, pay_method, shard) DO UPDATE SET refunds = EXCLUDED.refunds, \
                 refunded_fen = EXCLUDED.refunded_fen, \
                 refunded_points = EXCLUDED.refunded_points"
        ),
        vec![zone],
    )
    .await?;
    // Members, buyer by buyer, a page of buyers at a time.
    let mut days = BTreeMap::<NaiveDate, MemberCounts>::new();
    let mut members = 0_i64;
    let mut after = 0_i64;
    loop {
        let rows = txn
            .query_all_raw(statement(
                &format!(
                    "{PERIODS} WHERE {COUNTED} AND p.user_id IN (SELECT DISTINCT p.user_id \
                     FROM membership_periods p WHERE {COUNTED} AND p.user_id > $1 \
                     ORDER BY p.user_id LIMIT 5000) ORDER BY p.user_id, p.starts_at, p.id"
                ),
                vec![after.into()],
            ))
            .await?;
        if rows.is_empty() {
            break;
        }
        let mut buyer: Option<i64> = None;
        let mut periods = Vec::new();
        let mut flush = |periods: &mut Vec<Period>| {
            for (day, counts) in member_days(&Membership(std::mem::take(periods)), tz) {
                let row = days.entry(day).or_default();
                for (d, c) in row.iter_mut().zip(counts) {
                    *d += c;
                }
            }
        };
        for row in &rows {
            let user_id: i64 = row.try_get("", "user_id")?;
            if buyer != Some(user_id) {
                flush(&mut periods);
                buyer = Some(user_id);
                members += 1;
            }
            periods.push(period(row)?);
        }
        flush(&mut periods);
        after = buyer.unwrap_or(after);
    }
    add_member_days(&txn, &days, "0").await?;
    txn.commit().await?;
    Ok(Rebuilt {
        paid_orders: i64::try_from(paid).unwrap_or(i64::MAX),
        refunds: i64::try_from(refunds).unwrap_or(i64::MAX),
        members,
    })
}

/// One pay method's sales on one day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Sales {
    #[schema(value_type = String)]
    pub pay_method: String,
    pub paid_orders: i64,
    pub revenue_fen: i64,
    pub revenue_points: i64,
    pub refunds: i64,
    pub refunded_fen: i64,
    pub refunded_points: i64,
    /// `revenue_fen` less `refunded_fen`: what the day's refunds took back from the sales.
    pub net_fen: i64,
}

/// One day of the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Day {
    #[schema(value_type = String, format = Date)]
    pub day: NaiveDate,
    /// By pay method (only those with sales or refunds that day).
    pub sales: Vec<Sales>,
    /// Every pay method's paid orders.
    pub paid_orders: i64,
    /// Every pay method's revenue in fen, and the fen refunded that day.
    pub revenue_fen: i64,
    pub refunds: i64,
    pub refunded_fen: i64,
    /// `revenue_fen` less `refunded_fen`.
    pub net_revenue_fen: i64,
    pub new_members: i64,
    pub renewals: i64,
    /// Memberships that ended that day (and were not continued).
    pub lapsed: i64,
    /// Members with a running membership at the day's end.
    pub active_at_end: i64,
}

/// `GET /v1/admin/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// The shop's time zone, in which days are counted.
    pub time_zone: String,
    pub days: Vec<Day>,
    /// Memberships ending from today through the 6th day after, in the shop's time zone.
    pub expiring_next_7_days: i64,
}

/// The dashboard from `from` to `to` (both included; `to` not before `from`), read from the
/// rollups; `today` is the shop's today.
pub async fn read<C: ConnectionTrait>(
    conn: &C,
    tz: Tz,
    from: NaiveDate,
    to: NaiveDate,
    today: NaiveDate,
) -> Result<Stats, DbErr> {
    let sales = conn
        .query_all_raw(statement(
            "SELECT day, pay_method, sum(paid_orders)::bigint AS paid_orders, \
                 sum(revenue_fen)::bigint AS revenue_fen, \
                 sum(revenue_points)::bigint AS revenue_points, sum(refunds)::bigint AS refunds, \
                 sum(refunded_fen)::bigint AS refunded_fen, \
                 sum(refunded_points)::bigint AS refunded_points \
             FROM stats_sales WHERE day BETWEEN $1 AND $2 GROUP BY day, pay_method \
             ORDER BY day, pay_method",
            vec![from.into(), to.into()],
        ))
        .await?;
    let mut by_day = BTreeMap::<NaiveDate, Vec<Sales>>::new();
    for row in &sales {
        let day: NaiveDate = row.try_get("", "day")?;
        let get = |c: &str| row.try_get::<i64>("", c);
        let s = Sales {
            pay_method: row.try_get("", "pay_method")?,
            paid_orders: get("paid_orders")?,
            revenue_fen: get("revenue_fen")?,
            revenue_points: get("revenue_points")?,
            refunds: get("refunds")?,
            refunded_fen: get("refunded_fen")?,
            refunded_points: get("refunded_points")?,
            net_fen: get("revenue_fen")? - get("refunded_fen")?,
        };
        if s != (Sales {
            pay_method: s.pay_method.clone(),
            ..Sales::default()
        }) {
            by_day.entry(day).or_default().push(s);
        }
    }
    let member_rows = conn
        .query_all_raw(statement(
            "SELECT day, sum(new_members)::bigint AS new_members, sum(renewals)::bigint AS renewals, \
                 sum(starts)::bigint AS starts, sum(lapses)::bigint AS lapses \
             FROM stats_members WHERE day BETWEEN $1 AND $2 GROUP BY day",
            vec![from.into(), to.into()],
        ))
        .await?;
    let mut members = BTreeMap::<NaiveDate, MemberCounts>::new();
    for row in &member_rows {
        members.insert(
            row.try_get("", "day")?,
            [
                row.try_get("", "new_members")?,
                row.try_get("", "renewals")?,
                row.try_get("", "starts")?,
                row.try_get("", "lapses")?,
            ],
        );
    }
    let mut active = sum(
        conn,
        "SELECT coalesce(sum(starts - lapses), 0)::bigint AS n FROM stats_members WHERE day < $1",
        vec![from.into()],
    )
    .await?;
    let week_end = today.checked_add_days(Days::new(7)).unwrap_or(today);
    let expiring = sum(
        conn,
        "SELECT coalesce(sum(lapses), 0)::bigint AS n FROM stats_members \
         WHERE day >= $1 AND day < $2",
        vec![today.into(), week_end.into()],
    )
    .await?;
    let mut days = Vec::new();
    let mut day = from;
    while day <= to {
        let sales = by_day.remove(&day).unwrap_or_default();
        let m = members.get(&day).copied().unwrap_or_default();
        active += m[START] - m[LAPSE];
        days.push(Day {
            day,
            paid_orders: sales.iter().map(|s| s.paid_orders).sum(),
            revenue_fen: sales.iter().map(|s| s.revenue_fen).sum(),
            refunds: sales.iter().map(|s| s.refunds).sum(),
            refunded_fen: sales.iter().map(|s| s.refunded_fen).sum(),
            net_revenue_fen: sales.iter().map(|s| s.net_fen).sum(),
            sales,
            new_members: m[NEW],
            renewals: m[RENEWAL],
            lapsed: m[LAPSE],
            active_at_end: active,
        });
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    Ok(Stats {
        time_zone: tz.name().to_owned(),
        days,
        expiring_next_7_days: expiring,
    })
}

/// The number `sql` answers as `n`.
async fn sum<C: ConnectionTrait>(conn: &C, sql: &str, values: Vec<Value>) -> Result<i64, DbErr> {
    Ok(conn
        .query_one_raw(statement(sql, values))
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, day).unwrap()
    }

    fn p(start: DateTime<Utc>, end: Option<DateTime<Utc>>, paid: DateTime<Utc>) -> Period {
        Period {
            starts_at: start,
            ends_at: end,
            paid_at: paid,
            live: true,
        }
    }

    #[test]
    fn a_first_period_is_a_new_member_who_starts_then_and_lapses_at_its_end() {
        let m = Membership(vec![p(at(1, 2), Some(at(11, 2)), at(1, 2))]);
        let days = member_days(&m, chrono_tz::UTC);
        assert_eq!(days[&d(1)], [1, 0, 1, 0]);
        assert_eq!(days[&d(11)], [0, 0, 0, 1]);
        assert_eq!(days.len(), 2);
    }

    #[test]
    fn a_stacked_renewal_moves_the_lapse_and_counts_on_the_day_it_was_paid() {
        let m = Membership(vec![
            p(at(1, 2), Some(at(11, 2)), at(1, 2)),
            p(at(11, 2), Some(at(21, 2)), at(5, 9)),
        ]);
        let days = member_days(&m, chrono_tz::UTC);
        assert_eq!(days[&d(1)], [1, 0, 1, 0]);
        assert_eq!(days[&d(5)], [0, 1, 0, 0]);
        assert_eq!(days[&d(21)], [0, 0, 0, 1]);
        assert!(!days.contains_key(&d(11)));
    }

    #[test]
    fn a_return_after_a_lapse_starts_again_and_a_permanent_period_never_lapses() {
        let m = Membership(vec![
            p(at(1, 2), Some(at(3, 2)), at(1, 2)),
            p(at(9, 2), None, at(9, 2)),
            p(at(10, 2), Some(at(20, 2)), at(10, 2)),
        ]);
        let days = member_days(&m, chrono_tz::UTC);
        assert_eq!(days[&d(3)], [0, 0, 0, 1]);
        assert_eq!(days[&d(9)], [0, 1, 1, 0]);
        assert_eq!(days[&d(10)], [0, 1, 0, 0]);
        assert!(!days.contains_key(&d(20)));
    }

    #[test]
    fn a_revocation_ends_the_run_at_its_time_and_a_new_period_stacks_after_the_live_ones() {
        let revoked = Period {
            live: false,
            ..p(at(1, 2), Some(at(5, 2)), at(1, 2))
        };
        let m = Membership(vec![revoked]);
        let days = member_days(&m, chrono_tz::UTC);
        assert_eq!(days[&d(1)], [1, 0, 1, 0]);
        assert_eq!(days[&d(5)], [0, 0, 0, 1], "lapsed when revoked");
        assert_eq!(m.latest_end(), None, "nothing live to stack on");
        let m = m.with(p(at(7, 2), Some(at(9, 2)), at(7, 2)));
        assert_eq!(m.latest_end(), Some(at(9, 2)));
        assert_eq!(m.0.len(), 2);
    }

    #[test]
    fn days_are_counted_in_the_shops_time_zone() {
        // 20:00 UTC on the 1st is 04:00 on the 2nd in Shanghai.
        let m = Membership(vec![p(at(1, 20), Some(at(2, 20)), at(1, 20))]);
        let days = member_days(&m, chrono_tz::Asia::Shanghai);
        assert_eq!(days[&d(2)], [1, 0, 1, 0]);
        assert_eq!(days[&d(3)], [0, 0, 0, 1]);
    }
}
