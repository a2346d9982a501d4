//! Worker failures: retry ladder, dead letters and replay, poison messages, panics, webhooks.

use memberline_gateway::http::auth::Role;
use memberline_platform::metrics::DeliveryOutcome;
use memberline_schema::topology::Worker;
use memberline_tests::{Options, eventually, spawn_app_with, start_worker};
use memberline_workers::decide::HandlerError;
use memberline_workers::runtime::{Effects, Handler, Incoming};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Wraps a real handler and fails the first `failures` attempts with a transient error.
struct Flaky {
    inner: Arc<dyn Handler>,
    failures: u32,
    calls: AtomicU32,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    fn worker(&self) -> Worker {
        self.inner.worker()
    }
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        msg: &Incoming,
    ) -> Result<Effects, HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(HandlerError::transient(anyhow::anyhow!(
                "injected: database briefly unavailable"
            )));
        }
        self.inner.apply(txn, msg).await
    }
}

#[tokio::test]
async fn a_transient_fault_is_retried_through_the_ladder_and_applied_once() {
    let app = spawn_app_with(Options::default()).await;
    let flaky = Arc::new(Flaky {
        inner: memberline_workers::handler_for(Worker::Ledger, &app.settings).unwrap(),
        failures: 2,
        calls: AtomicU32::new(0),
    });
    start_worker(
        &app.db,
        &app.settings,
        flaky.clone(),
        app.worker_metrics.clone(),
        &app.shutdown,
    );
    let buyer = app.create_user("Flaky", 100_000, 0).await;
    app.order(
        &app.user_token(buyer),
        "flaky",
        json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
    )
    .await;
    app.wait_for_count(
        "the reward after two retries",
        &format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer} AND reason = 'purchase_reward'"),
        1,
    )
    .await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    // Metrics are counted once the delivery is settled, just after the commit.
    eventually("deliveries counted", Duration::from_secs(10), || async {
        let count = |outcome| app.worker_metrics.deliveries("ledger", outcome);
        (count(DeliveryOutcome::Retried) == 2 && count(DeliveryOutcome::Applied) == 1).then_some(())
    })
    .await;
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        30
    );
    assert_eq!(
        app.queue_len(&app.topology.dead_queue(Worker::Ledger))
            .await,
        0
    );
}

#[tokio::test]
async fn a_fault_that_outlasts_the_ladder_is_dead_lettered_as_exhausted() {
    let app = spawn_app_with(Options::default()).await;
    let flaky = Arc::new(Flaky {
        inner: memberline_workers::handler_for(Worker::Savings, &app.settings).unwrap(),
        failures: u32::MAX,
        calls: AtomicU32::new(0),
    });
    start_worker(
        &app.db,
        &app.settings,
        flaky.clone(),
        app.worker_metrics.clone(),
        &app.shutdown,
    );
    let buyer = app.create_user("Doomed", 100_000, 0).await;
    app.order(
        &app.user_token(buyer),
        "doomed",
        json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
    )
    .await;
    let admin = app.token(0, Role::Admin);
    let list = eventually(
        "dead-lettered after the ladder",
        Duration::from_secs(20),
        || async {
            let (_, list) = app
                .get(Some(&admin), "/v1/admin/dead-letters?worker=savings")
                .await;
            (list["dead_letters"]
                .as_array()
                .is_some_and(|d| d.len() == 1))
            .then_some(list)
        },
    )
    .await;
    let dead = &list["dead_letters"][0];
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("retries exhausted after 3 attempts"),
        "{dead}"
    );
    assert_eq!(dead["attempts"], 3);
    assert!(dead["last_error"].as_str().unwrap().contains("injected"));
    assert_eq!(dead["original_routing_key"], "order.paid.v1");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn killed_database_connections_are_a_transient_fault_and_the_effect_lands_once() {
    let app = spawn_app_with(Options {
        workers: true,
        // Five kills can hit one delivery more than twice: give it as many tiers as production
        // (short delays keep the test fast).
        env: vec![(
            "MEMBERLINE__AMQP__RETRY_DELAYS_MS",
            "100,200,400,800,1600".to_owned(),
        )],
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Severed", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let pass = app.plan_id("day_pass").await;
    let mut killed = 0;
    for i in 0..5 {
        // The savings and membership workers' inserts wait on this lock inside their
        // transactions: their backends are caught mid-delivery, and those are the ones killed.
        // (A pooled connection killed while idle is only replaced: it proves nothing.)
        let hold = app.db.begin().await.unwrap();
        hold.execute_unprepared("LOCK TABLE savings_entries, user_passes IN SHARE MODE")
            .await
            .unwrap();
        let (status, body) = app
            .order(
                &token,
                &format!("sev-{i}"),
                json!({"plan_id": pass, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let waiting = "FROM pg_stat_activity WHERE datname = current_database() \
                       AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()";
        eventually(
            "a worker waits mid-delivery",
            Duration::from_secs(20),
            || async {
                (app.scalar(&format!("SELECT count(*) {waiting}")).await > 0).then_some(())
            },
        )
        .await;
        let now = app
            .scalar(&format!(
                "SELECT count(pg_terminate_backend(pid)) {waiting}"
            ))
            .await;
        assert!(now > 0, "round {i}: no backend killed");
        killed += now;
        hold.rollback().await.unwrap();
        // This order's effects land before the next round, whose kills would otherwise hit
        // its retries too and run them past the ladder.
        for table in ["savings_entries", "user_passes"] {
            app.wait_for_count(
                &format!("round {i}: {table}"),
                &format!("SELECT count(*) FROM {table} WHERE user_id = {buyer}"),
                i + 1,
            )
            .await;
        }
    }
    app.wait_for_count(
        "all savings effects",
        &format!("SELECT count(*) FROM savings_entries WHERE user_id = {buyer}"),
        5,
    )
    .await;
    app.wait_for_count(
        "all passes",
        &format!("SELECT count(*) FROM user_passes WHERE user_id = {buyer}"),
        5,
    )
    .await;
    // Totals no constraint guards: a delivery applied twice would show here.
    assert_eq!(
        app.scalar(&format!(
            "SELECT purchase_count::bigint FROM users WHERE id = {buyer}"
        ))
        .await,
        5
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT sum(uses_left)::bigint FROM user_passes WHERE user_id = {buyer}"
        ))
        .await,
        5
    );
    assert_eq!(
        memberline_tests::invariants::drift(&app.db).await.total(),
        0
    );
    // Each round's kills failed at least one delivery, which was retried.
    let retried: u64 = Worker::ALL
        .iter()
        .map(|w| {
            app.worker_metrics
                .deliveries(w.as_str(), DeliveryOutcome::Retried)
        })
        .sum();
    assert!(
        retried >= 5,
        "{killed} backends killed mid-delivery, {retried} deliveries retried"
    );
    for w in Worker::ALL {
        assert_eq!(app.queue_len(&app.topology.dead_queue(w)).await, 0, "{w:?}");
    }
}

#[tokio::test]
async fn a_permanent_fault_is_dead_lettered_with_its_reason_and_a_replay_after_the_fix_applies_once()
 {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Ghost", 0, 0).await;
    // An order.paid event for an order that does not exist (yet).
    let event_id = uuid::Uuid::now_v7();
    let envelope = json!({
        "event_id": event_id, "type": "order.paid", "version": 1,
        "occurred_at": chrono::Utc::now(), "correlation_id": uuid::Uuid::now_v7(), "causation_id": null,
        "payload": {
            "order_id": 990_001, "order_no": "ML990001", "buyer_id": buyer, "plan_id": app.plan_id("monthly").await,
            "plan_code": "monthly", "plan_name": "Monthly membership", "plan_kind": "membership",
            "duration_days": 30, "uses": null, "pay_method": "balance", "amount_fen": 3000, "amount_points": 0,
            "original_price_fen": 3800, "original_price_points": 3000, "paid_at": chrono::Utc::now()
        }
    });
    app.publish_event("order.paid.v1", envelope.to_string().as_bytes())
        .await;
    let admin = app.token(0, Role::Admin);
    let list = eventually("dead-lettered", Duration::from_secs(20), || async {
        let (_, list) = app
            .get(Some(&admin), "/v1/admin/dead-letters?worker=membership")
            .await;
        (list["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 1))
        .then_some(list)
    })
    .await;
    let dead = &list["dead_letters"][0];
    assert_eq!(dead["event_id"], event_id.to_string());
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("unknown order 990001"),
        "{dead}"
    );
    assert_eq!(dead["attempts"], 1, "a permanent fault is not retried");
    // Listing left it in place.
    assert_eq!(
        app.queue_len(&app.topology.dead_queue(Worker::Membership))
            .await,
        1
    );

    // Fix the cause: the order now exists and is paid.
    app.scalar(&format!(
        "WITH o AS (INSERT INTO orders (id, order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind, \
         duration_days, pay_method, amount_fen, original_price_fen, status, correlation_id, paid_at) \
         VALUES (990001, 'ML990001', {buyer}, {}, 'monthly', 'Monthly membership', 'membership', 30, \
         'balance', 3000, 3800, 'paid', gen_random_uuid(), now()) RETURNING 1) SELECT count(*) FROM o",
        app.plan_id("monthly").await
    ))
    .await;
    let res = app
        .client
        .post(app.url("/v1/admin/dead-letters/replay"))
        .bearer_auth(&admin)
        .json(&json!({"worker": "membership", "event_id": event_id.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let report: serde_json::Value = res.json().await.unwrap();
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["remaining"], 0);
    app.wait_for_count(
        "the replayed effect",
        "SELECT count(*) FROM membership_periods WHERE order_id = 990001",
        1,
    )
    .await;

    // Replaying an event whose effect was applied changes nothing: put it back and replay.
    app.publish_event("order.paid.v1", envelope.to_string().as_bytes())
        .await;
    eventually(
        "the duplicate is acked",
        Duration::from_secs(20),
        || async {
            (app.worker_metrics
                .deliveries("membership", DeliveryOutcome::Duplicate)
                >= 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM membership_periods WHERE order_id = 990001")
            .await,
        1
    );

    let res = app
        .client
        .get(app.url("/v1/admin/dead-letters?worker=nobody"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = app
        .client
        .get(app.url("/v1/admin/dead-letters?worker=membership"))
        .bearer_auth(app.user_token(buyer))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_poison_message_does_not_delay_the_healthy_messages_behind_it() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    app.publish_event("order.paid.v1", b"\x00\x01 this is not an event")
        .await;
    app.publish_event("order.paid.v1", br#"{"event_id": "not-a-uuid"}"#)
        .await;
    let buyer = app.create_user("Healthy", 100_000, 0).await;
    let token = app.user_token(buyer);
    for i in 0..3 {
        app.order(
            &token,
            &format!("h-{i}"),
            json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
        )
        .await;
    }
    app.wait_for_count(
        "healthy effects",
        &format!("SELECT count(*) FROM user_passes WHERE user_id = {buyer}"),
        3,
    )
    .await;
    let admin = app.token(0, Role::Admin);
    let list = eventually("poison parked", Duration::from_secs(20), || async {
        let (_, list) = app
            .get(Some(&admin), "/v1/admin/dead-letters?worker=ledger")
            .await;
        (list["dead_letters"]
            .as_array()
            .is_some_and(|d| d.len() == 2))
        .then_some(list)
    })
    .await;
    for d in list["dead_letters"].as_array().unwrap() {
        assert!(
            d["reason"].as_str().unwrap().starts_with("undecodable"),
            "{d}"
        );
    }
    // A body that is not JSON is listed as its text, and the API document says a body can be
    // any JSON value, a string included.
    let texts: Vec<&serde_json::Value> = list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["body"])
        .filter(|b| b.is_string())
        .collect();
    assert_eq!(texts.len(), 1, "{list}");
    assert!(texts[0].as_str().unwrap().contains("this is not an event"));
    let (_, doc) = app.get(None, "/openapi.json").await;
    let body = &doc["components"]["schemas"]["DeadLetter"]["properties"]["body"];
    assert!(body.is_object(), "{body}");
    assert!(
        body.get("type").is_none(),
        "body is documented as one type: {body}"
    );
}

#[tokio::test]
async fn a_worker_refuses_to_start_without_its_dead_letter_path() {
    let app = spawn_app_with(Options {
        env: vec![("MEMBERLINE__WORKERS__DECLARE_TOPOLOGY", "false".to_owned())],
        // No relay: it would declare the topology again.
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    // Remove the dead-letter queue the harness declared.
    let ch = memberline_tests::broker_channel().await;
    ch.queue_delete(
        app.topology.dead_queue(Worker::Ledger).into(),
        Default::default(),
    )
    .await
    .unwrap();
    let handle = start_worker(
        &app.db,
        &app.settings,
        memberline_workers::handler_for(Worker::Ledger, &app.settings).unwrap(),
        app.worker_metrics.clone(),
        &app.shutdown,
    );
    let result = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("it gives up at once")
        .unwrap();
    let err = result.unwrap_err().to_string();
    assert!(err.contains("dead-letter path"), "{err}");
}

#[tokio::test]
async fn the_webhook_channel_posts_signed_messages_and_retries_a_failing_receiver() {
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    use hmac::Mac;
    let received: Arc<std::sync::Mutex<Vec<(HeaderMap, String)>>> = Default::default();
    let calls = Arc::new(AtomicU32::new(0));
    let (r, c) = (received.clone(), calls.clone());
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (r, c) = (r.clone(), c.clone());
            async move {
                // The first call fails: the channel must retry.
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let key = b"a test webhook key of 32 bytes!!";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let app = spawn_app_with(Options {
        workers: true,
        env: vec![
            ("MEMBERLINE__WORKERS__CHANNEL", "webhook".to_owned()),
            (
                "MEMBERLINE__WORKERS__WEBHOOK_URL",
                format!("http://127.0.0.1:{port}/hook"),
            ),
            ("MEMBERLINE__WORKERS__WEBHOOK_SECRET", secret),
        ],
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Hooked", 100_000, 0).await;
    app.order(
        &app.user_token(buyer),
        "hook",
        json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
    )
    .await;
    let (headers, body) = eventually("the webhook arrives", Duration::from_secs(20), || async {
        received.lock().unwrap().first().cloned()
    })
    .await;
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message["user_id"], buyer);
    assert_eq!(message["kind"], "order_paid");
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

/// A handler with a bug: it panics on every event.
struct Panicky;

#[async_trait::async_trait]
impl Handler for Panicky {
    fn worker(&self) -> Worker {
        Worker::Savings
    }
    async fn apply(&self, _: &DatabaseTransaction, _: &Incoming) -> Result<Effects, HandlerError> {
        panic!("a bug in the handler")
    }
}

#[tokio::test]
async fn a_panicking_handler_dead_letters_the_event_and_keeps_consuming() {
    let app = spawn_app_with(Options {
        env: vec![("MEMBERLINE__WORKERS__PREFETCH", "1".to_owned())],
        ..Default::default()
    })
    .await;
    start_worker(
        &app.db,
        &app.settings,
        Arc::new(Panicky),
        app.worker_metrics.clone(),
        &app.shutdown,
    );
    let buyer = app.create_user("Unlucky", 100_000, 0).await;
    let token = app.user_token(buyer);
    // With a prefetch of 1, a delivery left unsettled would stop the worker after the first.
    for i in 0..3 {
        app.order(
            &token,
            &format!("panic-{i}"),
            json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
        )
        .await;
    }
    let admin = app.token(0, Role::Admin);
    let list = eventually(
        "all three dead-lettered",
        Duration::from_secs(20),
        || async {
            let (_, list) = app
                .get(Some(&admin), "/v1/admin/dead-letters?worker=savings")
                .await;
            (list["dead_letters"]
                .as_array()
                .is_some_and(|d| d.len() == 3))
            .then_some(list)
        },
    )
    .await;
    assert!(
        list["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("handler panicked: a bug in the handler")
    );
}
