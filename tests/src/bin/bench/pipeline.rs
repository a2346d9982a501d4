//! (b) The pipeline floor: every row one paid order causes end to end, written straight through
//! the driver with prepared statements and the fewest statements per transaction, in the order
//! the system writes them:
//!
//! 1. the purchase, exactly as the floor (a) writes it;
//! 2. the relay marks the `order.paid` event published;
//! 3. the membership worker claims the event, adds the period after the buyer's last one and
//!    writes its `membership.extended` follow-up to the outbox;
//! 4. the ledger worker claims it, credits the reward and its growth, with the ledger entry;
//! 5. the savings worker claims it, records the saving and adds it to the buyer's totals;
//! 6. the notifier claims it, writes the inbox entry, the template/SMS message and the
//!    console-feed entry numbered from the counter row;
//! 7. the relay marks the follow-up published; the notifier claims it and writes the
//!    "membership active" inbox entry and its message.
//!
//! The three effects that change the buyer lock the buyer first, as the workers do. What the
//! floor leaves out is what the system adds on top: decoding, checks that find nothing wrong,
//! and the broker.

use crate::floors::{BUYERS, PURCHASE_LOCK, PURCHASE_ROWS, filler};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait, Value,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MEMBERSHIP: &str = "\
WITH c AS (
    INSERT INTO consumed_events (consumer, event_id, event_type)
    VALUES ('membership', $3, 'order.paid') ON CONFLICT DO NOTHING RETURNING event_id
), p AS (
    INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent)
    SELECT $1, $2, s.start, s.start + interval '30 days', false
    FROM c, (SELECT greatest(now(), max(ends_at)) AS start FROM membership_periods
             WHERE user_id = $1 AND removed_at IS NULL) s
    RETURNING id
)
INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key, correlation_id,
    payload)
SELECT $4, 'user', $1::text, 'membership.extended', 'membership.extended.v1', $3, $5 FROM p";

const LEDGER: &str = "\
WITH c AS (
    INSERT INTO consumed_events (consumer, event_id, event_type)
    VALUES ('ledger', $3, 'order.paid') ON CONFLICT DO NOTHING RETURNING event_id
), u AS (
    UPDATE users SET points = points + 27, growth = growth + 27, updated_at = now()
    WHERE id = $1 AND EXISTS (SELECT 1 FROM c) RETURNING points
)
INSERT INTO point_ledger (user_id, order_id, reason, delta, balance_after, earned_at,
    growth_delta)
SELECT $1, $2, 'purchase_reward', 27, u.points, now(), 27 FROM u";

const SAVINGS: &str = "\
WITH c AS (
    INSERT INTO consumed_events (consumer, event_id, event_type)
    VALUES ('savings', $3, 'order.paid') ON CONFLICT DO NOTHING RETURNING event_id
), s AS (
    INSERT INTO savings_entries (user_id, order_id, saved_fen, saved_points)
    SELECT $1, $2, 1100, 0 FROM c RETURNING id
)
UPDATE users SET total_saved_fen = total_saved_fen + 1100, purchase_count = purchase_count + 1,
    total_paid_fen = total_paid_fen + 2700, updated_at = now()
WHERE id = $1 AND EXISTS (SELECT 1 FROM s)";

const NOTIFY_PAID: &str = "\
WITH c AS (
    INSERT INTO consumed_events (consumer, event_id, event_type)
    VALUES ('notifier', $3, 'order.paid') ON CONFLICT DO NOTHING RETURNING event_id
), n AS (
    INSERT INTO notifications (user_id, event_id, kind, title, body, order_id)
    SELECT $1, $3, 'order_paid', 'Payment received', 'Order paid (27.00).', $2 FROM c
    RETURNING id
), m AS (
    INSERT INTO channel_deliveries (message_id, user_id, kind, payload)
    SELECT $3::text || '-order_paid', $1, 'order_paid', $4 FROM n
), next AS (
    UPDATE console_feed_counter SET last_seq = last_seq + 1 WHERE EXISTS (SELECT 1 FROM n)
    RETURNING last_seq
)
INSERT INTO console_feed (seq, event_id, kind, payload)
SELECT last_seq, $3, 'order_paid', $4 FROM next";

const NOTIFY_EXTENDED: &str = "\
WITH c AS (
    INSERT INTO consumed_events (consumer, event_id, event_type)
    VALUES ('notifier', $3, 'membership.extended') ON CONFLICT DO NOTHING RETURNING event_id
), n AS (
    INSERT INTO notifications (user_id, event_id, kind, title, body, order_id)
    SELECT $1, $3, 'membership_extended', 'Membership active', 'Active until later.', $2 FROM c
    RETURNING id
)
INSERT INTO channel_deliveries (message_id, user_id, kind, payload)
SELECT $3::text || '-membership_extended', $1, 'membership_extended', $4 FROM n";

async fn run(txn: &DatabaseTransaction, sql: &str, values: Vec<Value>) {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await
    .unwrap_or_else(|e| panic!("pipeline floor: {e}\n{sql}"));
}

async fn lock(txn: &DatabaseTransaction, buyer: i64) {
    run(
        txn,
        "SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
        vec![buyer.into()],
    )
    .await;
}

/// One worker transaction: the buyer's lock when the effect changes the buyer, then `sql`.
async fn transaction(pool: &DatabaseConnection, buyer: Option<i64>, sql: &str, values: Vec<Value>) {
    let txn = pool.begin().await.expect("begin");
    if let Some(buyer) = buyer {
        lock(&txn, buyer).await;
    }
    run(&txn, sql, values).await;
    txn.commit().await.expect("commit");
}

/// The relay's mark on a published event.
async fn published(pool: &DatabaseConnection, event: uuid::Uuid) {
    pool.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE outbox SET published_at = now() WHERE id = $1",
        [event.into()],
    ))
    .await
    .expect("published");
}

/// Paid orders/s carried end to end from `conns` connections for `secs` seconds (each
/// connection takes one order through every step, then the next).
pub async fn pipeline_floor(db_url: &str, conns: usize, secs: f64) -> f64 {
    let pool = crate::floors::pool(db_url, conns).await;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (event, response, message) = (filler(700), filler(500), filler(300));
    let started = Instant::now();
    let tasks = (0..conns).map(|w| {
        let (pool, done) = (pool.clone(), done.clone());
        let (event, response, message) = (event.clone(), response.clone(), message.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let buyer = ((w as i64 * 7919 + i as i64 * 104_729) % BUYERS) + 1;
                let key = format!("P{w}x{i}x{}", uuid::Uuid::new_v4().simple());
                let (paid, extended) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
                // 1. The purchase.
                let txn = pool.begin().await.expect("begin");
                run(&txn, PURCHASE_LOCK, vec![buyer.into()]).await;
                let order: i64 = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        PURCHASE_ROWS,
                        [
                            buyer.into(),
                            key[..32.min(key.len())].to_owned().into(),
                            paid.into(),
                            event.clone().into(),
                            response.clone().into(),
                        ],
                    ))
                    .await
                    .expect("purchase rows")
                    .expect("the order")
                    .try_get("", "id")
                    .expect("its id");
                txn.commit().await.expect("commit");
                // 2. Published.
                published(&pool, paid).await;
                // 3.–5. The effects on the buyer's records, each locking the buyer.
                for (sql, extra) in [
                    (MEMBERSHIP, vec![extended.into(), event.clone().into()]),
                    (LEDGER, vec![]),
                    (SAVINGS, vec![]),
                ] {
                    let mut values = vec![buyer.into(), order.into(), paid.into()];
                    values.extend(extra);
                    transaction(&pool, Some(buyer), sql, values).await;
                }
                // 6. The notifier on the paid event.
                let note = |event: uuid::Uuid| {
                    vec![
                        buyer.into(),
                        order.into(),
                        event.into(),
                        message.clone().into(),
                    ]
                };
                transaction(&pool, None, NOTIFY_PAID, note(paid)).await;
                // 7. The follow-up published and announced.
                published(&pool, extended).await;
                transaction(&pool, None, NOTIFY_EXTENDED, note(extended)).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    futures::future::join_all(tasks).await;
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    pool.close().await.ok();
    rate
}
