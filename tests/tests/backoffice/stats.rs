//! `GET /v1/admin/stats`: rollups kept by the membership worker from the events, exactly once,
//! and rebuilt from the orders to the same figures.

use memberline_gateway::http::auth::Role;
use memberline_platform::metrics::DeliveryOutcome;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

async fn today(app: &TestApp) -> Value {
    let (status, stats) = app
        .get(Some(&app.token(800_001, Role::Merchant)), "/v1/admin/stats")
        .await;
    assert_eq!(status, 200, "{stats}");
    stats
}

fn last_day(stats: &Value) -> Value {
    stats["days"].as_array().unwrap().last().unwrap().clone()
}

fn sales(day: &Value, method: &str) -> Value {
    day["sales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pay_method"] == method)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn settled(app: &TestApp, what: &str, sql: &str, want: i64) {
    eventually(what, Duration::from_secs(30), || async {
        (app.scalar(sql).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_dashboard_counts_each_sale_once_a_refund_subtracts_and_a_rebuild_gives_the_same_figures()
 {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let monthly = app.plan_id("monthly").await;
    let ada = app.create_user("Ada", 100_000, 0).await;
    let bob = app.create_user("Bob", 0, 100_000).await;
    let mut orders = Vec::new();
    for (buyer, key, method) in [
        (ada, "a1", "balance"),
        (ada, "a2", "balance"),
        (bob, "b1", "points"),
    ] {
        let (status, order) = app
            .order(
                &app.user_token(buyer),
                key,
                json!({"plan_id": monthly, "pay_method": method}),
            )
            .await;
        assert_eq!(status, 201, "{order}");
        orders.push(order);
    }
    settled(
        &app,
        "the membership worker applied the three orders",
        "SELECT count(*) FROM stats_counted WHERE fact = 'paid'",
        3,
    )
    .await;
    let day = last_day(&today(&app).await);
    let fen = orders[0]["amount_fen"].as_i64().unwrap();
    assert_eq!(sales(&day, "balance")["paid_orders"], 2);
    assert_eq!(sales(&day, "balance")["revenue_fen"], 2 * fen);
    assert_eq!(
        sales(&day, "points")["revenue_points"],
        orders[2]["amount_points"]
    );
    assert_eq!(day["paid_orders"], 3);
    assert_eq!(day["new_members"], 2);
    assert_eq!(day["renewals"], 1);
    assert_eq!(day["active_at_end"], 2);

    // The same order.paid.v1 again, and a copy with a fresh event id: nothing more counts.
    let paid = app.outbox_payloads("order.paid").await;
    let mut copy = paid[0].clone();
    copy["event_id"] = json!(uuid::Uuid::now_v7());
    for env in [&paid[0], &copy] {
        app.publish_event("order.paid.v1", env.to_string().as_bytes())
            .await;
    }
    eventually(
        "the membership worker sees both copies",
        Duration::from_secs(30),
        || async {
            (app.worker_metrics
                .deliveries("membership", DeliveryOutcome::Duplicate)
                >= 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        last_day(&today(&app).await),
        day,
        "a replayed event counts once"
    );

    // Bob's only order refunded: his points come back, and his membership with its count goes.
    let (status, body) = app
        .refund(orders[2]["id"].as_i64().unwrap(), "r", "changed his mind")
        .await;
    assert_eq!(status, 200, "{body}");
    settled(
        &app,
        "the refund is counted",
        "SELECT count(*) FROM stats_counted WHERE fact = 'refunded'",
        1,
    )
    .await;
    let stats = today(&app).await;
    let day = last_day(&stats);
    assert_eq!(sales(&day, "points")["refunds"], 1);
    assert_eq!(
        sales(&day, "points")["refunded_points"],
        orders[2]["amount_points"]
    );
    assert_eq!(day["refunds"], 1);
    assert_eq!(day["new_members"], 1);
    assert_eq!(day["active_at_end"], 1);
    assert_eq!(stats["expiring_next_7_days"], 0, "Ada's 60 days end later");

    let built = rollups(&app).await;
    let rebuilt = memberline_orders::stats::rebuild(&app.db, app.settings.shop.time_zone)
        .await
        .unwrap();
    assert_eq!(
        (rebuilt.paid_orders, rebuilt.refunds, rebuilt.members),
        (3, 1, 1)
    );
    assert_eq!(
        rollups(&app).await,
        built,
        "the rebuild reproduces every rollup row"
    );
    assert_eq!(
        today(&app).await,
        stats,
        "the rebuild reproduces the rollups exactly"
    );
}

#[tokio::test]
async fn a_range_backwards_or_longer_than_a_year_is_refused() {
    let app = spawn_app_with(Options::default()).await;
    let admin = app.admin_token();
    for path in [
        "/v1/admin/stats?from=2026-03-02&to=2026-03-01",
        "/v1/admin/stats?from=2025-01-01&to=2026-03-01",
    ] {
        let (status, body) = app.get(Some(&admin), path).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (422, json!("invalid_range")),
            "{path}"
        );
    }
    let (status, body) = app
        .get(
            Some(&admin),
            "/v1/admin/stats?from=2026-02-01&to=2026-03-02",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["days"].as_array().unwrap().len(), 30);
    let (status, _) = app
        .get(Some(&admin), "/v1/admin/stats?from=yesterday")
        .await;
    assert_eq!(status, 400);
}

/// The rollups as stored, shards added up: what a rebuild must reproduce.
async fn rollups(app: &TestApp) -> (String, String) {
    let sales = app
        .text_scalar(
            "SELECT coalesce(string_agg(format('%s %s %s %s %s %s %s %s', day, pay_method, \
                 paid_orders, revenue_fen, revenue_points, refunds, refunded_fen, \
                 refunded_points), '; ' ORDER BY day, pay_method), '') \
             FROM (SELECT day, pay_method, sum(paid_orders) AS paid_orders, \
                 sum(revenue_fen) AS revenue_fen, sum(revenue_points) AS revenue_points, \
                 sum(refunds) AS refunds, sum(refunded_fen) AS refunded_fen, \
                 sum(refunded_points) AS refunded_points \
                 FROM stats_sales GROUP BY day, pay_method) s \
             WHERE paid_orders <> 0 OR refunds <> 0",
        )
        .await;
    let members = app
        .text_scalar(
            "SELECT coalesce(string_agg(format('%s %s %s %s %s', day, new_members, renewals, \
                 starts, lapses), '; ' ORDER BY day), '') \
             FROM (SELECT day, sum(new_members) AS new_members, sum(renewals) AS renewals, \
                 sum(starts) AS starts, sum(lapses) AS lapses FROM stats_members GROUP BY day) m \
             WHERE new_members <> 0 OR renewals <> 0 OR starts <> 0 OR lapses <> 0",
        )
        .await;
    (sales, members)
}

async fn rebuilt_the_same(app: &TestApp) {
    let built = rollups(app).await;
    memberline_orders::stats::rebuild(&app.db, app.settings.shop.time_zone)
        .await
        .unwrap();
    assert_eq!(
        rollups(app).await,
        built,
        "the rebuild reproduces every rollup row"
    );
}

#[tokio::test]
async fn a_refund_after_a_revocation_and_a_refund_before_its_payment_both_count_and_rebuild_the_same()
 {
    // No relay: the test delivers the events itself, in the order it wants.
    let app = spawn_app_with(Options {
        workers: true,
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let monthly = app.plan_id("monthly").await;
    let revoked = app.create_user("Revoked", 100_000, 0).await;
    let early = app.create_user("Early", 100_000, 0).await;
    let mut ids = Vec::new();
    for (buyer, key) in [(revoked, "r"), (early, "e")] {
        let (status, order) = app
            .order(
                &app.user_token(buyer),
                key,
                json!({"plan_id": monthly, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(status, 201, "{order}");
        ids.push(order["id"].as_i64().unwrap());
    }
    let paid = app.outbox_payloads("order.paid").await;
    let publish = |key: &'static str, env: Value| {
        let app = &app;
        async move { app.publish_event(key, env.to_string().as_bytes()).await }
    };
    // The first buyer: paid, then revoked, then refunded.
    publish("order.paid.v1", paid[0].clone()).await;
    settled(
        &app,
        "the first sale",
        "SELECT count(*) FROM stats_counted",
        1,
    )
    .await;
    let (status, body) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/admin/users/{revoked}/membership"),
            &app.admin_token(),
            Some("revoke"),
            json!({"reason": "abuse"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let revocation = app.outbox_payloads("membership.revoked").await;
    publish("membership.revoked.v1", revocation[0].clone()).await;
    settled(
        &app,
        "the revocation",
        "SELECT count(*) FROM membership_periods WHERE removed_by = 'revoke'",
        1,
    )
    .await;
    let (status, body) = app.refund(ids[0], "refund-1", "goodwill").await;
    assert_eq!(status, 200, "{body}");
    // The second buyer: refunded before the paid event reaches the workers.
    let (status, body) = app.refund(ids[1], "refund-2", "mistake").await;
    assert_eq!(status, 200, "{body}");
    let refunds = app.outbox_payloads("order.refunded").await;
    for env in &refunds {
        publish("order.refunded.v1", env.clone()).await;
    }
    publish("order.paid.v1", paid[1].clone()).await;
    settled(
        &app,
        "both sales and both refunds counted",
        "SELECT count(*) FROM stats_counted",
        4,
    )
    .await;
    let day = last_day(&today(&app).await);
    assert_eq!(sales(&day, "balance")["paid_orders"], 2);
    assert_eq!(sales(&day, "balance")["refunds"], 2);
    assert_eq!(
        day["new_members"], 1,
        "the revoked member was one until revoked"
    );
    assert_eq!(day["lapsed"], 1, "and lapsed when revoked");
    assert_eq!(day["active_at_end"], 0);
    rebuilt_the_same(&app).await;
}
