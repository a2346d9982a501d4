//! How the system is put together and operated: crate dependency direction, the standalone relay
//! with its own metrics and readiness, the gateway's readiness probe, and the dead-letter list
//! across every worker.

use memberline_gateway::http::auth::Role;
use memberline_schema::topology::Worker;
use memberline_tests::process::{free_port, spawn_relay};
use memberline_tests::{Options, eventually, spawn_app_with};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// The workspace's own crates that `package` depends on (normal and build dependencies).
fn workspace_dependencies(package: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("memberline-") && *name != package)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_gateway_and_the_workers_stand_on_the_order_domain_and_shared_crates_and_never_on_each_other()
{
    let workers = workspace_dependencies("memberline-workers");
    assert!(!workers.contains("memberline-gateway"), "{workers:?}");
    assert!(workers.contains("memberline-platform"), "{workers:?}");
    let gateway = workspace_dependencies("memberline-gateway");
    assert!(!gateway.contains("memberline-workers"), "{gateway:?}");
    let orders = workspace_dependencies("memberline-orders");
    assert_eq!(
        orders,
        BTreeSet::from([
            "memberline-platform".to_owned(),
            "memberline-schema".to_owned()
        ]),
        "the order domain stands on the platform and the contracts only"
    );
    assert!(gateway.contains("memberline-orders"), "{gateway:?}");
    assert!(workers.contains("memberline-orders"), "{workers:?}");
    let platform = workspace_dependencies("memberline-platform");
    assert_eq!(
        platform,
        BTreeSet::from(["memberline-schema".to_owned()]),
        "the platform depends on the contracts only"
    );
    assert!(workspace_dependencies("memberline-schema").is_empty());
}

#[tokio::test]
async fn the_standalone_relay_publishes_and_reports_on_its_own_port_without_serving_the_api() {
    let app = spawn_app_with(Options {
        embedded_relay: false,
        ..Default::default()
    })
    .await;
    let mut tap = app.tap("order.paid.v1").await;
    let ops_port = free_port();
    let api_port = free_port();
    let _relay = spawn_relay(
        &app,
        &[
            ("MEMBERLINE__HTTP__PORT", api_port.to_string()),
            (
                "MEMBERLINE__RELAY__METRICS_ADDR",
                format!("127.0.0.1:{ops_port}"),
            ),
        ],
    );
    let ops = format!("http://127.0.0.1:{ops_port}");
    eventually("the relay is ready", Duration::from_secs(20), || async {
        let res = app.client.get(format!("{ops}/readyz")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;

    let buyer = app.create_user("Relayed", 0, 10_000).await;
    let monthly = app.plan_id("monthly").await;
    let (status, _) = app
        .order(
            &app.user_token(buyer),
            "relay-1",
            json!({"plan_id": monthly, "pay_method": "points"}),
        )
        .await;
    assert_eq!(status, 201);
    let seen = tap.next(Duration::from_secs(10)).await;
    assert!(seen.is_some(), "the standalone relay published the event");
    let metrics = eventually("the relay counted it", Duration::from_secs(10), || async {
        let text = app.text(format!("{ops}/metrics")).await?;
        text.contains("memberline_outbox_published_total 1")
            .then_some(text)
    })
    .await;
    assert!(
        metrics.contains("memberline_outbox_unpublished 0"),
        "{metrics}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err(),
        "the relay does not serve the HTTP API"
    );
}

fn connections_named(name: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(name))
        .count()
}

#[tokio::test]
async fn readiness_probes_reuse_one_broker_connection() {
    let app = spawn_app_with(Options::default()).await;
    for _ in 0..5 {
        let (status, body) = app.get(None, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["broker"], true);
    }
    let name = format!("{}.gateway.readiness", app.topology.prefix());
    assert_eq!(connections_named(&name), 1, "one kept connection");
}

#[tokio::test]
async fn without_a_worker_named_the_dead_letters_of_every_worker_are_listed_with_their_worker() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    // Every worker's queue is bound to order.paid.v1: one undecodable message is dead-lettered
    // by each of the four.
    app.publish_event("order.paid.v1", b"not an envelope").await;
    eventually(
        "parked by every worker",
        Duration::from_secs(20),
        || async {
            for worker in Worker::ALL {
                if app.queue_len(&app.topology.dead_queue(worker)).await != 1 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let admin = app.token(0, Role::Admin);
    let (status, list) = app.get(Some(&admin), "/v1/admin/dead-letters").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["worker"], serde_json::Value::Null);
    let workers: BTreeSet<&str> = list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        workers,
        BTreeSet::from(["ledger", "membership", "notifier", "savings"])
    );
    let (_, limited) = app
        .get(Some(&admin), "/v1/admin/dead-letters?limit=2")
        .await;
    assert_eq!(limited["dead_letters"].as_array().unwrap().len(), 2);
    // Looking left them all in place.
    for worker in Worker::ALL {
        assert_eq!(app.queue_len(&app.topology.dead_queue(worker)).await, 1);
    }
}
