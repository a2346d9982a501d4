//! QR checkout through the emulator: the code, paying it, and the order becoming paid with all
//! four effects, for both providers.

use memberline_tests::provider::{Emulator, spawn_app_with_provider};
use memberline_tests::{Options, TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn app() -> (TestApp, Emulator) {
    spawn_app_with_provider(Options::default()).await
}

/// Places a QR order for the monthly plan; returns the 201 body.
pub async fn qr_order(app: &TestApp, token: &str, key: &str, pay_method: &str) -> Value {
    let monthly = app.plan_id("monthly").await;
    let (status, order) = app
        .order(
            token,
            key,
            json!({"plan_id": monthly, "pay_method": pay_method}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    order
}

/// Waits until the buyer's order has `status`.
pub async fn order_becomes(app: &TestApp, token: &str, id: i64, status: &str) -> Value {
    eventually(
        &format!("order {id} is {status}"),
        Duration::from_secs(15),
        || async {
            let (_, order) = app.get(Some(token), &format!("/v1/orders/{id}")).await;
            (order["status"] == status).then_some(order)
        },
    )
    .await
}

async fn paying_the_qr_code_pays_the_order_with_all_four_effects(provider: &str) {
    let (app, emulator) = spawn_app_with_provider(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Scanner", 0, 0).await;
    let token = app.user_token(buyer);
    // The catalogue says which pay methods the shop takes: both providers are enabled here.
    let (_, plans) = app.get(Some(&token), "/v1/plans").await;
    assert_eq!(
        plans["pay_methods"],
        serde_json::json!(["balance", "points", "free", "wechat", "alipay"])
    );

    let order = qr_order(&app, &token, "scan-1", provider).await;
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["payment"]["provider"], provider);
    let code = order["payment"]["code_url"].as_str().unwrap();
    let prefix = if provider == "wechat" {
        "weixin://wxpay/bizpayurl?pr="
    } else {
        "https://qr.alipay.com/"
    };
    assert!(code.starts_with(prefix), "{code}");
    assert!(order["expires_at"].is_string());

    // The QR image is a real PNG.
    let png = app
        .client
        .get(app.url(order["payment"]["qr_png_url"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));

    let out_trade_no = order["order_no"].as_str().unwrap();
    let (status, paid) = emulator.pay(provider, out_trade_no).await;
    assert_eq!(status, 200, "{paid}");

    let id = order["id"].as_i64().unwrap();
    let order = order_becomes(&app, &token, id, "paid").await;
    assert!(
        order.get("payment").is_none(),
        "a paid order has no code to scan"
    );
    eventually(
        "all four effects are visible",
        Duration::from_secs(20),
        || async {
            let (_, me) = app.get(Some(&token), "/v1/me").await;
            let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
            let done = me["membership"]["status"] == "active"
                && me["purchase_count"] == 1
                && me["points"].as_i64().unwrap_or_default() > 0
                && inbox["notifications"]
                    .as_array()
                    .is_some_and(|n| n.len() == 2);
            done.then_some(())
        },
    )
    .await;
    let notified = emulator.notifications(out_trade_no).await;
    assert!(
        notified.iter().any(|n| n["success"] == true),
        "the emulator saw our success reply: {notified:?}"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM outbox WHERE routing_key = 'order.paid.v1' AND aggregate_id = '{id}'"
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn paying_a_wechat_qr_code_pays_the_order_with_all_four_effects() {
    paying_the_qr_code_pays_the_order_with_all_four_effects("wechat").await;
}

#[tokio::test]
async fn paying_an_alipay_qr_code_pays_the_order_with_all_four_effects() {
    paying_the_qr_code_pays_the_order_with_all_four_effects("alipay").await;
}

#[tokio::test]
async fn a_replayed_checkout_returns_the_same_code_and_creates_one_provider_order() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Twice", 0, 0).await;
    let token = app.user_token(buyer);
    for provider in ["wechat", "alipay"] {
        let key = format!("same-{provider}");
        let first = qr_order(&app, &token, &key, provider).await;
        let again = qr_order(&app, &token, &key, provider).await;
        assert_eq!(first, again, "{provider}: the replay is the first answer");
        let trade = emulator
            .trade(provider, first["order_no"].as_str().unwrap())
            .await;
        assert!(!trade.is_null(), "{provider}: the emulator knows the trade");
    }
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
        ))
        .await,
        2
    );
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_closes_the_order_and_answers_502() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let app = memberline_tests::spawn_app_with(Options {
        env: Emulator::settings_for("http://127.0.0.1:9", memberline_tests::process::free_port()),
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Unlucky", 0, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, body) = app
        .order(
            &token,
            "down-1",
            json!({"plan_id": monthly, "pay_method": "wechat"}),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "provider_unavailable");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer} AND status = 'closed'"
        ))
        .await,
        1,
        "the order is closed, nothing is left pending"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer} AND status = 'pending_payment'"
        ))
        .await,
        0
    );
}
