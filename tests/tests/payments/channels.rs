//! Every channel of both providers through the emulator: WeChat Native, JSAPI (in the
//! mini-program and in the official account) and H5; Alipay QR, mobile and desktop cashiers.
//! Each is created, paid the way its front end pays (a scan, `wx.requestPayment`'s signed
//! arguments, a cashier page), notified, replayed, cancelled, expired and refunded, and the
//! trade type the provider reports is kept with the order.

use super::checkout::order_becomes;
use super::lifecycle::{app_with_lifecycle, expire_now};
use memberline_tests::provider::{Emulator, spawn_app_with_provider};
use memberline_tests::{Options, TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

/// One way to pay: pay method, channel and, for JSAPI, the WeChat app.
#[derive(Clone, Copy, Debug)]
pub struct Way {
    pub pay_method: &'static str,
    pub channel: &'static str,
    pub wechat_app: Option<&'static str>,
}

/// Every way the test shop takes, in the order `GET /v1/plans` lists them.
pub const WAYS: [Way; 7] = [
    Way {
        pay_method: "wechat",
        channel: "native",
        wechat_app: None,
    },
    Way {
        pay_method: "wechat",
        channel: "jsapi",
        wechat_app: Some("miniprogram"),
    },
    Way {
        pay_method: "wechat",
        channel: "jsapi",
        wechat_app: Some("official_account"),
    },
    Way {
        pay_method: "wechat",
        channel: "h5",
        wechat_app: None,
    },
    Way {
        pay_method: "alipay",
        channel: "qr",
        wechat_app: None,
    },
    Way {
        pay_method: "alipay",
        channel: "wap",
        wechat_app: None,
    },
    Way {
        pay_method: "alipay",
        channel: "page",
        wechat_app: None,
    },
];

impl Way {
    pub fn body(self, plan_id: i64) -> Value {
        let mut body =
            json!({"plan_id": plan_id, "pay_method": self.pay_method, "channel": self.channel});
        if let Some(app) = self.wechat_app {
            body["wechat_app"] = json!(app);
        }
        body
    }
}

/// A client that shows redirects instead of following them.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Mints a login code of `app` at the emulator (as `wx.login` would) for `openid` (a new one
/// when `None`): `(code, openid)`.
pub async fn login_code(emulator: &Emulator, app: &str, openid: Option<&str>) -> (String, String) {
    let mut body = json!({ "app": app });
    if let Some(openid) = openid {
        body["openid"] = json!(openid);
    }
    let (status, minted) = emulator.post_control("/emulator/wechat/codes", body).await;
    assert_eq!(status, 200, "{minted}");
    (
        minted["code"].as_str().unwrap().to_owned(),
        minted["openid"].as_str().unwrap().to_owned(),
    )
}

/// A buyer signed in from the mini-program with the official account linked too: their token.
pub async fn wechat_buyer(app: &TestApp, emulator: &Emulator) -> String {
    let (code, _) = login_code(emulator, "miniprogram", None).await;
    let (status, signed_in, _) = app
        .post_signed_out(
            "/v1/auth/wechat",
            json!({"app": "miniprogram", "code": code}),
        )
        .await;
    assert_eq!(status, 200, "{signed_in}");
    let token = signed_in["token"].as_str().unwrap().to_owned();
    let (code, _) = login_code(emulator, "official_account", None).await;
    let (status, linked) = link(app, &token, "official_account", &code).await;
    assert_eq!(status, 200, "{linked}");
    token
}

/// `POST /v1/me/wechat`: links the OpenID of a login code of `wechat_app` to the buyer.
pub async fn link(app: &TestApp, token: &str, wechat_app: &str, code: &str) -> (u16, Value) {
    app.call(
        reqwest::Method::POST,
        "/v1/me/wechat",
        token,
        None,
        json!({"app": wechat_app, "code": code}),
    )
    .await
}

/// Places an order of `plan` paid by `way`; the 201 body.
pub async fn order_by(app: &TestApp, token: &str, key: &str, plan: &str, way: Way) -> Value {
    let plan_id = app.plan_id(plan).await;
    let (status, order) = app.order(token, key, way.body(plan_id)).await;
    assert_eq!(status, 201, "{way:?}: {order}");
    order
}

/// The query of `url` as pairs.
fn query(url: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {pairs:?}"))
}

/// Opens an Alipay cashier URL as the buyer's browser would: the trade then exists at Alipay.
pub async fn open_cashier(pay_url: &str) {
    let res = browser().get(pay_url).send().await.unwrap();
    let status = res.status();
    let page = res.text().await.unwrap();
    assert_eq!(status, 200, "the cashier opens: {page}");
    assert!(page.contains("id=\"pay\""), "{page}");
}

/// Pays `order` the way its channel's front end does; for the cashiers, the address the
/// buyer's browser is sent back to.
pub async fn pay_as_buyer(emulator: &Emulator, order: &Value) -> Option<String> {
    let payment = &order["payment"];
    let no = order["order_no"].as_str().unwrap();
    let provider = payment["provider"].as_str().unwrap();
    match payment["channel"].as_str().unwrap() {
        "native" | "qr" => {
            let (status, paid) = emulator.pay(provider, no).await;
            assert_eq!(status, 200, "{paid}");
            None
        }
        "jsapi" => {
            // What wx.requestPayment sends: WeChat checks paySign before it charges.
            let (status, paid) = emulator
                .post_control(
                    "/emulator/pay",
                    json!({"provider": "wechat", "out_trade_no": no, "jsapi_params": payment["jsapi_params"]}),
                )
                .await;
            assert_eq!(status, 200, "{paid}");
            None
        }
        "h5" => {
            let h5_url = payment["h5_url"].as_str().unwrap();
            let page = browser().get(h5_url).send().await.unwrap();
            assert_eq!(page.status(), 200, "WeChat's H5 cashier opens");
            let pairs = query(h5_url);
            let pay = format!("{}/cgi-bin/mmpayweb-bin/checkmweb/pay", emulator.base);
            let res = browser()
                .post(pay)
                .form(&[
                    ("prepay_id", param(&pairs, "prepay_id")),
                    ("package", param(&pairs, "package")),
                    ("redirect_url", param(&pairs, "redirect_url")),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302, "{:?}", res.text().await);
            Some(res.headers()["location"].to_str().unwrap().to_owned())
        }
        "wap" | "page" => {
            open_cashier(payment["pay_url"].as_str().unwrap()).await;
            let res = browser()
                .post(format!("{}/emulator/alipay/cashier/pay", emulator.base))
                .form(&[("out_trade_no", no)])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302, "{:?}", res.text().await);
            Some(res.headers()["location"].to_str().unwrap().to_owned())
        }
        other => panic!("unknown channel {other}"),
    }
}

/// Checks what a pending order of `way` carries for its front end.
fn check_payment(app: &TestApp, way: Way, order: &Value) {
    let payment = &order["payment"];
    assert_eq!(payment["provider"], way.pay_method, "{order}");
    assert_eq!(payment["channel"], way.channel, "{order}");
    let id = order["id"].as_i64().unwrap();
    let back_to_order = format!("{}/vip?order={id}", app.base);
    match way.channel {
        "native" | "qr" => {
            assert!(payment["code_url"].is_string(), "{order}");
            assert_eq!(payment["qr_png_url"], format!("/v1/orders/{id}/qr.png"));
        }
        "jsapi" => {
            let p = &payment["jsapi_params"];
            let appid = match way.wechat_app.unwrap() {
                "miniprogram" => memberline_tests::provider::WECHAT_MINIPROGRAM_APPID,
                _ => memberline_tests::provider::WECHAT_OFFICIAL_ACCOUNT_APPID,
            };
            assert_eq!(p["appId"], appid, "{order}");
            assert!(
                p["package"].as_str().unwrap().starts_with("prepay_id=wx"),
                "{p}"
            );
            assert_eq!(p["signType"], "RSA");
            assert!(
                p["timeStamp"].as_str().unwrap().parse::<i64>().is_ok(),
                "{p}"
            );
            assert!(!p["nonceStr"].as_str().unwrap().is_empty());
            assert!(!p["paySign"].as_str().unwrap().is_empty());
            assert!(payment.get("qr_png_url").is_none(), "no QR for JSAPI");
        }
        "h5" => {
            let pairs = query(payment["h5_url"].as_str().unwrap());
            assert_eq!(param(&pairs, "redirect_url"), back_to_order);
        }
        _ => {
            let pay_url = payment["pay_url"].as_str().unwrap();
            let pairs = query(pay_url);
            let method = if way.channel == "wap" {
                "alipay.trade.wap.pay"
            } else {
                "alipay.trade.page.pay"
            };
            assert_eq!(param(&pairs, "method"), method);
            assert_eq!(
                param(&pairs, "return_url"),
                format!("{}/v1/payments/alipay/return", app.base)
            );
            let biz: Value = serde_json::from_str(param(&pairs, "biz_content")).unwrap();
            if way.channel == "wap" {
                assert_eq!(biz["quit_url"], back_to_order);
                assert_eq!(biz["product_code"], "QUICK_WAP_WAY");
            } else {
                assert_eq!(biz["product_code"], "FAST_INSTANT_TRADE_PAY");
            }
            assert!(!param(&pairs, "sign").is_empty());
        }
    }
}

#[tokio::test]
async fn the_catalogue_lists_every_channel_the_shop_takes_and_a_shop_without_one_refuses_it() {
    let (app, _emulator) = spawn_app_with_provider(Options::default()).await;
    let (_, plans) = app.get(None, "/v1/plans").await;
    let listed: Vec<Value> = WAYS
        .iter()
        .map(|w| {
            let mut v = json!({"pay_method": w.pay_method, "channel": w.channel});
            if let Some(app) = w.wechat_app {
                v["wechat_app"] = json!(app);
            }
            v
        })
        .collect();
    assert_eq!(plans["channels"], json!(listed));

    // A shop that takes WeChat by QR code only.
    let mut emulator_env = Emulator::settings_for("http://127.0.0.1:9", 0);
    emulator_env.retain(|(k, _)| *k != "MEMBERLINE__HTTP__PORT");
    emulator_env.push((
        "MEMBERLINE__PAYMENTS__WECHAT__CHANNELS",
        "native".to_owned(),
    ));
    emulator_env.push(("MEMBERLINE__PAYMENTS__ALIPAY__CHANNELS", "qr".to_owned()));
    let narrow = memberline_tests::spawn_app_with(Options {
        env: emulator_env,
        ..Default::default()
    })
    .await;
    let (_, plans) = narrow.get(None, "/v1/plans").await;
    assert_eq!(
        plans["channels"],
        json!([{"pay_method": "wechat", "channel": "native"}, {"pay_method": "alipay", "channel": "qr"}])
    );
    let buyer = narrow.create_user("Narrow", 0, 0).await;
    let token = narrow.user_token(buyer);
    let monthly = narrow.plan_id("monthly").await;
    for (i, way) in WAYS.iter().enumerate() {
        if way.channel == "native" || way.channel == "qr" {
            continue;
        }
        let (status, body) = narrow
            .order(&token, &format!("narrow-{i}"), way.body(monthly))
            .await;
        assert_eq!(status, 422, "{way:?}: {body}");
        assert_eq!(body["error"]["code"], "channel_unavailable", "{way:?}");
    }
}

#[tokio::test]
async fn a_channel_that_does_not_fit_the_order_is_refused_with_a_clear_code() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let token = wechat_buyer(&app, &emulator).await;
    let monthly = app.plan_id("monthly").await;
    for (key, body, status, code) in [
        (
            "a",
            json!({"plan_id": monthly, "pay_method": "wechat", "channel": "wap"}),
            422,
            "channel_mismatch",
        ),
        (
            "b",
            json!({"plan_id": monthly, "pay_method": "wechat", "channel": "jsapi"}),
            422,
            "channel_mismatch",
        ),
        (
            "c",
            json!({"plan_id": monthly, "pay_method": "alipay", "channel": "qr", "wechat_app": "miniprogram"}),
            422,
            "channel_mismatch",
        ),
        (
            "d",
            json!({"plan_id": monthly, "pay_method": "balance", "channel": "native"}),
            422,
            "channel_mismatch",
        ),
        (
            "e",
            json!({"plan_id": monthly, "pay_method": "wechat", "channel": "telepathy"}),
            422,
            "invalid_body",
        ),
    ] {
        let (got, answer) = app.order(&token, key, body).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_jsapi_order_needs_the_buyers_openid_under_that_app() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let buyer = app.create_user("No WeChat yet", 0, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let jsapi = WAYS[1];
    let (status, body) = app.order(&token, "js-1", jsapi.body(monthly)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "wechat_identity_required");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);

    let (code, openid) = login_code(&emulator, "miniprogram", None).await;
    let (status, linked) = link(&app, &token, "miniprogram", &code).await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["openid"], openid);
    // The same key now goes through: the refusal kept nothing.
    let order = order_by(&app, &token, "js-1", "monthly", jsapi).await;
    let trade = emulator
        .trade("wechat", order["order_no"].as_str().unwrap())
        .await;
    assert_eq!(trade["payer_openid"], openid, "{trade}");
}

#[tokio::test]
async fn every_channel_of_both_providers_pays_notifies_and_replays() {
    let (app, emulator) = app_with_lifecycle().await;
    let token = wechat_buyer(&app, &emulator).await;
    for (i, way) in WAYS.into_iter().enumerate() {
        let key = format!("pay-{i}");
        let order = order_by(&app, &token, &key, "monthly", way).await;
        assert_eq!(order["status"], "pending_payment");
        check_payment(&app, way, &order);
        // A replay answers exactly the first response.
        let plan_id = app.plan_id("monthly").await;
        let (status, again) = app.order(&token, &key, way.body(plan_id)).await;
        assert_eq!(status, 201);
        assert_eq!(again, order, "{way:?}");

        let id = order["id"].as_i64().unwrap();
        let back = pay_as_buyer(&emulator, &order).await;
        let paid = order_becomes(&app, &token, id, "paid").await;
        assert!(paid.get("payment").is_none());
        if let Some(back) = back {
            // The cashiers send the buyer back to the order's page (Alipay through the return).
            let res = browser().get(&back).send().await.unwrap();
            let location = match res.status().as_u16() {
                303 => res.headers()["location"].to_str().unwrap().to_owned(),
                _ => back.clone(),
            };
            assert_eq!(location, format!("{}/vip?order={id}", app.base), "{way:?}");
        }
        let trade_type = app
            .text_scalar(&format!(
                "SELECT coalesce(trade_type, '-') FROM orders WHERE id = {id}"
            ))
            .await;
        let expected = match way.channel {
            "native" => "NATIVE",
            "jsapi" => "JSAPI",
            "h5" => "MWEB",
            // Alipay's notifications name no product.
            _ => "-",
        };
        assert_eq!(trade_type, expected, "{way:?}");
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) FROM outbox WHERE routing_key = 'order.paid.v1' AND aggregate_id = '{id}'"
            ))
            .await,
            1,
            "{way:?}"
        );
    }
    // Seven months, one per payment, each applied once.
    eventually(
        "seven memberships are written",
        Duration::from_secs(20),
        || async {
            (app.scalar("SELECT count(*) FROM membership_periods").await == 7).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn every_channel_cancels_expires_and_refunds() {
    let (app, emulator) = app_with_lifecycle().await;
    let token = wechat_buyer(&app, &emulator).await;
    for (i, way) in WAYS.into_iter().enumerate() {
        // Cancelled by the buyer: closed at the provider first, then here.
        let cancelled = order_by(&app, &token, &format!("cancel-{i}"), "monthly", way).await;
        if let Some(pay_url) = cancelled["payment"]["pay_url"].as_str() {
            open_cashier(pay_url).await;
        }
        let id = cancelled["id"].as_i64().unwrap();
        let (status, closed) = app
            .call(
                reqwest::Method::POST,
                &format!("/v1/orders/{id}/cancel"),
                &token,
                None,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{way:?}: {closed}");
        assert_eq!(closed["status"], "closed");
        let provider = way.pay_method;
        let trade = emulator
            .trade(provider, cancelled["order_no"].as_str().unwrap())
            .await;
        // An Alipay QR nobody scanned has no trade to close: the close was asked all the same.
        let closed_there = trade["state"] == "CLOSED"
            || trade["trade_status"] == "TRADE_CLOSED"
            || trade["close_requested_before_scan"] == true;
        assert!(closed_there, "{way:?}: {trade}");

        // Expired: the lifecycle job closes it.
        let expiring = order_by(&app, &token, &format!("expire-{i}"), "monthly", way).await;
        let id = expiring["id"].as_i64().unwrap();
        expire_now(&app, id).await;
        order_becomes(&app, &token, id, "closed").await;

        // Paid, then refunded by an admin through the provider.
        let order = order_by(&app, &token, &format!("refund-{i}"), "monthly", way).await;
        let id = order["id"].as_i64().unwrap();
        pay_as_buyer(&emulator, &order).await;
        order_becomes(&app, &token, id, "paid").await;
        // A refund racing the workers' effects of the payment may meet a deadlock, answered
        // 503 `unavailable`: retried with the same key, as the API says.
        let key = format!("r-{i}");
        eventually(
            "the refund is accepted",
            Duration::from_secs(20),
            || async {
                let (status, refunded) = app.refund(id, &key, "test refund").await;
                // Alipay refunds at once (200); WeChat answers PROCESSING (202). A copy sent
                // while an earlier one (answered 503) is still at Alipay answers 202 too: the
                // same key, asked again, must end at 200.
                match (way.pay_method, status) {
                    ("alipay", 200) | ("wechat", 202) => Some(()),
                    ("alipay", 202) | (_, 503) => None,
                    _ => panic!("{way:?}: {status} {refunded}"),
                }
            },
        )
        .await;
        order_becomes(&app, &token, id, "refunded").await;
    }
}

#[tokio::test]
async fn a_jsapi_payment_that_names_another_app_is_flagged_and_never_pays() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let token = wechat_buyer(&app, &emulator).await;
    let order = order_by(&app, &token, "js-app", "monthly", WAYS[1]).await;
    let (id, no) = (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap(),
    );
    super::notifications::paid_silently(&emulator, "wechat", no).await;
    // Genuine, but for the shop's Native app, not the mini-program the trade was made in.
    let (_, reply) = emulator
        .send(json!({"provider": "wechat", "out_trade_no": no,
                     "appid": memberline_tests::provider::WECHAT_APPID}))
        .await;
    assert_eq!(reply["status"], 204, "stored, so WeChat stops: {reply}");
    let (_, now) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
    assert_eq!(now["status"], "pending_payment");
    let flag = app
        .text_scalar(&format!(
            "SELECT flag FROM payment_notifications WHERE out_trade_no = '{no}'"
        ))
        .await;
    assert!(flag.starts_with("merchant"), "{flag}");
    // The notification as WeChat really sends it, with the mini-program's app id, pays.
    let (_, reply) = emulator
        .send(json!({"provider": "wechat", "out_trade_no": no}))
        .await;
    assert_eq!(reply["status"], 204, "{reply}");
    order_becomes(&app, &token, id, "paid").await;
}
