//! Signing in with WeChat against the emulator's `jscode2session` and web OAuth: a first
//! sign-in creates the buyer, the next finds them, codes work once and for their own app, an
//! OpenID belongs to one buyer, and WeChat's refusals and outages become clear answers.

use super::channels::{link, login_code};
use memberline_tests::provider::{Emulator, spawn_app_with_provider};
use memberline_tests::{Options, TestApp, spawn_app_with};
use serde_json::{Value, json};

async fn sign_in(app: &TestApp, wechat_app: &str, code: &str) -> (u16, Value, Option<String>) {
    app.post_signed_out("/v1/auth/wechat", json!({"app": wechat_app, "code": code}))
        .await
}

#[tokio::test]
async fn a_first_sign_in_creates_the_buyer_and_the_next_one_finds_them() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let (code, openid) = login_code(&emulator, "miniprogram", None).await;
    let (status, first, _) = sign_in(&app, "miniprogram", &code).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["created"], true);
    let id = first["user"]["id"].as_i64().unwrap();
    assert!(first["expires_at"].is_string());
    // The token is a buyer token: it reads the new buyer's own account.
    let token = first["token"].as_str().unwrap();
    let (status, me) = app.get(Some(token), "/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user_id"], id);

    let (code, _) = login_code(&emulator, "miniprogram", Some(&openid)).await;
    let (status, again, _) = sign_in(&app, "miniprogram", &code).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["created"].clone(), again["user"]["id"].as_i64()),
        (json!(false), Some(id))
    );
    assert_eq!(app.scalar("SELECT count(*) FROM users").await, 1);
    assert_eq!(
        app.text_scalar(&format!(
            "SELECT openid FROM wechat_identities WHERE buyer_id = {id}"
        ))
        .await,
        openid
    );
}

#[tokio::test]
async fn the_same_person_in_the_official_account_is_the_same_buyer_by_unionid() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let minted = |wechat_app: &'static str, openid: &'static str| {
        let emulator = &emulator;
        async move {
            let (status, body) = emulator
                .post_control(
                    "/emulator/wechat/codes",
                    json!({"app": wechat_app, "openid": openid, "unionid": "oUnion0000000000000000000001"}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["code"].as_str().unwrap().to_owned()
        }
    };
    let (_, mini, _) = sign_in(
        &app,
        "miniprogram",
        &minted("miniprogram", "oMini000000000000000000000001").await,
    )
    .await;
    let (status, account, _) = sign_in(
        &app,
        "official_account",
        &minted("official_account", "oAcct000000000000000000000001").await,
    )
    .await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["created"], false);
    assert_eq!(account["user"]["id"], mini["user"]["id"]);
    assert_eq!(
        app.scalar("SELECT count(*) FROM wechat_identities WHERE unionid IS NOT NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn a_used_code_or_another_apps_code_is_refused_with_a_clear_code() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let (code, _) = login_code(&emulator, "miniprogram", None).await;
    let (status, _, _) = sign_in(&app, "miniprogram", &code).await;
    assert_eq!(status, 200);
    let (status, used, _) = sign_in(&app, "miniprogram", &code).await;
    assert_eq!(
        (status, used["error"]["code"].clone()),
        (400, json!("wechat_code_used")),
        "{used}"
    );

    let (code, _) = login_code(&emulator, "miniprogram", None).await;
    let (status, wrong, _) = sign_in(&app, "official_account", &code).await;
    assert_eq!(
        (status, wrong["error"]["code"].clone()),
        (400, json!("wechat_code_invalid")),
        "{wrong}"
    );
    let (status, unknown, _) = sign_in(&app, "miniprogram", "no-such-code").await;
    assert_eq!(
        (status, unknown["error"]["code"].clone()),
        (400, json!("wechat_code_invalid"))
    );
    let (status, bad, _) = sign_in(&app, "mini", "x").await;
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (422, json!("invalid_body"))
    );
    assert_eq!(app.scalar("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn an_openid_that_belongs_to_another_buyer_cannot_be_linked() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    let (code, openid) = login_code(&emulator, "official_account", None).await;
    let (_, owner, _) = sign_in(&app, "official_account", &code).await;
    let other = app.create_user("Other", 0, 0).await;
    let token = app.user_token(other);
    let (code, _) = login_code(&emulator, "official_account", Some(&openid)).await;
    let (status, body) = link(&app, &token, "official_account", &code).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "wechat_identity_taken");

    // The owner linking it again answers the same; a second OpenID in one app is refused.
    let owner_token = owner["token"].as_str().unwrap();
    let (code, _) = login_code(&emulator, "official_account", Some(&openid)).await;
    let (status, body) = link(&app, owner_token, "official_account", &code).await;
    assert_eq!(
        (status, body["openid"].clone()),
        (200, json!(openid)),
        "{body}"
    );
    let (code, _) = login_code(&emulator, "official_account", None).await;
    let (status, body) = link(&app, owner_token, "official_account", &code).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "wechat_app_already_linked");
    assert_eq!(
        app.scalar("SELECT count(*) FROM wechat_identities").await,
        1
    );
}

#[tokio::test]
async fn wechat_refusals_and_outages_become_clear_answers() {
    let (app, emulator) = spawn_app_with_provider(Options::default()).await;
    for (errcode, status, code) in [
        (45011, 429, "wechat_rate_limited"),
        (40226, 403, "wechat_user_blocked"),
        (-1, 502, "wechat_unavailable"),
        (40125, 502, "wechat_refused"),
    ] {
        let (code_to_use, _) = login_code(&emulator, "miniprogram", None).await;
        let (s, body) = emulator
            .post_control(
                "/emulator/wechat/login-failure",
                json!({"errcode": errcode}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let (got, answer, retry_after) = sign_in(&app, "miniprogram", &code_to_use).await;
        assert_eq!(
            (got, answer["error"]["code"].clone()),
            (status, json!(code)),
            "{answer}"
        );
        if got == 429 {
            assert_eq!(retry_after.as_deref(), Some("60"));
        }
    }
    assert_eq!(app.scalar("SELECT count(*) FROM users").await, 0);

    // Seen in WeChat's snapshot mode: a virtual OpenID, which no buyer is made of.
    let (status, snapshot) = emulator
        .post_control(
            "/emulator/wechat/codes",
            json!({"app": "official_account", "snapshot_user": true}),
        )
        .await;
    assert_eq!(status, 200, "{snapshot}");
    let (got, answer, _) =
        sign_in(&app, "official_account", snapshot["code"].as_str().unwrap()).await;
    assert_eq!(
        (got, answer["error"]["code"].clone()),
        (403, json!("wechat_snapshot_user")),
        "{answer}"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM users").await, 0);

    // WeChat unreachable.
    let mut env = Emulator::settings_for("http://127.0.0.1:9", 0);
    env.retain(|(k, _)| *k != "MEMBERLINE__HTTP__PORT");
    let offline = spawn_app_with(Options {
        env,
        ..Default::default()
    })
    .await;
    let (status, answer, _) = sign_in(&offline, "miniprogram", "any").await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (502, json!("wechat_unavailable"))
    );
}
