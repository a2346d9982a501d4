//! Where the gateway's own CPU time goes during a purchase rush: `perf record` (DWARF call
//! graphs) on the gateway process, folded and drawn as a flamegraph with `inferno`, and the
//! share of samples under each part of the stack (HTTP, SQL driver, JSON, …).

use inferno::collapse::Collapse;
use std::path::Path;
use std::process::{Command, Stdio};

/// A running `perf record`; [`Recording::finish`] waits for it and folds its stacks.
pub struct Recording {
    child: std::process::Child,
    data: std::path::PathBuf,
}

/// Starts sampling `pid` for `secs` seconds; `None` when `perf` cannot run here.
pub fn record(pid: u32, secs: f64, out_dir: &Path) -> Option<Recording> {
    let data = out_dir.join("perf.data");
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &format!("{secs:.1}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Recording { child, data })
}

/// Parts of the stack, named by the frames under them.
const PARTS: [(&str, &[&str]); 9] = [
    ("PostgreSQL driver (sqlx, sea-orm)", &["sqlx", "sea_orm"]),
    ("HTTP (hyper, axum)", &["hyper::", "axum::", "h2::"]),
    ("JSON (serde_json)", &["serde_json"]),
    ("JWT (jsonwebtoken)", &["jsonwebtoken"]),
    ("relay and broker (lapin)", &["lapin", "amq_protocol"]),
    (
        "logging and metrics",
        &[
            "tracing_subscriber",
            "tracing_core",
            "metrics::",
            "metrics_exporter",
        ],
    ),
    (
        "memory (malloc, free)",
        &["malloc", "free", "realloc", "cfree"],
    ),
    (
        "kernel (system calls, interrupts)",
        &["entry_SYSCALL", "do_syscall_64", "asm_sysvec", "irqentry"],
    ),
    ("async runtime (tokio)", &["tokio::runtime"]),
];

pub struct Profile {
    /// CPU time sampled, in ms (perf weighs each sample by its period).
    pub sampled_ms: f64,
    /// (part, share of samples whose stack holds it).
    pub parts: Vec<(&'static str, f64)>,
    /// (frame, share of samples where it is the leaf), largest first.
    pub leaves: Vec<(String, f64)>,
}

impl Recording {
    /// Waits for the recording, folds it and draws `flamegraph.svg` beside it.
    pub fn finish(mut self, title: &str) -> Result<Profile, String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() && !self.data.exists() {
            return Err(format!("perf record failed ({status})"));
        }
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("perf script: {e}"))?;
        let mut folded = Vec::new();
        inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default())
            .collapse(&script.stdout[..], &mut folded)
            .map_err(|e| format!("folding the stacks: {e}"))?;
        let folded = String::from_utf8_lossy(&folded).into_owned();
        let svg = self.data.with_file_name("flamegraph.svg");
        let mut options = inferno::flamegraph::Options::default();
        options.title = title.to_owned();
        // Frames narrower than a pixel are left out: the SVG stays small enough to commit.
        options.min_width = 1.0;
        let file = std::fs::File::create(&svg).map_err(|e| e.to_string())?;
        inferno::flamegraph::from_lines(&mut options, folded.lines(), file)
            .map_err(|e| format!("drawing the flamegraph: {e}"))?;
        let _ = std::fs::remove_file(&self.data);
        Ok(summarise(&folded))
    }
}

/// Shares of the folded stacks (`frame;frame;… count` per line).
fn summarise(folded: &str) -> Profile {
    let mut total = 0u64;
    let mut parts = vec![0u64; PARTS.len()];
    let mut leaves: std::collections::HashMap<String, u64> = Default::default();
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        total += count;
        for (i, (_, needles)) in PARTS.iter().enumerate() {
            if needles.iter().any(|n| stack.contains(n)) {
                parts[i] += count;
            }
        }
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *leaves.entry(short(leaf)).or_default() += count;
    }
    let share = |n: u64| n as f64 / total.max(1) as f64;
    let mut leaves: Vec<(String, f64)> = leaves.into_iter().map(|(f, n)| (f, share(n))).collect();
    leaves.sort_by(|a, b| b.1.total_cmp(&a.1));
    leaves.truncate(12);
    Profile {
        sampled_ms: total as f64 / 1e6,
        parts: PARTS
            .iter()
            .zip(parts)
            .map(|((name, _), n)| (*name, share(n)))
            .collect(),
        leaves,
    }
}

/// A frame without its hash suffix and generic arguments, at most 80 characters.
fn short(frame: &str) -> String {
    let frame = frame.split("::h").next().unwrap_or(frame);
    let mut out = String::new();
    let mut depth = 0;
    for c in frame.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    if out.starts_with("::") || out.is_empty() {
        out = frame.to_owned();
    }
    out.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_counts_each_part_once_per_sample_and_names_leaves_without_hashes() {
        let folded = "memberline;hyper::proto::h1;sqlx_postgres::io::send;__libc_send 3\n\
                      memberline;hyper::proto::h1;serde_json::ser::to_vec::h0123abcd 1\n";
        let p = summarise(folded);
        assert_eq!(p.sampled_ms, 4.0 / 1e6);
        let part = |name: &str| p.parts.iter().find(|(n, _)| n.starts_with(name)).unwrap().1;
        assert_eq!(part("HTTP"), 1.0);
        assert_eq!(part("PostgreSQL"), 0.75);
        assert_eq!(part("JSON"), 0.25);
        assert_eq!(p.leaves[0], ("__libc_send".to_owned(), 0.75));
        assert_eq!(p.leaves[1].0, "serde_json::ser::to_vec");
    }
}
