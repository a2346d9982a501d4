//! `memberline console tail`: the merchant stream in a terminal, resuming after the gateway it
//! follows goes away and comes back, without missing or repeating an entry.

use memberline_gateway::app::Application;
use memberline_gateway::http::auth::Role;
use memberline_tests::process::{Process, app_env, binary, free_port};
use memberline_tests::{Options, TestApp, spawn_app_with};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Starts another gateway instance of `app` on `port`; it stops when the token is cancelled.
async fn instance(app: &TestApp, port: u16) -> CancellationToken {
    let mut settings = app.settings.clone();
    settings.http.port = port;
    let gateway = Application::build_with_db(settings, app.db.clone())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(gateway.run_until(stop.clone()));
    stop
}

async fn buy(app: &TestApp, token: &str, key: &str) {
    let monthly = app.plan_id("monthly").await;
    let (status, body) = app
        .order(
            token,
            key,
            json!({"plan_id": monthly, "pay_method": "balance"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn console_tail_prints_every_entry_once_across_a_gateway_restart() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    let buyer = app.create_user("Steady", 1_000_000, 0).await;
    let token = app.user_token(buyer);
    let port = free_port();
    let first = instance(&app, port).await;

    let mut child = Command::new(binary("memberline"))
        .env_clear()
        .envs(app_env(&app))
        .env("MEMBERLINE_TOKEN", app.token(800_002, Role::Merchant))
        .args([
            "console",
            "tail",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--after",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("memberline console tail starts");
    let stdout = child.stdout.take().unwrap();
    let _child = Process::from(child);
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("a line within 20 s")
            .expect("the tail is running")
    };

    buy(&app, &token, "one").await;
    buy(&app, &token, "two").await;
    let got = [next().await, next().await];
    assert!(got[0].starts_with("#1 order.paid ML"), "{got:?}");
    assert!(got[1].starts_with("#2 order.paid ML"), "{got:?}");

    // The gateway it follows stops; an order is paid meanwhile; a new one starts on that port.
    first.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    buy(&app, &token, "three").await;
    let second = instance(&app, port).await;
    let third = next().await;
    assert!(third.starts_with("#3 order.paid ML"), "{third}");
    buy(&app, &token, "four").await;
    assert!(next().await.starts_with("#4 "));
    second.cancel();
}
