//! `/v1/admin/members`: search, a member's page, edits and adjustments.

use memberline_gateway::http::auth::Role;
use memberline_tests::spawn_app;
use reqwest::Method;
use sea_orm::ConnectionTrait;
use serde_json::json;

#[tokio::test]
async fn staff_find_a_member_by_id_name_phone_or_openid_and_nobody_else() {
    let app = spawn_app().await;
    let merchant = app.token(800_001, Role::Merchant);
    let ada = app.create_user("Ada Lovelace", 0, 0).await;
    let bob = app.create_user("Bob", 0, 0).await;
    let half = app.create_user("50% Off", 0, 0).await;
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/admin/members/{bob}"),
            &app.admin_token(),
            None,
            json!({"phone": "+8613800001234"}),
        )
        .await;
    assert_eq!(status, 200);
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO wechat_identities (appid, openid, buyer_id) \
             VALUES ('wxapp', 'oOpenIdOfAda', {ada})"
        ))
        .await
        .unwrap();
    let found = |q: &str| {
        let path = format!("/v1/admin/members?q={}", urlencode(q));
        let (app, merchant) = (&app, &merchant);
        async move {
            let (status, page) = app.get(Some(merchant), &path).await;
            assert_eq!(status, 200, "{page}");
            page["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found(&ada.to_string()).await, vec![ada]);
    assert_eq!(found("ada").await, vec![ada], "a name's start, any case");
    assert_eq!(found("+8613800001234").await, vec![bob]);
    assert_eq!(found("oOpenIdOfAda").await, vec![ada]);
    assert_eq!(
        found("%").await,
        Vec::<i64>::new(),
        "a wildcard is only itself"
    );
    assert_eq!(found("50%").await, vec![half]);
    assert_eq!(found("nobody").await, Vec::<i64>::new());
    let (status, _) = app
        .get(Some(&app.user_token(ada)), "/v1/admin/members")
        .await;
    assert_eq!(status, 403, "a buyer token finds nobody");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn an_admin_adjusts_a_balance_once_per_key_never_below_zero_audited_and_the_buyer_is_told() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let buyer = app.create_user("Cleo", 1_000, 50).await;
    let path = format!("/v1/admin/members/{buyer}/adjustments");
    let body = json!({"ledger": "balance", "delta": -400, "reason": "goodwill correction"});
    let (status, first) = app
        .call(Method::POST, &path, &admin, Some("adj-1"), body.clone())
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["balance_after"], 600);
    let (status, again) = app
        .call(Method::POST, &path, &admin, Some("adj-1"), body)
        .await;
    assert_eq!(
        (status, &again),
        (201, &first),
        "a retry replays, takes nothing more"
    );

    let (status, refused) = app
        .call(
            Method::POST,
            &path,
            &admin,
            Some("adj-2"),
            json!({"ledger": "points", "delta": -51, "reason": "too much"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "adjustment_below_zero");
    let (status, _) = app
        .call(
            Method::POST,
            &path,
            &app.token(800_001, Role::Merchant),
            Some("adj-3"),
            json!({"ledger": "points", "delta": 5, "reason": "merchant"}),
        )
        .await;
    assert_eq!(
        status, 403,
        "a merchant reads members but does not adjust them"
    );

    let (status, me) = app.get(Some(&app.user_token(buyer)), "/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["balance_fen"].clone(), me["points"].clone()),
        (json!(600), json!(50))
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT (sum(delta) = (SELECT balance_fen FROM users WHERE id = {buyer}))::int::bigint \
             FROM balance_ledger WHERE user_id = {buyer}"
        ))
        .await,
        1,
        "the balance equals the sum of its ledger"
    );
    let (_, inbox) = app
        .get(Some(&app.user_token(buyer)), "/v1/me/notifications")
        .await;
    let told = &inbox["notifications"][0];
    assert_eq!(told["kind"], "account_adjusted");
    assert!(
        told["body"]
            .as_str()
            .unwrap()
            .contains("goodwill correction"),
        "{told}"
    );

    let (status, page) = app
        .get(
            Some(&app.token(800_001, Role::Merchant)),
            &format!("/v1/admin/members/{buyer}"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["member"]["balance_fen"], 600);
    assert_eq!(page["balance_ledger"][0]["reason"], "admin_adjustment");
    assert_eq!(page["balance_ledger"][0]["delta"], -400);
    assert_eq!(page["audit"][0]["action"], "balance_adjust");
    assert_eq!(page["audit"][0]["details"]["before"], 1_000);
    assert_eq!(page["audit"][0]["details"]["after"], 600);
    assert_eq!(page["inbox"][0]["kind"], "account_adjusted");
}
