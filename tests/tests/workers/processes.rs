//! Worker processes started through the harness run with the settings a test gives them: extra
//! variables reach the process and win over the harness's defaults.

use memberline_schema::topology::Worker;
use memberline_tests::process::{free_port, spawn_workers};
use memberline_tests::{Options, consumer_prefetches, eventually, spawn_app_with};
use std::time::Duration;

#[tokio::test]
async fn extra_settings_given_to_a_spawned_worker_process_reach_it() {
    let app = spawn_app_with(Options::default()).await;
    let port = free_port();
    // The harness turns the metrics listener off by default; the extra value must win. The
    // prefetch has no harness default at all: it can only come from the extra variables.
    let _workers = spawn_workers(
        &app,
        &[
            (
                "MEMBERLINE__WORKERS__METRICS_ADDR",
                format!("127.0.0.1:{port}"),
            ),
            ("MEMBERLINE__WORKERS__PREFETCH", "3".to_owned()),
        ],
    );

    let metrics = eventually(
        "the process serves /metrics on the given port",
        Duration::from_secs(30),
        || async {
            let res = app
                .client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .ok()?;
            if res.status() != 200 {
                return None;
            }
            res.text().await.ok()
        },
    )
    .await;
    assert!(metrics.contains("memberline_"), "{metrics}");
    let queue = app.topology.work_queue(Worker::Membership);
    eventually(
        "the membership consumer runs with prefetch 3",
        Duration::from_secs(30),
        || async { (consumer_prefetches(&queue) == vec![3]).then_some(()) },
    )
    .await;
}
