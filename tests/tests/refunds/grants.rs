//! Admin grants and revocations: through the pipeline like a purchase (stacking, inbox, no
//! reward points, no purchase counted), recorded in the audit log, admins only.

use super::{app, effects_applied};
use memberline_tests::{TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;

async fn grant(app: &TestApp, user: i64, key: &str, plan: &str) -> (u16, Value) {
    let plan_id = app.plan_id(plan).await;
    app.call(
        reqwest::Method::PUT,
        &format!("/v1/admin/users/{user}/membership"),
        &app.admin_token(),
        Some(key),
        json!({"plan_id": plan_id, "reason": "support goodwill"}),
    )
    .await
}

async fn revoke(app: &TestApp, token: &str, user: i64, key: &str) -> (u16, Value) {
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/admin/users/{user}/membership"),
        token,
        Some(key),
        json!({"reason": "abuse of the trial"}),
    )
    .await
}

#[tokio::test]
async fn a_granted_membership_is_active_and_a_revoked_one_is_gone_with_both_in_the_audit_log() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Lucky", 0, 0).await;
    let token = app.user_token(buyer);

    let (status, order) = grant(&app, buyer, "g1", "monthly").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["pay_method"], "admin_grant");
    assert_eq!(order["amount_fen"], 0);
    assert_eq!(order["status"], "paid");
    let (status, replay) = grant(&app, buyer, "g1", "monthly").await;
    assert_eq!(
        (status, &replay),
        (201, &order),
        "the same key replays the grant"
    );
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "active", "{me}");
    assert_eq!(me["points"], 0, "a grant earns no reward points");
    assert_eq!(me["purchase_count"], 0, "a grant is not a purchase");

    let (status, accepted) = revoke(&app, &app.admin_token(), buyer, "r1").await;
    assert_eq!(status, 202, "{accepted}");
    eventually(
        "the membership is gone",
        Duration::from_secs(20),
        || async {
            let (_, me) = app.get(Some(&token), "/v1/me").await;
            (me["membership"]["status"] == "none").then_some(())
        },
    )
    .await;
    // The granted period now ends at the revocation.
    let ended_at = app
        .text_scalar(&format!(
            "SELECT to_char(ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
             FROM membership_periods WHERE order_id = {id}"
        ))
        .await;
    let revoked_at: chrono::DateTime<chrono::Utc> =
        accepted["revoked_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ended_at,
        revoked_at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    );
    eventually("the buyer is told", Duration::from_secs(20), || async {
        let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
        inbox["notifications"]
            .as_array()?
            .iter()
            .any(|n| n["kind"] == "membership_changed")
            .then_some(())
    })
    .await;

    let (_, audit) = app
        .get(
            Some(&app.admin_token()),
            &format!("/v1/admin/audit?user_id={buyer}"),
        )
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["membership_revoke", "membership_grant"],
        "{audit}"
    );
    assert_eq!(audit["entries"][1]["order_id"], id);
    assert_eq!(audit["entries"][0]["reason"], "abuse of the trial");
}

#[tokio::test]
async fn a_grant_stacks_after_a_bought_membership_and_revoking_removes_the_future_period() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Member", 10_000, 0).await;
    let token = app.user_token(buyer);
    let bought = super::buy(&app, &token, "b", "monthly", "balance").await;
    effects_applied(&app, bought["id"].as_i64().unwrap()).await;
    let (status, granted) = grant(&app, buyer, "g", "monthly").await;
    assert_eq!(status, 201, "{granted}");
    let gid = granted["id"].as_i64().unwrap();
    effects_applied(&app, gid).await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM membership_periods a JOIN membership_periods b \
             ON b.order_id = {gid} AND a.order_id = {} AND b.starts_at = a.ends_at",
            bought["id"]
        ))
        .await,
        1,
        "the granted month starts where the bought one ends"
    );
    let (status, _) = revoke(&app, &app.admin_token(), buyer, "r").await;
    assert_eq!(status, 202);
    eventually("revoked", Duration::from_secs(20), || async {
        (app.scalar(&format!(
            "SELECT count(*) FROM membership_periods WHERE order_id = {gid} AND removed_at IS NOT NULL"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "none", "{me}");
}

#[tokio::test]
async fn grants_and_revocations_need_an_admin_and_an_existing_user() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Plain", 0, 0).await;
    let other = app.create_user("Other", 0, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    // A buyer cannot grant themselves (or anyone) a membership, nor revoke someone else's.
    let (status, body) = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{buyer}/membership"),
            &token,
            Some("self"),
            json!({"plan_id": monthly, "reason": "please"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = revoke(&app, &token, other, "cross").await;
    assert_eq!(status, 403, "{body}");
    // Unknown user or plan: 404.
    let (status, body) = grant(&app, 987_654, "nobody", "monthly").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("user_not_found"))
    );
    let (status, body) = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{buyer}/membership"),
            &app.admin_token(),
            Some("no-plan"),
            json!({"plan_id": 987_654, "reason": "typo"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("plan_not_found"))
    );
    let (status, body) = revoke(&app, &app.admin_token(), 987_654, "nobody").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("user_not_found"))
    );
    // A buyer cannot use the admin's pay method at checkout.
    let (status, body) = app
        .order(
            &token,
            "sneaky",
            json!({"plan_id": monthly, "pay_method": "admin_grant"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("pay_method_not_allowed"))
    );
    // Non-admins cannot read the audit log.
    let (status, _) = app.get(Some(&token), "/v1/admin/audit").await;
    assert_eq!(status, 403);
    assert_eq!(
        app.scalar("SELECT count(*) FROM audit_log").await,
        0,
        "nothing refused was audited"
    );
}
