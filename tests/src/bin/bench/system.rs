//! Memberline as release processes on a fresh database and broker prefix: `memberline serve`
//! (with its embedded relay) and, when asked, `memberline-workers`, with buyers to buy.

use crate::floors::BUYERS;
use crate::load::Shop;
use memberline_tests::{TestDb, amqp_url, broker_channel};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct System {
    pub db: TestDb,
    pub topology: memberline_schema::topology::Topology,
    gateway: Child,
    workers: Option<Child>,
    pub http: reqwest::Client,
    pub base: String,
    tokens: Vec<String>,
    pub plan_id: i64,
    /// Signs tokens for any role.
    pub keys: memberline_gateway::http::auth::Keys,
}

fn spawn(bin: &str, env: &[(&str, String)]) -> Child {
    let path = std::env::current_exe().unwrap().parent().unwrap().join(bin);
    let mut cmd = Command::new(&path);
    cmd.env("MEMBERLINE_CONFIG_DIR", "/nonexistent")
        .env("MEMBERLINE__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if bin == "memberline" {
        cmd.arg("serve");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", path.display()))
}

/// Peak resident memory of a process (`VmHWM`), in MiB.
fn rss_peak_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resident memory of a process now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

impl System {
    pub async fn start(with_workers: bool) -> Self {
        Self::start_with(with_workers, |_| Vec::new()).await
    }

    /// [`System::start`], with more settings given the gateway's port.
    pub async fn start_with(
        with_workers: bool,
        more: impl FnOnce(u16) -> Vec<(&'static str, String)>,
    ) -> Self {
        let db = TestDb::create().await;
        let prefix = format!("bench{}", uuid::Uuid::new_v4().simple());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings = memberline_tests::test_settings(&db.url, &amqp_url(), &prefix, false, &[]);
        let secret = settings.auth.jwt_secret.expose().to_owned();
        let keys = memberline_gateway::http::auth::Keys::new(&secret);
        let mut env = vec![
            ("MEMBERLINE__DATABASE__URL", db.url.clone()),
            ("MEMBERLINE__AMQP__URL", amqp_url()),
            ("MEMBERLINE__AMQP__PREFIX", prefix.clone()),
            ("MEMBERLINE__HTTP__PORT", port.to_string()),
            ("MEMBERLINE__WORKERS__METRICS_ADDR", String::new()),
            ("MEMBERLINE__AUTH__JWT_SECRET", secret),
            // No cap: every purchase earns its reward, so the ledger worker does full work.
            (
                "MEMBERLINE__WORKERS__DAILY_POINTS_CAP",
                "1000000000000".to_owned(),
            ),
        ];
        env.extend(more(port));
        // Experiments: `BENCH_ENV="MEMBERLINE__DATABASE__MAX_CONNECTIONS=8 …"` sets more.
        let extra = std::env::var("BENCH_ENV").unwrap_or_default();
        for pair in extra.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((Box::leak(k.to_owned().into_boxed_str()), v.to_owned()));
            }
        }
        let mut gateway = spawn("memberline", &env);
        let workers = with_workers.then(|| spawn("memberline-workers", &env));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .unwrap();
        let up_by = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = gateway.try_wait() {
                panic!("the gateway exited: {status}");
            }
            let ready = http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < up_by,
                "the gateway was not ready within a minute"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admin = keys.issue(0, memberline_gateway::http::auth::Role::Admin, 7200);
        let mut tokens = Vec::new();
        for i in 0..BUYERS {
            let res: serde_json::Value = http
                .post(format!("{base}/v1/admin/users"))
                .bearer_auth(&admin)
                .json(&serde_json::json!({"name": format!("bench {i}"),
                    "balance_fen": 1_000_000_000_000i64, "points": 1_000_000_000_000i64}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens.push(keys.issue(
                res["id"].as_i64().unwrap(),
                memberline_gateway::http::auth::Role::User,
                7200,
            ));
        }
        let plan_id: i64 = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id FROM plans WHERE code = 'monthly'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "id")
            .unwrap();
        Self {
            db,
            topology: memberline_schema::topology::Topology::new(prefix),
            gateway,
            workers,
            http,
            base,
            tokens,
            plan_id,
            keys,
        }
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.id()
    }

    /// The buyers' tokens.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// A load generator whose idempotency keys are marked `run`.
    pub fn shop(&self, run: &str) -> Arc<Shop> {
        Arc::new(Shop {
            http: self.http.clone(),
            base: self.base.clone(),
            tokens: self.tokens.clone(),
            plan_id: self.plan_id,
            run: run.to_owned(),
        })
    }

    /// Stops the processes, deletes the topology; the peak RSS of the gateway and the workers.
    pub async fn stop(self) -> (f64, f64) {
        let gateway = rss_peak_mib(self.gateway.id());
        let workers = self
            .workers
            .as_ref()
            .map(|w| rss_peak_mib(w.id()))
            .unwrap_or(0.0);
        stop(self.gateway);
        if let Some(w) = self.workers {
            stop(w);
        }
        let _ = self.topology.delete(&broker_channel().await).await;
        (gateway, workers)
    }
}
