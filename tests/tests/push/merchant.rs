//! `GET /v1/merchant/stream`, driven with tokio-tungstenite.

use futures::{SinkExt, StreamExt};
use memberline_gateway::http::auth::Role;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(base: &str, query: &str) -> String {
    format!(
        "{}/v1/merchant/stream{query}",
        base.replacen("http", "ws", 1)
    )
}

/// Opens the stream with a bearer token (or none); the HTTP status when it is refused.
async fn open(base: &str, token: Option<&str>, query: &str) -> Result<Socket, u16> {
    let mut request = ws_url(base, query).into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

/// The next feed message, skipping pings and the opening `hello`; `Err` when the socket closed
/// (with its close code).
async fn next(socket: &mut Socket, wait: Duration) -> Result<Value, Option<u16>> {
    loop {
        match next_frame(socket, wait).await? {
            m if m["type"] == "hello" || m["type"] == "heartbeat" => continue,
            m => return Ok(m),
        }
    }
}

/// The next text message, `hello` included.
async fn next_frame(socket: &mut Socket, wait: Duration) -> Result<Value, Option<u16>> {
    loop {
        match tokio::time::timeout(wait, socket.next()).await {
            Err(_) => panic!("no message within {wait:?}"),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => return Err(None),
        }
    }
}

fn merchant(app: &TestApp) -> String {
    app.token(800_001, Role::Merchant)
}

async fn buy(app: &TestApp, token: &str, key: &str) -> i64 {
    let monthly = app.plan_id("monthly").await;
    let (status, order) = app
        .order(
            token,
            key,
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_i64().unwrap()
}

async fn ticket(app: &TestApp, token: &str) -> (u16, Value) {
    let res = app
        .client
        .post(app.url("/v1/merchant/stream-ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_stream_refuses_missing_tokens_buyers_and_used_or_expired_tickets_before_the_upgrade() {
    let app = spawn_app_with(Options::default()).await;
    let buyer = app.create_user("Nosy", 0, 0).await;
    assert_eq!(open(&app.base, None, "").await.err(), Some(401));
    assert_eq!(
        open(&app.base, Some("not-a-token"), "").await.err(),
        Some(401)
    );
    assert_eq!(
        open(&app.base, Some(&app.user_token(buyer)), "")
            .await
            .err(),
        Some(403)
    );
    let (status, _) = ticket(&app, &app.user_token(buyer)).await;
    assert_eq!(status, 403, "buyers get no merchant ticket");

    // A ticket opens one socket, once.
    let (status, issued) = ticket(&app, &merchant(&app)).await;
    assert_eq!(status, 201, "{issued}");
    let t = issued["ticket"].as_str().unwrap().to_owned();
    let query = format!("?ticket={t}");
    assert!(open(&app.base, None, &query).await.is_ok());
    assert_eq!(open(&app.base, None, &query).await.err(), Some(401), "used");
    let (_, issued) = ticket(&app, &merchant(&app)).await;
    app.db
        .execute_unprepared("UPDATE stream_tickets SET expires_at = now() - interval '1 second'")
        .await
        .unwrap();
    let query = format!("?ticket={}", issued["ticket"].as_str().unwrap());
    assert_eq!(
        open(&app.base, None, &query).await.err(),
        Some(401),
        "expired"
    );
    // A plain HTTP request is told to upgrade, and spends no ticket.
    let (_, issued) = ticket(&app, &merchant(&app)).await;
    let plain = app
        .client
        .get(format!(
            "{}/v1/merchant/stream?ticket={}",
            app.base,
            issued["ticket"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 426);
    let query = format!("?ticket={}", issued["ticket"].as_str().unwrap());
    assert!(open(&app.base, None, &query).await.is_ok());
}

#[tokio::test]
async fn a_console_resumes_with_no_gap_and_no_duplicate_while_orders_are_being_paid() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Busy", 10_000_000, 0).await;
    let token = app.user_token(buyer);
    let total = 30;
    let buying = {
        let (base, token) = (app.base.clone(), token.clone());
        let monthly = app.plan_id("monthly").await;
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..total {
                let res = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("busy-{n}"))
                    .json(&json!({"plan_id": monthly, "pay_method": "balance"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut seen: Vec<i64> = vec![];
    let mut last = 0;
    // Three connections in a row, each dropped after a few messages, each resuming.
    for round in 0..3 {
        let mut socket = open(&app.base, Some(&merchant(&app)), &format!("?after={last}"))
            .await
            .unwrap();
        let hello = next_frame(&mut socket, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            (&hello["type"], &hello["seq"]),
            (&json!("hello"), &json!(last)),
            "the stream says where it starts: {hello}"
        );
        assert!(hello["newest"].as_i64().unwrap() >= last, "{hello}");
        assert_eq!(hello["heartbeat_secs"], 15, "{hello}");
        let take = if round < 2 { 7 } else { total - seen.len() };
        for _ in 0..take {
            let m = next(&mut socket, Duration::from_secs(20)).await.unwrap();
            assert_eq!(m["type"], "order.paid");
            assert_eq!(m["kind"], 1);
            assert!(m["order_no"].is_string() && m["content"].is_string());
            let seq = m["seq"].as_i64().unwrap();
            seen.push(seq);
            last = seq;
        }
        socket.close(None).await.ok();
    }
    buying.await.unwrap();
    let expected: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(
        seen, expected,
        "every entry once, in order, across three connections"
    );
}

#[tokio::test]
async fn a_console_on_one_gateway_hears_an_order_paid_through_another() {
    // Only live pushes deliver here: the feed poll is an hour.
    let app = spawn_app_with(Options {
        workers: true,
        env: vec![("MEMBERLINE__PUSH__FEED_POLL_MS", "3600000".to_owned())],
        ..Default::default()
    })
    .await;
    let second =
        memberline_gateway::app::Application::build_with_db(app.settings.clone(), app.db.clone())
            .await
            .unwrap();
    let other_base = format!("http://127.0.0.1:{}", second.port());
    let stop = app.shutdown.child_token();
    tokio::spawn(second.run_until(stop));
    let mut console = open(&other_base, Some(&merchant(&app)), "").await.unwrap();
    eventually(
        "the second instance consumes pushes",
        Duration::from_secs(10),
        || async {
            let ready: Value = reqwest::get(format!("{other_base}/readyz"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (ready["push"] == true).then_some(())
        },
    )
    .await;
    let buyer = app.create_user("Far away", 100_000, 0).await;
    let id = buy(&app, &app.user_token(buyer), "remote").await;
    let m = next(&mut console, Duration::from_secs(15)).await.unwrap();
    assert_eq!(m["order_id"], id);
    assert_eq!(m["type"], "order.paid");
}

#[tokio::test]
async fn a_slow_console_is_closed_with_4008_and_resumes_without_losing_anything() {
    let app = spawn_app_with(Options {
        env: vec![
            ("MEMBERLINE__PUSH__SOCKET_QUEUE", "4".to_owned()),
            ("MEMBERLINE__PUSH__PING_INTERVAL_SECS", "1".to_owned()),
            ("MEMBERLINE__PUSH__IDLE_TIMEOUT_SECS", "120".to_owned()),
        ],
        ..Default::default()
    })
    .await;
    // A backlog far larger than the socket's buffers: 4,000 entries of about 4 KiB.
    let total = 4000;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO console_feed (seq, event_id, kind, payload) \
             SELECT n, gen_random_uuid(), 'order_paid', \
                    jsonb_build_object('order_id', n, 'order_no', 'ML' || n, 'plan_name', repeat('x', 4000)) \
             FROM generate_series(1, {total}) n; \
             UPDATE console_feed_counter SET last_seq = {total};"
        ))
        .await
        .unwrap();
    let mut socket = open(&app.base, Some(&merchant(&app)), "?after=0")
        .await
        .unwrap();
    // The console does not read for a while.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut last = 0;
    let code = loop {
        match next(&mut socket, Duration::from_secs(20)).await {
            Ok(m) => {
                let seq = m["seq"].as_i64().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(4008), "closed as too slow after seq {last}");
    assert!(last < total, "it was closed before the end");
    // Resumed where it stopped, reading promptly this time: everything else, once.
    let mut socket = open(&app.base, Some(&merchant(&app)), &format!("?after={last}"))
        .await
        .unwrap();
    while last < total {
        let m = next(&mut socket, Duration::from_secs(20)).await.unwrap();
        let seq = m["seq"].as_i64().unwrap();
        assert_eq!(seq, last + 1);
        last = seq;
    }
    // Quiet now: a heartbeat each ping interval says the connection is alive and where it is.
    let heartbeat = loop {
        let m = next_frame(&mut socket, Duration::from_secs(5))
            .await
            .unwrap();
        if m["type"] == "heartbeat" {
            break m;
        }
    };
    assert_eq!(heartbeat["seq"], total);
    let _ = socket.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_buyers_reminder_reaches_the_console_at_most_once_a_minute() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Hurry", 100_000, 0).await;
    let token = app.user_token(buyer);
    let id = buy(&app, &token, "r").await;
    let mut console = open(&app.base, Some(&merchant(&app)), "?after=0")
        .await
        .unwrap();
    let first = next(&mut console, Duration::from_secs(20)).await.unwrap();
    assert_eq!(first["type"], "order.paid");

    let remind = || async {
        let res = app
            .client
            .post(app.url(&format!("/v1/orders/{id}/remind")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (res.status().as_u16(), retry)
    };
    assert_eq!(remind().await.0, 202);
    let m = next(&mut console, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (m["type"].clone(), m["kind"].clone()),
        (json!("order.reminded"), json!(2))
    );
    assert_eq!(m["order_id"], id);
    let (status, retry) = remind().await;
    assert_eq!(status, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The console got that one reminder only: the next thing it hears is an order paid after
    // the refused reminder (the feed is in commit order, so a second reminder would come first).
    let marker = buy(&app, &token, "after-the-refusal").await;
    let m = next(&mut console, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (m["type"].clone(), m["order_id"].clone()),
        (json!("order.paid"), json!(marker)),
        "{m}"
    );
    // Someone else's order is not found.
    let other = app.create_user("Other", 0, 0).await;
    let res = app
        .client
        .post(app.url(&format!("/v1/orders/{id}/remind")))
        .bearer_auth(app.user_token(other))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

// Several threads: the gateway, its relay, the workers and the proxy all run in this test's
// runtime, and one thread under a loaded machine starved them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_stays_open_through_a_broker_outage_and_gets_what_was_paid_meanwhile() {
    // The gateway (relay and push hub) and the workers reach the broker through a proxy the
    // test cuts.
    let proxy = memberline_tests::proxy::TcpProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        amqp_url: proxy.amqp_url(),
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Patient", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    eventually("the push hub consumes", Duration::from_secs(30), || async {
        let (_, ready) = app.get(None, "/readyz").await;
        (ready["push"] == true).then_some(())
    })
    .await;
    let mut console = open(&app.base, Some(&merchant(&app)), "?after=0")
        .await
        .unwrap();
    let before = buy(&app, &token, "before").await;
    assert_eq!(
        next(&mut console, Duration::from_secs(30)).await.unwrap()["order_id"],
        before,
        "the order paid before the outage"
    );

    proxy.down();
    eventually("the push hub notices", Duration::from_secs(30), || async {
        let (_, ready) = app.get(None, "/readyz").await;
        (ready["push"] == false).then_some(())
    })
    .await;
    // Paid while the broker is away: the event waits in the outbox.
    let during = buy(&app, &token, "during").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.up();
    // The socket never closed; the entry arrives once the pipeline is back.
    let m = next(&mut console, Duration::from_secs(30)).await.unwrap();
    assert_eq!(m["order_id"], during);
    assert_eq!(m["seq"], 2);
    eventually("the push hub is back", Duration::from_secs(20), || async {
        let (_, ready) = app.get(None, "/readyz").await;
        (ready["push"] == true).then_some(())
    })
    .await;
    let after = buy(&app, &token, "after").await;
    let m = next(&mut console, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (m["order_id"].clone(), m["seq"].clone()),
        (json!(after), json!(3))
    );
}

#[tokio::test]
async fn the_console_lists_every_buyers_orders_newest_first_with_their_names_for_merchants_only() {
    let app = spawn_app_with(Options::default()).await;
    let ann = app.create_user("Ann", 1_000_000, 0).await;
    let bo = app.create_user("Bo", 1_000_000, 0).await;
    let first = buy(&app, &app.user_token(ann), "ann-1").await;
    let second = buy(&app, &app.user_token(bo), "bo-1").await;

    let (status, page) = app
        .get(Some(&merchant(&app)), "/v1/merchant/orders?limit=1")
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["orders"][0]["id"], second);
    assert_eq!(page["orders"][0]["buyer_name"], "Bo");
    assert_eq!(page["orders"][0]["buyer_id"], bo);
    assert_eq!(page["orders"][0]["status"], "paid");
    let cursor = page["next_cursor"].as_i64().expect("a second page");
    let (_, rest) = app
        .get(
            Some(&app.token(0, Role::Admin)),
            &format!("/v1/merchant/orders?limit=1&cursor={cursor}"),
        )
        .await;
    assert_eq!(rest["orders"][0]["id"], first);
    assert_eq!(rest["orders"][0]["buyer_name"], "Ann");
    assert_eq!(rest["next_cursor"], Value::Null);

    let (status, body) = app
        .get(Some(&app.user_token(ann)), "/v1/merchant/orders")
        .await;
    assert_eq!(
        status, 403,
        "a buyer does not see other buyers' orders: {body}"
    );
    let (status, _) = app.get(None, "/v1/merchant/orders").await;
    assert_eq!(status, 401);
    let (status, body) = app
        .get(Some(&merchant(&app)), "/v1/merchant/orders?limit=0")
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_query"))
    );
}

#[tokio::test]
async fn staff_find_orders_by_status_pay_method_channel_date_and_buyer_page_by_page() {
    let app = spawn_app_with(Options::default()).await;
    let ann = app.create_user("Ann", 1_000_000, 1_000_000).await;
    let bo = app.create_user("Bo", 1_000_000, 0).await;
    let monthly = app.plan_id("monthly").await;
    let mut ann_orders = vec![];
    for (key, method) in [("a-1", "balance"), ("a-2", "points"), ("a-3", "balance")] {
        let (status, o) = app
            .order(
                &app.user_token(ann),
                key,
                json!({"plan_id": monthly, "pay_method": method}),
            )
            .await;
        assert_eq!(status, 201, "{o}");
        ann_orders.push(o["id"].as_i64().unwrap());
    }
    let bo_order = buy(&app, &app.user_token(bo), "b-1").await;
    let (status, refunded) = app.refund(ann_orders[2], "r-1", "test").await;
    assert_eq!(status, 200, "{refunded}");

    let ids = |page: &Value| -> Vec<i64> {
        page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_i64().unwrap())
            .collect()
    };
    let staff = merchant(&app);
    let search = |query: String| {
        let (app, staff) = (&app, &staff);
        async move {
            let (status, page) = app
                .get(Some(staff), &format!("/v1/admin/orders?{query}"))
                .await;
            assert_eq!(status, 200, "{query}: {page}");
            page
        }
    };
    assert_eq!(
        ids(&search(format!("buyer_id={ann}")).await),
        vec![ann_orders[2], ann_orders[1], ann_orders[0]]
    );
    assert_eq!(
        ids(&search("pay_method=points".into()).await),
        vec![ann_orders[1]]
    );
    assert_eq!(
        ids(&search("status=refunded".into()).await),
        vec![ann_orders[2]]
    );
    assert_eq!(
        ids(&search("channel=native".into()).await),
        Vec::<i64>::new()
    );
    let page = search(format!("buyer_id={bo}")).await;
    assert_eq!(ids(&page), vec![bo_order]);
    assert_eq!(page["orders"][0]["buyer_name"], "Bo");
    // A date range: everything so far is before a minute from now, nothing after it.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(ids(&search(format!("to={soon}")).await).len(), 4);
    assert!(ids(&search(format!("from={soon}")).await).is_empty());
    // Page by page, with the filters kept.
    let first = search("status=paid&limit=2".into()).await;
    assert_eq!(ids(&first), vec![bo_order, ann_orders[1]]);
    let cursor = first["next_cursor"].as_i64().unwrap();
    let second = search(format!("status=paid&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), vec![ann_orders[0]]);
    assert!(second["next_cursor"].is_null());

    assert!(ids(&search(format!("from={soon}&to={soon}")).await).is_empty());
    let (status, bad) = app.get(Some(&staff), "/v1/admin/orders?status=lost").await;
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (400, json!("invalid_query"))
    );
    let (status, _) = app
        .get(Some(&app.user_token(ann)), "/v1/admin/orders")
        .await;
    assert_eq!(status, 403, "a buyer token searches nothing");
}
