//! `make bench`: Memberline against this machine's own limits, measured side by side in one run.
//!
//! 1. Floors, straight through the drivers: (a) the purchase floor, the rows one purchase
//!    commits written with the fewest statements from the best number of connections; (b) the
//!    pipeline floor, every row one paid order causes end to end written the same way; (c) the
//!    broker floor, a quorum queue published with confirms and consumed with acks.
//! 2. Scenarios, against the release binaries (`memberline serve` with its embedded relay,
//!    `memberline-workers`, `provider-emulator`): checkout in a closed loop at the best
//!    concurrency, then in open loops at 25 %, 50 % and 90 % of that capacity, with a profile
//!    of the gateway; end to end with every worker running, offered half the checkout capacity
//!    (more than the pipeline carries: its sustained rate) and then half the pipeline's own
//!    capacity (its latency); verified WeChat notifications; 10,000 merchant consoles; checkout
//!    with 1,000,000 orders already written.
//! 3. A Markdown report (`target/bench/report.md`, also printed) of every value against its
//!    floor and target, and SVG plots under `target/bench/`.
//!
//! Nothing here asserts a speed: the run fails only when a request errs or an effect or a push
//! is lost or doubled.

mod backoffice;
mod cluster;
mod cpu;
mod e2e;
mod fanout;
mod floors;
mod growth;
mod load;
mod notify;
mod pipeline;
mod plot;
mod profile;
mod report;
mod system;

use load::Run;
use memberline_tests::{TestDb, amqp_url};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use system::System;

/// Seconds each measured window lasts.
const WINDOW: f64 = 8.0;
/// Concurrencies tried to find the knee.
const KNEE: [usize; 4] = [4, 8, 16, 32];
/// Merchant consoles in the fan-out scenario.
const CONSOLES: usize = 10_000;

/// One end-to-end run: the load, per order the time to its fourth effect, and what was left.
pub struct EndToEnd {
    pub label: String,
    pub offered: f64,
    pub run: Run,
    /// Per order, ms from its POST to its fourth effect, sorted.
    pub done_ms: Vec<f64>,
    /// Effects per second from the first POST to the last effect.
    pub effects_rate: f64,
    /// Ready messages in the work queues at the window's start and end.
    pub depth: (u64, u64),
    /// Events still in the outbox at the window's end.
    pub outbox: i64,
    /// Seconds from the window's end to the last effect.
    pub drain: f64,
    /// CPU by component from the window's start to the last effect, per effect.
    pub cpu: Vec<(&'static str, f64, f64)>,
}

/// Offers `rate` purchases/s for a window to a system with workers, then waits for every
/// effect.
async fn end_to_end(system: &System, label: &str, rate: f64) -> EndToEnd {
    let depth_before = e2e::queue_depths(&system.topology).await;
    let cpu_before = cpu::snapshot();
    let started = Instant::now();
    let run = system
        .shop(label)
        .open_loop(&format!("{label} ({rate:.0}/s)"), rate, WINDOW)
        .await;
    let depth_after = e2e::queue_depths(&system.topology).await;
    let outbox = e2e::unpublished(&system.db).await;
    let drain = e2e::wait_for_effects(&system.db, Duration::from_secs(300)).await;
    eprintln!(
        "  every effect applied {:.1} s after the window",
        drain.as_secs_f64()
    );
    let cpu = cpu::between(
        &cpu_before,
        &cpu::snapshot(),
        started.elapsed().as_secs_f64(),
        run.ok() * 4,
    );
    let (done_ms, effects_rate) = e2e::end_to_end(&system.db, &run).await;
    e2e::wait_until_settled(&system.db, Duration::from_secs(300)).await;
    EndToEnd {
        label: label.to_owned(),
        offered: rate,
        run,
        done_ms,
        effects_rate,
        depth: (depth_before, depth_after),
        outbox,
        drain: drain.as_secs_f64(),
        cpu,
    }
}

#[tokio::main]
async fn main() {
    let out_dir =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()))
            .join("bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    let bench_started = Instant::now();
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("profile") => return profile_only(&out_dir).await,
        Ok("notify") => return notify_only().await,
        Ok("fanout") => return fanout_only().await,
        Ok("e2e") => return e2e_only().await,
        Ok("checkout") => return checkout_only().await,
        Ok("backoffice") => return backoffice_only().await,
        Ok("overload") => return overload_only().await,
        Ok("cluster") => return cluster_only().await,
        Ok(other) => {
            eprintln!(
                "BENCH_ONLY={other}: expected profile, notify, fanout, e2e, checkout, backoffice, overload or cluster"
            );
            std::process::exit(2);
        }
        Err(_) => {}
    }

    // 1. Floors.
    eprintln!("Floors");
    let floor_db = TestDb::create().await;
    floors::seed_buyers(&floor_db.conn).await;
    let mut r = report::Results::default();
    for conns in KNEE {
        let (rate, used) = floors::purchase_floor(&floor_db.url, conns, WINDOW / 2.0).await;
        eprintln!("  (a) purchase floor, {conns} connections: {rate:.0}/s");
        r.knee_a.push((conns, rate));
        if rate > r.floor_a.1 {
            r.floor_a = (conns, rate);
            r.floor_cpu = used;
        }
    }
    for conns in [4, 8, 16] {
        let rate = pipeline::pipeline_floor(&floor_db.url, conns, WINDOW / 2.0).await;
        eprintln!("  (b) pipeline floor, {conns} connections: {rate:.0} orders/s");
        r.knee_b.push((conns, rate));
        if rate > r.floor_b.1 {
            r.floor_b = (conns, rate);
        }
    }
    drop(floor_db);
    r.floor_c = floors::broker_floor(&amqp_url(), 20_000, 1024).await;
    eprintln!("  (c) broker floor: {:.0} messages/s", r.floor_c);

    // 2. Checkout: the knee, then open loops below it (no workers: the gateway alone).
    eprintln!("Checkout");
    let shop_system = System::start(false).await;
    let mut best: Option<(usize, f64)> = None;
    for c in KNEE {
        let run = shop_system
            .shop(&format!("knee{c}"))
            .closed_loop(&format!("closed loop, {c} in flight"), c, WINDOW / 2.0)
            .await;
        r.knee.push((c, run.rate()));
        if best.is_none_or(|(_, b)| run.rate() > b) {
            best = Some((c, run.rate()));
        }
    }
    r.best_c = best.unwrap().0;
    let before = cpu::snapshot();
    let closed = shop_system
        .shop("closed")
        .closed_loop(
            &format!("closed loop, {} in flight", r.best_c),
            r.best_c,
            WINDOW,
        )
        .await;
    r.checkout_cpu = cpu::between(
        &before,
        &cpu::snapshot(),
        closed.elapsed.as_secs_f64(),
        closed.ok(),
    );
    let capacity = closed.rate();
    r.closed = Some(closed);
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
        r.open.push((share, run));
    }
    // The gateway's profile, over one more closed loop.
    let recording = profile::record(shop_system.gateway_pid(), WINDOW / 2.0, &out_dir);
    let profiled = shop_system
        .shop("profiled")
        .closed_loop("closed loop, profiled", r.best_c, WINDOW / 2.0)
        .await;
    r.profile = Some(match recording {
        Some(rec) => rec
            .finish("The gateway during checkout's closed loop")
            .map(|p| (p, profiled.ok())),
        None => Err("perf is not installed".to_owned()),
    });
    r.errors += profiled.errors();
    let (run, keys, orders) = overloaded(&shop_system, capacity * 2.0).await;
    r.gateway_rss = shop_system.stop().await.0;
    r.overload = Some(report::Overload {
        offered: capacity * 2.0,
        keys,
        orders,
        rss_peak: r.gateway_rss,
        run,
    });

    // End to end on a fresh system: first offered half the checkout capacity (more than the
    // pipeline carries, so what it sustains is its capacity), then half of that capacity.
    eprintln!("End to end");
    let system = System::start(true).await;
    let over = end_to_end(&system, "end to end, 50 % of checkout", capacity * 0.5).await;
    let pipeline_capacity = over.effects_rate / 4.0;
    // That run leaves the dead rows of tens of thousands of orders behind (the 64 buyers' rows
    // alone were updated several times per order, the outbox marked published): vacuumed now,
    // as autovacuum would over the next minutes, so that the half-load run measures the
    // pipeline and not that clean-up.
    e2e::vacuum(&system.db).await;
    let half = end_to_end(
        &system,
        "end to end, 50 % of the pipeline",
        (pipeline_capacity * 0.5).min(capacity * 0.5),
    )
    .await;
    // Buyers whose totals drifted from their rows: an effect applied twice.
    r.doubled = memberline_tests::invariants::drift(&system.db.conn)
        .await
        .total();
    (r.e2e_gateway_rss, r.workers_rss) = system.stop().await;
    r.e2e = vec![over, half];

    eprintln!("Verified notifications");
    r.notify = Some(notify::run().await);
    eprintln!("Fan-out");
    r.fanout = Some(fanout::run(CONSOLES.min(fanout::descriptors().saturating_sub(500))).await);
    eprintln!("Growth");
    r.growth = Some(growth::run(r.best_c, WINDOW).await);
    eprintln!("Cluster");
    // End to end offered what the half-load run was: well inside both.
    let offered = r.e2e.get(1).map_or(200.0, |e| e.offered);
    r.cluster = Some(cluster::run(r.best_c, offered, WINDOW / 2.0).await);

    // 3. Report.
    r.seconds = bench_started.elapsed().as_secs_f64();
    let failures = report::write(&r, &out_dir);
    if !failures.is_empty() {
        eprintln!("FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
}

/// Overload: `offered` purchases a second (twice what checkout serves), in an open loop. The
/// gateway must refuse what it cannot take at once (503 `overloaded`), keep the accepted
/// purchases fast and its memory bounded, and write nothing for a refusal. The run, and the
/// idempotency keys and orders it left.
async fn overloaded(system: &System, offered: f64) -> (load::Run, i64, i64) {
    let run = system
        .shop("overload")
        .open_loop(
            &format!("open loop, 200 % ({offered:.0}/s)"),
            offered,
            WINDOW,
        )
        .await;
    let count = |sql: &'static str| {
        let db = &system.db.conn;
        async move {
            use sea_orm::ConnectionTrait;
            db.query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql,
            ))
            .await
            .expect("count")
            .expect("a row")
            .try_get_by_index::<i64>(0)
            .expect("a count")
        }
    };
    let keys = count("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'overload-%'").await;
    let orders = count(
        "SELECT count(DISTINCT o.id) FROM orders o JOIN idempotency_keys k ON k.order_id = o.id \
         WHERE k.key LIKE 'overload-%'",
    )
    .await;
    (run, keys, orders)
}

/// `BENCH_ONLY=cluster`: only the cluster row (`BENCH_E2E_RATE` purchases/s offered end to
/// end, 200 unless set).
async fn cluster_only() {
    let rate: f64 = std::env::var("BENCH_E2E_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200.0);
    let c = cluster::run(8, rate, WINDOW / 2.0).await;
    println!("{}", c.summary());
}

/// `BENCH_ONLY=overload`: checkout's closed loop at 32 in flight for its capacity, then twice
/// that offered.
async fn overload_only() {
    let system = System::start(false).await;
    system.shop("warm").closed_loop("warm-up", 32, 2.0).await;
    let capacity = system
        .shop("closed")
        .closed_loop("closed loop, 32 in flight", 32, WINDOW)
        .await
        .rate();
    let (run, keys, orders) = overloaded(&system, capacity * 2.0).await;
    let rss_peak = system.stop().await.0;
    let o = report::Overload {
        offered: capacity * 2.0,
        keys,
        orders,
        rss_peak,
        run,
    };
    println!("capacity {capacity:.0}/s; {}", o.summary());
    if !o.met() {
        eprintln!("FAILED: a target of the overload row missed");
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=backoffice`: the 1,000,000 orders of the growth run, then only the back office.
async fn backoffice_only() {
    let system = System::start(false).await;
    let seed_secs = growth::write_history(&system).await;
    eprintln!("1,000,000 orders written in {seed_secs:.0} s");
    let b = backoffice::run(&system).await;
    system.stop().await;
    println!("| measurement | value | target | met? |\n|---|---|---|---|");
    for (name, value, target, ok) in report::backoffice_rows(&b) {
        println!("| {name} | {value} | {target} | {} |", report::met(ok));
    }
    let failures = report::backoffice_failures(&b);
    if !failures.is_empty() {
        eprintln!("FAILED: {}", failures.join("; "));
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=notify`: only the verified notifications, for comparing two builds.
async fn notify_only() {
    let n = notify::run().await;
    println!("{:.0} notifications applied/s", n.rate);
    println!("| component | share of a core | µs per notification |\n|---|---|---|");
    for (name, share, us) in &n.cpu {
        println!("| {name} | {:.0} % | {us:.0} |", share * 100.0);
    }
    if n.unpaid + n.doubled > 0 || n.refused > 0 {
        eprintln!(
            "FAILED: {} unpaid, {} paid twice, {} refused",
            n.unpaid, n.doubled, n.refused
        );
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=checkout`: floor (a) at 4 connections, then checkout's closed loop at 8 in flight
/// (`BENCH_IN_FLIGHT`), with the CPU by component, for comparing two builds (or settings, with
/// `BENCH_ENV`).
async fn checkout_only() {
    let floor_db = TestDb::create().await;
    floors::seed_buyers(&floor_db.conn).await;
    let (floor, floor_used) = floors::purchase_floor(&floor_db.url, 4, WINDOW / 2.0).await;
    drop(floor_db);
    let system = System::start(false).await;
    system.shop("warm").closed_loop("warm-up", 8, 2.0).await;
    let before = cpu::snapshot();
    // BENCH_IN_FLIGHT: requests in flight (8 unless set).
    let in_flight: usize = std::env::var("BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let run = system
        .shop("closed")
        .closed_loop(
            &format!("closed loop, {in_flight} in flight"),
            in_flight,
            WINDOW,
        )
        .await;
    let used = cpu::between(
        &before,
        &cpu::snapshot(),
        run.elapsed.as_secs_f64(),
        run.ok(),
    );
    system.stop().await;
    println!(
        "{:.0} purchases/s against floor (a) {floor:.0}/s: {:.2}",
        run.rate(),
        run.rate() / floor
    );
    println!("| component | share of a core | µs per purchase | floor (a): share | µs |");
    println!("|---|---|---|---|---|");
    for (name, share, us) in &used {
        let floor = floor_used.iter().find(|(n, _, _)| n == name);
        let (fs, fus) = floor.map_or((0.0, 0.0), |(_, s, u)| (*s, *u));
        println!(
            "| {name} | {:.0} % | {us:.0} | {:.0} % | {fus:.0} |",
            share * 100.0,
            fs * 100.0
        );
    }
    if run.errors() > 0 {
        eprintln!("FAILED: {} failed purchases", run.errors());
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=e2e`: floor (b) at 8 connections, then end to end offered 500 purchases/s
/// (more than the pipeline carries here; `BENCH_E2E_RATE` sets it), for comparing two builds of
/// the workers.
async fn e2e_only() {
    let floor_db = TestDb::create().await;
    floors::seed_buyers(&floor_db.conn).await;
    let floor = pipeline::pipeline_floor(&floor_db.url, 8, WINDOW / 2.0).await * 4.0;
    drop(floor_db);
    let system = System::start(true).await;
    // BENCH_E2E_RATE: purchases offered per second (500 unless set).
    let rate: f64 = std::env::var("BENCH_E2E_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500.0);
    let run = end_to_end(&system, &format!("end to end, {rate:.0}/s"), rate).await;
    let doubled = memberline_tests::invariants::drift(&system.db.conn)
        .await
        .total();
    system.stop().await;
    println!(
        "{:.0} effects/s against floor (b) {floor:.0}/s: {:.2}",
        run.effects_rate,
        run.effects_rate / floor
    );
    let at = |q: f64| {
        run.done_ms
            .get(((run.done_ms.len() as f64 * q) as usize).min(run.done_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "POST -> 4th effect: p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
        at(0.5),
        at(0.95),
        at(0.99)
    );
    println!("| component | share of a core | µs per effect |\n|---|---|---|");
    for (name, share, us) in &run.cpu {
        println!("| {name} | {:.0} % | {us:.0} |", share * 100.0);
    }
    if run.run.errors() > 0 || doubled > 0 {
        eprintln!(
            "FAILED: {} failed purchases, {doubled} doubled effects",
            run.run.errors()
        );
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=fanout`: only the merchant consoles, for comparing two builds.
async fn fanout_only() {
    let f = fanout::run(CONSOLES.min(fanout::descriptors().saturating_sub(500))).await;
    println!(
        "{} consoles, {} of {} receipts, {} duplicates; RSS {:.0} MiB idle, {:.0} MiB with the consoles; \
         commit → receipt p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        f.sockets,
        f.received,
        f.expected,
        f.duplicates,
        f.rss_idle,
        f.rss_open,
        f.p(0.5),
        f.p(0.95),
        f.p(0.99)
    );
    if f.refused > 0 || f.received < f.expected || f.duplicates > 0 {
        eprintln!(
            "FAILED: {} refused, {} receipts missing, {} duplicates",
            f.refused,
            f.expected - f.received,
            f.duplicates
        );
        std::process::exit(1);
    }
}

/// `BENCH_ONLY=profile`: only the gateway's profile under checkout's closed loop at 8 in
/// flight (after a 2 s warm-up), with its flamegraph; for comparing two builds of the gateway.
async fn profile_only(out_dir: &std::path::Path) {
    let system = System::start(false).await;
    system.shop("warm").closed_loop("warm-up", 8, 2.0).await;
    let recording = profile::record(system.gateway_pid(), WINDOW, out_dir);
    let run = system
        .shop("profiled")
        .closed_loop("closed loop, 8 in flight, profiled", 8, WINDOW)
        .await;
    system.stop().await;
    let Some(recording) = recording else {
        eprintln!("perf is not installed");
        std::process::exit(1);
    };
    match recording.finish("The gateway during checkout's closed loop") {
        Ok(p) => {
            println!(
                "{:.0} purchases/s, {:.0} ms of the gateway's CPU sampled ({:.0} µs per purchase)\n",
                run.rate(),
                p.sampled_ms,
                p.sampled_ms * 1000.0 / run.ok().max(1) as f64
            );
            println!("| part | share |\n|---|---|");
            for (part, share) in &p.parts {
                println!("| {part} | {:.0} % |", share * 100.0);
            }
            println!("\n| frame | own share |\n|---|---|");
            for (frame, share) in &p.leaves {
                println!("| `{frame}` | {:.1} % |", share * 100.0);
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
