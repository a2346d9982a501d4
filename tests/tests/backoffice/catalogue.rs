//! `/v1/admin/plans` and `/v1/admin/levels`.

use memberline_gateway::http::auth::Role;
use memberline_tests::{Options, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

async fn audit_of(app: &memberline_tests::TestApp, action: &str) -> Vec<Value> {
    let (status, page) = app
        .get(Some(&app.admin_token()), "/v1/admin/audit?limit=200")
        .await;
    assert_eq!(status, 200, "{page}");
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_admin_changes_a_price_and_the_order_placed_before_keeps_its_own_while_a_stale_buyer_gets_price_changed()
 {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let buyer = app.create_user("Ada", 100_000, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (_, plans) = app.get(Some(&token), "/v1/plans").await;
    let shown = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == monthly)
        .unwrap()["buyer_price_fen"]
        .as_i64()
        .unwrap();
    let (status, before) = app
        .order(
            &token,
            "k1",
            json!({"plan_id": monthly, "pay_method": "balance", "expected_price_fen": shown}),
        )
        .await;
    assert_eq!(status, 201, "{before}");

    let (status, changed) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/plans/{monthly}"),
            &admin,
            None,
            json!({"price_fen": 1990, "original_price_fen": 2990}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["price_fen"], 1990);
    assert_eq!(changed["sold"], true);

    let (_, order) = app
        .get(Some(&token), &format!("/v1/orders/{}", before["id"]))
        .await;
    assert_eq!(
        order["amount_fen"], before["amount_fen"],
        "a placed order keeps its price"
    );

    let (status, stale) = app
        .order(
            &token,
            "k2",
            json!({"plan_id": monthly, "pay_method": "balance", "expected_price_fen": shown}),
        )
        .await;
    assert_eq!(status, 409, "{stale}");
    assert_eq!(stale["error"]["code"], "price_changed");

    let (_, plans) = app.get(None, "/v1/plans").await;
    let listed = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == monthly)
        .unwrap()
        .clone();
    assert_eq!(
        listed["price_fen"], 1990,
        "buyers see it at their next load"
    );

    let entries = audit_of(&app, "plan_update").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["actor_id"], 900_001);
    assert_eq!(
        entries[0]["details"]["before"]["price_fen"],
        before["amount_fen"]
    );
    assert_eq!(entries[0]["details"]["after"]["price_fen"], 1990);
}

#[tokio::test]
async fn a_plan_ever_sold_is_archived_and_one_never_sold_is_deleted() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (status, yearly) = app
        .call(
            Method::POST,
            "/v1/admin/plans",
            &admin,
            None,
            json!({"code": "annual_vip", "name": "Annual VIP", "kind": "membership",
                   "duration_days": 365, "original_price_fen": 36000, "price_fen": 29900,
                   "sort": 9, "image_url": "https://img.example.com/y.png"}),
        )
        .await;
    assert_eq!(status, 201, "{yearly}");
    assert_eq!(yearly["on_shelf"], true);
    let buyer = app.create_user("Bo", 100_000, 0).await;
    let (status, order) = app
        .order(
            &app.user_token(buyer),
            "k",
            json!({"plan_id": yearly["id"], "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["amount_fen"], 29900);

    let (status, removed) = app
        .call(
            Method::DELETE,
            &format!("/v1/admin/plans/{}", yearly["id"]),
            &admin,
            None,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["deleted"], false);
    assert_eq!(removed["plan"]["on_shelf"], false);
    assert!(removed["plan"]["archived_at"].is_string());
    let (status, refused) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/plans/{}", yearly["id"]),
            &admin,
            None,
            json!({"on_shelf": true}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (409, json!("plan_archived"))
    );

    let (status, unsold) = app
        .call(
            Method::POST,
            "/v1/admin/plans",
            &admin,
            None,
            json!({"code": "trial_pass", "name": "Trial", "kind": "pass", "uses": 3,
                   "original_price_fen": 500, "price_fen": 500}),
        )
        .await;
    assert_eq!(status, 201, "{unsold}");
    let (status, removed) = app
        .call(
            Method::DELETE,
            &format!("/v1/admin/plans/{}", unsold["id"]),
            &admin,
            None,
            json!({}),
        )
        .await;
    assert_eq!((status, removed["deleted"].clone()), (200, json!(true)));
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM plans WHERE id = {}",
            unsold["id"]
        ))
        .await,
        0
    );
    let actions: Vec<Value> = ["plan_create", "plan_archive", "plan_delete"]
        .iter()
        .map(|a| json!(a))
        .collect();
    for action in actions {
        assert!(
            !audit_of(&app, action.as_str().unwrap()).await.is_empty(),
            "{action} audited"
        );
    }
}

#[tokio::test]
async fn a_plan_limited_to_some_pay_methods_refuses_the_others_and_bad_fields_are_named() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let monthly = app.plan_id("monthly").await;
    let (status, plan) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/plans/{monthly}"),
            &admin,
            None,
            json!({"pay_methods": ["points"]}),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    let buyer = app.create_user("Cy", 100_000, 100_000).await;
    let (status, refused) = app
        .order(
            &app.user_token(buyer),
            "k",
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "pay_method_not_allowed");

    for (body, says) in [
        (json!({"price_fen": 999_999}), "original_price_fen"),
        (json!({"uses": 3}), "uses"),
        (json!({"image_url": "javascript:alert(1)"}), "image_url"),
        (json!({"pay_methods": []}), "pay_methods"),
        (json!({"kind": "pass"}), "uses"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let (status, err) = app
            .call(
                Method::PATCH,
                &format!("/v1/admin/plans/{monthly}"),
                &admin,
                None,
                body.clone(),
            )
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {err}"
        );
    }
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/plans/{monthly}"),
            &app.token(800_001, Role::Merchant),
            None,
            json!({"price_fen": 1}),
        )
        .await;
    assert_eq!(
        status, 403,
        "a merchant reads the catalogue but does not edit it"
    );
    let (status, _) = app
        .get(Some(&app.token(800_001, Role::Merchant)), "/v1/admin/plans")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn levels_are_edited_and_audited_and_a_level_in_use_stays() {
    let app = spawn_app_with(Options::default()).await;
    let admin = app.admin_token();
    let (status, levels) = app.get(Some(&admin), "/v1/admin/levels").await;
    assert_eq!(status, 200, "{levels}");
    let top = levels["levels"].as_array().unwrap().last().unwrap().clone();
    let (status, changed) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/levels/{}", top["id"]),
            &admin,
            None,
            json!({"discount_percent": 70}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["discount_percent"], 70);
    let (status, added) = app
        .call(
            Method::POST,
            "/v1/admin/levels",
            &admin,
            None,
            json!({"id": 90, "name": "Diamond", "min_growth": 9_999_999, "discount_percent": 60}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let (status, taken) = app
        .call(
            Method::POST,
            "/v1/admin/levels",
            &admin,
            None,
            json!({"id": 91, "name": "Twin", "min_growth": 9_999_999, "discount_percent": 60}),
        )
        .await;
    assert_eq!(
        (status, taken["error"]["code"].clone()),
        (409, json!("level_taken"))
    );
    app.create_user("Di", 0, 0).await;
    let (status, in_use) = app
        .call(
            Method::DELETE,
            "/v1/admin/levels/0",
            &admin,
            None,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, in_use["error"]["code"].clone()),
        (409, json!("level_in_use"))
    );
    let (status, _) = app
        .call(
            Method::DELETE,
            "/v1/admin/levels/90",
            &admin,
            None,
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let entries = audit_of(&app, "level_update").await;
    assert_eq!(
        entries[0]["details"]["before"]["discount_percent"],
        top["discount_percent"]
    );
    assert_eq!(entries[0]["details"]["after"]["discount_percent"], 70);
    assert_eq!(audit_of(&app, "level_delete").await.len(), 1);
}
