//! Authentication and authorization: missing, malformed, expired and foreign tokens, roles.

use memberline_gateway::http::auth::Role;
use memberline_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn requests_without_a_token_are_unauthorized() {
    let app = spawn_app().await;
    for path in ["/v1/me", "/v1/orders", "/v1/orders/1", "/v1/me/ledger"] {
        let (status, body) = app.get(None, path).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "missing_token", "{path}");
    }
    let res = app
        .client
        .post(app.url("/v1/orders"))
        .header("Idempotency-Key", "k")
        .json(&json!({"plan_id": 1, "pay_method": "points"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn malformed_and_foreign_tokens_are_unauthorized() {
    let app = spawn_app().await;
    let foreign = memberline_gateway::http::auth::Keys::new(
        "someone-elses-secret-0123456789abcdef",
    )
    .issue(1, Role::User, 600);
    for auth in [
        "Bearer not-a-jwt".to_owned(),
        "Basic dXNlcjpwYXNz".to_owned(),
        "Bearer".to_owned(),
        format!("Bearer {foreign}"),
    ] {
        let res = app
            .client
            .get(app.url("/v1/me"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{auth}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{auth}");
    }
}

#[tokio::test]
async fn an_expired_token_is_unauthorized_as_expired() {
    let app = spawn_app().await;
    let buyer = app.create_user("Expired", 0, 0).await;
    let token = app.keys.issue(buyer, Role::User, -300);
    let (status, body) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "token_expired");
    // An expired token is refused even where a token is optional.
    let (status, _) = app.get(Some(&token), "/v1/plans").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn another_buyers_order_is_not_found() {
    let app = spawn_app().await;
    let owner = app.create_user("Owner", 0, 10_000).await;
    let snoop = app.create_user("Snoop", 0, 0).await;
    let monthly = app.plan_id("monthly").await;
    let (_, order) = app
        .order(
            &app.user_token(owner),
            "own",
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    let path = format!("/v1/orders/{}", order["id"]);
    let (status, _) = app.get(Some(&app.user_token(owner)), &path).await;
    assert_eq!(status, 200);
    let (status, body) = app.get(Some(&app.user_token(snoop)), &path).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "order_not_found");
    let (_, list) = app.get(Some(&app.user_token(snoop)), "/v1/orders").await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn only_admins_create_users() {
    let app = spawn_app().await;
    for role in [Role::User, Role::Merchant] {
        let res = app
            .client
            .post(app.url("/v1/admin/users"))
            .bearer_auth(app.token(1, role))
            .json(&json!({"name": "x", "balance_fen": 1, "points": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let res = app
        .client
        .post(app.url("/v1/admin/users"))
        .bearer_auth(app.token(0, Role::Admin))
        .json(&json!({"name": "x", "balance_fen": -1, "points": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(app.scalar("SELECT count(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_token_for_a_user_that_does_not_exist_is_unauthorized() {
    let app = spawn_app().await;
    let (status, body) = app.get(Some(&app.user_token(424_242)), "/v1/me").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unknown_user");
}

#[tokio::test]
async fn a_staff_token_cannot_buy_as_or_read_the_buyer_with_the_same_number() {
    let app = spawn_app().await;
    let buyer = app.create_user("Namesake", 100_000, 50_000).await;
    let (_, own) = app
        .order(
            &app.user_token(buyer),
            "own-1",
            json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
        )
        .await;
    for role in [Role::Merchant, Role::Admin] {
        // A staff account numbered like the buyer: its token acts for no buyer.
        let staff = app.token(buyer, role);
        let monthly = app.plan_id("monthly").await;
        let (status, body) = app
            .order(
                &staff,
                &format!("as-buyer-{role:?}"),
                json!({"plan_id": monthly, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (403, json!("forbidden")),
            "{role:?}"
        );
        for path in [
            "/v1/me".to_owned(),
            "/v1/me/ledger".to_owned(),
            "/v1/me/notifications".to_owned(),
            "/v1/orders".to_owned(),
            format!("/v1/orders/{}", own["id"]),
        ] {
            let (status, _) = app.get(Some(&staff), &path).await;
            assert_eq!(status, 403, "{role:?} {path}");
        }
        // The catalogue shows a staff token the prices everyone sees, no buyer's.
        let (status, plans) = app.get(Some(&staff), "/v1/plans").await;
        assert_eq!(status, 200);
        assert!(
            plans["plans"][0].get("buyer_price_fen").is_none(),
            "{plans}"
        );
    }
    let (_, me) = app.get(Some(&app.user_token(buyer)), "/v1/me").await;
    assert_eq!(
        me["balance_fen"],
        100_000 - own["amount_fen"].as_i64().unwrap()
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
        ))
        .await,
        1,
        "only the buyer's own order"
    );
}
