//! Back-pressure is not failure: slow or failing webhooks and a small pool retry no worker's event.

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use memberline_platform::metrics::{BatchOutcome, ChannelOutcome, DeliveryOutcome};
use memberline_schema::topology::Worker;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long effects may take to land when nothing holds them up (the slow receiver below takes
/// 5 s per message: an effect that waited on it would miss this).
const PROMPTLY: Duration = Duration::from_secs(5);

/// A webhook receiver on 127.0.0.1:0. It records the `webhook-id` of every request as it
/// arrives, refuses the first `failures` requests with 503 and answers the others with 204
/// after `delay`.
struct Receiver {
    url: String,
    /// `(webhook-id, answered 2xx)` per request, in arrival order.
    requests: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Receiver {
    async fn start(delay: Duration, failures: u32) -> Self {
        let requests: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let calls = Arc::new(AtomicU32::new(0));
        let recorded = requests.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let (recorded, calls) = (recorded.clone(), calls.clone());
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let ok = calls.fetch_add(1, Ordering::SeqCst) >= failures;
                    recorded.lock().unwrap().push((id, ok));
                    if !ok {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    // A slow receiver, not a wait for correctness.
                    tokio::time::sleep(delay).await;
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            requests,
        }
    }

    /// How many requests each `webhook-id` received, and how many of them were answered 2xx.
    fn per_id(&self) -> BTreeMap<String, (u32, u32)> {
        let mut per_id = BTreeMap::<String, (u32, u32)>::new();
        for (id, ok) in self.requests.lock().unwrap().iter() {
            let entry = per_id.entry(id.clone()).or_default();
            entry.0 += 1;
            entry.1 += u32::from(*ok);
        }
        per_id
    }

    /// The settings of a webhook channel posting to this receiver.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let key = b"a test webhook key of 32 bytes!!";
        vec![
            ("MEMBERLINE__WORKERS__CHANNEL", "webhook".to_owned()),
            ("MEMBERLINE__WORKERS__WEBHOOK_URL", self.url.clone()),
            (
                "MEMBERLINE__WORKERS__WEBHOOK_SECRET",
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                ),
            ),
        ]
    }
}

async fn app_with(env: Vec<(&'static str, String)>) -> TestApp {
    spawn_app_with(Options {
        workers: true,
        env,
        ..Default::default()
    })
    .await
}

/// Places one day-pass order (paid from balance) for each of `buyers`, `per_buyer` times, at
/// most 16 at once.
async fn buy(app: &TestApp, buyers: &[i64], per_buyer: usize) {
    use futures::StreamExt;
    let pass = app.plan_id("day_pass").await;
    let orders: Vec<(i64, usize)> = buyers
        .iter()
        .flat_map(|&b| (0..per_buyer).map(move |i| (b, i)))
        .collect();
    futures::stream::iter(orders)
        .map(|(buyer, i)| async move {
            let (status, body) = app
                .order(
                    &app.user_token(buyer),
                    &format!("bp-{buyer}-{i}"),
                    json!({"plan_id": pass, "pay_method": "balance"}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

async fn buyers(app: &TestApp, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.create_user(&format!("Buyer {i}"), 10_000_000, 0).await);
    }
    ids
}

/// Waits (up to `within`) until every effect of `orders` paid orders has landed.
async fn effects_land(app: &TestApp, orders: i64, within: Duration) {
    let checks = [
        ("SELECT count(*) FROM user_passes", "membership"),
        (
            "SELECT count(*) FROM point_ledger WHERE reason = 'purchase_reward'",
            "ledger",
        ),
        ("SELECT count(*) FROM savings_entries", "savings"),
        (
            "SELECT count(*) FROM notifications WHERE kind = 'order_paid'",
            "notifier",
        ),
    ];
    eventually(
        &format!("the {orders} orders' effects land within {within:?}"),
        within,
        || async {
            for (sql, _) in checks {
                if app.scalar(sql).await != orders {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for (sql, worker) in checks {
        assert_eq!(
            app.scalar(sql).await,
            orders,
            "{worker} applied once per order"
        );
    }
}

/// No delivery of any worker was retried, deferred or dead-lettered, and every dead-letter
/// queue is empty.
async fn nothing_retried_or_dead_lettered(app: &TestApp) {
    for worker in Worker::ALL {
        let consumer = worker.as_str();
        for outcome in [
            DeliveryOutcome::Retried,
            DeliveryOutcome::Deferred,
            DeliveryOutcome::DeadLettered,
        ] {
            assert_eq!(
                app.worker_metrics.deliveries(consumer, outcome),
                0,
                "{consumer} deliveries {outcome:?}"
            );
        }
        assert_eq!(
            app.queue_len(&app.topology.dead_queue(worker)).await,
            0,
            "{consumer} dead letters"
        );
    }
}

/// The message ids the notifier recorded for the channel sender.
async fn message_ids(app: &TestApp) -> Vec<String> {
    app.db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT message_id FROM channel_deliveries ORDER BY message_id",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get("", "message_id").unwrap())
        .collect()
}

async fn delivered(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM channel_deliveries WHERE delivered_at IS NOT NULL")
        .await
}

#[tokio::test]
async fn a_webhook_receiver_that_answers_after_five_seconds_delays_no_effect_and_gets_each_message_once()
 {
    // Arrange: a receiver that takes 5 s per message (the HTTP timeout allows it), and a pool
    // small enough that a notifier holding connections across HTTP calls would starve the
    // other workers into pool time-outs.
    let receiver = Receiver::start(Duration::from_secs(5), 0).await;
    let mut env = receiver.settings();
    env.extend([
        (
            "MEMBERLINE__WORKERS__WEBHOOK_TIMEOUT_MS",
            "10000".to_owned(),
        ),
        ("MEMBERLINE__DATABASE__MAX_CONNECTIONS", "4".to_owned()),
        ("MEMBERLINE__DATABASE__ACQUIRE_TIMEOUT_SECS", "2".to_owned()),
    ]);
    let app = app_with(env).await;
    let buyers = buyers(&app, 8).await;

    // Act
    buy(&app, &buyers, 1).await;

    // Assert: every worker's effect (the notifier's inbox message too) lands without waiting
    // for the receiver...
    effects_land(&app, 8, PROMPTLY).await;
    // ...then every message reaches the receiver once, while nothing was retried.
    eventually(
        "all 8 webhooks delivered",
        Duration::from_secs(30),
        || async { (delivered(&app).await == 8).then_some(()) },
    )
    .await;
    let ids = message_ids(&app).await;
    assert_eq!(ids.len(), 8);
    let per_id = receiver.per_id();
    assert_eq!(
        per_id.keys().cloned().collect::<Vec<_>>(),
        ids,
        "the receiver saw exactly the recorded message ids"
    );
    assert!(
        per_id.values().all(|&(requests, _)| requests == 1),
        "each message id was posted once: {per_id:?}"
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Delivered),
        8
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Retried),
        0
    );
    nothing_retried_or_dead_lettered(&app).await;
}

#[tokio::test]
async fn a_webhook_that_fails_twice_is_retried_by_the_sender_and_delivered_once_without_retrying_the_notifier()
 {
    // Arrange
    let receiver = Receiver::start(Duration::ZERO, 2).await;
    let mut env = receiver.settings();
    env.extend([
        ("MEMBERLINE__WORKERS__WEBHOOK_ATTEMPTS", "3".to_owned()),
        (
            "MEMBERLINE__WORKERS__CHANNEL_RETRY_BASE_MS",
            "100".to_owned(),
        ),
    ]);
    let app = app_with(env).await;
    let buyers = buyers(&app, 1).await;

    // Act
    buy(&app, &buyers, 1).await;

    // Assert: the third attempt delivers it; the receiver saw one id, three times, one 2xx.
    eventually("the webhook delivered", Duration::from_secs(20), || async {
        (delivered(&app).await == 1).then_some(())
    })
    .await;
    let ids = message_ids(&app).await;
    let per_id = receiver.per_id();
    assert_eq!(per_id.len(), 1, "{per_id:?}");
    assert_eq!(per_id[&ids[0]], (3, 1), "three attempts, one answered 2xx");
    assert_eq!(
        app.scalar("SELECT attempts::bigint FROM channel_deliveries")
            .await,
        3
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Retried),
        2
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Delivered),
        1
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Failed),
        0
    );
    effects_land(&app, 1, PROMPTLY).await;
    assert!(
        app.worker_metrics
            .deliveries("notifier", DeliveryOutcome::Applied)
            > 0
    );
    nothing_retried_or_dead_lettered(&app).await;
}

#[tokio::test]
async fn a_webhook_that_never_succeeds_is_marked_failed_after_its_attempts_and_no_event_is_retried()
{
    // Arrange
    let receiver = Receiver::start(Duration::ZERO, u32::MAX).await;
    let mut env = receiver.settings();
    env.extend([
        ("MEMBERLINE__WORKERS__WEBHOOK_ATTEMPTS", "2".to_owned()),
        (
            "MEMBERLINE__WORKERS__CHANNEL_RETRY_BASE_MS",
            "100".to_owned(),
        ),
    ]);
    let app = app_with(env).await;
    let buyers = buyers(&app, 1).await;

    // Act
    buy(&app, &buyers, 1).await;

    // Assert: given up after two attempts, with the receiver's answer kept for the operator.
    eventually(
        "the message marked failed",
        Duration::from_secs(20),
        || async {
            (app.scalar("SELECT count(*) FROM channel_deliveries WHERE failed_at IS NOT NULL")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM channel_deliveries \
             WHERE attempts = 2 AND last_error LIKE '%503%' AND delivered_at IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Failed),
        1
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Retried),
        1
    );
    assert_eq!(receiver.per_id().values().map(|&(n, _)| n).sum::<u32>(), 2);
    effects_land(&app, 1, PROMPTLY).await;
    nothing_retried_or_dead_lettered(&app).await;
}

#[tokio::test]
async fn with_three_pooled_connections_a_burst_of_orders_waits_for_connections_instead_of_retrying()
{
    // Arrange: 3 connections (the sender keeps one, deliveries share two) for four workers with
    // a prefetch of 100 each, and a pool time-out of 1 s that 400 deliveries queuing on the
    // pool would run into. The burst waits in the queues before the workers start, so it
    // arrives all at once.
    let app = spawn_app_with(Options {
        env: vec![
            ("MEMBERLINE__DATABASE__MAX_CONNECTIONS", "3".to_owned()),
            ("MEMBERLINE__DATABASE__ACQUIRE_TIMEOUT_SECS", "1".to_owned()),
            ("MEMBERLINE__WORKERS__PREFETCH", "100".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let buyers = buyers(&app, 20).await;
    buy(&app, &buyers, 10).await;
    app.wait_for_count(
        "the burst published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;

    // Act: the workers start as `memberline-workers` starts them.
    let pool = memberline_platform::db::connect(&app.settings.database)
        .await
        .expect("workers' pool");
    let stop = app.shutdown.child_token();
    let started = memberline_workers::start(
        &Worker::ALL,
        pool,
        &app.settings,
        app.worker_metrics.clone(),
        &stop,
    )
    .expect("workers start");
    tokio::spawn(started.wait(stop));

    // Assert: every effect once, every channel message sent, nothing retried or dead-lettered.
    effects_land(&app, 200, Duration::from_secs(90)).await;
    eventually(
        "all 200 channel messages sent",
        Duration::from_secs(30),
        || async { (delivered(&app).await == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        app.scalar("SELECT COALESCE(sum(purchase_count), 0)::bigint FROM users")
            .await,
        200
    );
    nothing_retried_or_dead_lettered(&app).await;
}

#[tokio::test]
async fn a_backlog_of_paid_orders_is_applied_in_shared_transactions_and_a_copy_among_them_applies_nothing_twice()
 {
    // Arrange: 30 orders of 6 buyers waiting in the queues before the workers start, so that
    // they arrive together; and one `order.paid` published twice more, as a replaying publisher
    // would, so that shared transactions meet an event claimed before and must split.
    let app = spawn_app_with(Options {
        env: vec![
            ("MEMBERLINE__WORKERS__PREFETCH", "32".to_owned()),
            ("MEMBERLINE__WORKERS__BATCH_MAX", "8".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let buyers = buyers(&app, 6).await;
    buy(&app, &buyers, 5).await;
    app.wait_for_count(
        "the backlog published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    let paid = app.outbox_payloads("order.paid").await;
    let copy = paid.last().expect("an order.paid event").to_string();
    for _ in 0..2 {
        app.publish_event("order.paid.v1", copy.as_bytes()).await;
    }

    // Act: the workers start as `memberline-workers` starts them.
    let pool = memberline_platform::db::connect(&app.settings.database)
        .await
        .expect("workers' pool");
    let stop = app.shutdown.child_token();
    let started = memberline_workers::start(
        &Worker::ALL,
        pool,
        &app.settings,
        app.worker_metrics.clone(),
        &stop,
    )
    .expect("workers start");
    tokio::spawn(started.wait(stop));

    // Assert: every effect once; the two copies acknowledged as duplicates by every worker;
    // shared transactions committed by the three workers that lock the buyer.
    effects_land(&app, 30, Duration::from_secs(60)).await;
    for worker in Worker::ALL {
        let consumer = worker.as_str();
        eventually(
            &format!("{consumer} acknowledges both copies as duplicates"),
            Duration::from_secs(30),
            || async {
                (app.worker_metrics
                    .deliveries(consumer, DeliveryOutcome::Duplicate)
                    == 2)
                    .then_some(())
            },
        )
        .await;
    }
    for consumer in ["membership", "ledger", "savings"] {
        eventually(
            &format!("{consumer} counts 30 deliveries applied"),
            Duration::from_secs(10),
            || async {
                (app.worker_metrics
                    .deliveries(consumer, DeliveryOutcome::Applied)
                    == 30)
                    .then_some(())
            },
        )
        .await;
        assert!(
            app.worker_metrics
                .batches(consumer, BatchOutcome::Committed)
                > 0,
            "{consumer} applied some of the backlog in shared transactions"
        );
    }
    assert_eq!(
        app.worker_metrics
            .batches("notifier", BatchOutcome::Committed),
        0
    );
    assert_eq!(
        app.scalar("SELECT COALESCE(sum(purchase_count), 0)::bigint FROM users")
            .await,
        30
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM (SELECT order_id FROM point_ledger \
             WHERE reason = 'purchase_reward' GROUP BY order_id HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    nothing_retried_or_dead_lettered(&app).await;
    assert!(
        app.queue_len(&app.topology.work_queue(Worker::Membership))
            .await
            == 0
    );
}

#[tokio::test]
async fn an_unreadable_channel_message_is_set_aside_alone_and_the_others_are_sent() {
    let app = app_with(vec![]).await;
    let buyer = app.create_user("Reader", 10_000_000, 0).await;
    // Written first, so they are claimed with (and before) the purchase's messages: one whose
    // payload is not a message, and one of a kind a newer release wrote.
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO channel_deliveries (message_id, user_id, kind, payload) VALUES \
             ('broken', {buyer}, 'order_paid', '{{\"title\": 7}}'), \
             ('future', {buyer}, 'from_a_newer_release', '{{\"title\": \"t\", \"body\": \"b\"}}')"
        ))
        .await
        .unwrap();
    buy(&app, &[buyer], 1).await;
    eventually(
        "the purchase's messages are delivered",
        Duration::from_secs(20),
        || async {
            (app.scalar(
                "SELECT count(*) FROM channel_deliveries \
                 WHERE message_id NOT IN ('broken', 'future') AND delivered_at IS NULL",
            )
            .await
                == 0
                && app
                    .scalar(
                        "SELECT count(*) FROM channel_deliveries WHERE delivered_at IS NOT NULL",
                    )
                    .await
                    > 0)
            .then_some(())
        },
    )
    .await;
    assert!(
        app.text_scalar(
            "SELECT last_error FROM channel_deliveries WHERE message_id = 'broken' \
             AND failed_at IS NOT NULL"
        )
        .await
        .starts_with("unreadable"),
        "the broken row is set aside for an operator"
    );
    assert_eq!(
        app.worker_metrics
            .channel_deliveries(ChannelOutcome::Unreadable),
        1
    );
    assert_eq!(
        app.scalar(
            "SELECT attempts::bigint FROM channel_deliveries WHERE message_id = 'future' \
             AND failed_at IS NULL AND delivered_at IS NULL"
        )
        .await,
        0,
        "a newer release's message is left for it"
    );
}
