use memberline_schema::topology::Worker;
use memberline_tests::{Options, TestApp, eventually, spawn_app_with};
use rand::Rng;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `memberline-workers` binary built next to this test.
fn workers_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("memberline-workers");
    assert!(
        bin.exists(),
        "build the workspace binaries first ({})",
        bin.display()
    );
    bin
}

fn spawn_workers(app: &TestApp) -> Child {
    Command::new(workers_binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MEMBERLINE_CONFIG_DIR", "/nonexistent")
        .env(
            "MEMBERLINE__DATABASE__URL",
            app.settings.database.url.expose(),
        )
        .env("MEMBERLINE__AMQP__URL", app.settings.amqp.url.expose())
        .env("MEMBERLINE__AMQP__PREFIX", app.topology.prefix())
        .env("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "100,200")
        .env("MEMBERLINE__WORKERS__METRICS_ADDR", "")
        .env("MEMBERLINE__WORKERS__MAX_RECONNECT_DELAY_MS", "200")
        .env("MEMBERLINE__LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start memberline-workers")
}

async fn assert_every_effect_exactly_once(app: &TestApp, orders: i64, timeout: Duration) {
    let checks = [
        ("SELECT count(*) FROM user_passes", orders),
        ("SELECT count(*) FROM savings_entries", orders),
        (
            "SELECT count(*) FROM point_ledger WHERE reason = 'purchase_reward'",
            orders,
        ),
        (
            "SELECT count(*) FROM notifications WHERE kind = 'order_paid'",
            orders,
        ),
        (
            "SELECT count(*) FROM notifications WHERE kind = 'membership_extended'",
            orders,
        ),
        (
            "SELECT COALESCE(sum(purchase_count), 0)::bigint FROM users",
            orders,
        ),
    ];
    for (sql, want) in checks {
        eventually(&format!("{sql} = {want}"), timeout, || async {
            let got = app.scalar(sql).await;
            assert!(
                got <= want,
                "{sql}: {got} > {want}: an effect was applied twice"
            );
            (got == want).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn kill_9_of_the_worker_process_during_a_burst_of_2000_purchases_applies_every_effect_exactly_once()
 {
    let app = spawn_app_with(Options::default()).await;
    let pass = app.plan_id("day_pass").await;
    let mut buyers = Vec::new();
    for i in 0..20 {
        let id = app.create_user(&format!("Burst {i}"), 100_000_000, 0).await;
        buyers.push(app.user_token(id));
    }
    let mut worker = spawn_workers(&app);
    let burst = async {
        let mut made = 0i64;
        futures::stream::iter(0..2000)
            .map(|i| {
                let (app, token) = (&app, buyers[i % buyers.len()].clone());
                async move {
                    let (s, b) = app
                        .order(
                            &token,
                            &format!("burst-{i}"),
                            json!({"plan_id": pass, "pay_method": "balance"}),
                        )
                        .await;
                    assert_eq!(s, 201, "{b}");
                }
            })
            .buffer_unordered(16)
            .for_each(|_| {
                made += 1;
                async {}
            })
            .await;
        made
    };
    use futures::StreamExt;
    let killer = async {
        let mut kills = 0;
        loop {
            let pause = rand::rng().random_range(150..600);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            // SIGKILL: no drain, no close; unacked deliveries come back to the queue.
            worker.kill().expect("kill -9");
            worker.wait().unwrap();
            kills += 1;
            worker = spawn_workers(&app);
            if kills >= 8 {
                break;
            }
        }
        kills
    };
    let (made, kills) = tokio::join!(burst, killer);
    assert_eq!(made, 2000);
    assert!(kills >= 8);
    assert_every_effect_exactly_once(&app, 2000, Duration::from_secs(120)).await;
    for w in Worker::ALL {
        assert_eq!(
            app.queue_len(&app.topology.dead_queue(w)).await,
            0,
            "nothing dead-lettered for {w:?}"
        );
    }
    worker.kill().ok();
    worker.wait().ok();
}

/// The process ids of this test's worker connections (what `close_connection` takes).
fn our_connections(prefix: &str) -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("{prefix}.")))
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

fn prefetch_of_consumers(queue: &str) -> Vec<u32> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "-q",
            "--no-table-headers",
            "queue_name",
            "prefetch_count",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let q = parts.next()?;
            let p = parts.next()?.trim().parse().ok()?;
            (q == queue).then_some(p)
        })
        .collect()
}

#[tokio::test]
async fn closing_the_broker_connections_mid_run_loses_nothing_and_consumers_return_with_their_prefetch()
 {
    let app = spawn_app_with(Options {
        workers: true,
        env: vec![("MEMBERLINE__WORKERS__PREFETCH", "7".to_owned())],
        ..Default::default()
    })
    .await;
    let queue = app.topology.work_queue(Worker::Membership);
    eventually(
        "consumers attached with prefetch 7",
        Duration::from_secs(20),
        || async { (prefetch_of_consumers(&queue) == vec![7]).then_some(()) },
    )
    .await;
    let buyer = app.create_user("Disconnected", 100_000_000, 0).await;
    let token = app.user_token(buyer);
    let pass = app.plan_id("day_pass").await;
    let prefix = app.topology.prefix().to_owned();
    let mut closed = 0;
    for i in 0..60 {
        app.order(
            &token,
            &format!("dc-{i}"),
            json!({"plan_id": pass, "pay_method": "balance"}),
        )
        .await;
        if i % 20 == 10 {
            // Like `rabbitmqctl close_all_connections`, but only this test's worker
            // connections, so the other tests running beside it keep theirs.
            for name in our_connections(&prefix) {
                let status = Command::new("rabbitmqctl")
                    .args([
                        "close_connection",
                        &name,
                        "test: broker closed the connection",
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                if status.success() {
                    closed += 1;
                }
            }
        }
    }
    assert!(closed >= 4, "worker connections were closed ({closed})");
    assert_every_effect_exactly_once(&app, 60, Duration::from_secs(60)).await;
    eventually(
        "consumers came back with prefetch 7",
        Duration::from_secs(20),
        || async { (prefetch_of_consumers(&queue) == vec![7]).then_some(()) },
    )
    .await;
}
