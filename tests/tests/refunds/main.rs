//! Refunds and admin grants suite: every effect of an order reversed exactly once through the
//! same pipeline (real PostgreSQL, RabbitMQ, the workers and the provider emulator), and
//! memberships granted and revoked by an admin, audited.

mod grants;
mod money;
mod reversal;

use memberline_tests::provider::{Emulator, spawn_app_with_provider};
use memberline_tests::{Options, TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

/// A gateway with the workers and the emulator (both providers), the lifecycle job every second.
pub async fn app() -> (TestApp, Emulator) {
    spawn_app_with_provider(Options {
        workers: true,
        env: vec![(
            "MEMBERLINE__PAYMENTS__LIFECYCLE_INTERVAL_SECS",
            "1".to_owned(),
        )],
        ..Default::default()
    })
    .await
}

/// Buys `plan` with `pay_method`; the 201 body.
pub async fn buy(app: &TestApp, token: &str, key: &str, plan: &str, pay_method: &str) -> Value {
    let plan_id = app.plan_id(plan).await;
    let (status, order) = app
        .order(
            token,
            key,
            json!({"plan_id": plan_id, "pay_method": pay_method}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    order
}

/// Waits until every worker applied the order's `order.paid.v1`.
pub async fn effects_applied(app: &TestApp, order_id: i64) {
    wait_consumed(app, "order.paid", order_id, 4).await;
}

/// Waits until the order's reversal was applied by membership, ledger and savings, and the
/// notifier told the buyer.
pub async fn reversed(app: &TestApp, order_id: i64) {
    wait_consumed(app, "order.refunded", order_id, 4).await;
}

async fn wait_consumed(app: &TestApp, event_type: &str, order_id: i64, consumers: i64) {
    let sql = format!(
        "SELECT count(*) FROM consumed_events c JOIN outbox o ON o.id = c.event_id \
         WHERE o.event_type = '{event_type}' AND o.aggregate_id = '{order_id}'"
    );
    eventually(
        &format!("{event_type} of order {order_id} applied by {consumers} workers"),
        Duration::from_secs(30),
        || async { (app.scalar(&sql).await >= consumers).then_some(()) },
    )
    .await;
}

/// How many `routing_key` events the outbox holds for order `order_id`.
pub async fn events(app: &TestApp, routing_key: &str, order_id: i64) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM outbox WHERE routing_key = '{routing_key}' \
         AND aggregate_id = '{order_id}'"
    ))
    .await
}
