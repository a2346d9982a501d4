//! What a refund takes back, exactly once: the order's own membership period (later ones move
//! earlier by its length, to the microsecond), the reward points and growth (never below zero:
//! what was spent is a recorded shortfall), the level, the saving and the purchase; each
//! reversal event delivered several times is applied once.

use super::{app, buy, effects_applied, reversed};
use chrono::{DateTime, Utc};
use memberline_platform::metrics::DeliveryOutcome;
use memberline_tests::{TestApp, eventually};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::time::Duration;

/// `(order_id, starts_at, ends_at)` of the buyer's live periods, earliest first.
async fn live_periods(app: &TestApp, buyer: i64) -> Vec<(i64, DateTime<Utc>, DateTime<Utc>)> {
    app.db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT order_id, starts_at, ends_at FROM membership_periods \
             WHERE user_id = $1 AND removed_at IS NULL ORDER BY starts_at",
            [buyer.into()],
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.try_get("", "order_id").unwrap(),
                r.try_get("", "starts_at").unwrap(),
                r.try_get::<Option<DateTime<Utc>>>("", "ends_at")
                    .unwrap()
                    .unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_refund_in_the_middle_of_a_stack_of_three_leaves_two_contiguous_periods_one_period_shorter()
 {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Stacker", 100_000, 0).await;
    let token = app.user_token(buyer);
    let mut ids = vec![];
    for n in 0..3 {
        let order = buy(&app, &token, &format!("m{n}"), "monthly", "balance").await;
        let id = order["id"].as_i64().unwrap();
        // One at a time, so the stack is in order: 1, 2, 3.
        effects_applied(&app, id).await;
        ids.push(id);
    }
    let before = live_periods(&app, buyer).await;
    assert_eq!(before.iter().map(|p| p.0).collect::<Vec<_>>(), ids);
    let (_, s1, e1) = before[0];
    let (_, s2, e2) = before[1];
    let (_, s3, e3) = before[2];
    assert_eq!((e1, e2), (s2, s3), "contiguous before");
    let length = e2 - s2;

    let (status, body) = app.refund(ids[1], "middle", "sold in error").await;
    assert_eq!(status, 200, "{body}");
    reversed(&app, ids[1]).await;

    let after = live_periods(&app, buyer).await;
    assert_eq!(
        after,
        vec![(ids[0], s1, e1), (ids[2], s3 - length, e3 - length)],
        "the refunded period is gone and the last one moved earlier by exactly its length"
    );
    assert_eq!(after[1].1, e1, "still contiguous");
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    let shown: DateTime<Utc> = me["membership"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown, e3 - length, "{me}");
    // The buyer is told the membership's new end.
    assert_eq!(super::events(&app, "membership.changed.v1", buyer).await, 1);
}

#[tokio::test]
async fn reward_points_growth_and_level_are_reversed_and_spent_points_end_at_zero_with_a_shortfall()
{
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Spender", 100_000, 0).await;
    // Just below Silver (1,000 growth): this purchase lifts the buyer to Silver.
    app.db
        .execute_unprepared(&format!("UPDATE users SET growth = 990 WHERE id = {buyer}"))
        .await
        .unwrap();
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "climb", "yearly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["level"]["name"], "Silver", "{me}");
    let reward = me["points"].as_i64().unwrap();
    assert!(reward > 100, "{me}");
    assert_eq!(me["purchase_count"], 1);
    // The buyer spends all but 100 of the reward points elsewhere.
    app.db
        .execute_unprepared(&format!("UPDATE users SET points = 100 WHERE id = {buyer}"))
        .await
        .unwrap();

    let (status, body) = app.refund(id, "undo", "fraud").await;
    assert_eq!(status, 200, "{body}");
    reversed(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["points"], 0, "never negative: {me}");
    assert_eq!(me["growth"], 990, "{me}");
    assert_eq!(me["level"]["name"], "Regular", "{me}");
    assert_eq!(me["balance_fen"], 100_000, "{me}");
    assert_eq!(me["purchase_count"], 0, "{me}");
    assert_eq!(me["total_saved_fen"], 0, "{me}");
    let (_, ledger) = app.get(Some(&token), "/v1/me/ledger?kind=points").await;
    let reversal = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "reward_reversal")
        .cloned()
        .unwrap_or_else(|| panic!("a reversal entry: {ledger}"));
    assert_eq!(reversal["delta"], -100);
    assert_eq!(reversal["balance_after"], 0);
    assert_eq!(reversal["shortfall"], reward - 100);
    // Up to Silver and back down: two level changes announced.
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM outbox WHERE routing_key = 'level.changed.v1' \
             AND payload->'payload'->>'user_id' = '{buyer}'"
        ))
        .await,
        2
    );
    let (_, inbox) = app.get(Some(&token), "/v1/me/notifications").await;
    assert!(
        inbox["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "order_refunded" && n["body"].as_str().unwrap().contains("fraud")),
        "{inbox}"
    );
}

#[tokio::test]
async fn every_reversal_event_delivered_two_or_three_times_is_applied_once() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Echo", 100_000, 0).await;
    let token = app.user_token(buyer);
    let mut ids = vec![];
    for (n, plan) in ["monthly", "day_pass", "monthly"].iter().enumerate() {
        let order = buy(&app, &token, &format!("e{n}"), plan, "balance").await;
        let id = order["id"].as_i64().unwrap();
        effects_applied(&app, id).await;
        ids.push(id);
    }
    for (n, id) in ids.iter().enumerate() {
        let (status, body) = app.refund(*id, &format!("r{n}"), "echo test").await;
        assert_eq!(status, 200, "{body}");
        reversed(&app, *id).await;
    }
    let queries = [
        format!("SELECT points FROM users WHERE id = {buyer}"),
        format!("SELECT growth FROM users WHERE id = {buyer}"),
        format!("SELECT purchase_count::bigint FROM users WHERE id = {buyer}"),
        format!("SELECT total_saved_fen FROM users WHERE id = {buyer}"),
        format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer}"),
        format!("SELECT count(*) FROM notifications WHERE user_id = {buyer}"),
        format!("SELECT count(*) FROM channel_deliveries WHERE user_id = {buyer}"),
        "SELECT count(*) FROM console_feed".to_owned(),
        "SELECT count(*) FROM outbox WHERE event_type = 'membership.changed'".to_owned(),
    ];
    let state = || async {
        let mut values = vec![];
        for q in &queries {
            values.push(app.scalar(q).await);
        }
        values
    };
    let settled = state().await;
    let periods = live_periods(&app, buyer).await;

    // Every order.refunded.v1 again, some twice more; and each membership.changed.v1 once more.
    let payloads = app.outbox_payloads("order.refunded").await;
    assert_eq!(payloads.len(), 3);
    for (i, env) in payloads.iter().enumerate() {
        for _ in 0..(1 + i % 2) {
            app.publish_event("order.refunded.v1", env.to_string().as_bytes())
                .await;
        }
    }
    for env in app.outbox_payloads("membership.changed").await {
        app.publish_event("membership.changed.v1", env.to_string().as_bytes())
            .await;
    }
    eventually(
        "the copies are acked as duplicates",
        Duration::from_secs(20),
        || async {
            let dups: u64 = ["membership", "ledger", "notifier", "savings"]
                .iter()
                .map(|w| app.worker_metrics.deliveries(w, DeliveryOutcome::Duplicate))
                .sum();
            // 4 copies of refunds for 4 workers, 2 membership.changed copies for the notifier.
            (dups >= 4 * 4 + 2).then_some(())
        },
    )
    .await;
    assert_eq!(state().await, settled);
    assert_eq!(live_periods(&app, buyer).await, periods);
    assert_eq!(
        app.scalar(&format!(
            "SELECT uses_left::bigint FROM user_passes WHERE order_id = {}",
            ids[1]
        ))
        .await,
        0
    );

    // The same refunds re-emitted as new events (fresh ids: the consumed-event claim cannot
    // tell them apart): each effect's business key still reverses each order once.
    let before = effects_of(&app, buyer).await;
    for env in &payloads {
        let mut fresh = env.clone();
        fresh["event_id"] = serde_json::json!(uuid::Uuid::now_v7());
        app.publish_event("order.refunded.v1", fresh.to_string().as_bytes())
            .await;
    }
    eventually("the re-emitted refunds are consumed", Duration::from_secs(20), || async {
        (app.scalar("SELECT count(*) FROM consumed_events WHERE event_type = 'order.refunded' AND consumer = 'notifier'")
            .await
            == 6)
            .then_some(())
    })
    .await;
    eventually(
        "…and found already applied by the other workers",
        Duration::from_secs(20),
        || async {
            ["membership", "ledger", "savings"]
                .iter()
                .all(|w| app.worker_metrics.deliveries(w, DeliveryOutcome::Duplicate) >= 4 + 3)
                .then_some(())
        },
    )
    .await;
    assert_eq!(effects_of(&app, buyer).await, before);
    assert_eq!(live_periods(&app, buyer).await, periods);
}

#[tokio::test]
async fn a_refund_applied_before_the_purchase_effects_leaves_nothing_behind_when_they_arrive() {
    // No relay: the test itself delivers the two events, the refund's first.
    let app = memberline_tests::spawn_app_with(memberline_tests::Options {
        workers: true,
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Early", 100_000, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "b", "monthly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    let (status, body) = app.refund(id, "r", "refunded at once").await;
    assert_eq!(status, 200, "{body}");
    let refunded = app.outbox_payloads("order.refunded").await;
    let paid = app.outbox_payloads("order.paid").await;
    app.publish_event("order.refunded.v1", refunded[0].to_string().as_bytes())
        .await;
    reversed(&app, id).await;
    app.publish_event("order.paid.v1", paid[0].to_string().as_bytes())
        .await;
    // Each effect finds its business key taken by the reversal's placeholder: nothing applied.
    // The membership worker still counts the sale on the dashboard (its refund is counted too),
    // so its delivery commits rather than rolling back as a duplicate.
    eventually(
        "the late purchase effects find nothing to do",
        Duration::from_secs(20),
        || async {
            let effects = ["ledger", "savings"]
                .iter()
                .all(|w| app.worker_metrics.deliveries(w, DeliveryOutcome::Duplicate) >= 1);
            let counted = app
                .scalar(&format!(
                    "SELECT count(*) FROM stats_counted WHERE order_id = {id} AND fact = 'paid'"
                ))
                .await
                == 1;
            (effects && counted).then_some(())
        },
    )
    .await;

    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "none", "{me}");
    assert_eq!(me["points"], 0, "{me}");
    assert_eq!(me["growth"], 0, "{me}");
    assert_eq!(me["purchase_count"], 0, "{me}");
    assert_eq!(me["balance_fen"], 100_000, "{me}");
    assert!(live_periods(&app, buyer).await.is_empty());
}

#[tokio::test]
async fn a_refunded_permanent_membership_ends_and_can_be_bought_again() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Forever", 300_000, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "p1", "permanent", "balance").await;
    let id = order["id"].as_i64().unwrap();
    effects_applied(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["permanent"], true, "{me}");
    let (status, body) = app.refund(id, "r", "bought by mistake").await;
    assert_eq!(status, 200, "{body}");
    reversed(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "none", "{me}");
    assert_eq!(me["membership"]["permanent"], false, "{me}");
    buy(&app, &token, "p2", "permanent", "balance").await;
}

#[tokio::test]
async fn a_refund_moves_only_the_periods_stacked_on_it_not_one_bought_after_a_lapse() {
    let (app, _emulator) = app().await;
    let buyer = app.create_user("Lapsed", 100_000, 0).await;
    let token = app.user_token(buyer);
    let first = buy(&app, &token, "a", "monthly", "balance").await;
    let a = first["id"].as_i64().unwrap();
    effects_applied(&app, a).await;
    // A ran out a month ago; B was bought after the lapse and starts now.
    app.db
        .execute_unprepared(&format!(
            "UPDATE membership_periods SET starts_at = now() - interval '60 days', \
             ends_at = now() - interval '30 days' WHERE order_id = {a}"
        ))
        .await
        .unwrap();
    let second = buy(&app, &token, "b", "monthly", "balance").await;
    let b = second["id"].as_i64().unwrap();
    effects_applied(&app, b).await;
    let before = live_periods(&app, buyer).await;
    assert_eq!(before.len(), 2);

    let (status, body) = app.refund(a, "r", "old order").await;
    assert_eq!(status, 200, "{body}");
    reversed(&app, a).await;
    assert_eq!(
        live_periods(&app, buyer).await,
        vec![before[1]],
        "B keeps every day it was bought for"
    );
}

/// The buyer's records the membership, ledger and savings workers keep.
async fn effects_of(app: &TestApp, buyer: i64) -> Vec<i64> {
    let mut values = vec![];
    for sql in [
        format!("SELECT points FROM users WHERE id = {buyer}"),
        format!("SELECT growth FROM users WHERE id = {buyer}"),
        format!("SELECT purchase_count::bigint FROM users WHERE id = {buyer}"),
        format!("SELECT total_saved_fen FROM users WHERE id = {buyer}"),
        format!("SELECT count(*) FROM point_ledger WHERE user_id = {buyer}"),
        format!(
            "SELECT count(*) FROM membership_periods WHERE user_id = {buyer} AND removed_at IS NULL"
        ),
    ] {
        values.push(app.scalar(&sql).await);
    }
    values
}

/// An app whose events the test delivers itself, in the order it chooses.
async fn app_without_relay() -> TestApp {
    memberline_tests::spawn_app_with(memberline_tests::Options {
        workers: true,
        embedded_relay: false,
        ..Default::default()
    })
    .await
}

async fn revoke(app: &TestApp, buyer: i64, key: &str) {
    let (status, body) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/admin/users/{buyer}/membership"),
            &app.admin_token(),
            Some(key),
            serde_json::json!({"reason": "abuse"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_revocation_applied_late_never_takes_a_membership_bought_after_it() {
    let app = app_without_relay().await;
    let buyer = app.create_user("After", 100_000, 0).await;
    let token = app.user_token(buyer);
    revoke(&app, buyer, "r").await;
    let order = buy(&app, &token, "b", "monthly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    // The purchase's effects first, then the (older) revocation.
    let paid = app.outbox_payloads("order.paid").await;
    app.publish_event("order.paid.v1", paid[0].to_string().as_bytes())
        .await;
    effects_applied(&app, id).await;
    let revoked = app.outbox_payloads("membership.revoked").await;
    app.publish_event("membership.revoked.v1", revoked[0].to_string().as_bytes())
        .await;
    eventually(
        "the revocation is applied",
        Duration::from_secs(20),
        || async {
            (app.scalar("SELECT count(*) FROM outbox WHERE event_type = 'membership.changed'")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "active", "{me}");
    assert_eq!(live_periods(&app, buyer).await.len(), 1);
}

#[tokio::test]
async fn a_membership_paid_before_a_revocation_but_applied_after_it_adds_nothing() {
    let app = app_without_relay().await;
    let buyer = app.create_user("Before", 100_000, 0).await;
    let token = app.user_token(buyer);
    let order = buy(&app, &token, "b", "monthly", "balance").await;
    let id = order["id"].as_i64().unwrap();
    revoke(&app, buyer, "r").await;
    // The revocation first, then the (older) purchase's effects.
    let revoked = app.outbox_payloads("membership.revoked").await;
    app.publish_event("membership.revoked.v1", revoked[0].to_string().as_bytes())
        .await;
    eventually(
        "the revocation is applied",
        Duration::from_secs(20),
        || async {
            (app.scalar("SELECT count(*) FROM outbox WHERE event_type = 'membership.changed'")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    let paid = app.outbox_payloads("order.paid").await;
    app.publish_event("order.paid.v1", paid[0].to_string().as_bytes())
        .await;
    effects_applied(&app, id).await;
    let (_, me) = app.get(Some(&token), "/v1/me").await;
    assert_eq!(me["membership"]["status"], "none", "{me}");
    assert!(live_periods(&app, buyer).await.is_empty());
}
