//! Alipay's synchronous return from its cashiers: verified, it sends the buyer to their order
//! and only brings the order's next query forward (a return is not proof of payment); forged or
//! tampered, it sends them the same way and changes nothing.

use super::channels::{WAYS, browser, order_by, pay_as_buyer};
use memberline_tests::provider::spawn_app_with_provider;
use memberline_tests::{Options, eventually};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_genuine_return_leads_to_the_order_and_never_pays_it_and_a_forged_one_changes_nothing() {
    // No workers: nothing but the return could pay the order here.
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    emulator
        .notify_mode(json!({"provider": "alipay", "mode": "drop"}))
        .await;
    let buyer = app.create_user("Mobile", 0, 0).await;
    let token = app.user_token(buyer);
    let wap = WAYS[5];
    assert_eq!(wap.channel, "wap");
    let order = order_by(&app, &token, "wap-1", "monthly", wap).await;
    let id = order["id"].as_i64().unwrap();
    let check_sql = format!(
        "SELECT (extract(epoch FROM payment_check_at) * 1000)::bigint FROM orders WHERE id = {id}"
    );
    let scheduled = app.scalar(&check_sql).await;

    let back = pay_as_buyer(&emulator, &order).await.expect("a return URL");
    assert!(
        back.starts_with(&app.url("/v1/payments/alipay/return?")),
        "{back}"
    );
    assert!(
        back.contains("method=alipay.trade.wap.pay.return"),
        "{back}"
    );

    // Tampered (another amount) and forged (no signature at all): the same redirect, nothing
    // changes.
    let tampered = back.replace("total_amount=", "total_amount=1");
    let no_trade = back.split('?').next().unwrap().to_owned()
        + &format!(
            "?out_trade_no={}&total_amount=0.01",
            order["order_no"].as_str().unwrap()
        );
    for forged in [tampered, no_trade] {
        let res = browser().get(&forged).send().await.unwrap();
        assert_eq!(res.status(), 303);
        assert_eq!(
            res.headers()["location"],
            format!("{}/vip?order={id}", app.base).as_str()
        );
        assert_eq!(
            app.scalar(&check_sql).await,
            scheduled,
            "a forged return moves nothing"
        );
    }

    let res = browser().get(&back).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        format!("{}/vip?order={id}", app.base).as_str()
    );
    // Still pending: only a notification or a query pays; its query is due now.
    let (_, now) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
    assert_eq!(now["status"], "pending_payment");
    assert!(
        app.scalar(&check_sql).await < scheduled,
        "the next query is brought forward"
    );

    // The query (the workers' lifecycle job, run here once by hand) pays it.
    let payments =
        memberline_orders::providers::Payments::from_settings(&app.settings.payments, "test")
            .unwrap();
    let client = payments
        .get(memberline_schema::states::Provider::Alipay)
        .unwrap();
    let reconciled = memberline_orders::lifecycle::reconcile(
        &app.db,
        client.as_ref(),
        order["order_no"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert!(matches!(
        reconciled,
        memberline_orders::lifecycle::Reconciled::Paid(_)
    ));
    eventually("the order is paid", Duration::from_secs(5), || async {
        let (_, o) = app.get(Some(&token), &format!("/v1/orders/{id}")).await;
        (o["status"] == "paid").then_some(())
    })
    .await;
}
