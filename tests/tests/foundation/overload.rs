//! Load shedding: past its bounds the gateway answers 503 `overloaded` with `Retry-After` at
//! once, having written nothing, instead of queueing without bound.

use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::task::JoinHandle;

type Answer = (u16, Value, Option<String>);

/// A purchase of a day pass with balance, sent now: its status, body and `Retry-After`.
async fn purchase(app: &TestApp, buyer: i64, key: &str) -> JoinHandle<Answer> {
    let plan = app.plan_id("day_pass").await;
    let request = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(app.user_token(buyer))
        .header("Idempotency-Key", key)
        .json(&json!({"plan_id": plan, "pay_method": "balance"}));
    tokio::spawn(async move {
        let res = request.send().await.expect("the gateway answers");
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, res.json().await.unwrap_or_default(), retry_after)
    })
}

/// Locks `buyer`'s row in a transaction of the test's and sends their purchase: it holds
/// whatever runs it (a lane, a request slot) until the transaction ends.
async fn held_purchase(app: &TestApp, buyer: i64) -> (DatabaseTransaction, JoinHandle<Answer>) {
    let holder = app.db.begin().await.unwrap();
    holder
        .execute_unprepared(&format!(
            "SELECT 1 FROM users WHERE id = {buyer} FOR UPDATE"
        ))
        .await
        .unwrap();
    let first = purchase(app, buyer, "held").await;
    eventually(
        "the purchase waits for its buyer",
        Duration::from_secs(10),
        || async {
            (app.scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
                >= 1)
                .then_some(())
        },
    )
    .await;
    (holder, first)
}

fn overloaded(answer: &Answer) -> bool {
    answer.0 == 503 && answer.1["error"]["code"] == "overloaded" && answer.2.as_deref() == Some("1")
}

#[tokio::test]
async fn purchases_past_the_lanes_queue_are_refused_at_once_with_nothing_written_and_a_retry_succeeds()
 {
    let app = spawn_app_with(Options {
        env: vec![
            ("MEMBERLINE__LANES__COUNT", "1".to_owned()),
            ("MEMBERLINE__LANES__BATCH_MAX", "1".to_owned()),
            ("MEMBERLINE__LANES__QUEUE_MAX", "2".to_owned()),
            ("MEMBERLINE__LANES__MAX_WAIT_MS", "60000".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let blocked = app.create_user("Blocked", 100_000, 0).await;
    let mut buyers = Vec::new();
    for i in 0..10 {
        buyers.push(app.create_user(&format!("Rush {i}"), 100_000, 0).await);
    }
    // The only lane is held on the first purchase; then the rush: two find room in the lane's
    // queue, and the other eight are answered while the lane is still held.
    let (holder, first) = held_purchase(&app, blocked).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for &b in &buyers {
        let (tx, sent) = (tx.clone(), purchase(&app, b, &format!("rush-{b}")).await);
        tokio::spawn(async move {
            let _ = tx.send((b, sent.await.unwrap()));
        });
    }
    drop(tx);
    let mut answers = Vec::new();
    for _ in 0..8 {
        let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("refused at once, not queued")
            .expect("an answer");
        answers.push(answer);
    }
    assert!(
        answers.iter().all(|(_, a)| overloaded(a)),
        "the eight answered while the lane is held are clean refusals: {answers:?}"
    );
    holder.rollback().await.unwrap();
    while let Some(answer) = rx.recv().await {
        answers.push(answer);
    }
    assert_eq!(first.await.unwrap().0, 201);
    let refused: Vec<i64> = answers
        .iter()
        .filter(|(_, a)| overloaded(a))
        .map(|(b, _)| *b)
        .collect();
    assert_eq!(refused.len(), 8, "{answers:?}");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 3);
    assert_eq!(
        app.scalar("SELECT count(*) FROM idempotency_keys").await,
        3,
        "a refused purchase claims no key"
    );
    for b in refused {
        let retried = purchase(&app, b, &format!("rush-{b}")).await.await.unwrap();
        assert_eq!(
            retried.0, 201,
            "a refused purchase retried with its key: {retried:?}"
        );
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 11);
}

#[tokio::test]
async fn a_purchase_that_waited_too_long_for_its_lane_is_refused_unrun() {
    let app = spawn_app_with(Options {
        env: vec![
            ("MEMBERLINE__LANES__COUNT", "1".to_owned()),
            ("MEMBERLINE__LANES__BATCH_MAX", "1".to_owned()),
            ("MEMBERLINE__LANES__MAX_WAIT_MS", "50".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    let blocked = app.create_user("Blocked", 100_000, 0).await;
    let late = app.create_user("Late", 100_000, 0).await;
    let (holder, first) = held_purchase(&app, blocked).await;
    let waiting = purchase(&app, late, "late").await;
    // It waits in the queue behind the held purchase well past 50 ms...
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();
    assert_eq!(first.await.unwrap().0, 201);
    // ...and is refused when its turn comes, unrun.
    let answer = waiting.await.unwrap();
    assert!(overloaded(&answer), "{answer:?}");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 1);
    let retried = purchase(&app, late, "late").await.await.unwrap();
    assert_eq!(retried.0, 201, "{retried:?}");
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_refused_at_once_and_health_checks_always_answer() {
    let app = spawn_app_with(Options {
        env: vec![("MEMBERLINE__HTTP__MAX_IN_FLIGHT", "1".to_owned())],
        ..Default::default()
    })
    .await;
    let blocked = app.create_user("Blocked", 100_000, 0).await;
    let buyer = app.create_user("Second", 100_000, 0).await;
    // The one request the gateway takes is held; the next finds no room.
    let (holder, first) = held_purchase(&app, blocked).await;
    let second = purchase(&app, buyer, "second").await.await.unwrap();
    assert!(overloaded(&second), "{second:?}");
    let (_, plans) = app.get(None, "/v1/plans").await;
    assert_eq!(plans["error"]["code"], "overloaded");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health checks always answer");
    holder.rollback().await.unwrap();
    assert_eq!(first.await.unwrap().0, 201);
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 1);
    let retried = purchase(&app, buyer, "second").await.await.unwrap();
    assert_eq!(retried.0, 201, "{retried:?}");
}
