//! `GET /v1/admin/orders.csv` and `/v1/admin/ledger.csv`.

use memberline_gateway::http::auth::Role;
use memberline_tests::{TestApp, spawn_app};
use sea_orm::ConnectionTrait;
use serde_json::json;

async fn csv(app: &TestApp, token: &str, path: &str) -> (u16, Vec<u8>) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.bytes().await.unwrap().to_vec())
}

fn records(bytes: &[u8]) -> Vec<csv::StringRecord> {
    let text = std::str::from_utf8(bytes).unwrap();
    let body = text
        .strip_prefix('\u{feff}')
        .expect("a UTF-8 byte-order mark first");
    csv::Reader::from_reader(body.as_bytes())
        .records()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn the_orders_export_opens_in_excel_with_yuan_and_shop_times_and_takes_the_search_filters() {
    let app = spawn_app().await;
    let ada = app.create_user("艾达, \"Ada\"", 100_000, 0).await;
    let bob = app.create_user("Bob", 100_000, 0).await;
    let monthly = app.plan_id("monthly").await;
    let mut ids = Vec::new();
    for (buyer, key) in [(ada, "a1"), (ada, "a2"), (bob, "b1")] {
        let (status, order) = app
            .order(
                &app.user_token(buyer),
                key,
                json!({"plan_id": monthly, "pay_method": "balance"}),
            )
            .await;
        assert_eq!(status, 201, "{order}");
        ids.push(order);
    }
    let (status, bytes) = csv(
        &app,
        &app.token(800_001, Role::Merchant),
        &format!("/v1/admin/orders.csv?buyer_id={ada}&status=paid"),
    )
    .await;
    assert_eq!(status, 200);
    let rows = records(&bytes);
    assert_eq!(rows.len(), 2, "Ada's two paid orders only");
    let newest = &ids[1];
    assert_eq!(&rows[0][0], newest["order_no"].as_str().unwrap());
    assert_eq!(
        &rows[0][7], "艾达, \"Ada\"",
        "names survive commas and quotes"
    );
    let fen = newest["amount_fen"].as_i64().unwrap();
    assert_eq!(rows[0][12], format!("{}.{:02}", fen / 100, fen % 100));
    let created: chrono::DateTime<chrono::Utc> =
        newest["created_at"].as_str().unwrap().parse().unwrap();
    let shanghai = created.with_timezone(&chrono_tz::Asia::Shanghai);
    assert_eq!(
        &rows[0][2],
        shanghai.format("%Y-%m-%d %H:%M:%S").to_string()
    );

    let (status, _) = csv(&app, &app.user_token(ada), "/v1/admin/orders.csv").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn an_export_larger_than_a_page_streams_every_order_once() {
    let app = spawn_app().await;
    let buyer = app.create_user("Many", 100_000, 0).await;
    let (status, order) = app
        .order(
            &app.user_token(buyer),
            "one",
            json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    // 12,000 copies of it, beside the API's own: more than two pages of the export.
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO orders SELECT (jsonb_populate_record(NULL::orders, to_jsonb(o) || \
                jsonb_build_object('id', 1000000 + g, 'order_no', o.order_no || '-' || g, \
                                   'correlation_id', gen_random_uuid()))).* \
             FROM orders o, generate_series(1, 12000) g WHERE o.id = {}",
            order["id"]
        ))
        .await
        .unwrap();
    let (status, bytes) = csv(&app, &app.admin_token(), "/v1/admin/orders.csv").await;
    assert_eq!(status, 200);
    let rows = records(&bytes);
    assert_eq!(rows.len(), 12_001);
    let mut ids: Vec<i64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 12_001, "newest first, none twice");
}

#[tokio::test]
async fn the_ledger_export_has_balance_in_yuan_and_points_as_integers() {
    let app = spawn_app().await;
    let buyer = app.create_user("Ledger", 12_345, 67).await;
    let (status, bytes) = csv(
        &app,
        &app.admin_token(),
        &format!("/v1/admin/ledger.csv?buyer_id={buyer}"),
    )
    .await;
    assert_eq!(status, 200);
    let rows = records(&bytes);
    let cells: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r[0].to_owned(), r[5].to_owned(), r[6].to_owned()))
        .collect();
    assert_eq!(
        cells,
        vec![
            ("balance".into(), "opening_balance".into(), "123.45".into()),
            ("points".into(), "opening_balance".into(), "67".into()),
        ]
    );
    let (status, bytes) = csv(
        &app,
        &app.admin_token(),
        &format!("/v1/admin/ledger.csv?buyer_id={buyer}&ledger=points"),
    )
    .await;
    assert_eq!((status, records(&bytes).len()), (200, 1));
}
