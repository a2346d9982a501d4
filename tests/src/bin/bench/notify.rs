//! Verified notifications: WeChat Pay orders checked out through the emulator and paid there;
//! the emulator signs and encrypts one `TRANSACTION.SUCCESS` notification per order as it is
//! paid and holds it (its hold mode). Then every notification is released at once, 32 in
//! flight, and the gateway verifies each signature, decrypts the resource and commits the order
//! paid with its event. Measured: orders paid per second, from the release to the last order
//! committed paid. The provider's own signing happens on its servers, not on ours: it is done
//! before the clock starts, and what the emulator spends in the window is sending.

use crate::system::System;
use indicatif::{ProgressBar, ProgressStyle};
use memberline_tests::provider::Emulator;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Orders paid in the scenario.
pub const ORDERS: usize = 2000;

pub struct Outcome {
    /// Notifications applied per second.
    pub rate: f64,
    /// Orders that never became paid.
    pub unpaid: i64,
    /// Orders paid more than once (two `paid` transitions).
    pub doubled: i64,
    /// Orders the checkout refused (setup errors).
    pub refused: usize,
    /// CPU by component over the window: (component, share of a core, µs per notification).
    pub cpu: Vec<(&'static str, f64, f64)>,
}

fn bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>34} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// `tasks` at a time, `f(i)` for every `i` below `n`; the results in order of `i`.
async fn each<T, F, Fut>(n: usize, tasks: usize, bar: &ProgressBar, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..tasks).map(|_| {
        let (f, next, bar) = (f.clone(), next.clone(), bar.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, f(i).await));
                bar.inc(1);
            }
        })
    });
    let mut all: Vec<(usize, T)> = futures::future::join_all(workers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("task"))
        .collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

pub async fn run() -> Outcome {
    let emulator = Emulator::start_binary(
        &std::env::current_exe()
            .unwrap()
            .with_file_name("provider-emulator"),
        0.01,
    );
    // The emulator's keys are the public development keys, which only a local environment may
    // use.
    let system = System::start_with(false, |port| {
        let mut env = emulator.settings(port);
        env.push(("MEMBERLINE_ENV", "local".to_owned()));
        env
    })
    .await;
    let checkout = bar("checkout through the emulator", ORDERS as u64);
    let (http, base, plan) = (system.http.clone(), system.base.clone(), system.plan_id);
    let tokens: Arc<Vec<String>> = Arc::new(system.tokens().to_vec());
    let order_nos: Vec<Option<String>> = each(ORDERS, 16, &checkout, move |i| {
        let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
        async move {
            let res = http
                .post(format!("{base}/v1/orders"))
                .bearer_auth(&tokens[i % tokens.len()])
                .header("Idempotency-Key", format!("wechat-{i}"))
                .json(&serde_json::json!({"plan_id": plan, "pay_method": "wechat"}))
                .send()
                .await
                .ok()?;
            if res.status() != 201 {
                eprintln!("checkout {i}: {}", res.status());
                return None;
            }
            let body: serde_json::Value = res.json().await.ok()?;
            body["order_no"].as_str().map(str::to_owned)
        }
    })
    .await;
    checkout.finish();
    let order_nos: Arc<Vec<String>> = Arc::new(order_nos.into_iter().flatten().collect());
    let refused = ORDERS - order_nos.len();

    emulator
        .notify_mode(serde_json::json!({"provider": "wechat", "mode": "hold"}))
        .await;
    let signing = bar("paid, notifications signed", order_nos.len() as u64);
    let client = reqwest::Client::new();
    let emulator_base = emulator.base.clone();
    let nos = order_nos.clone();
    each(order_nos.len(), 16, &signing, move |i| {
        let (client, base, nos) = (client.clone(), emulator_base.clone(), nos.clone());
        async move {
            let res = client
                .post(format!("{base}/emulator/pay"))
                .json(&serde_json::json!({"provider": "wechat", "out_trade_no": nos[i]}))
                .send()
                .await;
            if !res.as_ref().is_ok_and(|r| r.status() == 200) {
                eprintln!("emulator pay {i}: {:?}", res.map(|r| r.status()));
            }
        }
    })
    .await;
    signing.finish();

    let paying = bar("WeChat notifications", order_nos.len() as u64);
    let before = crate::cpu::snapshot();
    let started = Instant::now();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0;
    let (status, released) = emulator
        .post_control(
            "/emulator/release",
            serde_json::json!({"provider": "wechat", "concurrency": 32}),
        )
        .await;
    assert_eq!(status, 200, "release: {released}");
    // Paid orders, polled until all are (or two minutes went by).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut paid, mut last_ms) = (0i64, started_ms);
    while Instant::now() < deadline {
        let row = system
            .db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n, \
                        coalesce(EXTRACT(EPOCH FROM max(paid_at)) * 1000, 0)::float8 AS last \
                 FROM orders WHERE pay_method = 'wechat' AND status = 'paid'",
            ))
            .await
            .unwrap()
            .unwrap();
        paid = row.try_get("", "n").unwrap();
        last_ms = row.try_get("", "last").unwrap();
        paying.set_position(paid as u64);
        if paid as usize >= order_nos.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = ((last_ms - started_ms) / 1000.0).max(0.001);
    let cpu = crate::cpu::between(
        &before,
        &crate::cpu::snapshot(),
        started.elapsed().as_secs_f64(),
        paid as usize,
    );
    let rate = paid as f64 / secs;
    paying.finish_with_message(format!("{rate:.0}/s"));
    let doubled: i64 = system
        .db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM (SELECT order_id FROM order_status_history \
             WHERE to_status = 'paid' GROUP BY order_id HAVING count(*) > 1) d",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap();
    system.stop().await;
    Outcome {
        rate,
        unpaid: order_nos.len() as i64 - paid,
        doubled,
        refused,
        cpu,
    }
}
