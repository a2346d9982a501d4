//! Retry ladders changed on a live broker: workers restarted with more, fewer or other tiers keep
//! consuming, the relay keeps publishing, and nothing is lost, doubled or unrouted.

use memberline_schema::topology::Worker;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with, start_worker};
use memberline_workers::decide::HandlerError;
use memberline_workers::runtime::{Effects, Handler, Incoming};
use sea_orm::DatabaseTransaction;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Fails every event's first `failures` attempts (counted per event) with a transient error, so
/// each delivery climbs the ladder before it applies.
struct FailFirst {
    inner: Arc<dyn Handler>,
    failures: u32,
    calls: std::sync::Mutex<std::collections::HashMap<memberline_schema::ids::EventId, u32>>,
    total: AtomicU32,
}

#[async_trait::async_trait]
impl Handler for FailFirst {
    fn worker(&self) -> Worker {
        self.inner.worker()
    }
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        self.total.fetch_add(1, Ordering::SeqCst);
        let seen = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(msg.head.event_id).or_default();
            *n += 1;
            *n
        };
        if seen <= self.failures {
            return Err(HandlerError::transient(anyhow::anyhow!("injected")));
        }
        self.inner.apply(txn, msg).await
    }
}

/// Runs the four workers with `ladder` (milliseconds), the ledger one failing each event's
/// first two attempts; returns the token that stops them.
fn start_workers(app: &TestApp, ladder: &[u64]) -> CancellationToken {
    let mut settings = app.settings.clone();
    settings.amqp.retry_delays_ms = ladder.to_vec();
    let stop = app.shutdown.child_token();
    for worker in Worker::ALL {
        let real = memberline_workers::handler_for(worker, &settings).unwrap();
        let handler: Arc<dyn Handler> = if worker == Worker::Ledger {
            Arc::new(FailFirst {
                inner: real,
                failures: 2,
                calls: Default::default(),
                total: AtomicU32::new(0),
            })
        } else {
            real
        };
        start_worker(
            &app.db,
            &settings,
            handler,
            app.worker_metrics.clone(),
            &stop,
        );
    }
    stop
}

/// Retry-tier queues of ladders other than the app's, deleted when the test ends however it ends
/// (the app's own topology is deleted by the app).
struct ExtraTiers(Vec<String>);

impl ExtraTiers {
    fn of(app: &TestApp, ladders: &[&[u64]]) -> Self {
        let mut names = Vec::new();
        for ladder in ladders {
            let mut settings = app.settings.clone();
            settings.amqp.retry_delays_ms = ladder.to_vec();
            let topology = settings.topology();
            for worker in Worker::ALL {
                for tier in 0..ladder.len() {
                    names.push(topology.retry_queue(worker, tier));
                }
            }
        }
        Self(names)
    }
}

impl Drop for ExtraTiers {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let conn = memberline_tests::broker_connection().await;
                for name in names {
                    // A fresh channel each: deleting a missing queue closes the channel.
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(name.as_str().into(), Default::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}

async fn buy(app: &TestApp, buyer: i64, key: &str) {
    let (status, body) = app
        .order(
            &app.user_token(buyer),
            key,
            json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn wait_for_effects(app: &TestApp, orders: i64) {
    for (what, sql) in [
        ("periods", "SELECT count(*) FROM membership_periods"),
        (
            "rewards",
            "SELECT count(*) FROM point_ledger WHERE reason = 'purchase_reward'",
        ),
        ("savings", "SELECT count(*) FROM savings_entries"),
        (
            "inbox",
            "SELECT count(*) FROM notifications WHERE kind = 'order_paid'",
        ),
    ] {
        app.wait_for_count(what, sql, orders).await;
    }
}

#[tokio::test]
async fn changing_the_retry_ladder_on_a_live_broker_loses_nothing_and_routes_everything() {
    let app = spawn_app_with(Options::default()).await;
    let _cleanup = ExtraTiers::of(&app, &[&[50, 150, 300], &[75]]);
    let buyer = app.create_user("Laddered", 10_000_000, 0).await;

    // The ladder the app declared (two tiers).
    let first = start_workers(&app, &[100, 200]);
    buy(&app, buyer, "ladder-1").await;
    wait_for_effects(&app, 1).await;
    first.cancel();

    // More tiers with other delays: new tier queues beside the old ones.
    let second = start_workers(&app, &[50, 150, 300]);
    for key in ["ladder-2", "ladder-3"] {
        buy(&app, buyer, key).await;
    }
    wait_for_effects(&app, 3).await;
    second.cancel();

    // Fewer tiers: one, shorter than any before.
    let third = start_workers(&app, &[75]);
    buy(&app, buyer, "ladder-4").await;
    // The ledger fails twice and has one tier: the second failure exhausts it. The event is
    // dead-lettered, not lost, and the other three effects land.
    app.wait_for_count("periods", "SELECT count(*) FROM membership_periods", 4)
        .await;
    eventually("ledger dead letter", Duration::from_secs(20), || async {
        (app.queue_len(&app.topology.dead_queue(Worker::Ledger))
            .await
            == 1)
            .then_some(())
    })
    .await;
    third.cancel();

    assert_eq!(app.queue_len(&app.topology.unrouted_queue()).await, 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
    // Exactly once each: three rewards (the fourth is parked), four periods.
    assert_eq!(
        app.scalar("SELECT count(*) FROM point_ledger WHERE reason = 'purchase_reward'")
            .await,
        3
    );
    assert_eq!(
        app.scalar("SELECT count(DISTINCT order_id) FROM membership_periods")
            .await,
        4
    );
}
