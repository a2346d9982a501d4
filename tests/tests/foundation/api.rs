//! The public API's shape: plan listing, `/me`, the error format, body limits, health, OpenAPI.

use memberline_tests::spawn_app;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};

#[tokio::test]
async fn plans_are_listed_in_display_order_with_buyer_prices_only_for_a_token() {
    let app = spawn_app().await;
    let (status, anon) = app.get(None, "/v1/plans").await;
    assert_eq!(status, 200);
    let plans = anon["plans"].as_array().unwrap();
    let codes: Vec<&str> = plans.iter().map(|p| p["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "monthly",
            "quarterly",
            "yearly",
            "permanent",
            "day_pass",
            "trial"
        ]
    );
    assert!(plans[0].get("buyer_price_fen").is_none());
    // No payment provider is enabled here: the shop takes what needs none.
    assert_eq!(anon["pay_methods"], json!(["balance", "points", "free"]));
    for field in [
        "id",
        "code",
        "name",
        "kind",
        "duration_days",
        "uses",
        "original_price_fen",
        "price_fen",
        "price_points",
    ] {
        assert!(plans[0].get(field).is_some(), "plan has {field}");
    }
    assert_eq!(plans[3]["kind"], "permanent");
    assert_eq!(plans[4]["kind"], "pass");
    assert_eq!(plans[4]["uses"], 1);

    let silver = app.create_user("Silver", 0, 0).await;
    app.scalar(&format!(
        "WITH u AS (UPDATE users SET growth = 1500, level_id = 1 WHERE id = {silver} RETURNING 1) SELECT count(*) FROM u"
    ))
    .await;
    let (_, priced) = app.get(Some(&app.user_token(silver)), "/v1/plans").await;
    let monthly = &priced["plans"][0];
    assert_eq!(monthly["price_fen"], 3000);
    assert_eq!(monthly["buyer_price_fen"], 2850); // 95%
    assert_eq!(monthly["buyer_price_points"], 2850);
}

#[tokio::test]
async fn me_shows_a_new_buyer_with_no_membership() {
    let app = spawn_app().await;
    let buyer = app.create_user("New", 500, 7).await;
    let (status, me) = app.get(Some(&app.user_token(buyer)), "/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["user_id"], buyer);
    assert_eq!(me["balance_fen"], 500);
    assert_eq!(me["points"], 7);
    assert_eq!(me["membership"]["status"], "none");
    assert_eq!(me["passes"], json!([]));
    assert_eq!(me["purchase_count"], 0);
    assert_eq!(me["level"]["name"], "Regular");
}

#[tokio::test]
async fn malformed_json_is_a_bad_request_in_the_error_format() {
    let app = spawn_app().await;
    let buyer = app.create_user("Typo", 0, 0).await;
    let res = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(app.user_token(buyer))
        .header("Idempotency-Key", "k")
        .header("content-type", "application/json")
        .body("{\"plan_id\": 1,")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413() {
    let app = spawn_app().await;
    let buyer = app.create_user("Big", 0, 0).await;
    let big = json!({"plan_id": 1, "pay_method": "points", "note": "x".repeat(70 * 1024)});
    let res = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(app.user_token(buyer))
        .header("Idempotency-Key", "k")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_answer_in_the_error_format() {
    let app = spawn_app().await;
    let (status, body) = app.get(None, "/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "route_not_found");
}

#[tokio::test]
async fn health_readiness_and_metrics_report_the_system() {
    let app = spawn_app().await;
    let (status, _) = app.get(None, "/healthz").await;
    assert_eq!(status, 200);
    let (status, ready) = app.get(None, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"], true);
    assert_eq!(ready["broker"], true);

    let buyer = app.create_user("Metered", 0, 10_000).await;
    let monthly = app.plan_id("monthly").await;
    app.order(
        &app.user_token(buyer),
        "m",
        json!({"plan_id": monthly, "pay_method": "points"}),
    )
    .await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("memberline_orders_total{pay_method=\"points\",outcome=\"paid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "memberline_http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("memberline_outbox_unpublished "), "{text}");
    assert!(
        text.contains("memberline_outbox_oldest_unpublished_age_seconds "),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_fails_when_the_broker_is_unreachable() {
    let proxy = memberline_tests::proxy::TcpProxy::start("127.0.0.1:5672").await;
    proxy.down();
    let app = memberline_tests::spawn_app_with(memberline_tests::Options {
        amqp_url: proxy.amqp_url(),
        ..Default::default()
    })
    .await;
    let (status, ready) = app.get(None, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready["broker"], false);
    assert_eq!(ready["database"], true);
}

/// Routes deliberately left out of the OpenAPI document, each with the reason. Every other route
/// the gateway serves must be documented, and every documented operation served.
const UNDOCUMENTED: &[(&str, &str, &str)] = &[
    ("GET", "/openapi.json", "the document itself"),
    ("GET", "/docs", "the HTML page that renders the document"),
    ("GET", "/vip", "the buyers' HTML page"),
    ("GET", "/console", "the merchant console's HTML page"),
    ("GET", "/assets/{name}", "the pages' scripts and styles"),
];

/// Every (METHOD, path template) the gateway's router serves, read from the router itself.
///
/// axum has no API that lists a router's routes, but its `Debug` output names every route's path
/// and, per route, which methods have a handler; reading it, no route escapes however it was
/// added (a constant path, a merged router). If axum ever prints it differently, nothing is read
/// and every documented operation fails as unserved: the test cannot pass by reading nothing.
fn served_routes() -> BTreeSet<(String, String)> {
    let debug = format!("{:?}", memberline_gateway::http::routes());
    let unreadable = || format!("cannot read the routes from the router's Debug output: {debug}");
    let path_router = debug.split(", fallback_router: ").next().unwrap();
    let (endpoints, nodes) = path_router
        .split_once("node: Node { paths: {")
        .unwrap_or_else(|| panic!("{}", unreadable()));
    let paths: HashMap<&str, &str> = nodes
        .split("RouteId(")
        .skip(1)
        .map(|entry| {
            let (id, path) = entry
                .split_once("): \"")
                .unwrap_or_else(|| panic!("{}", unreadable()));
            (id, path.split('"').next().unwrap())
        })
        .collect();
    let mut served = BTreeSet::new();
    for entry in endpoints.split("RouteId(").skip(1) {
        let (id, endpoint) = entry
            .split_once("): ")
            .unwrap_or_else(|| panic!("{}", unreadable()));
        let path = paths.get(id).unwrap_or_else(|| panic!("{}", unreadable()));
        if !endpoint.starts_with("MethodRouter(") {
            // A service (`route_service`, `nest_service`) answers every method.
            served.insert(("ANY".to_owned(), path.to_string()));
            continue;
        }
        let handles = |method: &str| match endpoint
            .split(&format!(" {method}: "))
            .nth(1)
            .and_then(|v| v.split([',', ' ']).next())
        {
            Some(handler) => handler != "None",
            None => panic!("{}", unreadable()),
        };
        for method in [
            "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
        ] {
            // HEAD is GET without the body (axum answers it with the GET handler), not an
            // operation of its own.
            if handles(method) && !(method == "head" && handles("get")) {
                served.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    served
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_router_serves_and_no_other() {
    let app = spawn_app().await;
    let (status, doc) = app.get(None, "/openapi.json").await;
    assert_eq!(status, 200);
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .into_iter()
            .filter(|method| item.get(*method).is_some())
            .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let allowed: BTreeSet<(String, String)> = UNDOCUMENTED
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    let served = served_routes();

    let undocumented: Vec<_> = served
        .difference(&documented)
        .filter(|r| !allowed.contains(*r))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "in the OpenAPI document but not served: {unserved:?}"
    );
    let stale: Vec<_> = allowed
        .iter()
        .filter(|r| !served.contains(*r) || documented.contains(*r))
        .collect();
    assert!(
        stale.is_empty(),
        "UNDOCUMENTED lists routes that are documented or not served: {stale:?}"
    );
    assert!(doc["components"]["schemas"].get("OrderView").is_some());
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(res.headers().get("x-request-id").is_some());
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
}
