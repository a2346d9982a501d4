//! `GET /v1/orders/{id}/stream`: a buyer watches a WeChat order go from "scan to pay" to paid
//! and to "membership active until …", driven by the provider's notification and the workers;
//! tickets only, capped per buyer and per instance, and one read per instance however many
//! sockets follow an order.

use futures::StreamExt;
use memberline_tests::provider::spawn_app_with_provider;
use memberline_tests::{Options, TestApp, eventually};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn open(base: &str, id: i64, token: Option<&str>, query: &str) -> Result<Socket, u16> {
    let url = format!(
        "{}/v1/orders/{id}/stream{query}",
        base.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `?ticket=…` with a new single-use ticket of `token`'s caller.
async fn ticket(app: &TestApp, token: &str) -> String {
    let res = app
        .client
        .post(app.url("/v1/me/stream-ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let ticket: Value = res.json().await.unwrap();
    format!("?ticket={}", ticket["ticket"].as_str().unwrap())
}

async fn next(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_buyer_watches_a_wechat_order_go_from_pending_to_paid_to_an_active_membership() {
    let (app, emulator) = spawn_app_with_provider(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Watcher", 0, 0).await;
    let token = app.user_token(buyer);
    let monthly = app.plan_id("monthly").await;
    let (status, order) = app
        .order(
            &token,
            "watch",
            json!({"plan_id": monthly, "pay_method": "wechat"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_i64().unwrap();

    // Refusals: nothing, a bearer header alone, someone else's ticket.
    assert_eq!(open(&app.base, id, None, "").await.err(), Some(401));
    assert_eq!(open(&app.base, id, Some(&token), "").await.err(), Some(401));
    let other = app.create_user("Other", 0, 0).await;
    let theirs = ticket(&app, &app.user_token(other)).await;
    assert_eq!(open(&app.base, id, None, &theirs).await.err(), Some(404));

    let mut socket = open(&app.base, id, None, &ticket(&app, &token).await)
        .await
        .unwrap();

    let first = next(&mut socket).await;
    assert_eq!(first["type"], "order.status");
    assert_eq!(first["status"], "pending_payment");
    assert!(first.get("membership").is_none());

    let (status, _) = emulator
        .pay("wechat", order["order_no"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    let mut statuses = vec![];
    let active = loop {
        let m = next(&mut socket).await;
        statuses.push(m["status"].as_str().unwrap().to_owned());
        if m["membership"]["status"] == "active" {
            break m;
        }
    };
    assert!(statuses.iter().all(|s| s == "paid"), "{statuses:?}");
    assert_eq!(active["order_id"], id);
    assert!(active["membership"]["expires_at"].is_string(), "{active}");
}

/// The status and error code of a refused stream request with a ticket of `token`'s caller.
async fn refusal(app: &TestApp, id: i64, token: &str) -> (u16, Value) {
    let url = format!(
        "{}{}",
        app.url(&format!("/v1/orders/{id}/stream")),
        ticket(app, token).await
    );
    let mut request = url.replacen("http", "ws", 1).into_client_request().unwrap();
    request.headers_mut().remove("authorization");
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the stream opened"),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

async fn pending_order(app: &TestApp, token: &str, key: &str) -> i64 {
    let monthly = app.plan_id("monthly").await;
    let (status, order) = app
        .order(
            token,
            key,
            json!({"plan_id": monthly, "pay_method": "wechat"}),
        )
        .await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_i64().unwrap()
}

#[tokio::test]
async fn a_buyer_holds_at_most_their_cap_of_order_streams_and_gets_a_place_back_when_one_closes() {
    let (app, _emulator) = spawn_app_with_provider(Options {
        env: vec![("MEMBERLINE__PUSH__BUYER_STREAMS_PER_BUYER", "2".into())],
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Many tabs", 0, 0).await;
    let token = app.user_token(buyer);
    let id = pending_order(&app, &token, "tabs").await;
    let mut first = open(&app.base, id, None, &ticket(&app, &token).await)
        .await
        .unwrap();
    let _second = open(&app.base, id, None, &ticket(&app, &token).await)
        .await
        .unwrap();
    let (status, body) = refusal(&app, id, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_streams")),
        "{body}"
    );

    // Another buyer is not held back by this one.
    let other = app.create_user("Someone else", 0, 0).await;
    let other_token = app.user_token(other);
    let theirs = pending_order(&app, &other_token, "other").await;
    let _their_socket = open(&app.base, theirs, None, &ticket(&app, &other_token).await)
        .await
        .unwrap();

    next(&mut first).await;
    first.close(None).await.unwrap();
    drop(first);
    let again = eventually(
        "a place once a stream closed",
        Duration::from_secs(10),
        || async {
            open(&app.base, id, None, &ticket(&app, &token).await)
                .await
                .ok()
        },
    )
    .await;
    drop(again);
}

#[tokio::test]
async fn an_instance_at_its_cap_answers_503_overloaded_and_does_not_spend_the_ticket() {
    let (app, _emulator) = spawn_app_with_provider(Options {
        env: vec![("MEMBERLINE__PUSH__BUYER_STREAMS_MAX", "1".into())],
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Early", 0, 0).await;
    let token = app.user_token(buyer);
    let id = pending_order(&app, &token, "early").await;
    let mut held = open(&app.base, id, None, &ticket(&app, &token).await)
        .await
        .unwrap();
    next(&mut held).await;

    let late = app.create_user("Late", 0, 0).await;
    let late_token = app.user_token(late);
    let theirs = pending_order(&app, &late_token, "late").await;
    let spare = ticket(&app, &late_token).await;
    let url = format!("{}{spare}", app.url(&format!("/v1/orders/{theirs}/stream")));
    match tokio_tungstenite::connect_async(url.replacen("http", "ws", 1)).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            let body: Value = serde_json::from_slice(&response.body().clone().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "overloaded");
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // Once the first socket goes, the same ticket opens the stream.
    held.close(None).await.unwrap();
    drop(held);
    let mut socket = eventually(
        "the instance has room again",
        Duration::from_secs(10),
        || async { open(&app.base, theirs, None, &spare).await.ok() },
    )
    .await;
    assert_eq!(next(&mut socket).await["status"], "pending_payment");
}

/// The order watcher's reads so far.
async fn reads(app: &TestApp) -> f64 {
    app.metric("memberline_order_watch_reads_total")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn twenty_sockets_on_one_order_cost_one_read_per_poll_and_a_closed_order_is_not_read_again() {
    let poll_ms = 100;
    let (app, _emulator) = spawn_app_with_provider(Options {
        env: vec![
            ("MEMBERLINE__PUSH__FEED_POLL_MS", poll_ms.to_string()),
            ("MEMBERLINE__PUSH__BUYER_STREAMS_PER_BUYER", "20".into()),
        ],
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Crowd", 0, 0).await;
    let token = app.user_token(buyer);
    let id = pending_order(&app, &token, "crowd").await;
    let mut sockets = vec![];
    for _ in 0..20 {
        let mut socket = open(&app.base, id, None, &ticket(&app, &token).await)
            .await
            .unwrap();
        assert_eq!(next(&mut socket).await["status"], "pending_payment");
        sockets.push(socket);
    }
    assert_eq!(app.metric("memberline_order_streams").await, Some(20.0));

    // A pending order is read once a poll for all twenty: a socket polling on its own would
    // make it twenty a poll.
    let before = reads(&app).await;
    let started = std::time::Instant::now();
    // A window of ten polls, counted.
    tokio::time::sleep(Duration::from_millis(10 * poll_ms)).await;
    let read = reads(&app).await - before;
    let polls = started.elapsed().as_millis() as f64 / poll_ms as f64;
    assert!(
        read >= 1.0 && read <= polls + 2.0,
        "{read} reads in {polls} polls"
    );

    // Cancelled: every socket hears it, and then nothing visible can change: no more reads.
    let res = app
        .client
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for socket in &mut sockets {
        assert_eq!(next(socket).await["status"], "closed");
    }
    let settled = reads(&app).await;
    // A window of five polls, counted.
    tokio::time::sleep(Duration::from_millis(5 * poll_ms)).await;
    assert_eq!(reads(&app).await, settled, "a closed order was read again");
    drop(sockets);
    eventually(
        "every stream counted out",
        Duration::from_secs(10),
        || async { (app.metric("memberline_order_streams").await == Some(0.0)).then_some(()) },
    )
    .await;
}
