//! After checkout: reconciliation finds a payment whose notification never came, expiry and a
//! buyer's cancel close the trade at the provider and here, a payment that still arrives after
//! the close is refunded automatically (once) and never pays, and a gateway that was down while
//! the provider notified is paid on the provider's next retry.

use super::checkout::{order_becomes, qr_order};
use memberline_orders::lifecycle::{self, LateRefund};
use memberline_orders::providers::Payments;
use memberline_schema::entities::order;
use memberline_schema::ids::OrderId;
use memberline_schema::states::Provider;
use memberline_tests::process::free_port;
use memberline_tests::provider::{Emulator, spawn_app_with_provider};
use memberline_tests::proxy::TcpProxy;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::{Value, json};
use std::time::Duration;

/// A gateway with the workers (and so the lifecycle job) checking due orders every second, and
/// reconciling an order one second after checkout.
pub async fn app_with_lifecycle() -> (TestApp, Emulator) {
    spawn_app_with_provider(Options {
        workers: true,
        env: vec![
            ("MEMBERLINE__PAYMENTS__RECONCILE_AFTER_SECS", "1".to_owned()),
            (
                "MEMBERLINE__PAYMENTS__LIFECYCLE_INTERVAL_SECS",
                "1".to_owned(),
            ),
        ],
        ..Default::default()
    })
    .await
}

fn ids(order: &Value) -> (i64, String) {
    (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    )
}

async fn events(app: &TestApp, routing_key: &str, id: i64) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM outbox WHERE routing_key = '{routing_key}' AND aggregate_id = '{id}'"
    ))
    .await
}

/// Moves the order's expiry to now (the shortest real TTL is a minute). Its next check is at
/// most `reconcile_after_secs` (1 s here) away and then finds it expired.
pub async fn expire_now(app: &TestApp, id: i64) {
    app.db
        .execute_unprepared(&format!(
            "UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = {id}"
        ))
        .await
        .unwrap();
}

/// Waits until the buyer's inbox holds a message of `kind`.
async fn told(app: &TestApp, token: &str, kind: &str) -> Value {
    eventually(
        &format!("the buyer is told ({kind})"),
        Duration::from_secs(20),
        || async {
            let (_, inbox) = app.get(Some(token), "/v1/me/notifications").await;
            inbox["notifications"]
                .as_array()?
                .iter()
                .find(|n| n["kind"] == kind)
                .cloned()
        },
    )
    .await
}

async fn a_dropped_notification_is_found_by_reconciliation(provider: &str) {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Silent", 0, 0).await;
    let token = app.user_token(buyer);
    emulator
        .notify_mode(json!({"provider": provider, "mode": "drop"}))
        .await;
    let (id, no) = ids(&qr_order(&app, &token, "quiet", provider).await);
    let (status, body) = emulator.pay(provider, &no).await;
    assert_eq!(status, 200, "{body}");

    let order = order_becomes(&app, &token, id, "paid").await;
    assert!(order["paid_at"].is_string());
    assert_eq!(
        app.text_scalar(&format!(
            "SELECT reason FROM order_status_history WHERE order_id = {id} AND to_status = 'paid'"
        ))
        .await,
        format!("paid_by_{provider}_query"),
        "the source of the payment is recorded"
    );
    assert_eq!(events(&app, "order.paid.v1", id).await, 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM payment_notifications")
            .await,
        0,
        "nothing reached us: the payment was found by query"
    );
    told(&app, &token, "membership_extended").await;
}

#[tokio::test]
async fn a_dropped_wechat_notification_is_found_by_reconciliation_and_pays_the_order() {
    a_dropped_notification_is_found_by_reconciliation("wechat").await;
}

#[tokio::test]
async fn a_dropped_alipay_notification_is_found_by_reconciliation_and_pays_the_order() {
    a_dropped_notification_is_found_by_reconciliation("alipay").await;
}

async fn an_expired_order_is_closed_at_the_provider_and_here(provider: &str) {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Late", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "slow", provider).await);
    expire_now(&app, id).await;

    let order = order_becomes(&app, &token, id, "closed").await;
    assert!(order["closed_at"].is_string());
    assert!(order.get("payment").is_none(), "nothing left to scan");
    assert_eq!(events(&app, "order.closed.v1", id).await, 1);
    let trade = emulator.trade(provider, &no).await;
    if provider == "wechat" {
        assert_eq!(trade["state"], "CLOSED", "{trade}");
    } else {
        // Never scanned: Alipay has no trade to close and says so; we asked.
        assert_eq!(trade["close_requested_before_scan"], true, "{trade}");
    }
    let note = told(&app, &token, "order_closed").await;
    assert!(note["body"].as_str().unwrap().contains(&no), "{note}");
    // The code no longer pays (WeChat refuses; for Alipay see the late-payment test).
    if provider == "wechat" {
        let (status, _) = emulator.pay(provider, &no).await;
        assert_eq!(status, 409, "a closed WeChat trade cannot be paid");
    }
    assert_eq!(events(&app, "order.paid.v1", id).await, 0);
}

#[tokio::test]
async fn an_expired_wechat_order_is_closed_at_the_emulator_and_locally() {
    an_expired_order_is_closed_at_the_provider_and_here("wechat").await;
}

#[tokio::test]
async fn an_expired_alipay_order_is_closed_at_the_emulator_and_locally() {
    an_expired_order_is_closed_at_the_provider_and_here("alipay").await;
}

async fn a_payment_after_the_close_is_refunded_and_never_pays(provider: &str) {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Racer", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "race", provider).await);
    expire_now(&app, id).await;
    order_becomes(&app, &token, id, "closed").await;

    // WeChat: the buyer's payment raced our close. Alipay: the buyer scans the code after our
    // close found no trade, which Alipay allows.
    let (status, body) = if provider == "wechat" {
        emulator.pay_after_close(provider, &no).await
    } else {
        emulator.pay(provider, &no).await
    };
    assert_eq!(status, 200, "{body}");

    eventually(
        "the late payment is refunded at the provider",
        Duration::from_secs(30),
        || async {
            let status = app
                .text_scalar(&format!(
                    "SELECT coalesce(late_refund_status, '') FROM orders WHERE id = {id}"
                ))
                .await;
            (status == "refunded").then_some(())
        },
    )
    .await;
    let trade = emulator.trade(provider, &no).await;
    assert_eq!(
        trade["refunded"], trade["total"],
        "refunded in full: {trade}"
    );
    assert_eq!(trade["refunds"].as_array().unwrap().len(), 1, "{trade}");
    let note = told(&app, &token, "late_payment_refunded").await;
    assert!(
        note["body"].as_str().unwrap().contains("refunded"),
        "{note}"
    );

    let (_, order) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
    assert_eq!(order["status"], "closed", "never paid");
    assert_eq!(events(&app, "order.paid.v1", id).await, 0);
    assert_eq!(events(&app, "order.late_payment_refunded.v1", id).await, 1);
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_ne!(me["membership"]["status"], "active", "{me}");
    assert_eq!(me["purchase_count"], 0);

    // A retry (a replica that claimed it before, say) asks with the same refund number: the
    // provider refunds once and nothing is recorded twice.
    let model = order::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut stale = model.clone();
    stale.late_refund_status = Some(memberline_schema::states::LateRefundStatus::Pending);
    let payments = Payments::from_settings(&app.settings.payments, "test").unwrap();
    let client = payments
        .get(if provider == "wechat" {
            Provider::Wechat
        } else {
            Provider::Alipay
        })
        .unwrap();
    let again = lifecycle::refund_late(&app.db, client.as_ref(), &stale)
        .await
        .unwrap();
    assert!(
        matches!(again, LateRefund::Refunded | LateRefund::Processing),
        "{again:?}"
    );
    let trade = emulator.trade(provider, &no).await;
    assert_eq!(trade["refunds"].as_array().unwrap().len(), 1, "{trade}");
    assert_eq!(trade["refunded"], trade["total"], "{trade}");
    assert_eq!(events(&app, "order.late_payment_refunded.v1", id).await, 1);
}

#[tokio::test]
async fn a_wechat_payment_that_raced_the_close_is_refunded_automatically_and_never_pays() {
    a_payment_after_the_close_is_refunded_and_never_pays("wechat").await;
}

#[tokio::test]
async fn an_alipay_payment_after_the_close_is_refunded_automatically_and_never_pays() {
    a_payment_after_the_close_is_refunded_and_never_pays("alipay").await;
}

#[tokio::test]
async fn a_buyer_cancels_a_pending_order_at_the_provider_and_a_paid_one_is_409() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let buyer = app.create_user("Changed mind", 0, 0).await;
    let token = app.user_token(buyer);
    let cancel = |id: i64, token: String| {
        let app = &app;
        async move {
            let res = app
                .client
                .post(app.url(&format!("/v1/orders/{id}/cancel")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    for provider in ["wechat", "alipay"] {
        // Pending: closed at the provider and here; a second cancel answers the same.
        let (id, no) = ids(&qr_order(&app, &token, &format!("{provider}-undo"), provider).await);
        let (status, order) = cancel(id, token.clone()).await;
        assert_eq!(status, 200, "{provider}: {order}");
        assert_eq!(order["status"], "closed");
        assert!(order.get("payment").is_none());
        let (status, again) = cancel(id, token.clone()).await;
        assert_eq!((status, &again["status"]), (200, &json!("closed")));
        assert_eq!(events(&app, "order.closed.v1", id).await, 1, "{provider}");
        let trade = emulator.trade(provider, &no).await;
        if provider == "wechat" {
            assert_eq!(trade["state"], "CLOSED", "{trade}");
            assert_eq!(emulator.pay(provider, &no).await.0, 409);
        } else {
            // Alipay has no trade before the code is scanned: the close was asked all the same
            // (answered ACQ.TRADE_NOT_EXIST), which the emulator records.
            assert_eq!(trade["close_requested_before_scan"], true, "{trade}");
        }

        // Paid (notified): 409, and it stays paid.
        let (id, no) = ids(&qr_order(&app, &token, &format!("{provider}-kept"), provider).await);
        assert_eq!(emulator.pay(provider, &no).await.0, 200);
        order_becomes(&app, &token, id, "paid").await;
        let (status, body) = cancel(id, token.clone()).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "order_not_pending");

        // Paid but not yet notified: the cancel's query finds the payment and applies it.
        emulator
            .notify_mode(json!({"provider": provider, "mode": "drop"}))
            .await;
        let (id, no) = ids(&qr_order(&app, &token, &format!("{provider}-race"), provider).await);
        assert_eq!(emulator.pay(provider, &no).await.0, 200);
        let (status, body) = cancel(id, token.clone()).await;
        assert_eq!(status, 409, "{body}");
        let (_, order) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
        assert_eq!(order["status"], "paid");
        assert_eq!(events(&app, "order.paid.v1", id).await, 1);
        emulator
            .notify_mode(json!({"provider": provider, "mode": "deliver"}))
            .await;
    }

    // Someone else's order is not found.
    let (id, _) = ids(&qr_order(&app, &token, "mine", "wechat").await);
    let other = app.create_user("Other", 0, 0).await;
    let (status, body) = cancel(id, app.user_token(other)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "order_not_found");
}

async fn a_gateway_down_while_notified_is_paid_on_the_next_retry(provider: &str) {
    // The provider reaches the gateway through a proxy the test cuts: "down" for the provider.
    let gateway_port = free_port();
    let door = TcpProxy::start(&format!("127.0.0.1:{gateway_port}")).await;
    let emulator = Emulator::start(0.01);
    let mut env = Emulator::settings_for(&emulator.base, gateway_port);
    env.retain(|(key, _)| !key.ends_with("__NOTIFY_URL"));
    for (key, path) in [
        ("MEMBERLINE__PAYMENTS__WECHAT__NOTIFY_URL", "wechat"),
        ("MEMBERLINE__PAYMENTS__ALIPAY__NOTIFY_URL", "alipay"),
    ] {
        env.push((
            key,
            format!("http://127.0.0.1:{}/v1/payments/{path}/notify", door.port),
        ));
    }
    // No workers: no reconciliation, so only a notification can pay the order.
    let app = spawn_app_with(Options {
        env,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Patient", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "retry", provider).await);

    door.down();
    assert_eq!(emulator.pay(provider, &no).await.0, 200);
    eventually(
        "the provider's first notification failed",
        Duration::from_secs(15),
        || async {
            let sent = emulator.notifications(&no).await;
            sent.iter()
                .any(|n| n["success"] == false && n["probe"] == false)
                .then_some(())
        },
    )
    .await;
    let (_, order) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
    assert_eq!(order["status"], "pending_payment");

    door.up();
    // WeChat retries after 15 s, Alipay after 4 min, here scaled by 0.01.
    order_becomes(&app, &token, id, "paid").await;
    // The emulator records the retry's answer once it has read it, a moment after the gateway
    // committed the payment.
    let sent = eventually(
        "the retry's answer is recorded",
        Duration::from_secs(10),
        || async {
            let sent = emulator.notifications(&no).await;
            sent.iter()
                .any(|n| n["probe"] == false && n["success"] == true)
                .then_some(sent)
        },
    )
    .await;
    let last = sent.iter().rev().find(|n| n["probe"] == false).unwrap();
    assert_eq!(last["success"], true, "{sent:?}");
    assert!(last["attempt"].as_u64().unwrap() >= 2, "{sent:?}");
    assert_eq!(events(&app, "order.paid.v1", id).await, 1);
}

#[tokio::test]
async fn a_gateway_down_while_wechat_notifies_is_paid_on_the_next_retry() {
    a_gateway_down_while_notified_is_paid_on_the_next_retry("wechat").await;
}

#[tokio::test]
async fn a_gateway_down_while_alipay_notifies_is_paid_on_the_next_retry() {
    a_gateway_down_while_notified_is_paid_on_the_next_retry("alipay").await;
}

#[tokio::test]
async fn an_alipay_trade_the_provider_already_closed_is_closed_here_at_expiry() {
    let (app, emulator) = app_with_lifecycle().await;
    let buyer = app.create_user("Walked away", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "scanned", "alipay").await);
    // The buyer scanned and walked away; Alipay closed the trade on its own timeout.
    for control in ["/emulator/scan", "/emulator/time-out"] {
        let (status, body) = emulator
            .post_control(control, json!({"provider": "alipay", "out_trade_no": no}))
            .await;
        assert_eq!(status, 200, "{control}: {body}");
    }
    assert_eq!(
        emulator.trade("alipay", &no).await["trade_status"],
        "TRADE_CLOSED"
    );

    // Closing it again would be refused (ACQ.TRADE_STATUS_ERROR); expiry must still close it.
    expire_now(&app, id).await;
    order_becomes(&app, &token, id, "closed").await;
    assert_eq!(events(&app, "order.closed.v1", id).await, 1);
}

#[tokio::test]
async fn two_lifecycle_jobs_never_claim_the_same_order() {
    let (app, _emulator) = spawn_app_with_provider(Options::default()).await;
    let buyer = app.create_user("Many", 0, 0).await;
    let token = app.user_token(buyer);
    for n in 0..40 {
        qr_order(&app, &token, &format!("due-{n}"), "wechat").await;
    }
    app.db
        .execute_unprepared("UPDATE orders SET payment_check_at = now() - interval '1 second'")
        .await
        .unwrap();
    let lease = chrono::Duration::seconds(60);
    let claim = || lifecycle::claim_due(&app.db, 7, lease);
    let mut claimed: Vec<i64> = Vec::new();
    loop {
        let (a, b) = tokio::join!(claim(), claim());
        let (a, b) = (a.unwrap(), b.unwrap());
        if a.is_empty() && b.is_empty() {
            break;
        }
        claimed.extend(a.iter().chain(b.iter()).map(|o| o.id.0));
    }
    let mut unique = claimed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        claimed.len(),
        40,
        "every due order claimed once: {claimed:?}"
    );
    assert_eq!(unique.len(), 40);

    // A claim is renewed only by its holder: once another replica re-claimed the order (the
    // lease lapsed), the first one's renewal fails and it leaves the order alone.
    let id = claimed[0];
    app.db
        .execute_unprepared(&format!(
            "UPDATE orders SET payment_check_at = now() - interval '1 second' WHERE id = {id}"
        ))
        .await
        .unwrap();
    let first = claim().await.unwrap();
    let stale_until = first[0].payment_check_at.unwrap() - chrono::Duration::seconds(1);
    let second = first[0].payment_check_at.unwrap();
    assert!(
        !lifecycle::renew(&app.db, OrderId(id), stale_until, lease)
            .await
            .unwrap()
    );
    assert!(
        lifecycle::renew(&app.db, OrderId(id), second, lease)
            .await
            .unwrap()
    );
}
