//! Worker processes under stress: kill -9 mid-burst, cut connections, SIGTERM, the dlq command.

use memberline_platform::metrics::DeliveryOutcome;
use memberline_schema::topology::Worker;
use memberline_tests::process::{binary, free_port, spawn_workers};
use memberline_tests::{Options, TestApp, consumer_prefetches, eventually, spawn_app_with};
use rand::Rng;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every purchase's effects landed, none twice. Rows are counted for what was lost: a unique
/// constraint keeps each at one per order, so they cannot show a double. Totals kept beside them
/// (passes' uses, purchase counts, points and balances against their ledgers) can.
async fn assert_every_effect_exactly_once(app: &TestApp, orders: i64, timeout: Duration) {
    let landed = [
        "SELECT count(*) FROM user_passes",
        "SELECT count(*) FROM savings_entries",
        "SELECT count(*) FROM point_ledger WHERE reason = 'purchase_reward'",
        "SELECT count(*) FROM notifications WHERE kind = 'order_paid'",
        "SELECT count(*) FROM notifications WHERE kind = 'membership_extended'",
    ];
    for sql in landed {
        app.wait_for_count(sql, sql, orders).await;
    }
    let unguarded = [
        "SELECT COALESCE(sum(uses_left), 0)::bigint FROM user_passes",
        "SELECT COALESCE(sum(purchase_count), 0)::bigint FROM users",
    ];
    for sql in unguarded {
        eventually(&format!("{sql} = {orders}"), timeout, || async {
            let got = app.scalar(sql).await;
            assert!(
                got <= orders,
                "{sql}: {got} > {orders}: an effect was applied twice"
            );
            (got == orders).then_some(())
        })
        .await;
    }
    let drift = memberline_tests::invariants::drift(&app.db).await;
    assert_eq!(
        drift.total(),
        0,
        "totals drifted from their rows: {drift:?}"
    );
}

/// Deliveries the broker has handed to this test's consumers and not seen acknowledged.
fn unacked(prefix: &str) -> i64 {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}.")))
        .filter_map(|l| l.split('\t').nth(1)?.trim().parse::<i64>().ok())
        .sum()
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
    let mut worker = spawn_workers(&app, &[]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let burst = async {
        use futures::StreamExt;
        let made = futures::stream::iter(0..2000)
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
            .count()
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        made
    };
    let prefix = app.topology.prefix().to_owned();
    let killer = async {
        let mut kills = 0;
        // Kills that landed mid-delivery: the broker had deliveries out to the process, not yet
        // acknowledged, when it died (a process killed before it consumed proves nothing).
        let mut landed = 0;
        // Kill at random moments for as long as the burst runs, at most 15 times: each kill
        // counts against the broker's delivery limit (20) of the messages in flight, and the
        // message at the head of the queue can be in flight at every kill (a worker killed
        // while starting); a crash loop of 20 is exactly what that limit is there to stop.
        while !done.load(std::sync::atomic::Ordering::SeqCst) && kills < 15 {
            let pause = rand::rng().random_range(300..1200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let in_flight = tokio::task::spawn_blocking({
                let prefix = prefix.clone();
                move || unacked(&prefix)
            })
            .await
            .unwrap();
            // SIGKILL: no drain, no close; unacked deliveries come back to the queue.
            worker.kill().expect("kill -9");
            worker.wait().unwrap();
            kills += 1;
            if in_flight > 0 {
                landed += 1;
            }
            worker = spawn_workers(&app, &[]);
        }
        (kills, landed)
    };
    let (made, (kills, landed)) = tokio::join!(burst, killer);
    assert_eq!(made, 2000);
    assert!(
        landed >= 3,
        "the worker was killed {kills} times, {landed} of them mid-delivery"
    );
    assert_every_effect_exactly_once(&app, 2000, Duration::from_secs(240)).await;
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

/// The process ids of this test's worker connections (what `close_connection` takes), named
/// `<prefix>.<worker>.<pid>`: not the gateway's own (its push hub, relay and readiness probe).
fn worker_connections(prefix: &str) -> Vec<String> {
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
        .filter(|l| {
            Worker::ALL
                .iter()
                .any(|w| l.contains(&format!("{prefix}.{}.", w.as_str())))
        })
        .map(|l| l.split('\t').next().unwrap().to_owned())
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
        || async { (consumer_prefetches(&queue) == vec![7]).then_some(()) },
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
            // Every worker connected again since the last round.
            let names = eventually(
                "each of the four workers connected",
                Duration::from_secs(20),
                || async {
                    let names = worker_connections(&prefix);
                    (names.len() == Worker::ALL.len()).then_some(names)
                },
            )
            .await;
            // Like `rabbitmqctl close_all_connections`, but only this test's worker
            // connections, so the other tests running beside it keep theirs.
            for name in names {
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
    assert_eq!(
        closed,
        3 * Worker::ALL.len(),
        "three rounds closed every worker's connection"
    );
    assert_every_effect_exactly_once(&app, 60, Duration::from_secs(60)).await;
    eventually(
        "consumers came back with prefetch 7",
        Duration::from_secs(20),
        || async { (consumer_prefetches(&queue) == vec![7]).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_worker_process_serves_metrics_and_stops_cleanly_on_sigterm() {
    let app = spawn_app_with(Options::default()).await;
    let port = free_port();
    let mut child = spawn_workers(
        &app,
        &[(
            "MEMBERLINE__WORKERS__METRICS_ADDR",
            format!("127.0.0.1:{port}"),
        )],
    );
    let ops = format!("http://127.0.0.1:{port}");
    eventually(
        "all four workers ready",
        Duration::from_secs(30),
        || async {
            let res = app.client.get(format!("{ops}/readyz")).send().await.ok()?;
            (res.status() == 200).then_some(())
        },
    )
    .await;
    let buyer = app.create_user("Metered", 100_000, 0).await;
    app.order(
        &app.user_token(buyer),
        "metered",
        json!({"plan_id": app.plan_id("day_pass").await, "pay_method": "balance"}),
    )
    .await;
    let text = eventually("effects counted", Duration::from_secs(30), || async {
        let text = app.text(format!("{ops}/metrics")).await?;
        text.contains(
            "memberline_worker_deliveries_total{consumer=\"savings\",outcome=\"applied\"} 1",
        )
        .then_some(text)
    })
    .await;
    assert!(
        text.contains("memberline_worker_event_to_effect_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("memberline_worker_handling_seconds_count"),
        "{text}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = eventually(
        "the process exits after SIGTERM",
        Duration::from_secs(15),
        || {
            let status = child.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert!(status.success(), "clean exit, got {status:?}");
}

#[tokio::test]
async fn the_dlq_command_lists_and_replays_dead_letters() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    app.publish_event("order.paid.v1", b"definitely not json")
        .await;
    eventually("poison parked", Duration::from_secs(20), || async {
        (app.queue_len(&app.topology.dead_queue(Worker::Savings))
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        app.worker_metrics
            .deliveries("savings", DeliveryOutcome::DeadLettered),
        1
    );
    let dlq = binary("memberline-dlq");
    let run = |args: &[&str]| {
        let out = Command::new(&dlq)
            .args(args)
            .env("MEMBERLINE_CONFIG_DIR", "/nonexistent")
            .env("MEMBERLINE__AMQP__URL", app.settings.amqp.url.expose())
            .env("MEMBERLINE__AMQP__PREFIX", app.topology.prefix())
            .env("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "100,200")
            .output()
            .expect("memberline-dlq runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (listed, _) = run(&["list", "--worker", "savings"]);
    assert!(listed.contains("undecodable payload"), "{listed}");
    let (replayed, progress) = run(&["replay", "--worker", "savings"]);
    assert!(
        replayed.contains("replayed 1 dead letter(s) of savings"),
        "{replayed}"
    );
    assert!(progress.contains("1/1"), "a progress bar: {progress}");
    // Still poison: the worker takes it again and it comes back to the dead-letter queue. (Had
    // the replay done nothing, the queue would hold it too: the worker's count tells.)
    eventually(
        "taken again and parked again",
        Duration::from_secs(20),
        || async {
            let dead = app
                .worker_metrics
                .deliveries("savings", DeliveryOutcome::DeadLettered);
            (dead == 2
                && app
                    .queue_len(&app.topology.dead_queue(Worker::Savings))
                    .await
                    == 1)
                .then_some(())
        },
    )
    .await;
    let (purged, _) = run(&["purge", "--worker", "savings", "--yes"]);
    assert!(purged.contains("purged 1"), "{purged}");
}
