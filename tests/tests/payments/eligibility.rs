//! The eligibility rules applied again when a provider's payment arrives: a payment for a plan
//! the buyer can no longer have (a second permanent membership, a monthly plan after a permanent
//! one) closes its order unpaid and is refunded in full automatically; the buyer is told and the
//! merchant's console shows it.

use super::checkout::{order_becomes, qr_order};
use super::lifecycle::app_with_lifecycle;
use memberline_tests::provider::Emulator;
use memberline_tests::{TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

/// Checks that `order` was refused at payment: closed, never paid, refunded in full at the
/// provider, the buyer told why, and the console shown an automatic refund.
async fn refunded_automatically(
    app: &TestApp,
    emulator: &Emulator,
    token: &str,
    provider: &str,
    order: &Value,
) {
    let id = order["id"].as_i64().unwrap();
    let no = order["order_no"].as_str().unwrap();
    let closed = order_becomes(app, token, id, "closed").await;
    assert!(closed["paid_at"].is_null(), "{closed}");
    eventually(
        "the payment is refunded at the provider",
        Duration::from_secs(30),
        || async {
            let trade = emulator.trade(provider, no).await;
            (trade["refunded"] == trade["total"] && trade["refunded"] != json!(0)).then_some(())
        },
    )
    .await;
    let note = eventually("the buyer is told", Duration::from_secs(20), || async {
        let (_, inbox) = app.get(Some(token), "/v1/me/notifications").await;
        inbox["notifications"]
            .as_array()?
            .iter()
            .find(|n| n["kind"] == "late_payment_refunded" && n["order_id"] == id)
            .cloned()
    })
    .await;
    assert!(
        note["body"]
            .as_str()
            .unwrap()
            .contains("permanent membership"),
        "{note}"
    );
    eventually(
        "the console shows the automatic refund",
        Duration::from_secs(20),
        || async {
            let n = app
                .scalar(&format!(
                    "SELECT count(*) FROM console_feed WHERE kind = 'late_payment_refunded' \
                     AND payload ->> 'order_no' = '{no}' AND payload ->> 'why' = 'not_eligible'"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM outbox WHERE routing_key = 'order.paid.v1' AND aggregate_id = '{id}'"
        ))
        .await,
        0,
        "never paid"
    );
}

#[tokio::test]
async fn a_second_permanent_membership_paid_at_the_provider_is_refunded_automatically() {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Twice", 0, 0).await;
    let token = app.user_token(buyer);
    let permanent = app.plan_id("permanent").await;
    let mut orders = vec![];
    for key in ["perm-1", "perm-2"] {
        let (status, order) = app
            .order(
                &token,
                key,
                json!({"plan_id": permanent, "pay_method": "wechat"}),
            )
            .await;
        assert_eq!(status, 201, "both are placed: nothing is paid yet");
        orders.push(order);
    }
    let first = orders[0]["order_no"].as_str().unwrap();
    let second = orders[1]["order_no"].as_str().unwrap();
    assert_eq!(emulator.pay("wechat", first).await.0, 200);
    order_becomes(&app, &token, orders[0]["id"].as_i64().unwrap(), "paid").await;
    assert_eq!(emulator.pay("wechat", second).await.0, 200);
    refunded_automatically(&app, &emulator, &token, "wechat", &orders[1]).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["purchase_count"], 1, "{me}");
}

#[tokio::test]
async fn a_monthly_plan_paid_after_a_permanent_one_bought_with_balance_is_refunded_automatically() {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Upgraded", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = qr_order(&app, &token, "month-1", "alipay").await;
    let permanent = app.plan_id("permanent").await;
    let (status, body) = app
        .order(
            &token,
            "perm-1",
            json!({"plan_id": permanent, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let no = monthly["order_no"].as_str().unwrap();
    assert_eq!(emulator.pay("alipay", no).await.0, 200);
    refunded_automatically(&app, &emulator, &token, "alipay", &monthly).await;
}

#[tokio::test]
async fn two_permanent_memberships_paid_at_the_same_moment_charge_the_buyer_once() {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Double tap", 0, 0).await;
    let token = app.user_token(buyer);
    let permanent = app.plan_id("permanent").await;
    let mut orders = vec![];
    for (key, provider) in [("same-1", "wechat"), ("same-2", "alipay")] {
        let (status, order) = app
            .order(
                &token,
                key,
                json!({"plan_id": permanent, "pay_method": provider}),
            )
            .await;
        assert_eq!(status, 201, "{order}");
        orders.push(order);
    }
    let (no_1, no_2) = (
        orders[0]["order_no"].as_str().unwrap(),
        orders[1]["order_no"].as_str().unwrap(),
    );
    let (first, second) = tokio::join!(emulator.pay("wechat", no_1), emulator.pay("alipay", no_2));
    assert_eq!((first.0, second.0), (200, 200));

    let ids: Vec<i64> = orders.iter().map(|o| o["id"].as_i64().unwrap()).collect();
    let statuses = eventually(
        "both payments are judged",
        Duration::from_secs(20),
        || async {
            let mut statuses = vec![];
            for id in &ids {
                let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
                statuses.push(o["status"].as_str()?.to_owned());
            }
            statuses
                .iter()
                .all(|s| s == "paid" || s == "closed")
                .then_some(statuses)
        },
    )
    .await;
    let paid = statuses.iter().filter(|s| *s == "paid").count();
    assert_eq!(paid, 1, "exactly one is paid: {statuses:?}");
    let refused = statuses.iter().position(|s| s == "closed").unwrap();
    let provider = if refused == 0 { "wechat" } else { "alipay" };
    refunded_automatically(&app, &emulator, &token, provider, &orders[refused]).await;
}
