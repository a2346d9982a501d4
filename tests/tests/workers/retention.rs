//! Retention: old delivery records are pruned in batches while recent and unpublished ones stay,
//! and a replay of a pruned event still applies none of its effects twice.

use memberline_platform::metrics::DeliveryOutcome;
use memberline_schema::topology::Worker;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use memberline_workers::retention::{Pruned, prune};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use std::time::Duration;

/// Runs `sql` and returns how many rows it changed.
async fn exec(app: &TestApp, sql: &str) -> u64 {
    app.db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows_affected()
}

/// The ids of every outbox event about `order`: its `order.paid` and the events it caused.
fn events_of(order: i64) -> String {
    format!("SELECT id FROM outbox WHERE (payload->'payload'->>'order_id')::bigint = {order}")
}

/// Buys a monthly membership with balance under idempotency key `key` and waits until all four
/// effects, and the inbox message of the membership that follows, have landed.
async fn buy_and_settle(app: &TestApp, buyer: i64, key: &str) -> i64 {
    let (status, order) = app
        .order(
            &app.user_token(buyer),
            key,
            json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_i64().unwrap();
    for (what, table) in [
        ("membership period", "membership_periods"),
        ("reward entry", "point_ledger"),
        ("savings entry", "savings_entries"),
        ("inbox messages", "notifications"),
    ] {
        let want = if table == "notifications" { 2 } else { 1 };
        app.wait_for_count(
            &format!("order {id}: {what}"),
            &format!("SELECT count(*) FROM {table} WHERE order_id = {id}"),
            want,
        )
        .await;
    }
    app.wait_for_count(
        &format!("order {id}: every event published"),
        &format!(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND id IN ({})",
            events_of(id)
        ),
        0,
    )
    .await;
    id
}

/// Rows in the four pruned tables: outbox, consumed_events, console_feed, idempotency_keys.
async fn table_sizes(app: &TestApp) -> [i64; 4] {
    let mut sizes = [0; 4];
    for (size, table) in sizes.iter_mut().zip([
        "outbox",
        "consumed_events",
        "console_feed",
        "idempotency_keys",
    ]) {
        *size = app.scalar(&format!("SELECT count(*) FROM {table}")).await;
    }
    sizes
}

/// Every effect row of `order`, per table, in a fixed order.
async fn effects_of(app: &TestApp, order: i64) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for (what, sql) in [
        (
            "membership periods",
            format!("SELECT count(*) FROM membership_periods WHERE order_id = {order}"),
        ),
        (
            "reward entries",
            format!(
                "SELECT count(*) FROM point_ledger WHERE order_id = {order} \
                 AND reason = 'purchase_reward'"
            ),
        ),
        (
            "savings entries",
            format!("SELECT count(*) FROM savings_entries WHERE order_id = {order}"),
        ),
        (
            "order_paid inbox messages",
            format!(
                "SELECT count(*) FROM notifications WHERE order_id = {order} \
                 AND kind = 'order_paid'"
            ),
        ),
        (
            "outbox events",
            format!("SELECT count(*) FROM ({}) e", events_of(order)),
        ),
    ] {
        counts.push((what, app.scalar(&sql).await));
    }
    counts
}

#[tokio::test]
async fn pruning_deletes_only_old_delivery_records_and_a_replayed_pruned_event_applies_nothing_twice()
 {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Kept and pruned", 1_000_000, 0).await;
    let old = [
        buy_and_settle(&app, buyer, "old-1").await,
        buy_and_settle(&app, buyer, "old-2").await,
    ];
    let recent = buy_and_settle(&app, buyer, "recent").await;
    // Every message recorded for the buyer has been sent (by the workers' channel sender).
    eventually("messages sent", Duration::from_secs(20), || async {
        let waiting = app
            .scalar("SELECT count(*) FROM channel_deliveries WHERE delivered_at IS NULL")
            .await;
        let sent = app.scalar("SELECT count(*) FROM channel_deliveries").await;
        (waiting == 0 && sent >= 3).then_some(())
    })
    .await;
    let replayed = app
        .outbox_payloads("order.paid")
        .await
        .into_iter()
        .find(|env| env["payload"]["order_id"] == old[0])
        .expect("the first order's order.paid event");

    // Arrange: the two old orders' records are past every window (7 days for published outbox
    // rows, 30 for consumed events and console entries, 24 hours for idempotency keys); the
    // recent order's are well inside them.
    let old_events = format!("{} UNION {}", events_of(old[0]), events_of(old[1]));
    let aged = Pruned {
        outbox: exec(
            &app,
            &format!(
                "UPDATE outbox SET published_at = published_at - interval '8 days' \
                 WHERE id IN ({old_events})"
            ),
        )
        .await,
        consumed_events: exec(
            &app,
            &format!(
                "UPDATE consumed_events SET consumed_at = consumed_at - interval '31 days' \
                 WHERE event_id IN ({old_events})"
            ),
        )
        .await,
        console_feed: exec(
            &app,
            &format!(
                "UPDATE console_feed SET created_at = created_at - interval '31 days' \
                 WHERE event_id IN ({old_events})"
            ),
        )
        .await,
        idempotency_keys: exec(
            &app,
            "UPDATE idempotency_keys SET created_at = created_at - interval '2 days' \
             WHERE key LIKE 'old-%'",
        )
        .await,
        channel_deliveries: exec(
            &app,
            &format!(
                "UPDATE channel_deliveries SET delivered_at = delivered_at - interval '31 days' \
                 WHERE left(message_id, 36) IN \
                 (SELECT id::text FROM outbox WHERE id IN ({old_events}))"
            ),
        )
        .await,
        // Stream tickets: one that expired two days ago goes, a live one stays.
        stream_tickets: exec(
            &app,
            "INSERT INTO stream_tickets (hash, user_id, role, expires_at) VALUES \
             ('old', 1, 'merchant', now() - interval '2 days'), \
             ('new', 1, 'merchant', now() + interval '30 seconds')",
        )
        .await
            - 1,
    };
    assert!(aged.outbox >= 4, "two events per old order: {aged:?}");
    assert!(
        aged.consumed_events >= 10,
        "five consumptions per old order: {aged:?}"
    );
    assert_eq!(aged.console_feed, 2, "one console entry per old order");
    assert_eq!(aged.idempotency_keys, 2);
    assert!(
        aged.channel_deliveries >= 2,
        "a message per old order at least: {aged:?}"
    );
    let recent_events = events_of(recent);
    exec(
        &app,
        &format!(
            "UPDATE outbox SET published_at = published_at - interval '6 days' \
             WHERE id IN ({recent_events})"
        ),
    )
    .await;
    exec(
        &app,
        &format!(
            "UPDATE consumed_events SET consumed_at = consumed_at - interval '29 days' \
             WHERE event_id IN ({recent_events})"
        ),
    )
    .await;
    exec(
        &app,
        "UPDATE idempotency_keys SET created_at = created_at - interval '23 hours' \
         WHERE key = 'recent'",
    )
    .await;
    // An event that was never published is never pruned, however old (here a quarantined one).
    exec(
        &app,
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key, \
         correlation_id, payload, created_at, next_attempt_at, attempts, quarantined_at) \
         VALUES (gen_random_uuid(), 'order', '0', 'order.paid', 'order.paid.v1', \
         gen_random_uuid(), '{}', now() - interval '90 days', now() - interval '90 days', 25, \
         now() - interval '89 days')",
    )
    .await;
    let before = table_sizes(&app).await;

    // Act: two rows per statement, so every table takes several batches.
    let mut settings = app.settings.retention.clone();
    settings.batch_size = 2;
    let pruned = prune(&app.db, &settings).await.expect("retention prunes");

    // Assert: exactly the aged rows went.
    assert_eq!(pruned, aged);
    assert_eq!(
        table_sizes(&app).await,
        [
            before[0] - aged.outbox as i64,
            before[1] - aged.consumed_events as i64,
            before[2] - aged.console_feed as i64,
            before[3] - aged.idempotency_keys as i64,
        ]
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM outbox WHERE id IN ({old_events})"
        ))
        .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        1,
        "the unpublished row stays"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM consumed_events WHERE event_id IN ({recent_events})"
        ))
        .await,
        5,
        "the recent order's consumptions stay"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'recent'")
            .await,
        1
    );
    assert_eq!(
        prune(&app.db, &settings).await.expect("a second pass"),
        Pruned::default(),
        "nothing left to prune"
    );

    // A replay of the pruned order.paid event: no consumer remembers it any more, and still
    // every effect is refused by its business key.
    let effects_before = effects_of(&app, old[0]).await;
    let user_before = app
        .scalar(&format!(
            "SELECT points * 1000 + purchase_count FROM users WHERE id = {buyer}"
        ))
        .await;
    app.publish_event("order.paid.v1", replayed.to_string().as_bytes())
        .await;
    eventually(
        "every consumer refused the replay",
        Duration::from_secs(20),
        || async {
            Worker::ALL
                .iter()
                .all(|w| {
                    app.worker_metrics
                        .deliveries(w.as_str(), DeliveryOutcome::Duplicate)
                        == 1
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(effects_of(&app, old[0]).await, effects_before);
    assert_eq!(
        effects_before,
        vec![
            ("membership periods", 1),
            ("reward entries", 1),
            ("savings entries", 1),
            ("order_paid inbox messages", 1),
            ("outbox events", 0),
        ],
        "one of each effect, and no follow-up event enqueued again"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT points * 1000 + purchase_count FROM users WHERE id = {buyer}"
        ))
        .await,
        user_before,
        "the buyer's points and purchase count are unchanged"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM console_feed WHERE (payload->>'order_id')::bigint = {}",
            old[0]
        ))
        .await,
        0,
        "no console entry for the replay"
    );
    for w in Worker::ALL {
        assert_eq!(
            app.worker_metrics
                .deliveries(w.as_str(), DeliveryOutcome::Applied),
            if w == Worker::Notifier { 6 } else { 3 },
            "{w:?}: only the three purchases were applied"
        );
    }
}

#[tokio::test]
async fn the_workers_process_prunes_on_its_own_schedule_pass_after_pass_and_stops_on_sigterm() {
    let app = spawn_app_with(Options::default()).await;
    let buyer = app.create_user("Ticket holder", 0, 0).await;
    let ticket = |hash: &str, expires: &str| {
        format!(
            "INSERT INTO stream_tickets (hash, user_id, role, expires_at) \
             VALUES ('{hash}', {buyer}, 'user', {expires})"
        )
    };
    let left = |hash: &str| format!("SELECT count(*) FROM stream_tickets WHERE hash = '{hash}'");
    exec(&app, &ticket("expired-1", "now() - interval '2 days'")).await;
    exec(&app, &ticket("live", "now() + interval '30 seconds'")).await;
    // The real process, with its retention job on a one-second schedule.
    let mut workers = memberline_tests::spawn_workers(
        &app,
        &[
            ("MEMBERLINE__RETENTION__ENABLED", "true".to_owned()),
            ("MEMBERLINE__RETENTION__INTERVAL_SECS", "1".to_owned()),
        ],
    );
    app.wait_for_count("the first pass pruned", &left("expired-1"), 0)
        .await;
    // Expired after the first pass: only a later pass of the loop can take it.
    exec(&app, &ticket("expired-2", "now() - interval '2 days'")).await;
    app.wait_for_count("a later pass pruned", &left("expired-2"), 0)
        .await;
    assert_eq!(app.scalar(&left("live")).await, 1, "a live ticket is kept");

    // SIGTERM: the loop stops with the process, at once.
    std::process::Command::new("kill")
        .args(["-TERM", &workers.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("the process exits", Duration::from_secs(15), || {
        let status = workers.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "clean exit, got {status:?}");
}
