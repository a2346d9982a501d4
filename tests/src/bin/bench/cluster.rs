//! The cluster row: checkout's closed loop and end to end with the workers, once on this
//! machine's single broker and once on the three-node cluster of `deploy/cluster.sh` (every
//! quorum queue replicated three ways; the database stays this machine's), back to back in the
//! same run, so that the cluster's figures are read as ratios to the single node's.

use crate::e2e;
use crate::load::percentile;
use crate::system::System;
use std::time::Duration;

pub struct Figures {
    /// Purchases per second in the closed loop.
    pub checkout: f64,
    /// Effects per second end to end, and the p99 in milliseconds from POST to the last effect.
    pub effects: f64,
    pub p99_ms: f64,
}

pub struct Cluster {
    pub single: Figures,
    pub cluster: Figures,
    pub in_flight: usize,
    pub offered: f64,
}

impl Cluster {
    pub fn checkout_ratio(&self) -> f64 {
        self.cluster.checkout / self.single.checkout
    }
    pub fn effects_ratio(&self) -> f64 {
        self.cluster.effects / self.single.effects
    }
    pub fn summary(&self) -> String {
        format!(
            "checkout {:.0}/s against {:.0}/s ({:.2}); end to end at {:.0}/s offered: {:.0} effects/s against {:.0} ({:.2}), p99 {:.0} ms against {:.0} ms",
            self.cluster.checkout,
            self.single.checkout,
            self.checkout_ratio(),
            self.offered,
            self.cluster.effects,
            self.single.effects,
            self.effects_ratio(),
            self.cluster.p99_ms,
            self.single.p99_ms
        )
    }
}

fn cluster_sh(arg: &str) -> String {
    let out = std::process::Command::new("deploy/cluster.sh")
        .arg(arg)
        .output()
        .expect("deploy/cluster.sh");
    assert!(out.status.success(), "deploy/cluster.sh {arg} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Figures of a fresh system on `amqp_url` (this machine's broker when `None`), `what` naming it.
async fn measure(
    what: &str,
    amqp_url: Option<String>,
    in_flight: usize,
    rate: f64,
    secs: f64,
) -> Figures {
    let system = System::start_with(true, move |_| {
        amqp_url
            .map(|url| vec![("MEMBERLINE__AMQP__URL", url)])
            .unwrap_or_default()
    })
    .await;
    system
        .shop("cl-warm")
        .closed_loop("warm-up", in_flight, 2.0)
        .await;
    let checkout = system
        .shop("cl-closed")
        .closed_loop(
            &format!("{what}: closed loop, {in_flight} in flight"),
            in_flight,
            secs,
        )
        .await
        .rate();
    e2e::wait_for_effects(&system.db, Duration::from_secs(300)).await;
    let run = system
        .shop("cl-e2e")
        .open_loop(&format!("{what}: end to end ({rate:.0}/s)"), rate, secs)
        .await;
    e2e::wait_for_effects(&system.db, Duration::from_secs(300)).await;
    let (done_ms, effects) = e2e::end_to_end(&system.db, &run).await;
    system.stop().await;
    Figures {
        checkout,
        effects,
        p99_ms: percentile(&done_ms, 0.99),
    }
}

/// Both measurements, the cluster's started and removed around its own.
pub async fn run(in_flight: usize, rate: f64, secs: f64) -> Cluster {
    let single = measure("one broker", None, in_flight, rate, secs).await;
    eprintln!("  starting the three-node cluster");
    let _ = std::process::Command::new("deploy/cluster.sh")
        .arg("down")
        .output();
    cluster_sh("up");
    let url = cluster_sh("env")
        .lines()
        .find_map(|l| l.strip_prefix("MEMBERLINE__AMQP__URL=").map(str::to_owned))
        .expect("the cluster's broker addresses");
    let cluster = measure("three-node cluster", Some(url), in_flight, rate, secs).await;
    cluster_sh("down");
    Cluster {
        single,
        cluster,
        in_flight,
        offered: rate,
    }
}
