//! The money side of refunds: each pay method gets exactly its amount back (balance and points
//! with a ledger entry, WeChat and Alipay through the emulator's refund API), a refund is made
//! once however often or concurrently it is asked for, and a refund notification sent five
//! times makes one transition.

use super::{app, buy, effects_applied, events, reversed};
use memberline_tests::{TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

async fn me(app: &TestApp, token: &str) -> Value {
    app.get(Some(token), "/v1/me").await.1
}

async fn period_removed(app: &TestApp, order_id: i64) -> bool {
    app.scalar(&format!(
        "SELECT count(*) FROM membership_periods WHERE order_id = {order_id} \
         AND removed_at IS NOT NULL"
    ))
    .await
        == 1
}

#[tokio::test]
async fn a_balance_or_points_refund_gives_back_exactly_what_was_paid_and_takes_the_membership() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Regretful", 100_000, 50_000).await;
    let token = app.user_token(buyer);

    // Balance: the amount comes back with a ledger entry; the membership goes.
    let order = buy(&app, &token, "bal", "monthly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    assert_eq!(me(&app, &token).await["membership"]["status"], "active");
    let (status, refunded) = app
        .refund(id, "refund-bal", "charged twice by mistake")
        .await;
    assert_eq!(status, 200, "{refunded}");
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(refunded["refund_reason"], "charged twice by mistake");
    assert!(refunded["refunded_at"].is_string());
    assert_eq!(me(&app, &token).await["balance_fen"], 100_000);
    let (_, ledger) = app
        .get(Some(&token), "/v1/me/ledger?kind=balance&limit=5")
        .await;
    let newest = &ledger["entries"][0];
    assert_eq!(newest["reason"], "order_refund", "{ledger}");
    assert_eq!(newest["delta"], order["amount_fen"]);
    assert_eq!(newest["balance_after"], 100_000);
    reversed(&app, id).await;
    assert!(period_removed(&app, id).await);
    assert_eq!(me(&app, &token).await["membership"]["status"], "none");

    // Points: the points come back (a points purchase earned no reward to take back).
    let order = buy(&app, &token, "pts", "monthly", "points").await;
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    let (status, refunded) = app.refund(id, "refund-pts", "sold in error").await;
    assert_eq!(status, 200, "{refunded}");
    assert_eq!(me(&app, &token).await["points"], 50_000);
    reversed(&app, id).await;
    assert!(period_removed(&app, id).await);

    // Free: nothing to give back, the trial goes.
    let order = buy(&app, &token, "free", "trial", "free").await;
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    let (status, refunded) = app.refund(id, "refund-free", "abuse").await;
    assert_eq!((status, &refunded["status"]), (200, &json!("refunded")));
    reversed(&app, id).await;
    let after = me(&app, &token).await;
    assert_eq!(after["membership"]["status"], "none", "{after}");
    assert_eq!(after["balance_fen"], 100_000);
    assert_eq!(after["points"], 50_000);
    assert_eq!(after["purchase_count"], 0, "{after}");

    // A refunded order cannot be refunded again (another key), and the audit log has all three.
    let (status, body) = app.refund(id, "refund-free-again", "again").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "order_not_refundable");
    let (_, audit) = app
        .get(
            Some(&app.admin_token()),
            &format!("/v1/admin/audit?user_id={buyer}"),
        )
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{audit}");
    assert!(
        entries
            .iter()
            .all(|e| e["action"] == "order_refund" && e["actor_id"] == 900_001)
    );
}

async fn a_provider_order_is_refunded_through_the_provider(provider: &str) {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Scanner", 0, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "qr", "monthly", provider).await;
    let (id, no) = (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    );
    assert_eq!(emulator.pay(provider, &no).await.0, 200);
    eventually("the order is paid", Duration::from_secs(15), || async {
        let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
        (o["status"] == "paid").then_some(())
    })
    .await;
    effects_applied(&app, id).await;

    let (status, answer) = app.refund(id, "qr-refund", "customer request").await;
    // Alipay refunds at once; WeChat answers PROCESSING and confirms by notification.
    let at_once = match provider {
        "alipay" => (200, json!("refunded")),
        _ => (202, json!("refund_pending")),
    };
    assert_eq!((status, answer["status"].clone()), at_once, "{answer}");
    assert_eq!(answer["refund_reason"], "customer request");
    eventually(
        "the refund is confirmed",
        Duration::from_secs(20),
        || async {
            let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
            (o["status"] == "refunded").then_some(())
        },
    )
    .await;
    let trade = emulator.trade(provider, &no).await;
    assert_eq!(
        trade["refunded"], trade["total"],
        "refunded in full: {trade}"
    );
    assert_eq!(trade["refunds"].as_array().unwrap().len(), 1, "{trade}");
    assert_eq!(
        app.text_scalar(&format!(
            "SELECT out_refund_no FROM refunds WHERE order_id = {id}"
        ))
        .await,
        format!("{no}R1"),
    );
    reversed(&app, id).await;
    assert!(period_removed(&app, id).await);
    assert_eq!(events(&app, "order.refunded.v1", id).await, 1);
}

#[tokio::test]
async fn a_wechat_order_is_refunded_through_the_emulator_and_confirmed_by_its_notification() {
    a_provider_order_is_refunded_through_the_provider("wechat").await;
}

#[tokio::test]
async fn an_alipay_order_is_refunded_through_the_emulator_at_once() {
    a_provider_order_is_refunded_through_the_provider("alipay").await;
}

#[tokio::test]
async fn the_same_refund_asked_ten_times_at_once_refunds_once_at_the_provider() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Impatient", 0, 0).await;
    let token = app.user_token(buyer);
    // Five refund notifications for each refund: one transition all the same.
    emulator
        .notify_mode(json!({"provider": "wechat", "mode": "deliver", "copies": 5}))
        .await;
    let mut ids = vec![];
    for n in 0..2 {
        let order = buy(&app, &token, &format!("wx-{n}"), "monthly", "wechat").await;
        let (id, no) = (
            order["id"].as_i64().unwrap(),
            order["order_no"].as_str().unwrap().to_owned(),
        );
        assert_eq!(emulator.pay("wechat", &no).await.0, 200);
        ids.push((id, no));
    }
    for (id, _) in &ids {
        effects_applied(&app, *id).await;
    }

    // Ten copies of one request (same key) and ten requests with keys of their own.
    let (same, other) = (&ids[0], &ids[1]);
    let same_key = futures::future::join_all(
        (0..10).map(|_| app.refund(same.0, "one-key", "duplicate charge")),
    )
    .await;
    // WeChat answers PROCESSING: 202 while the refund is pending; a copy answered after its
    // notification came sees the order refunded: 200.
    for (status, body) in &same_key {
        let answer = (*status, body["status"].as_str().unwrap_or_default());
        assert!(
            matches!(answer, (202, "refund_pending") | (200, "refunded")),
            "{status} {body}"
        );
    }
    let keys: Vec<String> = (0..10).map(|n| format!("key-{n}")).collect();
    let own_keys = futures::future::join_all(
        keys.iter()
            .map(|key| app.refund(other.0, key, "duplicate charge")),
    )
    .await;
    let accepted = own_keys.iter().filter(|(s, _)| *s == 202).count();
    let refused = own_keys
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "order_not_refundable")
        .count();
    assert_eq!((accepted, refused), (1, 9), "{own_keys:?}");

    for (id, no) in &ids {
        eventually("refunded", Duration::from_secs(20), || async {
            let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
            (o["status"] == "refunded").then_some(())
        })
        .await;
        let trade = emulator.trade("wechat", no).await;
        assert_eq!(trade["refunds"].as_array().unwrap().len(), 1, "{trade}");
        assert_eq!(trade["refunded"], trade["total"]);
        reversed(&app, *id).await;
        assert_eq!(events(&app, "order.refunded.v1", *id).await, 1);
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) FROM refunds WHERE order_id = {id}"
            ))
            .await,
            1
        );
    }
    // Each refund's five notification copies reached us and were all answered with success.
    let sent = emulator.notifications(&ids[0].1).await;
    let refund_copies: Vec<_> = sent
        .iter()
        .filter(|n| n["event"].as_str().is_some_and(|e| e.starts_with("REFUND")))
        .collect();
    assert!(refund_copies.len() >= 5, "{sent:?}");
    assert!(
        refund_copies.iter().all(|n| n["success"] == true),
        "{sent:?}"
    );
}

#[tokio::test]
async fn refunds_need_an_admin_and_an_existing_paid_order() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Someone", 10_000, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "mine", "monthly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/admin/orders/{id}/refund"),
            &token,
            Some("self-refund"),
            json!({"reason": "I want my money"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app.refund(999_999, "nothing", "no such order").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("order_not_found"))
    );
    let (status, body) = app.refund(id, "empty", "  ").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("invalid_field"))
    );
    // The same key with another body is refused; with the same body it replays.
    let (status, first) = app.refund(id, "k", "first").await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = app.refund(id, "k", "second").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("idempotency_key_reused"))
    );
    let (status, again) = app.refund(id, "k", "first").await;
    assert_eq!((status, &again), (200, &first));
}

#[tokio::test]
async fn a_wechat_refund_that_ends_abnormal_leaves_the_order_paid_and_flagged() {
    let (app, emulator) = app().await;
    let buyer = app.create_user("Closed card", 0, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "qr", "monthly", "wechat").await;
    let (id, no) = (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    );
    assert_eq!(emulator.pay("wechat", &no).await.0, 200);
    effects_applied(&app, id).await;
    let (status, body) = emulator
        .post_control(
            "/emulator/refund-outcome",
            json!({"provider": "wechat", "outcome": "abnormal"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, answer) = app.refund(id, "abnormal", "customer request").await;
    assert_eq!((status, &answer["status"]), (202, &json!("refund_pending")));
    eventually(
        "the order is paid again",
        Duration::from_secs(20),
        || async {
            let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
            (o["status"] == "paid").then_some(())
        },
    )
    .await;
    assert_eq!(
        app.text_scalar(&format!("SELECT refund_flag FROM orders WHERE id = {id}"))
            .await,
        "WeChat REFUND.ABNORMAL"
    );
    assert_eq!(
        app.text_scalar(&format!("SELECT status FROM refunds WHERE order_id = {id}"))
            .await,
        "failed"
    );
    assert_eq!(
        events(&app, "order.refunded.v1", id).await,
        0,
        "nothing is reversed"
    );
    assert_eq!(me(&app, &token).await["membership"]["status"], "active");
}

#[tokio::test]
async fn a_wechat_refund_whose_notification_is_lost_is_finished_by_the_lifecycle_job() {
    let (app, emulator) =
        memberline_tests::provider::spawn_app_with_provider(memberline_tests::Options {
            workers: true,
            env: vec![
                (
                    "MEMBERLINE__PAYMENTS__LIFECYCLE_INTERVAL_SECS",
                    "1".to_owned(),
                ),
                ("MEMBERLINE__PAYMENTS__RECONCILE_AFTER_SECS", "1".to_owned()),
            ],
            ..Default::default()
        })
        .await;
    let buyer = app.create_user("Unnotified", 0, 0).await;
    let token = app.user_token(buyer);
    emulator
        .notify_mode(json!({"provider": "wechat", "mode": "drop"}))
        .await;
    let order = buy(&app, &token, "qr", "monthly", "wechat").await;
    let (id, no) = (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    );
    assert_eq!(emulator.pay("wechat", &no).await.0, 200);
    // Paid by reconciliation (the payment notification is dropped too).
    effects_applied(&app, id).await;

    let (status, answer) = app.refund(id, "lost", "customer request").await;
    assert_eq!(
        (status, &answer["status"]),
        (202, &json!("refund_pending")),
        "{answer}"
    );
    eventually(
        "the job finishes the refund",
        Duration::from_secs(20),
        || async {
            let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
            (o["status"] == "refunded").then_some(())
        },
    )
    .await;
    assert_eq!(
        app.scalar("SELECT count(*) FROM payment_notifications")
            .await,
        0,
        "no notification reached us"
    );
    assert_eq!(
        emulator.trade("wechat", &no).await["refunds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    reversed(&app, id).await;
    // A replay of the request now answers what is true: refunded.
    let (status, replay) = app.refund(id, "lost", "customer request").await;
    assert_eq!(
        (status, &replay["status"]),
        (200, &json!("refunded")),
        "{replay}"
    );
}

#[tokio::test]
async fn a_success_for_an_earlier_refund_attempt_completes_the_refund_and_supersedes_the_later_one()
{
    let (app, emulator) = app().await;
    let buyer = app.create_user("Second try", 0, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "qr", "monthly", "wechat").await;
    let (id, no) = (
        order["id"].as_i64().unwrap(),
        order["order_no"].as_str().unwrap().to_owned(),
    );
    assert_eq!(emulator.pay("wechat", &no).await.0, 200);
    effects_applied(&app, id).await;
    // R1 ends ABNORMAL: the order is paid again.
    emulator
        .post_control(
            "/emulator/refund-outcome",
            json!({"provider": "wechat", "outcome": "abnormal"}),
        )
        .await;
    let (status, _) = app.refund(id, "first", "customer request").await;
    assert_eq!(status, 202);
    eventually("R1 failed", Duration::from_secs(20), || async {
        (app.text_scalar(&format!("SELECT status FROM orders WHERE id = {id}"))
            .await
            == "paid")
            .then_some(())
    })
    .await;
    // R2 is asked for and still pending at the provider...
    let txn = sea_orm::TransactionTrait::begin(&app.db).await.unwrap();
    memberline_orders::refunds::begin(
        &txn,
        memberline_schema::ids::OrderId(id),
        900_001,
        "second try",
        chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    // ...when WeChat reports R1 refunded after all (the merchant sorted the buyer's card out).
    let done =
        memberline_orders::refunds::complete(&app.db, &format!("{no}R1"), Some("R1-id".into()))
            .await
            .unwrap();
    assert!(done, "the success of R1 is taken");
    reversed(&app, id).await;
    assert_eq!(
        app.text_scalar(&format!("SELECT status FROM orders WHERE id = {id}"))
            .await,
        "refunded"
    );
    assert_eq!(
        app.text_scalar(&format!(
            "SELECT string_agg(out_refund_no || '=' || status, ',' ORDER BY attempt) \
             FROM refunds WHERE order_id = {id}"
        ))
        .await,
        format!("{no}R1=succeeded,{no}R2=failed")
    );
    assert_eq!(events(&app, "order.refunded.v1", id).await, 1);
    assert_eq!(me(&app, &token).await["membership"]["status"], "none");
    // R2's own success later finds the order refunded: nothing more happens.
    let again = memberline_orders::refunds::complete(&app.db, &format!("{no}R2"), None)
        .await
        .unwrap();
    assert!(!again);
    assert_eq!(events(&app, "order.refunded.v1", id).await, 1);
}
