//! `make chaos`: Memberline scaled out on a local cluster (`deploy/cluster.sh`: three RabbitMQ
//! nodes, a PostgreSQL primary with a synchronous replica behind a moving address), two
//! gateways, a standalone relay and two workers replicas, while buyers purchase with balance,
//! points, WeChat Pay and Alipay (through the provider emulator) over both gateways, and faults
//! are injected one after another. Each fault is a phase with buyers of its own, so what it
//! lost or doubled is its own. At the end the invariants are checked and a table is printed
//! (and written to `target/chaos/report.md`; RELIABILITY.md keeps the latest).
//!
//! Built with the `failpoints` feature into `target/chaos` (the relay's
//! `relay_after_confirm` point exists only there); run from the repository's root.

mod consoles;
mod fleet;
mod shoppers;
mod soak;

use fleet::Fleet;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use shoppers::Shoppers;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The faults, in the order they are injected.
const PHASES: [&str; 9] = [
    "steady (no fault)",
    "RabbitMQ node stopped and started, twice",
    "every broker connection closed, 10 times",
    "kill -9 of a gateway mid-batch",
    "kill -9 of a workers replica, 20 times",
    "relay killed between confirm and mark",
    "PostgreSQL failover to the replica",
    "100 copies of one notification",
    "closes after payments, notifications late",
];

/// What one phase saw.
#[derive(Default, Clone)]
pub struct Row {
    pub orders: i64,
    pub answers: std::collections::BTreeMap<u16, u64>,
    pub lost: i64,
    pub doubled: i64,
    pub dead_letters: i64,
    pub recovery_secs: Option<f64>,
    /// Purchases whose client gave up (no 201 after a minute of retries with the same key).
    pub gave_up: usize,
    pub note: String,
}

pub async fn sql_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get_by_index::<i64>(0).ok())
        .unwrap_or(-1)
}

/// Messages in Memberline's dead-letter queues now, summed over every node's view of them.
fn dead_letters() -> i64 {
    let out = fleet::rabbitmqctl(&[
        "-q",
        "list_queues",
        "name",
        "messages",
        "--no-table-headers",
    ]);
    let Ok(out) = out else { return -1 };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("memberline.") && l.contains(".dead"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        .sum()
}

pub fn cluster(args: &[&str]) {
    let status = std::process::Command::new("deploy/cluster.sh")
        .args(args)
        .status()
        .expect("deploy/cluster.sh");
    assert!(status.success(), "deploy/cluster.sh {args:?} failed");
}

/// Seconds from `from` until a balance purchase through the shoppers' own path has all four
/// effects (the system serves end to end again), or `None` after two minutes.
async fn recovery(shoppers: &Shoppers, db: &DatabaseConnection, from: Instant) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let id = loop {
        if Instant::now() > deadline {
            return None;
        }
        if let Some(id) = shoppers.probe().await {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while Instant::now() < deadline {
        if effects_of(db, id).await == 4 {
            return Some(from.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The consumers that applied order `id`'s payment (four when every effect landed; a unique
/// key per consumer and event keeps it from counting one twice).
async fn effects_of(db: &DatabaseConnection, id: i64) -> i64 {
    sql_i64(
        db,
        &format!(
            "SELECT count(*) FROM consumed_events c JOIN outbox o ON o.id = c.event_id \
             WHERE o.event_type = 'order.paid' AND o.aggregate_id = '{id}'"
        ),
    )
    .await
}

/// The whole run, set-up and settling included, stays within this.
const BOUND: Duration = Duration::from_secs(20 * 60);

/// A fresh cluster with the fleet on it (`extra` settings for every process), its database,
/// and `phases` groups of shoppers.
async fn bring_up(
    extra: &[(&str, &str)],
    phases: usize,
) -> (Fleet, DatabaseConnection, Arc<Shoppers>) {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    eprintln!("chaos: starting the cluster");
    let _ = std::process::Command::new("deploy/cluster.sh")
        .arg("down")
        .status();
    cluster(&["up"]);
    let mut fleet = Fleet::new(bin, extra);
    fleet.prepare_database();
    for name in fleet::ALL {
        fleet.start(name, &[]);
    }
    fleet.wait_ready().await;
    let db = Database::connect(fleet.database_url())
        .await
        .expect("the database");
    let shoppers = Arc::new(Shoppers::new(phases).await);
    (fleet, db, shoppers)
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let soak_minutes: Option<f64> = match std::env::args().nth(1).as_deref() {
        Some("soak") => Some(
            std::env::var("SOAK_MINUTES")
                .ok()
                .and_then(|m| m.parse().ok())
                .unwrap_or(30.0),
        ),
        _ => None,
    };
    let bound = match soak_minutes {
        Some(m) => Duration::from_secs_f64(m * 60.0) + BOUND,
        None => BOUND,
    };
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!(
            "chaos: FAILED: still running after {} minutes",
            bound.as_secs() / 60
        );
        let _ = std::process::Command::new("deploy/cluster.sh")
            .arg("down")
            .status();
        std::process::exit(2);
    });
    std::fs::create_dir_all("target/chaos").expect("target/chaos");
    if let Some(minutes) = soak_minutes {
        let (fleet, db, shoppers) = bring_up(&soak::RETENTION, 1).await;
        let (report, ok) = soak::run(minutes, fleet, db, shoppers).await;
        cluster(&["down"]);
        println!("{report}");
        std::fs::write("target/chaos/soak.md", &report).expect("report");
        if !ok {
            eprintln!("soak: FAILED");
            std::process::exit(1);
        }
        return;
    }
    let (mut fleet, db, shoppers) = bring_up(&[], PHASES.len()).await;
    let consoles = consoles::Consoles::open().await;
    let mut rows: Vec<Row> = vec![Row::default(); PHASES.len()];
    let load = tokio::spawn(shoppers.clone().run());

    for (phase, name) in PHASES.iter().enumerate() {
        eprintln!("chaos: phase {phase}: {name}");
        shoppers.enter(phase);
        let dead_before = dead_letters();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let note = inject(phase, &mut fleet, &shoppers, &db).await;
        // From the end of the fault (a node back, the last kill, the promotion done).
        let over = Instant::now();
        rows[phase].note = note;
        rows[phase].recovery_secs = recovery(&shoppers, &db, over).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        rows[phase].dead_letters = dead_letters() - dead_before;
    }
    shoppers.stop();
    let _ = load.await;

    eprintln!("chaos: letting everything settle");
    let settled = settle(&db).await;
    let checks = invariants(&db, &shoppers, &consoles, &mut rows).await;
    consoles.close();
    fleet.stop_all();
    cluster(&["down"]);

    let report = report(&rows, &checks, settled, started.elapsed());
    println!("{report}");
    std::fs::write("target/chaos/report.md", &report).expect("report");
    if checks.iter().any(|(_, ok, _)| !ok) {
        eprintln!("chaos: FAILED");
        std::process::exit(1);
    }
}

/// Injects phase `phase`'s fault; returns a note on what happened.
async fn inject(
    phase: usize,
    fleet: &mut Fleet,
    shoppers: &Shoppers,
    db: &DatabaseConnection,
) -> String {
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    match phase {
        0 => {
            pause(10_000).await;
            "load only".into()
        }
        1 => {
            for node in ["2", "3"] {
                cluster(&["stop-node", node]);
                pause(8_000).await;
                cluster(&["start-node", node]);
                pause(5_000).await;
            }
            "rabbit2, then rabbit3: 8 s down each".into()
        }
        2 => {
            let mut closed = 0;
            for _ in 0..10 {
                closed += fleet.close_broker_connections();
                pause(2_000).await;
            }
            format!("{closed} connections closed")
        }
        3 => {
            let in_flight = shoppers.wait_in_flight(0).await;
            fleet.kill9("gateway1");
            pause(2_000).await;
            fleet.start("gateway1", &[]);
            fleet.wait_ready().await;
            format!("requests in flight to it when killed: {in_flight}")
        }
        4 => {
            for i in 0..20 {
                let name = if i % 2 == 0 { "workers1" } else { "workers2" };
                fleet.kill9(name);
                pause(300).await;
                fleet.start(name, &[]);
                pause(1_200).await;
            }
            "20 kills, each restarted 0.3 s later".into()
        }
        5 => {
            fleet.kill9("relay");
            fleet.start(
                "relay",
                &[("MEMBERLINE_FAILPOINT", "relay_after_confirm:3")],
            );
            let aborted = fleet.wait_exit("relay", Duration::from_secs(60)).await;
            fleet.start("relay", &[]);
            match aborted {
                true => "the relay aborted at its 3rd confirmed batch, restarted".into(),
                false => "the failpoint was not reached within 60 s".into(),
            }
        }
        6 => {
            cluster(&["failover"]);
            "primary stopped (immediate), replica promoted".into()
        }
        7 => {
            let copies = shoppers.one_notification_many_times(100).await;
            format!("{copies} deliveries of one WeChat notification")
        }
        8 => shoppers.closes_after_payments(db).await,
        _ => unreachable!(),
    }
}

/// Waits (at most three minutes) until the outbox is empty and no worker queue holds a
/// message; returns the seconds it took, or `None`.
pub async fn settle(db: &DatabaseConnection) -> Option<f64> {
    let from = Instant::now();
    while from.elapsed() < Duration::from_secs(180) {
        let unpublished =
            sql_i64(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
        let unapplied = sql_i64(
            db,
            "SELECT count(*) FROM outbox o WHERE o.event_type = 'order.paid' \
             AND (SELECT count(*) FROM consumed_events c WHERE c.event_id = o.id) < 4",
        )
        .await;
        if unpublished == 0 && unapplied == 0 {
            return Some(from.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

type Check = (&'static str, bool, String);

async fn invariants(
    db: &DatabaseConnection,
    shoppers: &Shoppers,
    consoles: &consoles::Consoles,
    rows: &mut [Row],
) -> Vec<Check> {
    let mut checks = Vec::new();
    // Per phase: orders, answers, effects lost, buyers whose totals drifted.
    for (phase, row) in rows.iter_mut().enumerate() {
        let (orders, answers, gave_up) = shoppers.tally(phase);
        row.orders = orders.len() as i64;
        row.answers = answers;
        row.gave_up = gave_up;
        let ids = orders.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        if !ids.is_empty() {
            row.lost = sql_i64(
                db,
                &format!(
                    "SELECT count(*) FROM orders r WHERE r.id IN ({ids}) \
                     AND r.status IN ('paid', 'refund_pending', 'refunded') \
                     AND (SELECT count(*) FROM consumed_events c JOIN outbox o \
                          ON o.id = c.event_id WHERE o.event_type = 'order.paid' \
                          AND o.aggregate_id = r.id::text) <> 4",
                    ids = ids.join(",")
                ),
            )
            .await;
        }
        row.doubled = memberline_tests::invariants::drift_of(db, &shoppers.buyers_of(phase))
            .await
            .total();
    }
    let acked = shoppers.acknowledged();
    let found = match acked.is_empty() {
        true => 0,
        false => {
            sql_i64(
                db,
                &format!(
                    "SELECT count(*) FROM orders WHERE id IN ({})",
                    acked
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .await
        }
    };
    checks.push((
        "every acknowledged purchase is in the database after the failover",
        found == acked.len() as i64,
        format!("{found} of {}", acked.len()),
    ));
    let drift = memberline_tests::invariants::drift(db).await;
    checks.push((
        "every balance and point total equals the sum of its ledger",
        drift.ledgers == 0,
        format!("{} buyers off", drift.ledgers),
    ));
    let paid = sql_i64(
        db,
        "SELECT count(*) FROM outbox WHERE event_type = 'order.paid'",
    )
    .await;
    let four = sql_i64(
        db,
        "SELECT count(*) FROM outbox o WHERE o.event_type = 'order.paid' \
         AND (SELECT count(*) FROM consumed_events c WHERE c.event_id = o.id) = 4",
    )
    .await;
    let doubled = rows.iter().map(|r| r.doubled).sum::<i64>() + drift.purchases;
    checks.push((
        "every paid order has exactly its four effects",
        paid == four && doubled == 0,
        format!("{four} of {paid} with four; {doubled} buyers with an effect counted twice"),
    ));
    let unpublished = sql_i64(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
    checks.push((
        "no outbox row is left unpublished",
        unpublished == 0,
        format!("{unpublished} unpublished"),
    ));
    let paid_ids = {
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT aggregate_id::bigint AS id FROM outbox WHERE event_type = 'order.paid'",
            ))
            .await
            .unwrap_or_default();
        rows.iter()
            .filter_map(|r| r.try_get::<i64>("", "id").ok())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let heard = consoles.wait_for(&paid_ids, Duration::from_secs(60)).await;
    checks.push((
        "every console received every paid order once",
        heard.iter().all(|h| h.missing == 0 && h.duplicates == 0),
        heard
            .iter()
            .map(|h| format!("{}: {} missing, {} twice", h.name, h.missing, h.duplicates))
            .collect::<Vec<_>>()
            .join("; "),
    ));
    checks
}

fn report(rows: &[Row], checks: &[Check], settled: Option<f64>, took: Duration) -> String {
    let mut o = String::new();
    let version = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let _ = writeln!(
        o,
        "# Chaos run, {}\n\nMachine: {} cores; RabbitMQ {} (3 nodes), {} (primary + synchronous \
         replica); debug builds. Took {:.0} s; everything settled {} after the last fault.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]),
        version("psql", &["--version"]),
        took.as_secs_f64(),
        settled.map_or("not within 3 min".to_owned(), |s| format!("{s:.1} s"))
    );
    let _ = writeln!(
        o,
        "| fault | orders | answers to every attempt | gave up | effects lost | buyers doubled | dead letters | recovery | note |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (name, r) in PHASES.iter().zip(rows) {
        let answers = r
            .answers
            .iter()
            .map(|(s, n)| match s {
                0 => format!("{n}× no answer"),
                s => format!("{n}× {s}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            o,
            "| {name} | {} | {answers} | {} | {} | {} | {} | {} | {} |",
            r.orders,
            r.gave_up,
            r.lost,
            r.doubled,
            r.dead_letters,
            r.recovery_secs
                .map_or("none in 2 min".to_owned(), |s| format!("{s:.1} s")),
            r.note
        );
    }
    let _ = writeln!(o, "\n| invariant | holds | |\n|---|---|---|");
    for (what, ok, detail) in checks {
        let _ = writeln!(
            o,
            "| {what} | {} | {detail} |",
            if *ok { "yes" } else { "**no**" }
        );
    }
    o
}
