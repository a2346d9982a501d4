//! A poison outbox row (one the broker can never accept) is retried with backoff and quarantined
//! without holding up the events around it; operators list and release it through the admin API.

use chrono::{DateTime, Utc};
use memberline_gateway::http::auth::Role;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// First retry delay of a failed row, in milliseconds; the second is twice that (the cap).
const RETRY_BASE_MS: i64 = 500;
const RETRY_MAX_MS: i64 = 1000;

/// A gateway whose relay retries a failed row after 500 ms, then 1 s, and quarantines it after
/// three failed attempts. The delays are long enough for a test to see every attempt.
async fn app_quarantining_after_three_attempts() -> TestApp {
    spawn_app_with(Options {
        env: vec![
            (
                "MEMBERLINE__RELAY__RETRY_BASE_MS",
                RETRY_BASE_MS.to_string(),
            ),
            ("MEMBERLINE__RELAY__RETRY_MAX_MS", RETRY_MAX_MS.to_string()),
            (
                "MEMBERLINE__RELAY__QUARANTINE_AFTER_ATTEMPTS",
                "3".to_owned(),
            ),
            ("MEMBERLINE__RELAY__POLL_INTERVAL_MS", "100".to_owned()),
        ],
        ..Default::default()
    })
    .await
}

/// A routing key longer than AMQP's 255-byte short string: no broker can ever accept it.
fn poison_routing_key() -> String {
    format!("order.paid.v1.{}", "x".repeat(300))
}

/// Inserts a poison outbox row dated a minute back, so it heads every batch the relay takes.
async fn insert_poison(app: &TestApp) -> Uuid {
    let id = Uuid::now_v7();
    app.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, routing_key, \
             correlation_id, payload, created_at, next_attempt_at) \
             VALUES ($1, 'order', '0', 'order.paid', $2, gen_random_uuid(), $3, \
             now() - interval '1 minute', now() - interval '1 minute')",
            [
                id.into(),
                poison_routing_key().into(),
                json!({"event_id": id, "poison": true}).into(),
            ],
        ))
        .await
        .expect("poison row inserted");
    id
}

/// One outbox row as the relay left it.
#[derive(Clone, Debug)]
struct RowState {
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    quarantined_at: Option<DateTime<Utc>>,
    published_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

async fn row_state(app: &TestApp, id: Uuid) -> RowState {
    let row = app
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT attempts, next_attempt_at, quarantined_at, published_at, last_error \
             FROM outbox WHERE id = $1",
            [id.into()],
        ))
        .await
        .unwrap()
        .expect("the outbox row exists");
    RowState {
        attempts: row.try_get("", "attempts").unwrap(),
        next_attempt_at: row.try_get("", "next_attempt_at").unwrap(),
        quarantined_at: row.try_get("", "quarantined_at").unwrap(),
        published_at: row.try_get("", "published_at").unwrap(),
        last_error: row.try_get("", "last_error").unwrap(),
    }
}

/// Waits until row `id` is quarantined, and returns its state then.
async fn quarantined(app: &TestApp, id: Uuid, after: Option<DateTime<Utc>>) -> RowState {
    eventually(
        "the poison row is quarantined",
        Duration::from_secs(20),
        || async {
            let state = row_state(app, id).await;
            state
                .quarantined_at
                .is_some_and(|at| after.is_none_or(|after| at > after))
                .then_some(state)
        },
    )
    .await
}

async fn gateway_metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// POST /v1/admin/outbox/{id}/release with `token`.
async fn release(app: &TestApp, token: &str, id: &str) -> (u16, serde_json::Value) {
    let res = app
        .client
        .post(app.url(&format!("/v1/admin/outbox/{id}/release")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn a_poison_row_is_retried_with_backoff_and_quarantined_while_healthy_events_flow_past_it() {
    let app = app_quarantining_after_three_attempts().await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Beside the poison", 1_000_000, 0).await;
    let poison = insert_poison(&app).await;

    // Act: healthy purchases committed behind the poison row.
    app.buy_passes(buyer, 3, "healthy").await;

    // Every healthy event is published promptly, while the poison row keeps failing.
    let seen = tap.collect(3, Duration::from_secs(5)).await;
    let ids: HashSet<String> = seen
        .iter()
        .map(|m| m.body["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "the healthy events were published: {seen:?}");

    // Each failed attempt pushes the next one further out (500 ms, then 1 s); the third
    // quarantines the row. Every attempt count is watched as it goes by.
    let attempts = RefCell::new(BTreeMap::new());
    let last = eventually(
        "the poison row is quarantined",
        Duration::from_secs(20),
        || async {
            let state = row_state(&app, poison).await;
            attempts
                .borrow_mut()
                .entry(state.attempts)
                .or_insert_with(|| state.clone());
            state.quarantined_at.is_some().then_some(state)
        },
    )
    .await;
    let attempts = attempts.into_inner();
    assert_eq!(last.attempts, 3, "quarantined at the third attempt");
    assert!(last.published_at.is_none());
    let error = last.last_error.clone().expect("the last error is kept");
    assert!(error.contains("routing key"), "{error}");
    let (first, second) = (
        attempts.get(&1).expect("the first failure was seen"),
        attempts.get(&2).expect("the second failure was seen"),
    );
    assert!(first.quarantined_at.is_none() && second.quarantined_at.is_none());
    // An attempt happens no earlier than the row's next_attempt_at, and schedules the next one
    // its own delay later: the gaps between the scheduled times are at least the delays.
    assert!(
        second.next_attempt_at - first.next_attempt_at
            >= chrono::Duration::milliseconds(RETRY_BASE_MS * 2),
        "second retry backs off: {first:?} then {second:?}"
    );
    assert!(
        last.next_attempt_at - second.next_attempt_at
            >= chrono::Duration::milliseconds(RETRY_MAX_MS),
        "third attempt waited for the capped delay: {second:?} then {last:?}"
    );

    // A quarantined row is left alone: later events are published, it is not tried again.
    app.buy_passes(buyer, 1, "later").await;
    assert!(
        tap.next(Duration::from_secs(5)).await.is_some(),
        "an event after the quarantine is published"
    );
    // The tap can see a message before the relay commits it as published.
    app.wait_for_count(
        "every other row is marked published",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND quarantined_at IS NULL",
        0,
    )
    .await;
    assert_eq!(row_state(&app, poison).await.attempts, 3);

    let metrics = gateway_metrics(&app).await;
    assert!(
        metrics.contains("memberline_outbox_quarantined 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("memberline_outbox_unpublished 0"),
        "a quarantined row does not count as waiting: {metrics}"
    );

    let (status, body) = app
        .get(
            Some(&app.token(0, Role::Admin)),
            "/v1/admin/outbox/quarantined",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["id"], poison.to_string());
    assert_eq!(events[0]["attempts"], 3);
    assert_eq!(events[0]["event_type"], "order.paid");
    assert_eq!(events[0]["routing_key"], poison_routing_key());
    assert_eq!(events[0]["last_error"], error);
    assert!(events[0]["quarantined_at"].is_string(), "{body}");

    let (status, body) = app
        .get(Some(&app.user_token(buyer)), "/v1/admin/outbox/quarantined")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
}

#[tokio::test]
async fn releasing_a_quarantined_row_starts_its_attempts_again_and_only_quarantined_rows_can_be_released()
 {
    let app = app_quarantining_after_three_attempts().await;
    let mut tap = app.tap("order.paid.v1").await;
    let buyer = app.create_user("Operator's buyer", 1_000_000, 0).await;
    let poison = insert_poison(&app).await;
    let first = quarantined(&app, poison, None).await;
    assert_eq!(first.attempts, 3);
    app.buy_passes(buyer, 1, "healthy").await;
    let healthy = tap
        .next(Duration::from_secs(5))
        .await
        .expect("the healthy event is published");
    let healthy_id = healthy.body["event_id"].as_str().unwrap().to_owned();
    app.wait_for_count(
        "the healthy row is marked published",
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
        1,
    )
    .await;
    let admin = app.token(0, Role::Admin);

    // Only a quarantined row can be released, and only by an admin.
    for id in [
        healthy_id,
        Uuid::now_v7().to_string(),
        "not-a-uuid".to_owned(),
    ] {
        let (status, body) = release(&app, &admin, &id).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["error"]["code"], "quarantined_event_not_found");
    }
    let (status, body) = release(&app, &app.user_token(buyer), &poison.to_string()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        row_state(&app, poison).await.quarantined_at,
        first.quarantined_at
    );

    // Released as it is, it fails again: three fresh attempts (not a fourth) quarantine it anew.
    let (status, body) = release(&app, &admin, &poison.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], poison.to_string());
    let again = quarantined(&app, poison, first.quarantined_at).await;
    assert_eq!(again.attempts, 3, "the attempts started again from zero");

    // Repaired by an operator and released, it is published at once.
    app.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbox SET routing_key = 'order.paid.v1' WHERE id = $1",
            [poison.into()],
        ))
        .await
        .unwrap();
    let (status, _) = release(&app, &admin, &poison.to_string()).await;
    assert_eq!(status, 200);
    let published = tap
        .next(Duration::from_secs(5))
        .await
        .expect("the released row is published");
    assert_eq!(published.body["poison"], true);
    assert_eq!(published.message_id, Some(poison.to_string()));
    let state = eventually(
        "the row is marked published",
        Duration::from_secs(5),
        || async {
            let state = row_state(&app, poison).await;
            state.published_at.is_some().then_some(state)
        },
    )
    .await;
    assert!(state.quarantined_at.is_none());
    let (_, body) = app.get(Some(&admin), "/v1/admin/outbox/quarantined").await;
    assert_eq!(body["events"], json!([]));
    let metrics = gateway_metrics(&app).await;
    assert!(
        metrics.contains("memberline_outbox_quarantined 0"),
        "{metrics}"
    );
}
