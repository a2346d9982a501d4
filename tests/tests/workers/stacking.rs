//! Concurrent stacking: one buyer's orders paid at once and applied by two membership consumers
//! side by side still lay their periods end to end, with no overlap and no gap.

use chrono::{DateTime, Utc};
use memberline_platform::metrics::DeliveryOutcome;
use memberline_platform::metrics::Metrics;
use memberline_platform::outbox::relay::Relay;
use memberline_schema::topology::Worker;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with, start_worker};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Consumers attached to `queue` (passive declare).
async fn consumers_of(queue: &str) -> u32 {
    memberline_tests::queue_state(queue).await.consumer_count()
}

/// One membership period with the days its order's plan grants.
#[derive(Debug)]
struct Period {
    order_id: i64,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    plan_days: i64,
}

/// The buyer's periods, earliest first, as stored (exact timestamps).
async fn periods_of(app: &TestApp, buyer: i64) -> Vec<Period> {
    app.db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT p.order_id, p.starts_at, p.ends_at, o.duration_days::bigint AS plan_days \
             FROM membership_periods p JOIN orders o ON o.id = p.order_id \
             WHERE p.user_id = $1 ORDER BY p.starts_at",
            [buyer.into()],
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| Period {
            order_id: r.try_get("", "order_id").unwrap(),
            starts_at: r.try_get("", "starts_at").unwrap(),
            ends_at: r
                .try_get::<Option<DateTime<Utc>>>("", "ends_at")
                .unwrap()
                .expect("a timed period has an end"),
            plan_days: r.try_get("", "plan_days").unwrap(),
        })
        .collect()
}

#[tokio::test]
async fn orders_paid_at_once_and_applied_by_two_consumers_stack_into_contiguous_periods() {
    // The relay is started by hand once both consumers listen, so the events reach the queue
    // together; a prefetch of 1 makes the broker hand them out to both consumers in turn.
    let app = spawn_app_with(Options {
        embedded_relay: false,
        env: vec![("MEMBERLINE__WORKERS__PREFETCH", "1".to_owned())],
        ..Default::default()
    })
    .await;
    let consumers = [Arc::new(Metrics::default()), Arc::new(Metrics::default())];
    for metrics in &consumers {
        let handler = memberline_workers::handler_for(Worker::Membership, &app.settings)
            .expect("membership handler");
        start_worker(
            &app.db,
            &app.settings,
            handler,
            metrics.clone(),
            &app.shutdown,
        );
    }
    let queue = app.topology.work_queue(Worker::Membership);
    eventually(
        "two consumers on the membership queue",
        Duration::from_secs(20),
        || async { (consumers_of(&queue).await == 2).then_some(()) },
    )
    .await;

    let buyer = app.create_user("Stacked at once", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let plans = [
        "monthly",
        "quarterly",
        "yearly",
        "monthly",
        "quarterly",
        "monthly",
    ];
    let mut plan_ids = Vec::new();
    for code in plans {
        plan_ids.push(app.plan_id(code).await);
    }
    let before = Utc::now();
    // Act: every order paid at once, and their events published in one batch.
    let placed = futures::future::join_all(plan_ids.iter().enumerate().map(|(i, plan)| {
        let token = token.clone();
        let app = &app;
        async move {
            app.order(
                &token,
                &format!("at-once-{i}"),
                json!({"plan_id": plan, "pay_method": "balance"}),
            )
            .await
        }
    }))
    .await;
    for (status, body) in &placed {
        assert_eq!(*status, 201, "{body}");
    }
    let relay = Relay::new(
        app.db.clone(),
        app.settings.amqp.url.expose().to_owned(),
        app.topology.clone(),
        app.settings.relay.clone(),
        Default::default(),
    );
    tokio::spawn(relay.run(app.shutdown.child_token()));
    app.wait_for_count(
        "a period per order",
        &format!("SELECT count(*) FROM membership_periods WHERE user_id = {buyer}"),
        plans.len() as i64,
    )
    .await;

    // Assert: end to end, exactly, each as long as its plan.
    let periods = periods_of(&app, buyer).await;
    assert!(
        periods[0].starts_at >= before,
        "a new member starts when paid: {periods:?}"
    );
    for pair in periods.windows(2) {
        assert_eq!(
            pair[1].starts_at, pair[0].ends_at,
            "order {} starts where order {} ends: {periods:?}",
            pair[1].order_id, pair[0].order_id
        );
    }
    for p in &periods {
        assert_eq!(
            p.ends_at - p.starts_at,
            chrono::Duration::days(p.plan_days),
            "order {} lasts its plan's days",
            p.order_id
        );
    }
    let total_days: i64 = periods.iter().map(|p| p.plan_days).sum();
    assert_eq!(total_days, 30 + 90 + 365 + 30 + 90 + 30);
    assert_eq!(
        periods.last().unwrap().ends_at - periods[0].starts_at,
        chrono::Duration::days(total_days),
        "no overlap, no gap"
    );
    // Both consumers took part, so the periods really were applied side by side.
    for (i, metrics) in consumers.iter().enumerate() {
        assert!(
            metrics.deliveries("membership", DeliveryOutcome::Applied) >= 1,
            "consumer {i} applied at least one order"
        );
    }
    assert_eq!(
        consumers
            .iter()
            .map(|m| m.deliveries("membership", DeliveryOutcome::Applied))
            .sum::<u64>(),
        plans.len() as u64
    );
}
