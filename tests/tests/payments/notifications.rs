//! Provider notifications: verified before anything reads them, stored once, applied once, and
//! answered the way each provider needs (WeChat 204 / 4xx-5xx FAIL, Alipay `success` / `fail`).

use super::checkout::{app, order_becomes, qr_order};
use memberline_tests::TestApp;
use serde_json::{Value, json};

async fn order_status(app: &TestApp, id: i64) -> String {
    app.text_scalar(&format!("SELECT status FROM orders WHERE id = {id}"))
        .await
}

async fn paid_events(app: &TestApp, id: i64) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM outbox WHERE routing_key = 'order.paid.v1' AND aggregate_id = '{id}'"
    ))
    .await
}

/// Pays at the emulator with notifications dropped, so each test sends its own.
pub async fn paid_silently(
    emulator: &memberline_tests::provider::Emulator,
    provider: &str,
    no: &str,
) {
    emulator
        .notify_mode(json!({"provider": provider, "mode": "drop"}))
        .await;
    let (status, body) = emulator.pay(provider, no).await;
    assert_eq!(status, 200, "{body}");
}

fn ids(order: &Value) -> (i64, String) {
    (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn forged_stale_tampered_and_unknown_key_wechat_notifications_are_refused_and_change_nothing()
{
    let (app, emulator) = app().await;
    let buyer = app.create_user("Target", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "forge", "wechat").await);
    paid_silently(&emulator, "wechat", &no).await;

    for (what, tweak) in [
        (
            "signed with another key",
            json!({"sign_with_other_key": true}),
        ),
        ("301 s old", json!({"timestamp_offset_secs": -301})),
        // Whole seconds on both sides: 302 ahead stays more than 300 after the trip.
        ("302 s ahead", json!({"timestamp_offset_secs": 302})),
        ("tampered after signing", json!({"tamper_body": true})),
        (
            "naming an unknown key",
            json!({"serial": "PUB_KEY_ID_0000000000000000000000000000"}),
        ),
    ] {
        let mut request = json!({"provider": "wechat", "out_trade_no": no});
        request
            .as_object_mut()
            .unwrap()
            .extend(tweak.as_object().unwrap().clone());
        let (status, reply) = emulator.send(request).await;
        assert_eq!(status, 200, "{what}: the emulator reached us: {reply}");
        assert_eq!(reply["status"], 401, "{what}: {reply}");
        let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["code"], "FAIL", "{what}");
        assert_eq!(order_status(&app, id).await, "pending_payment", "{what}");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM payment_notifications")
            .await,
        0
    );

    // 299 s old is inside the window: accepted and applied.
    let (_, reply) = emulator
        .send(json!({"provider": "wechat", "out_trade_no": no, "timestamp_offset_secs": -299}))
        .await;
    assert_eq!(reply["status"], 204, "{reply}");
    order_becomes(&app, &token, id, "paid").await;
}

#[tokio::test]
async fn a_genuine_notification_with_the_wrong_amount_or_merchant_is_stored_flagged_and_never_pays()
{
    let (app, emulator) = app().await;
    let buyer = app.create_user("Mismatch", 0, 0).await;
    let token = app.user_token(buyer);
    for (provider, tweak, flag) in [
        ("wechat", json!({"amount_fen": 1}), "amount"),
        ("wechat", json!({"mchid": "1900000999"}), "merchant"),
        ("wechat", json!({"appid": "wx0000000000000000"}), "merchant"),
        ("alipay", json!({"amount_fen": 1}), "amount"),
        (
            "alipay",
            json!({"seller_id": "2088999999999999"}),
            "merchant",
        ),
        ("alipay", json!({"app_id": "2021000000000999"}), "merchant"),
    ] {
        let key = format!("mismatch-{provider}-{tweak}");
        let (id, no) = ids(&qr_order(&app, &token, &key, provider).await);
        paid_silently(&emulator, provider, &no).await;
        let mut request = json!({"provider": provider, "out_trade_no": no});
        request
            .as_object_mut()
            .unwrap()
            .extend(tweak.as_object().unwrap().clone());
        let (_, reply) = emulator.send(request).await;
        // Stored: the provider must stop retrying; an operator looks at the flag.
        if provider == "wechat" {
            assert_eq!(reply["status"], 204, "{tweak}: {reply}");
        } else {
            assert_eq!(reply["body"], "success", "{tweak}: {reply}");
        }
        assert_eq!(order_status(&app, id).await, "pending_payment", "{tweak}");
        assert_eq!(paid_events(&app, id).await, 0);
        let flagged = app
            .text_scalar(&format!(
                "SELECT flag FROM payment_notifications WHERE out_trade_no = '{no}'"
            ))
            .await;
        assert!(flagged.starts_with(flag), "{tweak}: {flagged}");
    }
}

#[tokio::test]
async fn forged_and_tampered_alipay_notifications_get_fail_and_change_nothing() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("AliTarget", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "ali-forge", "alipay").await);
    paid_silently(&emulator, "alipay", &no).await;
    for tweak in [
        json!({"sign_with_other_key": true}),
        json!({"tamper_body": true}),
    ] {
        let mut request = json!({"provider": "alipay", "out_trade_no": no});
        request
            .as_object_mut()
            .unwrap()
            .extend(tweak.as_object().unwrap().clone());
        let (_, reply) = emulator.send(request).await;
        assert_eq!(reply["body"], "fail", "{tweak}: {reply}");
        assert_eq!(order_status(&app, id).await, "pending_payment");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM payment_notifications")
            .await,
        0
    );
}

#[tokio::test]
async fn a_hundred_concurrent_copies_of_one_notification_pay_once_and_all_get_success() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Crowd", 0, 0).await;
    let token = app.user_token(buyer);
    for provider in ["wechat", "alipay"] {
        let (id, no) = ids(&qr_order(&app, &token, &format!("crowd-{provider}"), provider).await);
        paid_silently(&emulator, provider, &no).await;
        let event_id = format!("evt-{provider}-crowd");
        let replies = futures::future::join_all((0..100).map(|_| {
            emulator.send(json!({"provider": provider, "out_trade_no": no, "event_id": event_id}))
        }))
        .await;
        for (_, reply) in &replies {
            if provider == "wechat" {
                assert_eq!(reply["status"], 204, "{reply}");
            } else {
                assert_eq!(reply["body"], "success", "{reply}");
            }
        }
        order_becomes(&app, &token, id, "paid").await;
        assert_eq!(
            paid_events(&app, id).await,
            1,
            "{provider}: one order.paid.v1"
        );
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) FROM payment_notifications WHERE out_trade_no = '{no}'"
            ))
            .await,
            1,
            "{provider}: stored once"
        );
    }
}

#[tokio::test]
async fn trade_success_then_trade_finished_is_applied_once_and_both_get_success() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Finisher", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "finish", "alipay").await);
    paid_silently(&emulator, "alipay", &no).await;
    for status in ["TRADE_SUCCESS", "TRADE_FINISHED"] {
        let (_, reply) = emulator
            .send(json!({"provider": "alipay", "out_trade_no": no, "trade_status": status}))
            .await;
        assert_eq!(reply["body"], "success", "{status}: {reply}");
    }
    order_becomes(&app, &token, id, "paid").await;
    assert_eq!(paid_events(&app, id).await, 1);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM payment_notifications WHERE out_trade_no = '{no}'"
        ))
        .await,
        2,
        "both are stored, as distinct events"
    );
}

#[tokio::test]
async fn a_probe_with_a_bad_signature_is_refused_and_the_genuine_copy_pays_the_order_once() {
    // As WeChat does to probe merchants: a copy with a wrong signature first, then the real one.
    let (app, emulator) = app().await;
    let buyer = app.create_user("Patient", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "retry", "wechat").await);
    emulator
        .notify_mode(json!({"provider": "wechat", "mode": "deliver", "probe_first": true}))
        .await;
    let (status, _) = emulator.pay("wechat", &no).await;
    assert_eq!(status, 200);
    order_becomes(&app, &token, id, "paid").await;
    // The emulator records the genuine copy's answer once it has read it, a moment after the
    // gateway committed the payment.
    let sent = memberline_tests::eventually(
        "the genuine copy's answer is recorded",
        std::time::Duration::from_secs(10),
        || async {
            let sent = emulator.notifications(&no).await;
            sent.iter()
                .any(|n| n["probe"] == false && n["success"] == true)
                .then_some(sent)
        },
    )
    .await;
    let probe = sent
        .iter()
        .find(|n| n["probe"] == true)
        .expect("a probe was sent");
    assert_eq!(
        probe["reply_status"], 401,
        "the probe with a bad signature is refused: {probe}"
    );
    assert_eq!(paid_events(&app, id).await, 1);
}

#[tokio::test]
async fn a_notification_that_pays_wakes_the_embedded_relay_without_a_notify() {
    // A ten-minute poll: only the in-process wake-up can publish the event in time.
    let (app, emulator) =
        memberline_tests::provider::spawn_app_with_provider(memberline_tests::Options {
            env: vec![("MEMBERLINE__RELAY__POLL_INTERVAL_MS", "600000".to_owned())],
            ..Default::default()
        })
        .await;
    let buyer = app.create_user("Awake", 0, 0).await;
    let token = app.user_token(buyer);
    let (id, no) = ids(&qr_order(&app, &token, "awake", "wechat").await);
    let mut tap = app.tap("order.paid.v1").await;
    let mut listener =
        sea_orm::sqlx::postgres::PgListener::connect(app.settings.database.url.expose())
            .await
            .expect("listener");
    listener
        .listen(memberline_platform::outbox::NOTIFY_CHANNEL)
        .await
        .expect("LISTEN");
    paid_silently(&emulator, "wechat", &no).await;
    let (_, reply) = emulator
        .send(json!({"provider": "wechat", "out_trade_no": no, "event_id": "evt-awake"}))
        .await;
    assert_eq!(reply["status"], 204, "{reply}");
    order_becomes(&app, &token, id, "paid").await;
    assert!(
        tap.next(std::time::Duration::from_secs(5)).await.is_some(),
        "order.paid.v1 published long before the poll interval"
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "the payment's commit notified nobody"
    );
}

#[tokio::test]
async fn notifications_of_different_orders_that_arrive_together_share_a_transaction_and_each_pays_its_order_once()
 {
    let (app, emulator) =
        memberline_tests::provider::spawn_app_with_provider(memberline_tests::Options {
            env: vec![
                ("MEMBERLINE__LANES__COUNT", "1".to_owned()),
                ("MEMBERLINE__LANES__BATCH_MAX", "16".to_owned()),
            ],
            ..Default::default()
        })
        .await;
    let buyer = app.create_user("Many orders", 0, 0).await;
    let token = app.user_token(buyer);
    let mut orders = Vec::new();
    for i in 0..6 {
        let (id, no) = ids(&qr_order(&app, &token, &format!("together-{i}"), "wechat").await);
        paid_silently(&emulator, "wechat", &no).await;
        orders.push((id, no));
    }
    let notify = |no: &str, event_id: String| {
        emulator.send(json!({"provider": "wechat", "out_trade_no": no, "event_id": event_id}))
    };
    // The first order's notification waits for its locked row in the only lane; the others,
    // and a second copy of one of them (the same order: it waits for the next transaction),
    // queue behind it.
    let (first_no, rest) = (orders[0].1.clone(), &orders[1..]);
    let burst = futures::future::join_all(
        rest.iter()
            .map(|(_, no)| notify(no, format!("evt-{no}")))
            .chain([notify(&rest[0].1, format!("evt-{}", rest[0].1))]),
    );
    let (first, replies) = app
        .behind_a_busy_lane(
            "notifications",
            &format!("SELECT 1 FROM orders WHERE order_no = '{first_no}' FOR UPDATE"),
            rest.len() + 1,
            notify(&first_no, format!("evt-{first_no}")),
            burst,
        )
        .await;

    assert_eq!(first.1["status"], 204, "{}", first.1);
    for (_, reply) in &replies {
        assert_eq!(reply["status"], 204, "{reply}");
    }
    for (id, no) in &orders {
        assert_eq!(order_status(&app, *id).await, "paid");
        assert_eq!(paid_events(&app, *id).await, 1, "{no}: one order.paid.v1");
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) FROM payment_notifications WHERE out_trade_no = '{no}'"
            ))
            .await,
            1,
            "{no}: stored once"
        );
    }
    assert!(
        app.metric("memberline_lane_batches_total{lane=\"notifications\",outcome=\"committed\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "the notifications shared a transaction"
    );
}

#[tokio::test]
async fn a_wechat_notification_timestamped_at_the_end_of_time_is_refused_as_stale_not_a_crash() {
    let (app, _emulator) = app().await;
    let serial = app.settings.payments.wechat.platform_public_key_id.clone();
    for timestamp in ["-9223372036854775808", "9223372036854775807"] {
        let res = app
            .client
            .post(app.url("/v1/payments/wechat/notify"))
            .header("Wechatpay-Serial", &serial)
            .header("Wechatpay-Timestamp", timestamp)
            .header("Wechatpay-Nonce", "n")
            .header("Wechatpay-Signature", "c2lnbmF0dXJl")
            .header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(res.status(), 401, "{timestamp}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "FAIL", "{timestamp}");
    }
    assert_eq!(
        app.scalar("SELECT count(*) FROM payment_notifications")
            .await,
        0
    );
}
