//! `GET /v1/orders/{id}/stream`: a buyer watches a WeChat order go from "scan to pay" to paid
//! and to "membership active until …", driven by the provider's notification and the workers.

use futures::StreamExt;
use memberline_tests::Options;
use memberline_tests::provider::spawn_app_with_provider;
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

    // Refusals: no token, someone else.
    assert_eq!(open(&app.base, id, None, "").await.err(), Some(401));
    let other = app.create_user("Other", 0, 0).await;
    assert_eq!(
        open(&app.base, id, Some(&app.user_token(other)), "")
            .await
            .err(),
        Some(404)
    );

    // A browser's way in: a single-use ticket.
    let res = app
        .client
        .post(app.url("/v1/me/stream-ticket"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let ticket: Value = res.json().await.unwrap();
    let query = format!("?ticket={}", ticket["ticket"].as_str().unwrap());
    let mut socket = open(&app.base, id, None, &query).await.unwrap();

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
