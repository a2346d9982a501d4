//! `make bench`: measures Memberline against this machine's own limits in the same run.
//!
//! 1. Baselines: how many buyer-debit transactions PostgreSQL itself commits per second (the same
//!    shape of transaction as a purchase: lock the buyer, debit, write a ledger row), and how many
//!    persistent, publisher-confirmed messages RabbitMQ accepts per second into a quorum queue.
//! 2. Memberline, as release binaries (`memberline serve` with its embedded relay and
//!    `memberline-workers`): purchase throughput and latency over HTTP, commit-to-broker latency
//!    of `order.paid.v1`, the time for the workers to apply all four effects of every purchase,
//!    and the peak memory (RSS) of each process.
//!
//! Prints a Markdown report; BENCHMARKS.md keeps the results with the machine and the date.

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use memberline_tests::{TestDb, amqp_url, broker_channel};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PURCHASES: usize = 2000;
const CONCURRENCY: usize = 16;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn baseline_postgres(db: &TestDb) -> f64 {
    db.conn
        .execute_unprepared(
            "INSERT INTO users (name, points) SELECT 'bench ' || g, 1000000000 FROM generate_series(1, 16) g",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let n = 4000usize;
    futures::stream::iter(0..n)
        .map(|i| {
            let conn = db.conn.clone();
            async move {
                let user = (i % 16 + 1) as i64;
                let txn = conn.begin().await.unwrap();
                txn.query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT points FROM users WHERE id = $1 FOR UPDATE",
                    [user.into()],
                ))
                .await
                .unwrap();
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE users SET points = points - 1 WHERE id = $1",
                    [user.into()],
                ))
                .await
                .unwrap();
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO point_ledger (user_id, reason, delta, balance_after) VALUES ($1, 'bench', -1, 0)",
                    [user.into()],
                ))
                .await
                .unwrap();
                txn.commit().await.unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn baseline_rabbitmq() -> f64 {
    let ch = broker_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("bench.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let body = vec![b'x'; 700];
    let n = 10_000;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(100);
    for _ in 0..n {
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
        if pending.len() == 100 {
            for c in pending.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in pending.drain(..) {
        assert!(c.await.unwrap().is_ack());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    rate
}

fn spawn(bin: &str, args: &[&str], env: &[(&str, String)]) -> Child {
    let path = std::env::current_exe().unwrap().parent().unwrap().join(bin);
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env("MEMBERLINE_CONFIG_DIR", "/nonexistent")
        .env("MEMBERLINE__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()))
}

#[tokio::main]
async fn main() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("# Memberline benchmark\n");
    println!(
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!(
        "- machine: {cores} cores, {} purchases at concurrency {CONCURRENCY}\n",
        PURCHASES
    );

    let base_db = TestDb::create().await;
    let pg_rate = baseline_postgres(&base_db).await;
    drop(base_db);
    let mq_rate = baseline_rabbitmq().await;

    let db = TestDb::create().await;
    let prefix = format!("bench{}", uuid::Uuid::new_v4().simple());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = vec![
        ("MEMBERLINE__DATABASE__URL", db.url.clone()),
        ("MEMBERLINE__AMQP__URL", amqp_url()),
        ("MEMBERLINE__AMQP__PREFIX", prefix.clone()),
        ("MEMBERLINE__HTTP__PORT", port.to_string()),
        ("MEMBERLINE__WORKERS__METRICS_ADDR", String::new()),
        // No cap: every purchase earns its reward, so the ledger worker does full work.
        (
            "MEMBERLINE__WORKERS__DAILY_POINTS_CAP",
            "1000000000".to_owned(),
        ),
    ];
    // The processes declare the topology themselves (with the default retry ladder); the bench
    // only needs the names to clean up.
    let settings = memberline_tests::test_settings(&db.url, &amqp_url(), &prefix, false, &[]);
    let topology = memberline_schema::topology::Topology::new(prefix.clone());
    let keys = memberline_gateway::auth::Keys::new(settings.auth.jwt_secret.expose());

    let mut gateway = spawn("memberline", &["serve"], &env);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    memberline_tests::eventually("gateway up", Duration::from_secs(30), || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let admin = keys.issue(0, memberline_gateway::auth::Role::Admin, 3600);
    let mut tokens = Vec::new();
    for i in 0..CONCURRENCY {
        let res: serde_json::Value = client
            .post(format!("{base}/v1/admin/users"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"name": format!("bench {i}"), "balance_fen": 1_000_000_000i64, "points": 0}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(keys.issue(
            res["id"].as_i64().unwrap(),
            memberline_gateway::auth::Role::User,
            3600,
        ));
    }
    let plan_id: i64 = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM plans WHERE code = 'monthly'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "id")
        .unwrap();

    // Purchases over HTTP; workers are not running yet, so this measures the gateway and relay.
    let started = Instant::now();
    let mut latencies: Vec<f64> = futures::stream::iter(0..PURCHASES)
        .map(|i| {
            let (client, base, token) = (&client, &base, tokens[i % CONCURRENCY].clone());
            async move {
                let t = Instant::now();
                let res = client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("bench-{i}"))
                    .json(&serde_json::json!({"plan_id": plan_id, "pay_method": "balance"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                t.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let purchase_secs = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Commit-to-broker latency, from the outbox row's commit time to its confirm.
    memberline_tests::eventually("every event published", Duration::from_secs(60), || async {
        let row = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            ))
            .await
            .unwrap()
            .unwrap();
        (row.try_get_by_index::<i64>(0).unwrap() == 0).then_some(())
    })
    .await;
    let mut relay_ms: Vec<f64> = db
        .conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (EXTRACT(EPOCH FROM published_at - created_at) * 1000)::float8 AS ms FROM outbox",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get::<f64>("", "ms").unwrap())
        .collect();
    relay_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Workers drain the backlog: 4 effects per purchase.
    let mut workers = spawn("memberline-workers", &[], &env);
    let drain_started = Instant::now();
    memberline_tests::eventually("all effects applied", Duration::from_secs(600), || async {
        let row = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) FROM consumed_events WHERE event_type = 'order.paid'",
            ))
            .await
            .unwrap()
            .unwrap();
        (row.try_get_by_index::<i64>(0).unwrap() == (PURCHASES * 4) as i64).then_some(())
    })
    .await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let gateway_rss = rss_peak_kib(gateway.id());
    let workers_rss = rss_peak_kib(workers.id());
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let _ = Command::new("kill")
        .args(["-TERM", &workers.id().to_string()])
        .status();
    let _ = gateway.wait();
    let _ = workers.wait();
    let ch = broker_channel().await;
    let _ = topology.delete(&ch).await;

    let purchase_rate = PURCHASES as f64 / purchase_secs;
    println!("| measurement | result | machine limit in the same run |");
    println!("|---|---|---|");
    println!(
        "| purchases (HTTP, balance, order + ledger + outbox in one transaction) | {purchase_rate:.0}/s | PostgreSQL alone commits {pg_rate:.0} such transactions/s ({:.0}% used) |",
        purchase_rate / pg_rate * 100.0
    );
    println!(
        "| purchase latency p50 / p95 / p99 | {:.1} / {:.1} / {:.1} ms | |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
    println!(
        "| commit → broker confirm (relay) p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | RabbitMQ alone confirms {mq_rate:.0} persistent messages/s into a quorum queue |",
        percentile(&relay_ms, 0.5),
        percentile(&relay_ms, 0.99),
        relay_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| workers: {} effects (4 per purchase) applied from a backlog | {:.0} effects/s ({drain_secs:.1} s) | |",
        PURCHASES * 4,
        (PURCHASES * 4) as f64 / drain_secs
    );
    println!(
        "| peak memory (RSS) | gateway {:.1} MiB, workers {:.1} MiB | |",
        gateway_rss as f64 / 1024.0,
        workers_rss as f64 / 1024.0
    );
}
