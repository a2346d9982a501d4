//! `make bench`: Memberline against this machine's own limits, measured side by side in one run.
//!
//! 1. Floors, straight through the drivers: (a) the purchase floor, the rows one purchase
//!    commits written with the fewest statements from the best number of connections; (c) the
//!    broker floor, a quorum queue published with confirms and consumed with acks.
//! 2. Scenarios, against the release binaries (`memberline serve` with its embedded relay,
//!    `memberline-workers`): checkout in a closed loop at the best concurrency, then in open loops
//!    at 25 %, 50 % and 90 % of that capacity; end to end at 50 % with every worker running, from
//!    each POST to the last of its four effects.
//! 3. A Markdown report (`target/bench/report.md`, also printed) of every value against its
//!    floor and target, and SVG plots under `target/bench/`.
//!
//! Nothing here asserts a speed: the run fails only when a purchase errs or an effect is lost
//! or doubled.

mod cpu;
mod floors;
mod load;
mod plot;
mod system;

use load::{Run, percentile};
use memberline_tests::{TestDb, amqp_url, broker_channel};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use system::System;

/// Seconds each measured window lasts.
const WINDOW: f64 = 8.0;
/// Concurrencies tried to find the knee.
const KNEE: [usize; 4] = [4, 8, 16, 32];

fn versions() -> String {
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let pg = out("psql", &["--version"]);
    let mq = out(
        "sh",
        &[
            "-c",
            "dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null",
        ],
    );
    let rustc = out("rustc", &["--version"]);
    format!("{pg}; RabbitMQ {mq}; {rustc}")
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// Latency columns of a run: p50 / p95 / p99 in ms.
fn lat(run: &Run) -> String {
    let l = run.latencies();
    format!(
        "{:.1} / {:.1} / {:.1} ms",
        percentile(&l, 0.5),
        percentile(&l, 0.95),
        percentile(&l, 0.99)
    )
}

#[tokio::main]
async fn main() {
    let out_dir =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()))
            .join("bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut report = String::new();
    writeln!(report, "# Memberline benchmark\n").unwrap();
    writeln!(
        report,
        "- date: {}\n- machine: {cores} cores; {}\n- windows of {WINDOW:.0} s; load generator, PostgreSQL, RabbitMQ and Memberline share the machine\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        versions()
    )
    .unwrap();

    // 1. Floors.
    eprintln!("Floors");
    let floor_db = TestDb::create().await;
    floors::seed_buyers(&floor_db.conn).await;
    let mut floor_a = (0usize, 0.0f64);
    let mut floor_cpu = Vec::new();
    let mut knee_a = Vec::new();
    for conns in KNEE {
        let (rate, used) = floors::purchase_floor(&floor_db.url, conns, WINDOW / 2.0).await;
        eprintln!("  (a) purchase floor, {conns} connections: {rate:.0}/s");
        knee_a.push((conns, rate));
        if rate > floor_a.1 {
            floor_a = (conns, rate);
            floor_cpu = used;
        }
    }
    drop(floor_db);
    let floor_c = floors::broker_floor(&amqp_url(), 20_000, 1024).await;
    eprintln!("  (c) broker floor: {floor_c:.0} messages/s");

    // 2. Checkout: the knee, then open loops below it (no workers: the gateway alone).
    eprintln!("Checkout");
    let shop_system = System::start(false).await;
    let mut best: Option<(usize, f64)> = None;
    let mut knee = Vec::new();
    for c in KNEE {
        let run = shop_system
            .shop(&format!("knee{c}"))
            .closed_loop(&format!("closed loop, {c} in flight"), c, WINDOW / 2.0)
            .await;
        knee.push((c, run.rate()));
        if best.is_none_or(|(_, b)| run.rate() > b) {
            best = Some((c, run.rate()));
        }
    }
    let (best_c, _) = best.unwrap();
    let before = cpu::snapshot();
    let closed = shop_system
        .shop("closed")
        .closed_loop(&format!("closed loop, {best_c} in flight"), best_c, WINDOW)
        .await;
    let checkout_cpu = cpu::between(
        &before,
        &cpu::snapshot(),
        closed.elapsed.as_secs_f64(),
        closed.ok(),
    );
    let capacity = closed.rate();
    let mut open = Vec::new();
    for share in [0.25, 0.5, 0.9] {
        let run = shop_system
            .shop(&format!("open{}", (share * 100.0) as u32))
            .open_loop(
                &format!(
                    "open loop, {:.0} % ({:.0}/s)",
                    share * 100.0,
                    capacity * share
                ),
                capacity * share,
                WINDOW,
            )
            .await;
        open.push((share, run));
    }
    let (gateway_rss, _) = shop_system.stop().await;

    // End to end at 50 % of the checkout capacity, every worker running, on a fresh system.
    eprintln!("End to end");
    let system = System::start(true).await;
    let depth_before = queue_depths(&system.topology).await;
    let e2e_cpu_before = cpu::snapshot();
    let e2e_started = Instant::now();
    let e2e = system
        .shop("e2e")
        .open_loop(
            &format!("end to end, 50 % ({:.0}/s)", capacity * 0.5),
            capacity * 0.5,
            WINDOW,
        )
        .await;
    let depth_after = queue_depths(&system.topology).await;
    let outbox_after = unpublished(&system.db).await;
    let ids: Vec<i64> = e2e.samples.iter().filter_map(|s| s.order_id).collect();
    let drain = wait_for_effects(&system.db, Duration::from_secs(300)).await;
    eprintln!(
        "  every effect applied {:.1} s after the window",
        drain.as_secs_f64()
    );
    let e2e_cpu = cpu::between(
        &e2e_cpu_before,
        &cpu::snapshot(),
        e2e_started.elapsed().as_secs_f64(),
        e2e.ok() * 4,
    );
    let (e2e_ms, effects_rate) = end_to_end(&system.db, &e2e).await;
    let doubled = doubled_effects(&system.db).await;
    let (e2e_gateway_rss, workers_rss) = system.stop().await;

    // 3. Report.
    let errors =
        closed.errors() + open.iter().map(|(_, r)| r.errors()).sum::<usize>() + e2e.errors();
    let ratio = capacity / floor_a.1;
    let e2e_p50 = percentile(&e2e_ms, 0.5);
    let e2e_p99 = percentile(&e2e_ms, 0.99);
    writeln!(
        report,
        "| measurement | value | floor (same run) | ratio | target | met? |"
    )
    .unwrap();
    writeln!(report, "|---|---|---|---|---|---|").unwrap();
    writeln!(
        report,
        "| checkout, closed loop at {best_c} in flight | {capacity:.0} purchases/s | (a) {:.0}/s at {} connections | {ratio:.2} | ≥ 0.6 × (a) | {} |",
        floor_a.1,
        floor_a.0,
        met(ratio >= 0.6)
    )
    .unwrap();
    writeln!(
        report,
        "| end to end at 50 % load | {effects_rate:.0} effects/s, p50 {e2e_p50:.1} ms, p99 {e2e_p99:.1} ms | (b) not measured yet | | p50 < 20 ms, p99 < 100 ms | {} |",
        met(e2e_p50 < 20.0 && e2e_p99 < 100.0)
    )
    .unwrap();
    writeln!(
        report,
        "| broker floor (c): quorum queue, 1 KiB, confirms and acks | {floor_c:.0} messages/s | | | | |"
    )
    .unwrap();
    writeln!(
        report,
        "| peak memory (RSS) | gateway {gateway_rss:.1} MiB (checkout), {e2e_gateway_rss:.1} MiB (end to end); workers {workers_rss:.1} MiB | | | | |\n"
    )
    .unwrap();
    writeln!(report, "| checkout run | purchases/s | p50 / p95 / p99 |").unwrap();
    writeln!(report, "|---|---|---|").unwrap();
    writeln!(
        report,
        "| closed loop, {best_c} in flight | {capacity:.0} | {} |",
        lat(&closed)
    )
    .unwrap();
    for (share, run) in &open {
        writeln!(
            report,
            "| open loop at {:.0} % ({:.0}/s offered) | {:.0} | {} |",
            share * 100.0,
            capacity * share,
            run.rate(),
            lat(run)
        )
        .unwrap();
    }
    writeln!(
        report,
        "| end to end, POST answered (workers running) | {:.0} | {} |\n",
        e2e.rate(),
        lat(&e2e)
    )
    .unwrap();
    let knee_text = |k: &[(usize, f64)]| {
        k.iter()
            .map(|(c, r)| format!("{c}: {r:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        report,
        "Knees: floor (a) by connections {}; checkout by requests in flight {}.\n",
        knee_text(&knee_a),
        knee_text(&knee)
    )
    .unwrap();
    writeln!(
        report,
        "Where the CPU goes (share of one core; CPU time per purchase), checkout's closed loop and the floor (a) at its best:\n"
    )
    .unwrap();
    writeln!(
        report,
        "| component | checkout | per purchase | floor (a) | per purchase |"
    )
    .unwrap();
    writeln!(report, "|---|---|---|---|---|").unwrap();
    let mut names: Vec<&str> = checkout_cpu.iter().map(|r| r.0).collect();
    names.extend(
        floor_cpu
            .iter()
            .map(|r| r.0)
            .filter(|n| !checkout_cpu.iter().any(|r| r.0 == *n)),
    );
    let cell = |rows: &[(&str, f64, f64)], name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|r| (format!("{:.0} %", r.1 * 100.0), format!("{:.0} µs", r.2)))
            .unwrap_or_else(|| ("–".to_owned(), "–".to_owned()))
    };
    for name in names {
        let (c_share, c_unit) = cell(&checkout_cpu, name);
        let (f_share, f_unit) = cell(&floor_cpu, name);
        writeln!(
            report,
            "| {name} | {c_share} | {c_unit} | {f_share} | {f_unit} |"
        )
        .unwrap();
    }
    writeln!(report).unwrap();
    writeln!(
        report,
        "Where the CPU goes end to end, from the window's start to the last effect (share of one core; CPU time per effect):\n"
    )
    .unwrap();
    writeln!(report, "| component | share | per effect |").unwrap();
    writeln!(report, "|---|---|---|").unwrap();
    for (name, share, unit) in &e2e_cpu {
        writeln!(report, "| {name} | {:.0} % | {unit:.0} µs |", share * 100.0).unwrap();
    }
    writeln!(report).unwrap();
    writeln!(
        report,
        "At the end of the end-to-end window, {outbox_after} events were still waiting in the outbox for the relay.\n"
    )
    .unwrap();
    writeln!(
        report,
        "Broker queues during the end-to-end window (messages waiting, the four work queues): {depth_before} at the start, {depth_after} at the end; the last effect was applied {:.1} s after the window.\n",
        drain.as_secs_f64()
    )
    .unwrap();
    writeln!(
        report,
        "Guards: {errors} failed purchases, {} orders without all four effects, {doubled} doubled effects.\n",
        ids.len() - e2e_ms.len()
    )
    .unwrap();

    let mut curves: Vec<(String, Vec<f64>)> = vec![(
        format!("closed loop, {best_c} in flight"),
        closed.latencies(),
    )];
    for (share, run) in &open {
        curves.push((
            format!("open loop, {:.0} %", share * 100.0),
            run.latencies(),
        ));
    }
    curves.push((
        "end to end: POST → 4th effect, 50 %".to_owned(),
        e2e_ms.clone(),
    ));
    let mut flows: Vec<(String, Vec<f64>)> = vec![(
        format!("closed loop, {best_c} in flight"),
        closed.per_second(),
    )];
    for (share, run) in &open {
        flows.push((
            format!("open loop, {:.0} %", share * 100.0),
            run.per_second(),
        ));
    }
    flows.push(("end to end, 50 %".to_owned(), e2e.per_second()));
    for (file, result) in [
        (
            "latency.svg",
            plot::latency(
                &out_dir.join("latency.svg"),
                "Purchase latency by percentile",
                &curves,
            ),
        ),
        (
            "throughput.svg",
            plot::throughput(
                &out_dir.join("throughput.svg"),
                "Purchases answered per second",
                &flows,
            ),
        ),
    ] {
        match result {
            Ok(()) => writeln!(report, "Plot: `target/bench/{file}`").unwrap(),
            Err(e) => writeln!(report, "Plot {file} failed: {e}").unwrap(),
        }
    }
    std::fs::write(out_dir.join("report.md"), &report).expect("report");
    println!("{report}");
    let lost = ids.len() - e2e_ms.len();
    if errors > 0 || lost > 0 || doubled > 0 {
        eprintln!(
            "FAILED: {errors} failed purchases, {lost} orders missing effects, {doubled} doubled effects"
        );
        std::process::exit(1);
    }
}

/// Waits until every order has its four effects (consumed `order.paid` events); how long it
/// took.
async fn wait_for_effects(db: &TestDb, limit: Duration) -> Duration {
    let started = Instant::now();
    memberline_tests::eventually("every effect applied", limit, || async {
        let row = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT (SELECT count(*) FROM orders) * 4 \
                      - (SELECT count(*) FROM consumed_events WHERE event_type = 'order.paid') \
                        AS missing",
            ))
            .await
            .ok()??;
        (row.try_get::<i64>("", "missing").ok()? == 0).then_some(())
    })
    .await;
    started.elapsed()
}

/// Per order of `run`, milliseconds from its POST to the last of its four effects (sorted),
/// and effects per second over the whole window.
async fn end_to_end(db: &TestDb, run: &Run) -> (Vec<f64>, f64) {
    let rows = db
        .conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT x.aggregate_id::bigint AS order_id, \
                    (EXTRACT(EPOCH FROM max(c.consumed_at)) * 1000)::float8 AS done_ms, \
                    count(*) AS n \
             FROM outbox x JOIN consumed_events c ON c.event_id = x.id \
             WHERE x.event_type = 'order.paid' GROUP BY x.aggregate_id",
        ))
        .await
        .unwrap();
    let done: std::collections::HashMap<i64, (f64, i64)> = rows
        .into_iter()
        .map(|r| {
            let id: i64 = r.try_get("", "order_id").unwrap();
            let ms: f64 = r.try_get("", "done_ms").unwrap_or(f64::NAN);
            (id, (ms, r.try_get("", "n").unwrap()))
        })
        .collect();
    let mut first = f64::MAX;
    let mut last = 0.0f64;
    let mut latencies: Vec<f64> = run
        .samples
        .iter()
        .filter_map(|s| {
            let (done_ms, n) = done.get(&s.order_id?)?;
            (*n == 4).then(|| {
                first = first.min(s.sent_unix_ms);
                last = last.max(*done_ms);
                done_ms - s.sent_unix_ms
            })
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let effects_rate = latencies.len() as f64 * 4.0 / ((last - first) / 1000.0).max(0.001);
    (latencies, effects_rate)
}

/// Effects applied twice: a reward, a saving or a membership period written twice for one order.
async fn doubled_effects(db: &TestDb) -> i64 {
    let row = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (SELECT count(*) FROM (SELECT order_id FROM point_ledger \
                       WHERE reason = 'purchase_reward' GROUP BY order_id HAVING count(*) > 1) a) \
                  + (SELECT count(*) FROM (SELECT order_id FROM membership_periods \
                       WHERE order_id IS NOT NULL GROUP BY order_id HAVING count(*) > 1) b) AS n",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// Outbox rows not published yet.
async fn unpublished(db: &TestDb) -> i64 {
    let row = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// Messages ready in the four work queues (not those delivered and not yet acknowledged).
async fn queue_depths(topology: &memberline_schema::topology::Topology) -> u64 {
    let ch = broker_channel().await;
    let mut total = 0;
    for worker in memberline_schema::topology::Worker::ALL {
        if let Ok(q) = ch
            .queue_declare(
                topology.work_queue(worker).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
        {
            total += q.message_count() as u64;
        }
    }
    total
}
