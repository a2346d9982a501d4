//! The machine's own limits, measured in the same run as the scenarios, straight through the
//! drivers with nothing of Memberline in between.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buyers the floor spreads its purchases over (as many as the scenarios use).
pub const BUYERS: i64 = 64;

/// The rows of one balance purchase in our schema (the order, the debit and its ledger entry,
/// the status history, the outbox row with its event, the idempotency key with its response),
/// in the fewest statements: the lock, then one statement of data-modifying CTEs.
pub const PURCHASE_ROWS: &str = "\
WITH o AS (
    INSERT INTO orders (order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind,
        duration_days, pay_method, amount_fen, original_price_fen, status, correlation_id,
        paid_at, payment_check_at)
    VALUES ($2, $1, 1, 'monthly', 'Monthly membership', 'membership', 30, 'balance', 2700,
        3800, 'paid', $3, now(), NULL)
    RETURNING id
), u AS (
    UPDATE users SET balance_fen = balance_fen - 2700, updated_at = now() WHERE id = $1
    RETURNING balance_fen
), l AS (
    INSERT INTO balance_ledger (user_id, order_id, reason, delta, balance_after)
    SELECT $1, o.id, 'order_payment', -2700, u.balance_fen FROM o, u
), h AS (
    INSERT INTO order_status_history (order_id, to_status, reason)
    SELECT o.id, 'paid', 'paid_with_balance' FROM o
), e AS (
    INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key,
        correlation_id, payload)
    SELECT $3, 'order', o.id::text, 'order.paid', 'order.paid.v1', $3, $4 FROM o
), k AS (
    INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response_body,
        order_id)
    SELECT $1, $2, $2, 201, $5, o.id FROM o
)
SELECT id FROM o";

/// The buyer's lock of a purchase. Like the gateway with its embedded relay, the transaction
/// opts out of the outbox trigger's NOTIFY (the relay is woken in-process), so that its commit
/// does not queue behind every other notifying commit of the database.
pub const PURCHASE_LOCK: &str = "SELECT balance_fen, \
    set_config('memberline.outbox_notify', 'off', true) FROM users WHERE id = $1 FOR UPDATE";

/// A JSON value of about `bytes` bytes, the size of our event or response.
pub fn filler(bytes: usize) -> serde_json::Value {
    serde_json::json!({"filler": "x".repeat(bytes)})
}

/// Inserts the floor's buyers, each with funds for any run.
pub async fn seed_buyers(db: &DatabaseConnection) {
    db.execute_unprepared(&format!(
        "INSERT INTO users (id, name, balance_fen, points) \
         SELECT g, 'floor ' || g, 1000000000000, 0 FROM generate_series(1, {BUYERS}) g"
    ))
    .await
    .expect("floor buyers");
}

/// A pool of exactly `conns` connections, opened before the clock starts.
pub async fn pool(db_url: &str, conns: usize) -> DatabaseConnection {
    let mut options = sea_orm::ConnectOptions::new(db_url.to_owned());
    options
        .max_connections(conns as u32)
        .min_connections(conns as u32)
        .sqlx_logging(false);
    Database::connect(options).await.expect("floor pool")
}

/// (a) Purchases/s committed straight through the driver (prepared statements) from `conns`
/// connections for `secs` seconds, and where the CPU went meanwhile (read before the pool
/// closes: a backend's time leaves `/proc` with it).
pub async fn purchase_floor(
    db_url: &str,
    conns: usize,
    secs: f64,
) -> (f64, Vec<(&'static str, f64, f64)>) {
    let pool = pool(db_url, conns).await;
    let done = Arc::new(AtomicU64::new(0));
    let before = crate::cpu::snapshot();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let event = filler(700);
    let response = filler(500);
    let started = Instant::now();
    let workers = (0..conns).map(|w| {
        let (pool, done, event, response) =
            (pool.clone(), done.clone(), event.clone(), response.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let buyer = ((w as i64 * 7919 + i as i64 * 104_729) % BUYERS) + 1;
                let key = format!("F{w}x{i}x{}", uuid::Uuid::new_v4().simple());
                let txn = pool.begin().await.expect("begin");
                txn.query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    PURCHASE_LOCK,
                    [buyer.into()],
                ))
                .await
                .expect("lock");
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    PURCHASE_ROWS,
                    [
                        buyer.into(),
                        key[..32.min(key.len())].to_owned().into(),
                        uuid::Uuid::new_v4().into(),
                        event.clone().into(),
                        response.clone().into(),
                    ],
                ))
                .await
                .expect("purchase rows");
                txn.commit().await.expect("commit");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    futures::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed) as usize;
    let used = crate::cpu::between(&before, &crate::cpu::snapshot(), elapsed, count);
    pool.close().await.ok();
    (count as f64 / elapsed, used)
}

/// (c) Messages/s through a quorum queue: published persistent with confirms (100 in flight)
/// and consumed with acks (prefetch 100), both in this process, `message_bytes` each.
pub async fn broker_floor(amqp_url: &str, messages: usize, message_bytes: usize) -> f64 {
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("broker");
    let publish = conn.create_channel().await.expect("channel");
    let consume = conn.create_channel().await.expect("channel");
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    consume
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let queue = format!("bench.floor.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
    publish
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("queue");
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < messages {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            seen += 1;
        }
    });
    let body = vec![b'x'; message_bytes];
    let mut pending: std::collections::VecDeque<lapin::PublisherConfirm> =
        std::collections::VecDeque::with_capacity(100);
    for _ in 0..messages {
        if pending.len() == 100 {
            let confirm = pending.pop_front().unwrap();
            assert!(confirm.await.expect("confirm").is_ack());
        }
        pending.push_back(
            publish
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in pending {
        assert!(confirm.await.expect("confirm").is_ack());
    }
    reader.await.expect("reader");
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    let _ = publish
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    rate
}
