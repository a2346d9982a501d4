//! The four effects of a paid order: membership, rewards and levels, savings, inbox and pushes.

use memberline_platform::metrics::DeliveryOutcome;
use memberline_schema::ids::{BuyerId, OrderId, PlanId};
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use serde_json::json;
use std::time::Duration;

pub async fn app_with_workers(env: Vec<(&'static str, String)>) -> TestApp {
    spawn_app_with(Options {
        workers: true,
        env,
        ..Default::default()
    })
    .await
}

async fn set(app: &TestApp, sql: &str) {
    app.scalar(&format!(
        "WITH x AS ({sql} RETURNING 1) SELECT count(*) FROM x"
    ))
    .await;
}

#[tokio::test]
async fn a_points_purchase_leads_to_all_four_effects_seen_through_the_api() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Everything", 0, 10_000).await;
    set(
        &app,
        &format!("UPDATE users SET growth = 6000, level_id = 2 WHERE id = {buyer}"),
    )
    .await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, order) = app
        .order(
            &token,
            "all-four",
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 201);

    let me = eventually(
        "all four effects are visible",
        Duration::from_secs(20),
        || async {
            let (_, me) = app.get(Some(&token), "/v1/me").await;
            let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
            let done = me["membership"]["status"] == "active"
                && me["purchase_count"] == 1
                && me["growth"] == 6000 + 27
                && inbox["notifications"]
                    .as_array()
                    .is_some_and(|n| n.len() == 2);
            done.then_some(me)
        },
    )
    .await;
    // membership: 30 days from now
    assert_eq!(me["membership"]["days_left"], 30);
    // savings: 3000 points list price, paid 2700 at Gold
    assert_eq!(me["total_saved_points"], 300);
    assert_eq!(me["total_saved_fen"], 0);
    // ledger: points payments earn growth (27 yuan of value), not reward points
    assert_eq!(me["points"], 10_000 - 2700);
    // notifier: inbox, console feed
    let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
    let kinds: Vec<&str> = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"order_paid") && kinds.contains(&"membership_extended"));
    assert_eq!(inbox["unread"], 2);
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM console_feed WHERE (payload->>'order_id')::bigint = {}",
            order["id"]
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn a_balance_purchase_earns_reward_points_with_the_level_bonus() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Rewarded", 100_000, 0).await;
    set(
        &app,
        &format!("UPDATE users SET growth = 6000, level_id = 2 WHERE id = {buyer}"),
    )
    .await;
    let token = app.user_token(buyer);
    let yearly = app.plan_id("yearly").await;
    let (status, _) = app
        .order(
            &token,
            "rewarded",
            json!({"plan_id": yearly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201);
    // Paid 259.20 yuan at Gold (90%); 1 point per yuan x 125% bonus = 324 points.
    app.wait_for_count(
        "reward entry",
        &format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer} AND reason = 'purchase_reward'"),
        1,
    )
    .await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["points"], 324);
    let (_, ledger) = app.get(Some(&token), "/v1/me/ledger?kind=points").await;
    assert_eq!(ledger["entries"][0]["delta"], 324);
    assert_eq!(ledger["entries"][0]["balance_after"], 324);
    eventually("savings recorded", Duration::from_secs(10), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["total_saved_fen"] == 45_600 - 25_920).then_some(())
    })
    .await;
}

#[tokio::test]
async fn memberships_stack_lapsed_buyers_start_now_and_permanent_stays_permanent() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Stacker", 10_000_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    // A lapsed membership that ended five days ago (its order bought long ago).
    let (_, old) = app
        .order(
            &token,
            "old",
            json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
        )
        .await;
    set(
        &app,
        &format!(
            "INSERT INTO membership_periods (user_id, order_id, starts_at, ends_at) \
         VALUES ({buyer}, {}, now() - interval '35 days', now() - interval '5 days')",
            old["id"]
        ),
    )
    .await;

    let before = chrono::Utc::now();
    app.order(
        &token,
        "m1",
        json!({"plan_id": monthly, "pay_method": "balance"}),
    )
    .await;
    let first = eventually("first period", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["membership"]["status"] == "active").then_some(me)
    })
    .await;
    let expires: chrono::DateTime<chrono::Utc> = first["membership"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let since: chrono::DateTime<chrono::Utc> = first["membership"]["since"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        since >= before,
        "a lapsed buyer starts now, not at the old expiry"
    );
    assert_eq!(expires - since, chrono::Duration::days(30));
    assert_eq!(first["membership"]["days_left"], 30);

    app.order(
        &token,
        "m2",
        json!({"plan_id": monthly, "pay_method": "balance"}),
    )
    .await;
    let second = eventually("stacked period", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["membership"]["days_left"] == 60).then_some(me)
    })
    .await;
    let expires2: chrono::DateTime<chrono::Utc> = second["membership"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        expires2 - since,
        chrono::Duration::days(60),
        "stacks from the first start"
    );

    app.order(
        &token,
        "p",
        json!({"plan_id": app.plan_id("permanent").await, "pay_method": "balance"}),
    )
    .await;
    let permanent = eventually("permanent", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["membership"]["permanent"] == true).then_some(me)
    })
    .await;
    assert_eq!(permanent["membership"]["status"], "active");
    assert!(permanent["membership"]["expires_at"].is_null());
    let (status, body) = app
        .order(
            &token,
            "m3",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_permanent"))
    );
}

#[tokio::test]
async fn a_pass_adds_its_uses() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Passer", 10_000, 0).await;
    let token = app.user_token(buyer);
    app.order(
        &token,
        "pass",
        json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
    )
    .await;
    let me = eventually("pass granted", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["passes"].as_array().is_some_and(|p| !p.is_empty())).then_some(me)
    })
    .await;
    assert_eq!(me["passes"][0]["uses_left"], 1);
    assert_eq!(me["membership"]["status"], "none");
}

#[tokio::test]
async fn every_event_published_two_or_three_times_has_each_effect_exactly_once() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Twice", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let pass = app.plan_id("day_pass").await;
    let monthly = app.plan_id("monthly").await;
    for i in 0..6 {
        let plan = if i % 2 == 0 { pass } else { monthly };
        let (s, _) = app
            .order(
                &token,
                &format!("dup-{i}"),
                json!({"plan_id": plan, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(s, 201);
    }
    app.wait_for_count(
        "first deliveries",
        "SELECT count(*) FROM consumed_events WHERE event_type = 'order.paid'",
        24,
    )
    .await;
    // Publish every event again, some twice more.
    for (i, env) in app
        .outbox_payloads("order.paid")
        .await
        .into_iter()
        .enumerate()
    {
        let copies = if i % 2 == 0 { 1 } else { 2 };
        for _ in 0..copies {
            app.publish_event("order.paid.v1", env.to_string().as_bytes())
                .await;
        }
    }
    eventually("duplicates are acked", Duration::from_secs(20), || async {
        let dups: u64 = ["membership", "ledger", "notifier", "savings"]
            .iter()
            .map(|w| app.worker_metrics.deliveries(w, DeliveryOutcome::Duplicate))
            .sum();
        // 3 events once more + 3 events twice more = 9 copies, for each of 4 workers
        (dups >= 36).then_some(())
    })
    .await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM membership_periods WHERE user_id = {buyer}"
        ))
        .await,
        3
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM user_passes WHERE user_id = {buyer}"
        ))
        .await,
        3
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM savings_entries WHERE user_id = {buyer}"
        ))
        .await,
        6
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT purchase_count::bigint FROM users WHERE id = {buyer}"
        ))
        .await,
        6
    );
    assert_eq!(
        app.scalar(&format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer} AND reason = 'purchase_reward'")).await,
        6
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM notifications WHERE user_id = {buyer} AND kind = 'order_paid'"
        ))
        .await,
        6
    );
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(
        me["membership"]["days_left"], 90,
        "three monthly periods, stacked once each"
    );
}

#[tokio::test]
async fn crossing_a_growth_threshold_changes_the_level_and_announces_it() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Climber", 100_000, 0).await;
    set(
        &app,
        &format!("UPDATE users SET growth = 990 WHERE id = {buyer}"),
    )
    .await;
    let token = app.user_token(buyer);
    app.order(
        &token,
        "climb",
        json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
    )
    .await;
    eventually("level changed", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["level"]["name"] == "Silver").then_some(())
    })
    .await;
    app.wait_for_count(
        "level.changed.v1 in the outbox",
        "SELECT count(*) FROM outbox WHERE event_type = 'level.changed'",
        1,
    )
    .await;
    // The next purchase is priced at Silver (95%).
    let (_, order) = app
        .order(
            &token,
            "climb-2",
            json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(order["amount_fen"], 2850);
}

#[tokio::test]
async fn points_above_the_daily_cap_are_flagged_not_credited() {
    let app = app_with_workers(vec![(
        "MEMBERLINE__WORKERS__DAILY_POINTS_CAP",
        "40".to_owned(),
    )])
    .await;
    let buyer = app.create_user("Capped", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    for i in 0..2 {
        app.order(
            &token,
            &format!("cap-{i}"),
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    }
    app.wait_for_count(
        "two reward entries",
        &format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer} AND reason = 'purchase_reward'"),
        2,
    )
    .await;
    // 30 points per order; the cap of 40 credits 30 + 10 and flags 20.
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        40
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT sum(flagged_excess)::bigint FROM point_ledger WHERE user_id = {buyer}"
        ))
        .await,
        20
    );
}

#[tokio::test]
async fn a_buyer_becomes_a_promoter_at_the_purchase_threshold() {
    let app = app_with_workers(vec![(
        "MEMBERLINE__WORKERS__PROMOTER_MIN_PURCHASES",
        "2".to_owned(),
    )])
    .await;
    let buyer = app.create_user("Promoter", 100_000, 0).await;
    let token = app.user_token(buyer);
    let pass = app.plan_id("day_pass").await;
    app.order(
        &token,
        "pr-1",
        json!({"plan_id": pass, "pay_method": "balance"}),
    )
    .await;
    eventually("one purchase counted", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["purchase_count"] == 1).then_some(())
    })
    .await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["is_promoter"], false);
    app.order(
        &token,
        "pr-2",
        json!({"plan_id": pass, "pay_method": "balance"}),
    )
    .await;
    eventually("promoter", Duration::from_secs(20), || async {
        let (_, me) = app.get(Some(&token), "/v1/me").await;
        (me["is_promoter"] == true && me["purchase_count"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn inbox_messages_can_be_marked_read_only_by_their_owner() {
    let app = app_with_workers(vec![]).await;
    let buyer = app.create_user("Reader", 10_000, 0).await;
    let token = app.user_token(buyer);
    app.order(
        &token,
        "read",
        json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
    )
    .await;
    let inbox = eventually("a message arrives", Duration::from_secs(20), || async {
        let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
        (inbox["unread"].as_u64() >= Some(1)).then_some(inbox)
    })
    .await;
    let id = inbox["notifications"][0]["id"].as_i64().unwrap();
    let other = app.create_user("Other", 0, 0).await;
    let res = app
        .client
        .post(app.url(&format!("/v1/me/notifications/{id}/read")))
        .bearer_auth(app.user_token(other))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .client
        .post(app.url(&format!("/v1/me/notifications/{id}/read")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["read_at"].is_string());
    let (_, unread) = app
        .get(Some(&token), "/v1/me/notifications?unread=true")
        .await;
    assert!(
        unread["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != id)
    );
}

#[tokio::test]
async fn console_and_buyer_pushes_go_to_the_push_exchange() {
    let app = app_with_workers(vec![]).await;
    let ch = memberline_tests::broker_channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    for key in ["console.#", "buyer.#"] {
        ch.queue_bind(
            q.name().clone(),
            app.topology.push_exchange().into(),
            key.into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let buyer = app.create_user("Pushed", 100_000, 0).await;
    app.order(
        &app.user_token(buyer),
        "push",
        json!({"plan_id": app.plan_id("monthly").await, "pay_method": "balance"}),
    )
    .await;
    let kinds = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually("three pushes", Duration::from_secs(20), || {
        let ch = ch.clone();
        let name = q.name().clone();
        let kinds = kinds.clone();
        async move {
            while let Some(m) = ch
                .basic_get(
                    name.clone(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
                kinds.lock().unwrap().push((
                    m.delivery.routing_key.to_string(),
                    body["type"].as_str().unwrap().to_owned(),
                ));
            }
            (kinds.lock().unwrap().len() >= 3).then_some(())
        }
    })
    .await;
    let mut kinds = kinds.lock().unwrap().clone();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            (format!("buyer.{buyer}"), "membership_active".to_owned()),
            (format!("buyer.{buyer}"), "order_paid".to_owned()),
            ("console.order_paid".to_owned(), "order_paid".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_reward_applied_after_midnight_counts_toward_its_purchase_day_not_today() {
    let app = app_with_workers(vec![(
        "MEMBERLINE__WORKERS__DAILY_POINTS_CAP",
        "40".to_owned(),
    )])
    .await;
    let buyer = app.create_user("Late", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let rewards = format!(
        "SELECT count(*) FROM point_ledger WHERE user_id = {buyer} AND reason = 'purchase_reward'"
    );
    // Today: 30 points of the 40 cap.
    app.order(
        &token,
        "today-1",
        json!({"plan_id": monthly, "pay_method": "balance"}),
    )
    .await;
    app.wait_for_count("today's reward", &rewards, 1).await;

    // Yesterday's purchase, whose event is only delivered now (a retry across midnight).
    let paid_at = chrono::Utc::now() - chrono::Duration::days(1);
    set(
        &app,
        &format!(
            "INSERT INTO orders (id, order_no, buyer_id, plan_id, plan_code, plan_name, plan_kind, \
             duration_days, pay_method, amount_fen, original_price_fen, status, correlation_id, \
             created_at, paid_at) VALUES (880001, 'ML880001', {buyer}, {monthly}, 'monthly', \
             'Monthly membership', 'membership', 30, 'balance', 3000, 3800, 'paid', \
             gen_random_uuid(), '{paid_at}', '{paid_at}')",
            paid_at = paid_at.to_rfc3339()
        ),
    )
    .await;
    let event = memberline_schema::events::Envelope::new(
        memberline_schema::events::OrderPaid {
            order_id: OrderId(880001),
            order_no: "ML880001".into(),
            buyer_id: BuyerId(buyer),
            plan: memberline_schema::events::PlanSold {
                plan_id: PlanId(monthly),
                plan_code: "monthly".into(),
                plan_name: "Monthly membership".into(),
                plan_kind: memberline_schema::states::PlanKind::Membership,
                duration_days: Some(30),
                uses: None,
            },
            pay_method: memberline_schema::states::PayMethod::Balance,
            amount_fen: 3000,
            amount_points: 0,
            original_price_fen: 3800,
            original_price_points: Some(3000),
            paid_at,
        },
        uuid::Uuid::now_v7(),
        None,
    );
    app.publish_event("order.paid.v1", &serde_json::to_vec(&event).unwrap())
        .await;
    app.wait_for_count("yesterday's reward", &rewards, 2).await;

    // Yesterday's 30 points are booked to yesterday: today still has 10 points of room.
    app.order(
        &token,
        "today-2",
        json!({"plan_id": monthly, "pay_method": "balance"}),
    )
    .await;
    app.wait_for_count("the second reward of today", &rewards, 3)
        .await;
    assert_eq!(
        app.scalar(&format!("SELECT points FROM users WHERE id = {buyer}"))
            .await,
        30 + 30 + 10
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT sum(flagged_excess)::bigint FROM point_ledger WHERE user_id = {buyer}"
        ))
        .await,
        20
    );
}
