//! The processes of the run, as `make cluster` starts them: the provider emulator, two gateways
//! (8081, 8082, each with its embedded relay; HAProxy balances 8080 over them for the
//! providers' notifications), a standalone relay and two replicas of the workers' process, all
//! with the cluster's addresses (`deploy/cluster.sh env`) and the local development settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ALL: [&str; 6] = [
    "emulator", "gateway1", "gateway2", "relay", "workers1", "workers2",
];

/// Each gateway's port.
pub const GATEWAYS: [(&str, u16); 2] = [("gateway1", 8081), ("gateway2", 8082)];
pub const EMULATOR: &str = "http://127.0.0.1:8090";
/// Where the providers send notifications: HAProxy over both gateways.
pub const BALANCED: &str = "http://127.0.0.1:8080";

pub struct Fleet {
    bin: PathBuf,
    env: Vec<(String, String)>,
    running: HashMap<&'static str, Child>,
}

impl Fleet {
    /// The fleet's settings: the cluster's addresses, the local development settings, and
    /// `extra`.
    pub fn new(bin: PathBuf, extra: &[(&str, &str)]) -> Self {
        let out = Command::new("deploy/cluster.sh")
            .arg("env")
            .output()
            .expect("deploy/cluster.sh env");
        let mut env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (k, v) in [
            ("MEMBERLINE_ENV", "local"),
            ("MEMBERLINE_CONFIG_DIR", "deploy/config"),
            ("MEMBERLINE__RELAY__EMBEDDED", "true"),
            ("MEMBERLINE__LOG__FILTER", "error"),
            ("MEMBERLINE__PAYMENTS__PUBLIC_URL", BALANCED),
            (
                "MEMBERLINE__PAYMENTS__WECHAT__NOTIFY_URL",
                "http://127.0.0.1:8080/v1/payments/wechat/notify",
            ),
            (
                "MEMBERLINE__PAYMENTS__ALIPAY__NOTIFY_URL",
                "http://127.0.0.1:8080/v1/payments/alipay/notify",
            ),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            env.push((k.to_owned(), v.to_owned()));
        }
        Self {
            bin,
            env,
            running: HashMap::new(),
        }
    }

    pub fn database_url(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "MEMBERLINE__DATABASE__URL")
            .map(|(_, v)| v.clone())
            .expect("the cluster's database URL")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Creates the database on the cluster, migrates and seeds it.
    pub fn prepare_database(&self) {
        let url = self.database_url();
        let server = url.rsplit_once('/').expect("a database URL").0;
        let created = Command::new("psql")
            .args([
                &format!("{server}/postgres"),
                "-qc",
                "CREATE DATABASE memberline",
            ])
            .status()
            .expect("psql");
        assert!(created.success(), "creating the database");
        for args in [&["migrate", "up"][..], &["seed"][..]] {
            let ok = self
                .command("memberline")
                .args(args)
                .status()
                .expect("memberline");
            assert!(ok.success(), "memberline {args:?}");
        }
    }

    /// Starts process `name` with `extra` environment.
    pub fn start(&mut self, name: &'static str, extra: &[(&str, &str)]) {
        let mut cmd = match name {
            "emulator" => {
                let mut c = self.command("provider-emulator");
                c.env("RUST_LOG", "warn");
                c.args(["--listen", "127.0.0.1:8090", "--keys", "deploy/dev-keys"]);
                c
            }
            "gateway1" | "gateway2" => {
                let port = GATEWAYS.iter().find(|(n, _)| *n == name).unwrap().1;
                let mut c = self.command("memberline");
                c.arg("serve")
                    .env("MEMBERLINE__HTTP__PORT", port.to_string());
                c
            }
            "relay" => {
                let mut c = self.command("memberline");
                c.arg("relay")
                    .env("MEMBERLINE__RELAY__METRICS_ADDR", "127.0.0.1:9111");
                c
            }
            "workers1" | "workers2" => {
                let port = if name == "workers1" { 9121 } else { 9122 };
                let mut c = self.command("memberline-workers");
                c.env(
                    "MEMBERLINE__WORKERS__METRICS_ADDR",
                    format!("127.0.0.1:{port}"),
                );
                c
            }
            other => panic!("no process {other}"),
        };
        cmd.envs(extra.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.running.insert(name, child);
    }

    /// Process `name`'s id, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running.get(name).map(Child::id)
    }

    /// `kill -9` of process `name`.
    pub fn kill9(&mut self, name: &str) {
        if let Some(mut child) = self.running.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits at most `limit` for process `name` to end on its own; whether it did.
    pub async fn wait_exit(&mut self, name: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.running.get_mut(name)
                && let Ok(Some(_)) = child.try_wait()
            {
                self.running.remove(name);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill9(name);
        false
    }

    /// Waits until every process answers its readiness check (at most two minutes).
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let mut urls = vec![format!("{EMULATOR}/emulator/healthz")];
        for (name, port) in GATEWAYS {
            if self.running.contains_key(name) {
                urls.push(format!("http://127.0.0.1:{port}/readyz"));
            }
        }
        for port in [9111, 9121, 9122] {
            urls.push(format!("http://127.0.0.1:{port}/readyz"));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for url in urls {
            loop {
                let ok = http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} not ready within two minutes"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Closes every client connection of the cluster at once (what `rabbitmqctl
    /// close_connection` does, for each of them, in one call); how many there were.
    pub fn close_broker_connections(&self) -> usize {
        let out = rabbitmqctl(&[
            "eval",
            "length([rabbit_networking:close_connection(P, \"chaos: connection closed\") \
             || P <- rabbit_networking:connections()]).",
        ]);
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stop_all(&mut self) {
        for (_, child) in self.running.iter_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, mut child) in self.running.drain() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `rabbitmqctl` on the cluster's first node, as the broker's user (whose Erlang cookie the
/// nodes share).
pub fn rabbitmqctl(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("runuser")
        .args([
            "-u",
            "rabbitmq",
            "--",
            "env",
            "HOME=/var/lib/rabbitmq",
            "rabbitmqctl",
        ])
        .args(["-n", "rabbit1@localhost"])
        .args(args)
        .output()
}
