//! Faults injected at named points, compiled only into test builds (the `failpoints` feature,
//! which `make chaos` turns on): `MEMBERLINE_FAILPOINT=<name>:<n>` ends the process as
//! `kill -9` would (abort: no drain, no destructor, no goodbye to the broker or the database) the
//! `n`th time it reaches point `name`.
//!
//! - `relay_after_confirm`: the relay holds the broker's confirms of a batch and has not yet
//!   marked its rows published; the rows are published again after the restart, and the
//!   consumers' idempotency keeps their effects single.

use std::sync::atomic::{AtomicU64, Ordering};

static HITS: AtomicU64 = AtomicU64::new(0);

/// Point `name` is reached.
pub fn hit(name: &str) {
    let Ok(spec) = std::env::var("MEMBERLINE_FAILPOINT") else {
        return;
    };
    let Some((point, n)) = spec.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let n: u64 = n.parse().unwrap_or(1);
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == n {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
