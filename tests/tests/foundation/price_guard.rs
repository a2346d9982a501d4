//! The buyer-protecting price guard: the price a page showed may travel with an order, is never
//! used as the price, and a catalogue change between display and purchase charges nothing.

use memberline_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn an_order_at_the_price_the_buyer_was_shown_goes_through() {
    let app = spawn_app().await;
    let buyer = app.create_user("Shown", 100_000, 0).await;
    let token = app.user_token(buyer);
    let (_, plans) = app.get(Some(&token), "/v1/plans").await;
    let monthly = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "monthly")
        .unwrap()
        .clone();
    let (status, order) = app
        .order(
            &token,
            "shown-1",
            json!({
                "plan_id": monthly["id"],
                "pay_method": "balance",
                "expected_price_fen": monthly["buyer_price_fen"],
                "expected_price_points": monthly["buyer_price_points"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["amount_fen"], monthly["buyer_price_fen"]);
    // Only the price of the currency charged is compared: a points figure on a balance order
    // is not what the buyer pays.
    let (status, order) = app
        .order(
            &token,
            "shown-2",
            json!({
                "plan_id": monthly["id"],
                "pay_method": "balance",
                "expected_price_fen": monthly["buyer_price_fen"],
                "expected_price_points": 1,
            }),
        )
        .await;
    assert_eq!(status, 201, "{order}");
}

#[tokio::test]
async fn a_price_changed_after_display_refuses_the_order_with_the_current_price_and_charges_nothing()
 {
    let app = spawn_app().await;
    let buyer = app.create_user("Surprised", 100_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    // The page showed 3000 fen; the merchant raises the price before the buyer taps "pay".
    app.scalar(&format!(
        "WITH x AS (UPDATE plans SET price_fen = 3500 WHERE id = {monthly} RETURNING 1) \
         SELECT count(*) FROM x"
    ))
    .await;
    let (status, body) = app
        .order(
            &token,
            "surprise-1",
            json!({"plan_id": monthly, "pay_method": "balance", "expected_price_fen": 3000}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "price_changed");
    assert_eq!(body["error"]["details"]["current_price_fen"], 3500);
    assert_eq!(
        app.scalar(&format!("SELECT balance_fen FROM users WHERE id = {buyer}"))
            .await,
        100_000,
        "nothing charged"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
        ))
        .await,
        0
    );
    // The same key with the new price goes through: the refusal stored nothing.
    let (status, order) = app
        .order(
            &token,
            "surprise-1",
            json!({"plan_id": monthly, "pay_method": "balance", "expected_price_fen": 3500}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["amount_fen"], 3500);
}

#[tokio::test]
async fn a_points_price_is_guarded_too_and_a_client_price_is_still_refused() {
    let app = spawn_app().await;
    let buyer = app.create_user("Pointed", 0, 100_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, body) = app
        .order(
            &token,
            "points-1",
            json!({"plan_id": monthly, "pay_method": "points", "expected_price_points": 1}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["details"]["current_price_points"], 3000);
    let (status, body) = app
        .order(
            &token,
            "points-2",
            json!({"plan_id": monthly, "pay_method": "points", "amount_points": 1}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "client_price_rejected");
    let (status, body) = app
        .order(
            &token,
            "points-3",
            json!({"plan_id": monthly, "pay_method": "points", "expected_price_points": -5}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field");
}
