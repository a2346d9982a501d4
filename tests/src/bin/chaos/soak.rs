//! `make soak`: the scaled-out system under mixed load for `SOAK_MINUTES` (30), with a fault at
//! random every 45 to 90 s (a workers replica or the second gateway killed and restarted, every
//! broker connection closed, a RabbitMQ node stopped for 10 s), and retention on a short
//! schedule. Every 10 s it samples each process's RSS, the jobs waiting for a database
//! connection in the first gateway's lanes, and the sizes of the tables retention keeps: the
//! report gives the RSS drift between the 5th and the last minute (goal: under 10 %) of the
//! processes no fault restarts, and whether the outbox, consumed events and tickets stayed flat.

use crate::fleet::Fleet;
use crate::shoppers::Shoppers;
use crate::{cluster, sql_i64};
use rand::Rng;
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retention on a schedule a soak can see: every 30 s, published and consumed rows and expired
/// tickets as soon as they are past (idempotency keys keep their day: a client's retry may come
/// a minute later).
pub const RETENTION: [(&str, &str); 5] = [
    ("MEMBERLINE__RETENTION__INTERVAL_SECS", "30"),
    ("MEMBERLINE__RETENTION__OUTBOX_PUBLISHED_DAYS", "0"),
    ("MEMBERLINE__RETENTION__CONSUMED_EVENTS_DAYS", "0"),
    ("MEMBERLINE__RETENTION__STREAM_TICKET_HOURS", "0"),
    ("MEMBERLINE__RETENTION__CHANNEL_DELIVERIES_DAYS", "0"),
];

/// Processes no fault restarts: their RSS is measured for drift.
const STEADY: [&str; 3] = ["gateway1", "relay", "workers1"];
const TABLES: [&str; 3] = ["outbox", "consumed_events", "stream_tickets"];

struct Sample {
    minute: f64,
    rss: BTreeMap<&'static str, f64>,
    lanes_waiting: f64,
    tables: [i64; 3],
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn lanes_waiting(http: &reqwest::Client) -> f64 {
    let Ok(res) = http.get("http://127.0.0.1:8081/metrics").send().await else {
        return f64::NAN;
    };
    let text = res.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("memberline_lane_waiting"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn fault(fleet: &mut Fleet) -> &'static str {
    match rand::rng().random_range(0..4) {
        0 => {
            fleet.kill9("workers2");
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet.start("workers2", &[]);
            "kill -9 workers2"
        }
        1 => {
            fleet.kill9("gateway2");
            tokio::time::sleep(Duration::from_secs(1)).await;
            fleet.start("gateway2", &[]);
            "kill -9 gateway2"
        }
        2 => {
            fleet.close_broker_connections();
            "broker connections closed"
        }
        _ => {
            cluster(&["stop-node", "3"]);
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster(&["start-node", "3"]);
            "rabbit3 stopped for 10 s"
        }
    }
}

pub async fn run(
    minutes: f64,
    mut fleet: Fleet,
    db: DatabaseConnection,
    shoppers: Arc<Shoppers>,
) -> (String, bool) {
    let http = reqwest::Client::new();
    let load = tokio::spawn(shoppers.clone().run());
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut next_fault = started + Duration::from_secs(rand::rng().random_range(45..90));
    while Instant::now() < end {
        // Browsers opening order streams: tickets that expire unused.
        for _ in 0..20 {
            shoppers.ticket().await;
        }
        let mut rss = BTreeMap::new();
        for name in crate::fleet::ALL {
            if let Some(pid) = fleet.pid(name) {
                rss.insert(name, rss_mib(pid));
            }
        }
        let mut tables = [0; 3];
        for (n, table) in tables.iter_mut().zip(TABLES) {
            *n = sql_i64(&db, &format!("SELECT count(*) FROM {table}")).await;
        }
        samples.push(Sample {
            minute: started.elapsed().as_secs_f64() / 60.0,
            rss,
            lanes_waiting: lanes_waiting(&http).await,
            tables,
        });
        if Instant::now() >= next_fault {
            *faults.entry(fault(&mut fleet).await).or_default() += 1;
            next_fault = Instant::now() + Duration::from_secs(rand::rng().random_range(45..90));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    shoppers.stop();
    let _ = load.await;
    let settled = crate::settle(&db).await;
    let drift = memberline_tests::invariants::drift(&db).await;
    fleet.stop_all();
    report(minutes, &samples, &faults, settled, drift)
}

fn report(
    minutes: f64,
    samples: &[Sample],
    faults: &BTreeMap<&str, u32>,
    settled: Option<f64>,
    drift: memberline_tests::invariants::Drift,
) -> (String, bool) {
    let mut o = String::new();
    let mut ok = settled.is_some() && drift.total() == 0;
    let _ = writeln!(
        o,
        "# Soak, {}\n\n{minutes} minutes of mixed load; faults: {}. Settled {} after the load; \
         {} buyers' totals drifted from their ledgers.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        faults
            .iter()
            .map(|(f, n)| format!("{n}× {f}"))
            .collect::<Vec<_>>()
            .join(", "),
        settled.map_or("not within 3 min".to_owned(), |s| format!("in {s:.1} s")),
        drift.total()
    );
    // The 5th minute (or the earliest sample after it on a short run) against the last.
    let from = samples
        .iter()
        .find(|s| s.minute >= 5.0_f64.min(minutes / 2.0))
        .or(samples.first());
    let last = samples.last();
    let _ = writeln!(
        o,
        "| process | RSS at minute {:.1} | RSS at the end | drift |\n|---|---|---|---|",
        from.map_or(0.0, |s| s.minute)
    );
    if let (Some(from), Some(last)) = (from, last) {
        for name in STEADY {
            let (a, b) = (from.rss[name], last.rss[name]);
            let drift = (b - a) / a * 100.0;
            ok &= drift < 10.0;
            let _ = writeln!(o, "| {name} | {a:.1} MiB | {b:.1} MiB | {drift:+.1} % |");
        }
    }
    let _ = writeln!(
        o,
        "\n| table | first | largest | at the end | flat |\n|---|---|---|---|---|"
    );
    let half = samples.len() / 2;
    for (i, table) in TABLES.iter().enumerate() {
        let all: Vec<i64> = samples.iter().map(|s| s.tables[i]).collect();
        let early = all[..half.max(1)].iter().copied().max().unwrap_or(0);
        let late = all[half..].iter().copied().max().unwrap_or(0);
        // Flat: the second half never grows past the first half's largest by more than a
        // quarter (what one retention interval of load adds).
        let flat = late as f64 <= early as f64 * 1.25 + 50.0;
        ok &= flat;
        let _ = writeln!(
            o,
            "| {table} | {} | {} | {} | {} |",
            all.first().copied().unwrap_or(0),
            all.iter().max().copied().unwrap_or(0),
            all.last().copied().unwrap_or(0),
            if flat { "yes" } else { "**no**" }
        );
    }
    let waits: Vec<f64> = samples
        .iter()
        .map(|s| s.lanes_waiting)
        .filter(|w| w.is_finite())
        .collect();
    let _ = writeln!(
        o,
        "\nJobs waiting for a connection in gateway1's lanes, sampled every 10 s: mean {:.1}, largest {:.0}.",
        waits.iter().sum::<f64>() / waits.len().max(1) as f64,
        waits.iter().copied().fold(0.0, f64::max)
    );
    (o, ok)
}
