//! Growth: the checkout rate on a database already holding 1,000,000 paid orders of the same
//! buyers, with their status history, balance and point ledger entries, published outbox rows
//! (700-byte events) and the four workers' consumed-event records, against the same system
//! before they were written; then the back office on that database ([`crate::backoffice`]).

use crate::load::Run;
use crate::system::System;
use indicatif::{ProgressBar, ProgressStyle};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::time::Instant;

/// Orders written before the second measurement, in chunks.
pub const ORDERS: i64 = 1_000_000;
const CHUNK: i64 = 50_000;

/// One chunk of history: orders `$1..=$2` spread over the bench's buyers, and every row each
/// of them left behind.
const HISTORY: &str = "\
WITH b AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM users WHERE name LIKE 'bench %'
), o AS (
    INSERT INTO orders (order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind,
        duration_days, pay_method, amount_fen, original_price_fen, status, correlation_id,
        paid_at, payment_check_at, created_at, updated_at)
    SELECT 'GROWTH' || lpad(g::text, 8, '0'), b.ids[1 + g % array_length(b.ids, 1)], $3, 'monthly', 'Monthly membership',
        'membership', 30, 'balance', 2700, 3800, 'paid', gen_random_uuid(),
        now() - (1 + g % 90) * interval '1 day', NULL, now() - interval '1 day', now() - interval '1 day'
    FROM generate_series($1::bigint, $2::bigint) g, b
    RETURNING id, buyer_id, correlation_id
), h AS (
    INSERT INTO order_status_history (order_id, to_status, reason)
    SELECT id, 'paid', 'paid_with_balance' FROM o
), l AS (
    INSERT INTO balance_ledger (user_id, order_id, reason, delta, balance_after)
    SELECT buyer_id, id, 'order_payment', -2700, 0 FROM o
), r AS (
    INSERT INTO point_ledger (user_id, order_id, reason, delta, balance_after, earned_at,
        growth_delta)
    SELECT buyer_id, id, 'purchase_reward', 27, 0, now() - interval '1 day', 27 FROM o
), x AS (
    INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key,
        correlation_id, payload, created_at, published_at)
    SELECT correlation_id, 'order', id::text, 'order.paid', 'order.paid.v1', correlation_id,
        $4, now() - interval '1 day', now() - interval '1 day' FROM o
    RETURNING id
)
INSERT INTO consumed_events (consumer, event_id, event_type, consumed_at)
SELECT c, x.id, 'order.paid', now() - interval '1 day'
FROM x, unnest(ARRAY['membership', 'ledger', 'notifier', 'savings']) c";

pub struct Outcome {
    pub empty: Run,
    pub grown: Run,
    /// Seconds spent writing the history.
    pub seed_secs: f64,
    pub concurrency: usize,
    pub backoffice: crate::backoffice::Outcome,
}

pub async fn run(concurrency: usize, secs: f64) -> Outcome {
    let system = System::start(false).await;
    // Warm up, then the empty database.
    system
        .shop("warm")
        .closed_loop("warm-up", concurrency, 2.0)
        .await;
    let empty = system
        .shop("empty")
        .closed_loop(
            &format!("empty database, {concurrency} in flight"),
            concurrency,
            secs,
        )
        .await;
    let seed_secs = write_history(&system).await;
    let grown = system
        .shop("grown")
        .closed_loop(
            &format!("1,000,000 orders, {concurrency} in flight"),
            concurrency,
            secs,
        )
        .await;
    let backoffice = crate::backoffice::run(&system).await;
    system.stop().await;
    Outcome {
        empty,
        grown,
        seed_secs,
        concurrency,
        backoffice,
    }
}

/// Writes the 1,000,000 orders with their rows, then VACUUM ANALYZE; the seconds it took.
pub async fn write_history(system: &System) -> f64 {
    let bar = ProgressBar::new(ORDERS as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>34} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix("writing 1,000,000 orders");
    let started = Instant::now();
    let event = crate::floors::filler(700);
    let mut from = 1;
    while from <= ORDERS {
        let to = (from + CHUNK - 1).min(ORDERS);
        system
            .db
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                HISTORY,
                [
                    from.into(),
                    to.into(),
                    system.plan_id.into(),
                    event.clone().into(),
                ],
            ))
            .await
            .expect("history");
        bar.set_position(to as u64);
        from = to + 1;
    }
    system
        .db
        .conn
        .execute_unprepared(
            "VACUUM ANALYZE orders, order_status_history, balance_ledger, point_ledger, \
             outbox, consumed_events",
        )
        .await
        .expect("vacuum");
    bar.finish();
    started.elapsed().as_secs_f64()
}
