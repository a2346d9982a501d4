//! The report: every measurement against its floor and target (`target/bench/report.md`, also
//! printed), the plots, and the guards that fail the run.

use crate::load::{Run, percentile};
use crate::{EndToEnd, WINDOW, backoffice, fanout, growth, notify, plot, profile};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

type Cpu = Vec<(&'static str, f64, f64)>;

/// Checkout offered twice its capacity.
pub struct Overload {
    pub offered: f64,
    pub run: Run,
    /// Idempotency keys and orders the run left: each exactly the purchases accepted.
    pub keys: i64,
    pub orders: i64,
    /// The gateway's peak RSS over checkout, this run included, in MiB.
    pub rss_peak: f64,
}

impl Overload {
    fn p99(&self) -> f64 {
        percentile(&self.run.accepted_latencies(), 0.99)
    }

    /// The row's value.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} accepted/s, p99 {:.1} ms; {} refused with 503 `overloaded`, {} other answers; {} keys and {} orders for {} accepted; gateway RSS peak {:.0} MB",
            self.run.rate(),
            self.p99(),
            self.run.refused(),
            self.run.errors(),
            self.keys,
            self.orders,
            self.run.ok(),
            self.rss_peak * 1.048_576
        )
    }

    /// Whether every target of the overload row holds.
    pub fn met(&self) -> bool {
        let ok = self.run.ok() as i64;
        self.p99() < 200.0
            && self.rss_peak * 1.048_576 < 150.0
            && self.run.errors() == 0
            && self.keys == ok
            && self.orders == ok
    }
}

#[derive(Default)]
pub struct Results {
    pub knee_a: Vec<(usize, f64)>,
    pub floor_a: (usize, f64),
    pub floor_cpu: Cpu,
    pub knee_b: Vec<(usize, f64)>,
    pub floor_b: (usize, f64),
    pub floor_c: f64,
    pub knee: Vec<(usize, f64)>,
    pub best_c: usize,
    pub closed: Option<Run>,
    pub checkout_cpu: Cpu,
    pub open: Vec<(f64, Run)>,
    pub profile: Option<Result<(profile::Profile, usize), String>>,
    pub gateway_rss: f64,
    pub e2e: Vec<EndToEnd>,
    pub doubled: i64,
    pub e2e_gateway_rss: f64,
    pub workers_rss: f64,
    pub notify: Option<notify::Outcome>,
    pub fanout: Option<fanout::Outcome>,
    pub growth: Option<growth::Outcome>,
    pub overload: Option<Overload>,
    pub cluster: Option<crate::cluster::Cluster>,
    pub errors: usize,
    pub seconds: f64,
}

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

pub fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn pcts(sorted: &[f64]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.95),
        percentile(sorted, 0.99)
    )
}

fn knee_text(k: &[(usize, f64)]) -> String {
    k.iter()
        .map(|(c, r)| format!("{c}: {r:.0}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_table(out: &mut String, unit: &str, rows: &Cpu) {
    writeln!(out, "| component | share of one core | per {unit} |").unwrap();
    writeln!(out, "|---|---|---|").unwrap();
    for (name, share, per) in rows {
        writeln!(out, "| {name} | {:.0} % | {per:.0} µs |", share * 100.0).unwrap();
    }
    writeln!(out).unwrap();
}

/// The back office's measurements: `(measurement, value, target, met)`. They have no floor:
/// their targets are absolute.
pub fn backoffice_rows(b: &backoffice::Outcome) -> Vec<(String, String, &'static str, bool)> {
    let stats_p99 = b.stats_p(0.99);
    let search_p99 = b.search_p(0.99);
    let rate = b.csv_rate();
    let growth = b.rss_growth_mb();
    let checks = [
        (
            "dashboard, 90 days over 1,000,000 orders".to_owned(),
            format!(
                "p99 {stats_p99:.1} ms (p50 {:.1} ms; rebuilding the rollups took {:.1} s)",
                b.stats_p(0.5),
                b.rebuild_secs
            ),
            "p99 < 50 ms",
            stats_p99 < 50.0,
        ),
        (
            format!("orders CSV export, {} rows", b.csv_rows),
            format!(
                "{rate:.0} rows/s; gateway RSS {:.0} → {:.0} MiB (+{growth:.1} MB)",
                b.rss_before, b.rss_peak
            ),
            "≥ 100,000 rows/s, < +50 MB",
            rate >= 100_000.0 && growth < 50.0,
        ),
        (
            format!(
                "member search by phone or OpenID, {} members",
                backoffice::MEMBERS
            ),
            format!("p99 {search_p99:.1} ms (p50 {:.1} ms)", b.search_p(0.5)),
            "p99 < 10 ms",
            search_p99 < 10.0,
        ),
    ];
    checks.into()
}

/// The back office's targets missed.
pub fn backoffice_failures(b: &backoffice::Outcome) -> Vec<String> {
    backoffice_rows(b)
        .into_iter()
        .filter(|(.., ok)| !ok)
        .map(|(name, _, target, _)| format!("{name}: {target} missed"))
        .collect()
}

/// Writes the report and the plots; the guards that failed (none: the run passed).
pub fn write(r: &Results, out_dir: &Path) -> Vec<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut o = String::new();
    writeln!(o, "# Memberline benchmark\n").unwrap();
    writeln!(
        o,
        "- date: {}\n- machine: {cores} cores; {}\n- windows of {WINDOW:.0} s; load generator, PostgreSQL, RabbitMQ and Memberline share the machine\n- the whole run took {:.0} s\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        versions(),
        r.seconds
    )
    .unwrap();
    let closed = r.closed.as_ref().expect("checkout ran");
    let capacity = closed.rate();
    let ratio_a = capacity / r.floor_a.1;
    let floor_b_effects = r.floor_b.1 * 4.0;
    let (over, half) = (&r.e2e[0], &r.e2e[1]);
    let ratio_b = over.effects_rate / floor_b_effects;
    let (h50, h99) = (
        percentile(&half.done_ms, 0.5),
        percentile(&half.done_ms, 0.99),
    );
    let n = r.notify.as_ref().expect("notifications ran");
    let f = r.fanout.as_ref().expect("fan-out ran");
    let g = r.growth.as_ref().expect("growth ran");
    let growth_ratio = g.grown.rate() / g.empty.rate();
    let rss_mb = f.rss_open * 1.048_576;

    writeln!(
        o,
        "| measurement | value | floor (same run) | ratio | target | met? |"
    )
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|").unwrap();
    let rows = [
        format!(
            "| checkout, closed loop at {} in flight | {capacity:.0} purchases/s | (a) {:.0}/s at {} connections | {ratio_a:.2} | ≥ 0.6 × (a) | {} |",
            r.best_c,
            r.floor_a.1,
            r.floor_a.0,
            met(ratio_a >= 0.6)
        ),
        format!(
            "| end to end, sustained | {:.0} effects/s ({:.0} orders/s) | (b) {floor_b_effects:.0} effects/s at {} connections | {ratio_b:.2} | ≥ 0.5 × (b) | {} |",
            over.effects_rate,
            over.effects_rate / 4.0,
            r.floor_b.0,
            met(ratio_b >= 0.5)
        ),
        format!(
            "| end to end at 50 % load ({:.0} orders/s), POST → 4th effect | p50 {h50:.1} ms, p99 {h99:.1} ms | | | p50 < 20 ms, p99 < 100 ms | {} |",
            half.offered,
            met(h50 < 20.0 && h99 < 100.0)
        ),
        format!(
            "| verified WeChat notifications | {:.0} applied/s | (a) {:.0}/s | {:.2} | ≥ 0.5 × (a) | {} |",
            n.rate,
            r.floor_a.1,
            n.rate / r.floor_a.1,
            met(n.rate / r.floor_a.1 >= 0.5)
        ),
        format!(
            "| {} merchant consoles on one gateway | RSS {rss_mb:.0} MB; commit → receipt p99 {:.0} ms (p50 {:.0} ms) | | | < 300 MB, p99 < 250 ms | {} |",
            f.sockets,
            f.p(0.99),
            f.p(0.5),
            met(rss_mb < 300.0 && f.p(0.99) < 250.0 && f.sockets >= crate::CONSOLES)
        ),
        format!(
            "| checkout with 1,000,000 orders written | {:.0} purchases/s | empty database: {:.0}/s | {growth_ratio:.2} | ≥ 0.9 × empty | {} |",
            g.grown.rate(),
            g.empty.rate(),
            met(growth_ratio >= 0.9)
        ),
        format!(
            "| broker floor (c): quorum queue, 1 KiB, confirms and acks | {:.0} messages/s | | | | |",
            r.floor_c
        ),
        format!(
            "| peak memory (RSS) | gateway {:.1} MiB (checkout), {:.1} MiB (end to end); workers {:.1} MiB | | | | |",
            r.gateway_rss, r.e2e_gateway_rss, r.workers_rss
        ),
    ];
    for row in rows {
        writeln!(o, "{row}").unwrap();
    }
    let ov = r.overload.as_ref().expect("overload ran");
    writeln!(
        o,
        "| checkout offered 200 % ({:.0}/s) | {} | | | accepted p99 < 200 ms, RSS < 150 MB, every refusal a clean 503, nothing lost or doubled | {} |",
        ov.offered,
        ov.summary(),
        met(ov.met())
    )
    .unwrap();
    if let Some(c) = &r.cluster {
        writeln!(
            o,
            "| on the 3-node RabbitMQ cluster (queues replicated 3 ways), {} in flight | {} | | | a ratio to one broker in the same run | |",
            c.in_flight,
            c.summary()
        )
        .unwrap();
    }
    for (name, value, target, ok) in backoffice_rows(&g.backoffice) {
        writeln!(o, "| {name} | {value} | | | {target} | {} |", met(ok)).unwrap();
    }
    writeln!(o).unwrap();

    writeln!(o, "| checkout run | purchases/s | p50 / p95 / p99 |").unwrap();
    writeln!(o, "|---|---|---|").unwrap();
    writeln!(
        o,
        "| closed loop, {} in flight | {capacity:.0} | {} |",
        r.best_c,
        pcts(&closed.latencies())
    )
    .unwrap();
    for (share, run) in &r.open {
        writeln!(
            o,
            "| open loop at {:.0} % ({:.0}/s offered) | {:.0} | {} |",
            share * 100.0,
            capacity * share,
            run.rate(),
            pcts(&run.latencies())
        )
        .unwrap();
    }
    for (name, run) in [("empty", &g.empty), ("1,000,000 orders", &g.grown)] {
        writeln!(
            o,
            "| growth: {name}, {} in flight | {:.0} | {} |",
            g.concurrency,
            run.rate(),
            pcts(&run.latencies())
        )
        .unwrap();
    }
    writeln!(o).unwrap();
    writeln!(
        o,
        "Knees: floor (a) by connections {}; floor (b) by connections {} (orders/s); checkout by requests in flight {}.\n",
        knee_text(&r.knee_a),
        knee_text(&r.knee_b),
        knee_text(&r.knee)
    )
    .unwrap();

    writeln!(
        o,
        "| end-to-end run | offered | POST answered | effects/s | POST → 4th effect p50 / p95 / p99 | work queues at start → end | outbox at end | last effect after the window |"
    )
    .unwrap();
    writeln!(o, "|---|---|---|---|---|---|---|---|").unwrap();
    for e in &r.e2e {
        writeln!(
            o,
            "| {} | {:.0}/s | {:.0}/s, {} | {:.0} | {} | {} → {} | {} | {:.1} s |",
            e.label,
            e.offered,
            e.run.rate(),
            pcts(&e.run.latencies()),
            e.effects_rate,
            pcts(&e.done_ms),
            e.depth.0,
            e.depth.1,
            e.outbox,
            e.drain
        )
        .unwrap();
    }
    writeln!(o).unwrap();

    writeln!(
        o,
        "Verified notifications: {} WeChat orders checked out through the emulator, then paid there at once (32 payments in flight); the emulator signs (RSA-SHA256) and encrypts (AES-256-GCM) each notification, the gateway verifies, decrypts and commits. CPU over the window, per notification:\n",
        notify::ORDERS
    )
    .unwrap();
    cpu_table(&mut o, "notification", &n.cpu);
    writeln!(
        o,
        "Fan-out: {} consoles opened ({} refused), {} purchases announced at {}/s; {} of {} receipts ({} duplicates); gateway RSS {:.1} MiB before the consoles, {:.1} MiB with them; commit → receipt {}.\n",
        f.sockets,
        f.refused,
        fanout::PURCHASES,
        fanout::PER_SECOND,
        f.received,
        f.expected,
        f.duplicates,
        f.rss_idle,
        f.rss_open,
        pcts(&f.latencies)
    )
    .unwrap();
    writeln!(
        o,
        "Growth: writing the 1,000,000 orders with their rows (and VACUUM ANALYZE) took {:.0} s.\n",
        g.seed_secs
    )
    .unwrap();

    writeln!(
        o,
        "Where the CPU goes during checkout's closed loop (share of one core; CPU time per purchase):\n"
    )
    .unwrap();
    cpu_table(&mut o, "purchase", &r.checkout_cpu);
    writeln!(o, "And during the floor (a) at its best:\n").unwrap();
    cpu_table(&mut o, "purchase", &r.floor_cpu);
    writeln!(
        o,
        "And end to end at 50 % of checkout, from the window's start to the last effect:\n"
    )
    .unwrap();
    cpu_table(&mut o, "effect", &over.cpu);
    writeln!(o, "And end to end at 50 % of the pipeline:\n").unwrap();
    cpu_table(&mut o, "effect", &half.cpu);
    match r.profile.as_ref().expect("profiled") {
        Ok((p, purchases)) => {
            writeln!(
                o,
                "The gateway's profile (`perf` at 499 Hz with DWARF stacks, {:.0} ms of CPU sampled over {purchases} purchases; `target/bench/flamegraph.svg`): share of the gateway's CPU time whose stack holds each part (a sample may hold several):\n",
                p.sampled_ms
            )
            .unwrap();
            writeln!(o, "| part | share |\n|---|---|").unwrap();
            for (part, share) in &p.parts {
                writeln!(o, "| {part} | {:.0} % |", share * 100.0).unwrap();
            }
            writeln!(
                o,
                "\nTop frames by own time:\n\n| frame | share |\n|---|---|"
            )
            .unwrap();
            for (frame, share) in &p.leaves {
                writeln!(o, "| `{frame}` | {:.1} % |", share * 100.0).unwrap();
            }
            writeln!(o).unwrap();
        }
        Err(e) => writeln!(o, "No profile: {e}.\n").unwrap(),
    }

    // Guards.
    let errors = r.errors
        + closed.errors()
        + r.open.iter().map(|(_, x)| x.errors()).sum::<usize>()
        + r.e2e.iter().map(|e| e.run.errors()).sum::<usize>()
        + g.empty.errors()
        + g.grown.errors();
    let lost: usize = r.e2e.iter().map(|e| e.run.ok() - e.done_ms.len()).sum();
    let mut failures = backoffice_failures(&g.backoffice);
    if !ov.met() {
        failures.push("overload: a target of the 200 % row missed".to_owned());
    }
    if errors > 0 {
        failures.push(format!("{errors} failed purchases"));
    }
    if lost > 0 {
        failures.push(format!("{lost} orders without all four effects"));
    }
    if r.doubled > 0 {
        failures.push(format!(
            "{} buyers whose totals drifted from their ledgers",
            r.doubled
        ));
    }
    if n.unpaid > 0 || n.doubled > 0 || n.refused > 0 {
        failures.push(format!(
            "notifications: {} checkouts refused, {} orders never paid, {} paid twice",
            n.refused, n.unpaid, n.doubled
        ));
    }
    if f.refused > 0 || f.received < f.expected || f.duplicates > 0 {
        failures.push(format!(
            "fan-out: {} consoles refused, {} of {} receipts, {} duplicates",
            f.refused, f.received, f.expected, f.duplicates
        ));
    }
    writeln!(
        o,
        "Guards: {errors} failed purchases, {lost} orders without all four effects, {} buyers whose totals drifted from their ledgers (a doubled effect); notifications: {} refused, {} unpaid, {} paid twice; fan-out: {} consoles refused, {} receipts missing, {} duplicates.\n",
        r.doubled,
        n.refused,
        n.unpaid,
        n.doubled,
        f.refused,
        f.expected.saturating_sub(f.received),
        f.duplicates
    )
    .unwrap();

    let mut curves: Vec<(String, Vec<f64>)> = vec![(
        format!("checkout, closed loop, {} in flight", r.best_c),
        closed.latencies(),
    )];
    let mut flows: Vec<(String, Vec<f64>)> = vec![(
        format!("checkout, closed loop, {} in flight", r.best_c),
        closed.per_second(),
    )];
    for (share, run) in &r.open {
        curves.push((
            format!("checkout, open loop, {:.0} %", share * 100.0),
            run.latencies(),
        ));
        flows.push((
            format!("checkout, open loop, {:.0} %", share * 100.0),
            run.per_second(),
        ));
    }
    for e in &r.e2e {
        curves.push((format!("{}: POST → 4th effect", e.label), e.done_ms.clone()));
        flows.push((e.label.clone(), e.run.per_second()));
    }
    curves.push((
        "console push: commit → receipt".to_owned(),
        f.latencies.clone(),
    ));
    for (file, result) in [
        (
            "latency.svg",
            plot::latency(
                &out_dir.join("latency.svg"),
                "Latency by percentile",
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
            Ok(()) => writeln!(o, "Plot: `target/bench/{file}`").unwrap(),
            Err(e) => writeln!(o, "Plot {file} failed: {e}").unwrap(),
        }
    }
    std::fs::write(out_dir.join("report.md"), &o).expect("report");
    println!("{o}");
    failures
}
