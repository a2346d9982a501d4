//! Where the machine's CPU time goes during a window, by component: every process in
//! `/proc`, grouped by its name, its user and system time added up (`/proc/<pid>/stat`).

use std::collections::BTreeMap;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

/// The component a process belongs to, from its name.
fn component(comm: &str) -> &'static str {
    match comm {
        "postgres" => "PostgreSQL",
        "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd" => "RabbitMQ",
        "memberline" => "gateway (and relay)",
        c if c.starts_with("memberline-wor") => "workers",
        "bench" => "load generator",
        c if c.starts_with("provider-emu") => "provider emulator",
        _ => "other",
    }
}

/// CPU seconds used so far, per component.
pub fn snapshot() -> BTreeMap<&'static str, f64> {
    let mut used = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return used;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after `state`.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let ticks = utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0);
        *used.entry(component(comm)).or_insert(0.0) += ticks / TICKS;
    }
    used
}

/// Per component, the CPU used between two snapshots: `(component, share of one core,
/// microseconds per unit of work)`, largest first.
pub fn between(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    secs: f64,
    units: usize,
) -> Vec<(&'static str, f64, f64)> {
    let mut rows: Vec<(&'static str, f64, f64)> = after
        .iter()
        .map(|(name, a)| {
            let used = (a - before.get(name).copied().unwrap_or(0.0)).max(0.0);
            (*name, used / secs, used * 1e6 / units.max(1) as f64)
        })
        .filter(|(_, share, _)| *share > 0.005)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}
