//! Purchases with points, balance and free plans: prices, pay-method rules, concurrency, listing.

use memberline_tests::{eventually, spawn_app};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_points_purchase_debits_the_discounted_price_and_publishes_one_order_paid_event() {
    let app = spawn_app().await;
    let mut tap = app.tap("order.paid.v1").await;
    // Seeded-style Gold buyer (growth 6000 → 10% off) created directly: levels come from seed.
    let buyer = app.create_user("Gold buyer", 0, 10_000).await;
    app.scalar(&format!(
        "WITH u AS (UPDATE users SET growth = 6000, level_id = 2 WHERE id = {buyer} RETURNING 1) SELECT count(*) FROM u"
    ))
    .await;
    let monthly = app.plan_id("monthly").await;
    let token = app.user_token(buyer);

    let correlation = uuid::Uuid::now_v7();
    let res = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "points-1")
        .header("X-Correlation-Id", correlation.to_string())
        .json(&json!({"plan_id": monthly, "pay_method": "points"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers()["x-correlation-id"].to_str().unwrap(),
        correlation.to_string()
    );
    let order: serde_json::Value = res.json().await.unwrap();
    // 3000 points at 90% = 2700.
    assert_eq!(order["amount_points"], 2700);
    assert_eq!(order["amount_fen"], 0);
    assert_eq!(order["status"], "paid");
    assert!(order["paid_at"].is_string());

    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["points"], 10_000 - 2700);
    let (_, ledger) = app.get(Some(&token), "/v1/me/ledger?kind=points").await;
    let entry = &ledger["entries"][0];
    assert_eq!(entry["delta"], -2700);
    assert_eq!(entry["balance_after"], 7300);
    assert_eq!(entry["order_id"], order["id"]);

    let seen = tap
        .next(Duration::from_secs(10))
        .await
        .expect("order.paid.v1 arrives");
    assert!(seen.persistent, "events are published persistent");
    let env = &seen.body;
    assert_eq!(env["type"], "order.paid");
    assert_eq!(env["version"], 1);
    assert_eq!(seen.message_id.as_deref(), env["event_id"].as_str());
    assert!(uuid::Uuid::parse_str(env["event_id"].as_str().unwrap()).is_ok());
    assert!(env["occurred_at"].is_string());
    assert_eq!(env["correlation_id"], correlation.to_string());
    let p = &env["payload"];
    assert_eq!(p["order_id"], order["id"]);
    assert_eq!(p["buyer_id"], buyer);
    assert_eq!(p["plan_id"], monthly);
    assert_eq!(p["pay_method"], "points");
    assert_eq!(p["amount_points"], 2700);
    assert_eq!(p["original_price_fen"], 3800);
    assert!(
        tap.next(Duration::from_millis(500)).await.is_none(),
        "exactly one event"
    );
}

#[tokio::test]
async fn a_balance_purchase_debits_fen_and_writes_a_balance_ledger_entry() {
    let app = spawn_app().await;
    let buyer = app.create_user("Balance buyer", 50_000, 0).await;
    let token = app.user_token(buyer);
    let yearly = app.plan_id("yearly").await;
    let (status, order) = app
        .order(
            &token,
            "bal-1",
            json!({"plan_id": yearly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["amount_fen"], 28_800);
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["balance_fen"], 50_000 - 28_800);
    let (_, ledger) = app.get(Some(&token), "/v1/me/ledger?kind=balance").await;
    assert_eq!(ledger["entries"][0]["delta"], -28_800);
    assert_eq!(ledger["entries"][0]["balance_after"], 21_200);
    assert_eq!(ledger["entries"][1]["reason"], "opening_balance");
}

#[tokio::test]
async fn fifty_concurrent_points_purchases_by_a_buyer_who_can_afford_ten_pay_exactly_ten() {
    let app = spawn_app().await;
    let buyer = app.create_user("Ten purchases", 0, 30_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;

    let attempts = (0..50).map(|i| {
        let app = &app;
        let token = token.clone();
        async move {
            app.order(
                &token,
                &format!("burst-{i}"),
                json!({"plan_id": monthly, "pay_method": "points"}),
            )
            .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let paid = results.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s != 201).collect();
    assert_eq!(paid, 10);
    assert_eq!(refused.len(), 40);
    for (status, body) in refused {
        assert_eq!(*status, 422);
        assert_eq!(body["error"]["code"], "insufficient_points");
    }
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM orders WHERE buyer_id = {buyer} AND status = 'paid'"
        ))
        .await,
        10
    );
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        0
    );
    // The ledger never went below zero, and it adds up to the balance.
    assert_eq!(
        app.scalar(&format!(
            "SELECT min(balance_after) FROM point_ledger WHERE user_id = {buyer}"
        ))
        .await,
        0
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT sum(delta)::bigint FROM point_ledger WHERE user_id = {buyer}"
        ))
        .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE event_type = 'order.paid'")
            .await,
        10
    );
}

#[tokio::test]
async fn insufficient_funds_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let buyer = app.create_user("Poor", 100, 100).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, body) = app
        .order(
            &token,
            "poor-1",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "insufficient_balance");
    let (status, body) = app
        .order(
            &token,
            "poor-2",
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "insufficient_points");
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM idempotency_keys").await, 0);
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["balance_fen"], 100);
    assert_eq!(me["points"], 100);
}

#[tokio::test]
async fn the_free_trial_is_claimable_once_per_buyer() {
    let app = spawn_app().await;
    let buyer = app.create_user("Trial taker", 0, 0).await;
    let token = app.user_token(buyer);
    let trial = app.plan_id("trial").await;
    let (status, order) = app
        .order(
            &token,
            "trial-1",
            json!({"plan_id": trial, "pay_method": "free"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["amount_fen"], 0);
    assert_eq!(order["status"], "paid");
    let (status, body) = app
        .order(
            &token,
            "trial-2",
            json!({"plan_id": trial, "pay_method": "free"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "free_plan_already_claimed");

    // Another buyer can still claim it.
    let other = app.create_user("Other", 0, 0).await;
    let (status, _) = app
        .order(
            &app.user_token(other),
            "trial-1",
            json!({"plan_id": trial, "pay_method": "free"}),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn ten_simultaneous_free_trial_claims_with_different_keys_give_one_order() {
    let app = spawn_app().await;
    let buyer = app.create_user("Racer", 0, 0).await;
    let token = app.user_token(buyer);
    let trial = app.plan_id("trial").await;
    let results = futures::future::join_all((0..10).map(|i| {
        let (app, token) = (&app, token.clone());
        async move {
            app.order(
                &token,
                &format!("race-{i}"),
                json!({"plan_id": trial, "pay_method": "free"}),
            )
            .await
        }
    }))
    .await;
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1);
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != 201)
            .all(|(s, b)| *s == 409 && b["error"]["code"] == "free_plan_already_claimed")
    );
}

#[tokio::test]
async fn pay_method_rules_are_enforced_with_clear_codes() {
    let app = spawn_app().await;
    let buyer = app.create_user("Rules", 1_000_000, 1_000_000).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let trial = app.plan_id("trial").await;
    for (i, (body, status, code)) in [
        (
            json!({"plan_id": monthly, "pay_method": "wechat"}),
            422,
            "pay_method_unavailable",
        ),
        (
            json!({"plan_id": monthly, "pay_method": "alipay"}),
            422,
            "pay_method_unavailable",
        ),
        (
            json!({"plan_id": monthly, "pay_method": "free"}),
            422,
            "plan_not_free",
        ),
        (
            json!({"plan_id": trial, "pay_method": "balance"}),
            422,
            "pay_method_not_allowed",
        ),
        (
            json!({"plan_id": trial, "pay_method": "points"}),
            422,
            "pay_method_not_allowed",
        ),
        (
            json!({"plan_id": 999_999, "pay_method": "points"}),
            404,
            "plan_not_found",
        ),
        (
            json!({"plan_id": monthly, "pay_method": "cash"}),
            422,
            "invalid_body",
        ),
        (
            json!({"plan_id": "one", "pay_method": "points"}),
            422,
            "invalid_body",
        ),
        (json!({"pay_method": "points"}), 422, "invalid_body"),
    ]
    .into_iter()
    .enumerate()
    {
        let (got, res) = app.order(&token, &format!("rule-{i}"), body.clone()).await;
        assert_eq!(got, status, "{body} -> {res}");
        assert_eq!(res["error"]["code"], code, "{body} -> {res}");
        assert!(
            res["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
}

#[tokio::test]
async fn a_permanent_member_cannot_buy_more_membership() {
    let app = spawn_app().await;
    let buyer = app.create_user("Forever", 1_000_000, 1_000_000).await;
    let token = app.user_token(buyer);
    let permanent = app.plan_id("permanent").await;
    let (status, order) = app
        .order(
            &token,
            "perm-1",
            json!({"plan_id": permanent, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201);
    // The membership worker writes the period; here the test writes it as the worker would.
    app.scalar(&format!(
        "WITH p AS (INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at, permanent) \
         VALUES ({buyer}, {}, now(), NULL, true) RETURNING 1) SELECT count(*) FROM p",
        order["id"]
    ))
    .await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "active");
    assert_eq!(me["membership"]["permanent"], true);

    let monthly = app.plan_id("monthly").await;
    let (status, body) = app
        .order(
            &token,
            "perm-2",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "already_permanent");
    // A pass is not membership time: it can still be bought.
    let pass = app.plan_id("day_pass").await;
    let (status, _) = app
        .order(
            &token,
            "perm-3",
            json!({"plan_id": pass, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_client_sent_price_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let buyer = app.create_user("Haggler", 100_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    for field in ["amount_fen", "price_fen", "amount", "price"] {
        let (status, body) = app
            .order(
                &token,
                &format!("haggle-{field}"),
                json!({"plan_id": monthly, "pay_method": "balance", field: 1}),
            )
            .await;
        assert_eq!(status, 422);
        assert_eq!(body["error"]["code"], "client_price_rejected");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM orders").await, 0);
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["balance_fen"], 100_000);
    // Without the field the server's price is charged.
    let (status, order) = app
        .order(
            &token,
            "haggle-none",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(order["amount_fen"], 3000);
}

#[tokio::test]
async fn orders_are_listed_newest_first_with_a_cursor() {
    let app = spawn_app().await;
    let buyer = app.create_user("Lister", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let pass = app.plan_id("day_pass").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (s, o) = app
            .order(
                &token,
                &format!("list-{i}"),
                json!({"plan_id": pass, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(s, 201);
        ids.push(o["id"].as_i64().unwrap());
    }
    let (_, page1) = app.get(Some(&token), "/v1/orders?limit=3").await;
    let got: Vec<i64> = page1["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4], ids[3], ids[2]]);
    let cursor = page1["next_cursor"].as_i64().unwrap();
    let (_, page2) = app
        .get(Some(&token), &format!("/v1/orders?limit=3&cursor={cursor}"))
        .await;
    let got: Vec<i64> = page2["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[1], ids[0]]);
    assert!(page2["next_cursor"].is_null());
    let (status, body) = app.get(Some(&token), "/v1/orders?limit=0").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");

    let (status, one) = app
        .get(Some(&token), &format!("/v1/orders/{}", ids[0]))
        .await;
    assert_eq!(status, 200);
    for field in [
        "id",
        "order_no",
        "plan_id",
        "pay_method",
        "amount_fen",
        "amount_points",
        "status",
        "created_at",
        "paid_at",
    ] {
        assert!(one.get(field).is_some(), "order has {field}");
    }
    eventually(
        "the relay publishes the five events",
        Duration::from_secs(10),
        || async {
            (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_second_membership_right_after_a_permanent_one_is_refused_before_any_worker_ran() {
    let app = spawn_app().await;
    let buyer = app.create_user("Quick", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let permanent = app.plan_id("permanent").await;
    let (status, _) = app
        .order(
            &token,
            "q-1",
            json!({"plan_id": permanent, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201);
    for (key, code) in [("q-2", "permanent"), ("q-3", "monthly")] {
        let plan = app.plan_id(code).await;
        let (status, body) = app
            .order(
                &token,
                key,
                json!({"plan_id": plan, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("already_permanent"))
        );
    }
    assert_eq!(
        app.scalar(&format!("SELECT balance_fen FROM users WHERE id = {buyer}"))
            .await,
        1_000_000 - 99_900,
        "charged once"
    );
}

/// A gateway with one purchase lane (batches of the default 16), as `options` says otherwise.
async fn one_lane(mut options: memberline_tests::Options) -> memberline_tests::TestApp {
    options
        .env
        .push(("MEMBERLINE__LANES__COUNT", "1".to_owned()));
    memberline_tests::spawn_app_with(options).await
}

/// Holds `blocked`'s row locked while its purchase reaches the only lane, lets `burst` queue up
/// behind it (so that its purchases go to the lane together), then lets everything through.
/// Returns the blocked purchase's answer and the burst's, in order.
async fn burst_behind_a_busy_lane<
    F: std::future::Future<Output = Vec<(u16, serde_json::Value)>>,
>(
    app: &memberline_tests::TestApp,
    blocked: i64,
    burst_len: usize,
    burst: F,
) -> ((u16, serde_json::Value), Vec<(u16, serde_json::Value)>) {
    let monthly = app.plan_id("monthly").await;
    let token = app.user_token(blocked);
    app.behind_a_busy_lane(
        "purchases",
        &format!("SELECT 1 FROM users WHERE id = {blocked} FOR UPDATE"),
        burst_len,
        app.order(
            &token,
            "blocked",
            json!({"plan_id": monthly, "pay_method": "points"}),
        ),
        burst,
    )
    .await
}

#[tokio::test]
async fn purchases_that_arrive_together_share_a_transaction_and_each_is_answered_as_if_alone() {
    let app = one_lane(Default::default()).await;
    let monthly = app.plan_id("monthly").await;
    let blocked = app.create_user("Blocked", 0, 10_000).await;
    let mut buyers = Vec::new();
    for i in 0..8 {
        buyers.push(app.create_user(&format!("Buyer {i}"), 0, 10_000).await);
    }
    let twice = app.create_user("Buys twice", 0, 10_000).await;
    let poor = app.create_user("No points", 0, 0).await;
    let retried = app.create_user("Retries", 0, 10_000).await;
    let with_balance = [
        app.create_user("Balance 1", 100_000, 10_000).await,
        app.create_user("Balance 2", 100_000, 10_000).await,
    ];
    // (buyer, key): the same buyer twice, a buyer who cannot pay, one request sent twice, two
    // paying with their balance.
    let mut asks: Vec<(i64, String)> = buyers.iter().map(|b| (*b, format!("b-{b}"))).collect();
    asks.extend([
        (twice, "twice-1".to_owned()),
        (twice, "twice-2".to_owned()),
        (poor, "poor".to_owned()),
        (retried, "retried".to_owned()),
        (retried, "retried".to_owned()),
    ]);
    asks.extend(with_balance.iter().map(|b| (*b, format!("fen-{b}"))));
    let burst = futures::future::join_all(asks.iter().map(|(buyer, key)| {
        let token = app.user_token(*buyer);
        let method = if with_balance.contains(buyer) {
            "balance"
        } else {
            "points"
        };
        let app = &app;
        async move {
            app.order(
                &token,
                key,
                json!({"plan_id": monthly, "pay_method": method}),
            )
            .await
        }
    }));
    let (first, answers) = burst_behind_a_busy_lane(&app, blocked, asks.len(), burst).await;

    assert_eq!(first.0, 201, "{}", first.1);
    for ((buyer, key), (status, body)) in asks.iter().zip(&answers) {
        if *buyer == poor {
            assert_eq!(*status, 422, "{body}");
            assert_eq!(body["error"]["code"], "insufficient_points");
        } else {
            assert_eq!(*status, 201, "{key}: {body}");
            assert!(body["id"].is_i64(), "{body}");
            assert_eq!(body["status"], "paid");
        }
    }
    // The request sent twice has one order, and both answers show it.
    let retried_answers: Vec<_> = asks
        .iter()
        .zip(&answers)
        .filter(|((b, _), _)| *b == retried)
        .map(|(_, (_, body))| body.clone())
        .collect();
    assert_eq!(retried_answers[0], retried_answers[1]);
    let orders_of = |buyer: i64| {
        let app = &app;
        async move {
            app.scalar(&format!(
                "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
            ))
            .await
        }
    };
    for buyer in &buyers {
        assert_eq!(orders_of(*buyer).await, 1);
    }
    assert_eq!(orders_of(twice).await, 2);
    assert_eq!(orders_of(retried).await, 1);
    assert_eq!(orders_of(poor).await, 0);
    for buyer in with_balance {
        assert_eq!(orders_of(buyer).await, 1);
        // The debit's ledger entry says what the balance became, and it is what it is.
        assert_eq!(
            app.scalar(&format!(
                "SELECT count(*) FROM balance_ledger l JOIN users u ON u.id = l.user_id \
                 WHERE l.user_id = {buyer} AND l.order_id IS NOT NULL \
                 AND l.balance_after = u.balance_fen AND u.balance_fen < 100000 \
                 AND l.delta = -(SELECT amount_fen FROM orders WHERE buyer_id = {buyer})"
            ))
            .await,
            1
        );
    }
    // Every buyer paid exactly what their orders say, with one ledger entry and one event each.
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM users u WHERE u.points + (SELECT coalesce(sum(amount_points), 0) \
             FROM orders WHERE buyer_id = u.id) <> (CASE WHEN u.name = 'No points' THEN 0 ELSE 10000 END)"
        )
        .await,
        0
    );
    let orders = app.scalar("SELECT count(*) FROM orders").await;
    assert_eq!(orders, 1 + 8 + 2 + 1 + 2);
    assert_eq!(
        app.scalar("SELECT count(*) FROM point_ledger WHERE order_id IS NOT NULL")
            .await,
        orders - 2
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE event_type = 'order.paid'")
            .await,
        orders
    );
    assert!(
        app.metric("memberline_lane_batches_total{lane=\"purchases\",outcome=\"committed\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "the burst shared a transaction"
    );
    assert_eq!(
        app.metric("memberline_lane_waiting{lane=\"purchases\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_purchase_the_database_refuses_fails_alone_and_the_others_of_its_transaction_are_placed_on_their_own()
 {
    use sea_orm::ConnectionTrait;
    let app = one_lane(Default::default()).await;
    let monthly = app.plan_id("monthly").await;
    let blocked = app.create_user("Blocked", 0, 10_000).await;
    let mut buyers = Vec::new();
    for i in 0..6 {
        buyers.push(app.create_user(&format!("Buyer {i}"), 0, 10_000).await);
    }
    let refused = buyers[3];
    // A rule of the database the gateway does not know: this buyer's orders fail to insert.
    app.db
        .execute_unprepared(&format!(
            "CREATE FUNCTION refuse_one_buyer() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.buyer_id = {refused} THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_one_buyer BEFORE INSERT ON orders \
             FOR EACH ROW EXECUTE FUNCTION refuse_one_buyer()"
        ))
        .await
        .unwrap();
    let burst = futures::future::join_all(buyers.iter().map(|buyer| {
        let token = app.user_token(*buyer);
        let app = &app;
        async move {
            app.order(
                &token,
                &format!("k-{buyer}"),
                json!({"plan_id": monthly, "pay_method": "points"}),
            )
            .await
        }
    }));
    let (first, answers) = burst_behind_a_busy_lane(&app, blocked, buyers.len(), burst).await;

    assert_eq!(first.0, 201, "{}", first.1);
    for (buyer, (status, body)) in buyers.iter().zip(&answers) {
        if *buyer == refused {
            assert_eq!(*status, 500, "{body}");
        } else {
            assert_eq!(*status, 201, "{body}");
        }
        let orders = app
            .scalar(&format!(
                "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
            ))
            .await;
        assert_eq!(orders, i64::from(*buyer != refused));
    }
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {refused}"))
            .await,
        10_000
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM outbox WHERE event_type = 'order.paid'")
            .await,
        1 + 5
    );
    assert!(
        app.metric("memberline_lane_batches_total{lane=\"purchases\",outcome=\"split\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "the shared transaction was split"
    );
}

#[tokio::test]
async fn a_buyer_row_held_by_a_stuck_session_fails_only_that_buyers_purchase_after_the_lock_timeout()
 {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = one_lane(memberline_tests::Options {
        env: vec![("MEMBERLINE__DATABASE__LOCK_TIMEOUT_MS", "300".to_owned())],
        own_pool: true,
        ..Default::default()
    })
    .await;
    let monthly = app.plan_id("monthly").await;
    let mut buyers = Vec::new();
    for i in 0..6 {
        buyers.push(app.create_user(&format!("Buyer {i}"), 0, 10_000).await);
    }
    let stuck = buyers[2];
    // An operator's session that holds a buyer's row and does not let go.
    let session = app.db.begin().await.unwrap();
    session
        .execute_unprepared(&format!(
            "SELECT 1 FROM users WHERE id = {stuck} FOR UPDATE"
        ))
        .await
        .unwrap();
    let answers = futures::future::join_all(buyers.iter().map(|buyer| {
        let token = app.user_token(*buyer);
        let app = &app;
        async move {
            app.order(
                &token,
                &format!("k-{buyer}"),
                json!({"plan_id": monthly, "pay_method": "points"}),
            )
            .await
        }
    }))
    .await;
    session.rollback().await.unwrap();

    for (buyer, (status, body)) in buyers.iter().zip(&answers) {
        if *buyer == stuck {
            assert_eq!(*status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable");
        } else {
            assert_eq!(*status, 201, "{body}");
        }
        let orders = app
            .scalar(&format!(
                "SELECT count(*) FROM orders WHERE buyer_id = {buyer}"
            ))
            .await;
        assert_eq!(orders, i64::from(*buyer != stuck));
    }
}
