//! The outbox relay: broker outages, several relays at once, commit wake-ups, a drifted topology.

use memberline_platform::outbox::relay::Relay;
use memberline_tests::proxy::TcpProxy;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::ConnectionTrait;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn relay_for(app: &TestApp, poll_interval_ms: u64) -> Relay {
    let mut settings = app.settings.relay.clone();
    settings.poll_interval_ms = poll_interval_ms;
    Relay::new(
        app.db.clone(),
        app.settings.amqp.url.expose().to_owned(),
        app.topology.clone(),
        settings,
        Default::default(),
    )
}

#[tokio::test]
async fn with_the_broker_unreachable_purchases_succeed_and_each_event_is_published_once_it_is_back()
{
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        amqp_url: proxy.amqp_url(),
        ..Default::default()
    })
    .await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Outage buyer", 1_000_000, 0).await;

    proxy.down();
    app.buy_passes(buyer, 20, "outage").await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM orders WHERE status = 'paid'")
            .await,
        20
    );
    assert!(
        tap.next(Duration::from_millis(300)).await.is_none(),
        "nothing can be published while the broker is unreachable"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        20
    );

    proxy.up();
    let seen = tap.collect(20, Duration::from_secs(15)).await;
    assert_eq!(seen.len(), 20, "every waiting event is delivered");
    let ids: HashSet<String> = seen
        .iter()
        .map(|m| m.body["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 20, "each event exactly once");
    assert!(
        tap.next(Duration::from_millis(500)).await.is_none(),
        "no duplicates"
    );
    eventually(
        "every row is marked published",
        Duration::from_secs(5),
        || async {
            (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn several_relays_share_the_outbox_and_publish_each_event_once() {
    let app = spawn_app_with(Options {
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Bulk buyer", 10_000_000, 0).await;
    app.buy_passes(buyer, 60, "bulk").await;

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let mut relay_settings = app.settings.relay.clone();
        relay_settings.batch_size = 7; // many small batches, so the replicas really interleave
        let relay = Relay::new(
            app.db.clone(),
            app.settings.amqp.url.expose().to_owned(),
            app.topology.clone(),
            relay_settings,
            Default::default(),
        );
        relays.push(tokio::spawn(relay.run(shutdown.child_token())));
    }
    let seen = tap.collect(60, Duration::from_secs(15)).await;
    let ids: HashSet<String> = seen
        .iter()
        .map(|m| m.body["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen.len(), 60);
    assert_eq!(ids.len(), 60);
    assert!(
        tap.next(Duration::from_millis(500)).await.is_none(),
        "no duplicates"
    );
    shutdown.cancel();
    for r in relays {
        tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("a relay stops on shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn a_commit_wakes_the_relay_without_waiting_for_its_poll_interval() {
    let app = spawn_app_with(Options {
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Prompt", 100_000, 0).await;
    // A ten-minute poll: only LISTEN/NOTIFY can deliver the event in time.
    let relay = relay_for(&app, 600_000);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relay.run(shutdown.child_token()));
    // Let the relay finish its first (empty) batch and go to sleep on LISTEN.
    eventually(
        "the relay is connected and idle",
        Duration::from_secs(10),
        || async {
            let listening = app
                .scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                )
                .await;
            (listening > 0).then_some(())
        },
    )
    .await;
    app.buy_passes(buyer, 1, "prompt").await;
    let seen = tap.next(Duration::from_secs(5)).await;
    assert!(
        seen.is_some(),
        "the event arrived long before the poll interval"
    );
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_relay_configured_with_another_retry_ladder_than_the_broker_holds_still_delivers() {
    let app = spawn_app_with(Options {
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Drift", 100_000, 0).await;
    // The broker holds 100 ms / 200 ms tiers; this relay's configuration says otherwise, so
    // RabbitMQ refuses its declaration (PRECONDITION_FAILED).
    let mut topology = app.topology.clone();
    topology.retry_delays = vec![Duration::from_millis(150), Duration::from_millis(300)];
    let relay = Relay::new(
        app.db.clone(),
        app.settings.amqp.url.expose().to_owned(),
        topology,
        app.settings.relay.clone(),
        Default::default(),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relay.run(shutdown.child_token()));
    app.buy_passes(buyer, 2, "drift").await;
    assert_eq!(tap.collect(2, Duration::from_secs(10)).await.len(), 2);
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn an_embedded_relay_is_woken_by_purchases_without_a_notify_and_by_other_writers_through_one()
{
    // A ten-minute poll: only a wake-up can deliver an event in time.
    let app = spawn_app_with(Options {
        env: vec![("MEMBERLINE__RELAY__POLL_INTERVAL_MS", "600000".to_owned())],
        ..Default::default()
    })
    .await;
    let mut paid = app.tap("order.paid.v1").await;
    let mut other = app.tap("membership.changed.v1").await;
    let mut listener =
        sea_orm::sqlx::postgres::PgListener::connect(app.settings.database.url.expose())
            .await
            .expect("listener");
    listener
        .listen(memberline_platform::outbox::NOTIFY_CHANNEL)
        .await
        .expect("LISTEN");
    let buyer = app.create_user("Woken", 100_000, 0).await;

    // A purchase: its event is published at once, and PostgreSQL sent no notification for it.
    app.buy_passes(buyer, 1, "woken").await;
    assert!(
        paid.next(Duration::from_secs(5)).await.is_some(),
        "the purchase's event arrived long before the poll interval"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "the purchase's commit notified nobody"
    );

    // A row another writer commits (a worker's follow-up event, an operator's SQL) still
    // notifies, and the embedded relay publishes it on that notification.
    let id = uuid::Uuid::new_v4();
    app.db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key, \
             correlation_id, payload) \
             VALUES ($1, 'user', $2, 'membership.changed', 'membership.changed.v1', \
             gen_random_uuid(), $3)",
            [
                id.into(),
                buyer.to_string().into(),
                serde_json::json!({"event_id": id}).into(),
            ],
        ))
        .await
        .expect("a row written by another writer");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .is_ok_and(|n| n.is_ok()),
        "the other writer's commit notified the listeners"
    );
    assert!(
        other.next(Duration::from_secs(5)).await.is_some(),
        "the other writer's event arrived long before the poll interval"
    );
}
