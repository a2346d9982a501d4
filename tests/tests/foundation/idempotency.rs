//! Idempotency keys: replays, concurrent retries, other bodies, per-buyer scope, refused requests.

use memberline_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn the_same_idempotency_key_twice_in_a_row_creates_one_order_and_identical_bodies() {
    let app = spawn_app().await;
    let buyer = app.create_user("Retrier", 0, 100_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let body = json!({"plan_id": monthly, "pay_method": "points"});

    let first = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "same-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first_text = first.text().await.unwrap();
    let second = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "same-key")
        // Same body, keys in another order: still the same request.
        .header("content-type", "application/json")
        .body(r#"{"pay_method": "points", "plan_id": PLAN}"#.replace("PLAN", &monthly.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.text().await.unwrap(), first_text);
    // What was stored for replays is the order as it reads back.
    let first_body: serde_json::Value = serde_json::from_str(&first_text).unwrap();
    let (status, read_back) = app
        .get(Some(&token), &format!("/v1/orders/{}", first_body["id"]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(read_back, first_body);

    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        100_000 - 3000
    );
}

#[tokio::test]
async fn the_same_idempotency_key_ten_times_at_once_creates_one_order_and_identical_bodies() {
    let app = spawn_app().await;
    let buyer = app.create_user("Impatient", 0, 100_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let results = futures::future::join_all((0..10).map(|_| {
        let (app, token) = (&app, token.clone());
        async move {
            let res = app
                .client
                .post(app.url("/v1/orders"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "storm")
                .json(&json!({"plan_id": monthly, "pay_method": "points"}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    }))
    .await;
    assert!(results.iter().all(|(s, _)| *s == 201), "{results:?}");
    assert!(
        results.iter().all(|(_, b)| *b == results[0].1),
        "{results:?}"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        100_000 - 3000
    );
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused() {
    let app = spawn_app().await;
    let buyer = app.create_user("Switcher", 100_000, 100_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, _) = app
        .order(
            &token,
            "k",
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = app
        .order(
            &token,
            "k",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 1);
}

#[tokio::test]
async fn keys_are_per_buyer_so_two_buyers_may_use_the_same_one() {
    let app = spawn_app().await;
    let a = app.create_user("A", 0, 10_000).await;
    let b = app.create_user("B", 0, 10_000).await;
    let monthly = app.plan_id("monthly").await;
    let body = json!({"plan_id": monthly, "pay_method": "points"});
    let (sa, oa) = app.order(&app.user_token(a), "shared", body.clone()).await;
    let (sb, ob) = app.order(&app.user_token(b), "shared", body).await;
    assert_eq!((sa, sb), (201, 201));
    assert_ne!(oa["id"], ob["id"]);
}

#[tokio::test]
async fn a_missing_or_oversized_idempotency_key_is_a_bad_request() {
    let app = spawn_app().await;
    let buyer = app.create_user("Keyless", 0, 10_000).await;
    let monthly = app.plan_id("monthly").await;
    let res = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(app.user_token(buyer))
        .json(&json!({"plan_id": monthly, "pay_method": "points"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_required");
    let (status, body) = app
        .order(
            &app.user_token(buyer),
            &"x".repeat(256),
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_refused_request_does_not_burn_its_key() {
    let app = spawn_app().await;
    let buyer = app.create_user("Later", 0, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let body = json!({"plan_id": monthly, "pay_method": "points"});
    let (status, _) = app.order(&token, "retry-later", body.clone()).await;
    assert_eq!(status, 422);
    app.scalar(&format!(
        "WITH u AS (UPDATE users SET points = 5000 WHERE id = {buyer} RETURNING 1) SELECT count(*) FROM u"
    ))
    .await;
    let (status, _) = app.order(&token, "retry-later", body).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_staff_members_key_and_a_buyers_same_key_are_apart_whatever_their_numbers() {
    let app = spawn_app().await;
    let buyer = app.create_user("Shared number", 0, 100_000).await;
    let weekly = app.plan_id("monthly").await;
    // An admin whose staff number is the buyer's grants with a key...
    let admin = app.token(buyer, memberline_gateway::http::auth::Role::Admin);
    let (status, granted) = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{buyer}/membership"),
            &admin,
            Some("same-key"),
            json!({"plan_id": weekly, "reason": "goodwill"}),
        )
        .await;
    assert_eq!(status, 201, "{granted}");
    // ...and the buyer's own purchase under the same key is a purchase of its own, neither a
    // replay of the grant nor a reused key.
    let (status, bought) = app
        .order(
            &app.user_token(buyer),
            "same-key",
            json!({"plan_id": weekly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 201, "{bought}");
    assert_eq!(bought["pay_method"], "points");
    assert_ne!(bought["id"], granted["id"]);
    assert_eq!(
        app.scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'same-key'")
            .await,
        2
    );
}
