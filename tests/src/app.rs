//! A running gateway per test: [`spawn_app`] / [`spawn_app_with`] build it through the same
//! `Application` as production, on port 0, with a fresh database and broker prefix, optionally
//! with the four workers and the channel sender in the same process ([`Options::workers`]), or
//! single workers ([`start_worker`]). Also the HTTP helpers tests call the gateway with.
//! Database and broker helpers on [`TestApp`] live in [`crate::database`] and [`crate::broker`].

use crate::broker::{amqp_url, broker_connection, delete_topology};
use crate::database::TestDb;
use memberline_gateway::Application;
use memberline_gateway::http::auth::{Keys, Role};
use memberline_platform::Settings;
use memberline_platform::metrics::Metrics;
use memberline_schema::topology::{Topology, Worker};
use memberline_workers::runtime::{Handler, WorkerContext};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How a test wants its gateway.
#[derive(Clone, Debug)]
pub struct Options {
    /// Broker URL the gateway uses (a [`crate::proxy::TcpProxy`] in outage tests).
    pub amqp_url: String,
    /// Run the relay inside the gateway.
    pub embedded_relay: bool,
    /// Start all four workers (and the channel sender) in the test process, as
    /// `memberline-workers` does.
    pub workers: bool,
    /// Extra `MEMBERLINE__…` settings.
    pub env: Vec<(&'static str, String)>,
    /// The gateway opens its pool from its settings, as `memberline serve` does (with the
    /// `database.*` options), instead of sharing the test's.
    pub own_pool: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            amqp_url: amqp_url(),
            embedded_relay: true,
            workers: false,
            env: vec![],
            own_pool: false,
        }
    }
}

/// A running gateway with its own database and broker names.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub db_name: String,
    pub settings: Settings,
    /// Dropped (with the database) after the app shut down.
    _test_db: TestDb,
    pub topology: Topology,
    pub keys: Keys,
    /// Metrics of the in-process workers.
    pub worker_metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// Starts one worker runtime in this process; it stops with `shutdown`.
pub fn start_worker(
    db: &DatabaseConnection,
    settings: &Settings,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let ctx = WorkerContext::new(db.clone(), settings.clone(), metrics);
    tokio::spawn(memberline_workers::runtime::run(
        handler,
        ctx,
        shutdown.child_token(),
    ))
}

/// The gateway's load-shedding bounds, lifted: the suites that send bursts on purpose (fifty
/// purchases of one buyer, a hundred copies of one notification, two thousand orders under
/// kill -9) test what a burst does to the data, not the bounds; the overload tests set theirs.
pub const LOAD_UNBOUNDED: &[(&str, &str)] = &[
    ("MEMBERLINE__HTTP__MAX_IN_FLIGHT", "100000"),
    ("MEMBERLINE__LANES__QUEUE_MAX", "4096"),
    ("MEMBERLINE__LANES__MAX_WAIT_MS", "60000"),
];

/// Settings for a test: defaults plus a fresh prefix, port 0 and fast reconnects.
pub fn test_settings(
    db_url: &str,
    amqp_url: &str,
    prefix: &str,
    embedded_relay: bool,
    extra: &[(&'static str, String)],
) -> Settings {
    let mut vars = vec![
        ("MEMBERLINE__HTTP__PORT", "0".to_owned()),
        ("MEMBERLINE__DATABASE__URL", db_url.to_owned()),
        ("MEMBERLINE__DATABASE__MAX_CONNECTIONS", "20".to_owned()),
        ("MEMBERLINE__AMQP__URL", amqp_url.to_owned()),
        ("MEMBERLINE__AMQP__PREFIX", prefix.to_owned()),
        ("MEMBERLINE__RELAY__EMBEDDED", embedded_relay.to_string()),
        (
            "MEMBERLINE__RELAY__MAX_RECONNECT_DELAY_MS",
            "200".to_owned(),
        ),
        ("MEMBERLINE__RELAY__CONFIRM_TIMEOUT_MS", "3000".to_owned()),
        // Short ladders keep retry tests fast; the shape is the production one.
        ("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "100,200".to_owned()),
        ("MEMBERLINE__WORKERS__METRICS_ADDR", String::new()),
        (
            "MEMBERLINE__WORKERS__MAX_RECONNECT_DELAY_MS",
            "200".to_owned(),
        ),
        ("MEMBERLINE__WORKERS__DRAIN_TIMEOUT_SECS", "5".to_owned()),
        // No secret is compiled in: each test signs its tokens with one of its own.
        (
            "MEMBERLINE__AUTH__JWT_SECRET",
            format!("test-secret-{prefix}-0123456789"),
        ),
        // The tests that want pruning run it themselves.
        ("MEMBERLINE__RETENTION__ENABLED", "false".to_owned()),
    ];
    vars.extend(LOAD_UNBOUNDED.iter().map(|(k, v)| (*k, (*v).to_owned())));
    vars.extend(extra.iter().cloned());
    Settings::load_from(
        None,
        "test",
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)),
    )
    .expect("test settings are valid")
}

/// A gateway with the default [`Options`]: embedded relay, no workers, the real broker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// A gateway as `options` asks, with a fresh database and broker prefix, its topology declared.
pub async fn spawn_app_with(options: Options) -> TestApp {
    let db = TestDb::create().await;
    let prefix = format!("t{}", Uuid::new_v4().simple());
    let settings = test_settings(
        &db.url,
        &options.amqp_url,
        &prefix,
        options.embedded_relay,
        &options.env,
    );
    let topology = settings.topology();
    // Declare up front (through the real broker) so test queues can bind before any event.
    let drift = topology
        .declare(&broker_connection().await)
        .await
        .expect("topology declares");
    assert!(drift.is_empty(), "a fresh prefix has no drift: {drift:?}");

    let app = if options.own_pool {
        Application::build(settings.clone()).await
    } else {
        Application::build_with_db(settings.clone(), db.conn.clone()).await
    }
    .expect("application builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until(shutdown.clone()));
    let worker_metrics = Arc::new(Metrics::default());
    if options.workers {
        // As `memberline-workers` starts them: a pool of their own sized by
        // `database.max_connections`, shared connection permits, the channel sender.
        let pool = memberline_platform::db::connect(&settings.database)
            .await
            .expect("workers' pool");
        let stop = shutdown.child_token();
        let started =
            memberline_workers::start(&Worker::ALL, pool, &settings, worker_metrics.clone(), &stop)
                .expect("workers start");
        tokio::spawn(started.wait(stop));
    }
    TestApp {
        worker_metrics,
        base,
        client: reqwest::Client::new(),
        keys: Keys::new(settings.auth.jwt_secret.expose()),
        db: db.conn.clone(),
        db_name: db.name.clone(),
        _test_db: db,
        topology,
        settings,
        shutdown,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        delete_topology(self.topology.clone());
    }
}

impl TestApp {
    /// A token for `user_id` in `role`, valid for ten minutes.
    pub fn token(&self, user_id: i64, role: Role) -> String {
        self.keys.issue(user_id, role, 600)
    }

    /// A buyer's token.
    pub fn user_token(&self, user_id: i64) -> String {
        self.token(user_id, Role::User)
    }

    /// The gateway's URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The value of the gateway's metric sample `name` (with its labels, as /metrics spells
    /// them), if it has one.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Waits until `other_work` (jobs of `lane` sent meanwhile) has `jobs` waiting for the lane:
    /// `hold` (a statement that takes a lock the lane's first job needs, in a transaction of
    /// the test's) keeps the lane busy with `first` until then, and is rolled back after.
    /// Returns the first job's result and the others'.
    pub async fn behind_a_busy_lane<A, B>(
        &self,
        lane: &str,
        hold: &str,
        jobs: usize,
        first: impl std::future::Future<Output = A>,
        other_work: impl std::future::Future<Output = B>,
    ) -> (A, B) {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let holder = self.db.begin().await.expect("begin");
        holder.execute_unprepared(hold).await.expect("hold");
        let go = tokio::sync::Notify::new();
        let waiting = format!("memberline_lane_waiting{{lane=\"{lane}\"}}");
        let (first, rest, ()) = tokio::join!(
            first,
            async {
                go.notified().await;
                other_work.await
            },
            async {
                crate::eventually(
                    "the lane waits for the held lock",
                    Duration::from_secs(10),
                    || async {
                        (self
                            .scalar(
                                "SELECT count(*) FROM pg_stat_activity \
                                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                            )
                            .await
                            >= 1)
                            .then_some(())
                    },
                )
                .await;
                go.notify_one();
                crate::eventually(
                    "the jobs wait for the lane",
                    Duration::from_secs(10),
                    || async { (self.metric(&waiting).await == Some(jobs as f64)).then_some(()) },
                )
                .await;
                holder.rollback().await.expect("rollback");
            }
        );
        (first, rest)
    }

    /// Creates a buyer through the admin API and returns its id.
    pub async fn create_user(&self, name: &str, balance_fen: i64, points: i64) -> i64 {
        let res = self
            .client
            .post(self.url("/v1/admin/users"))
            .bearer_auth(self.token(0, Role::Admin))
            .json(&serde_json::json!({"name": name, "balance_fen": balance_fen, "points": points}))
            .send()
            .await
            .expect("admin request");
        assert_eq!(res.status(), 201, "creating a user");
        let body: serde_json::Value = res.json().await.unwrap();
        body["id"].as_i64().unwrap()
    }

    /// Buys `n` single-use passes for `buyer` with balance (keys `{prefix}-0`, `{prefix}-1`, …),
    /// each answered 201.
    pub async fn buy_passes(&self, buyer: i64, n: usize, prefix: &str) {
        let token = self.user_token(buyer);
        let pass = self.plan_id("day_pass").await;
        for i in 0..n {
            let (status, body) = self
                .order(
                    &token,
                    &format!("{prefix}-{i}"),
                    serde_json::json!({"plan_id": pass, "pay_method": "balance"}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }

    /// The body of a GET to any URL (another process's `/metrics`, say), or `None` when it
    /// cannot be fetched (yet): for polling with [`crate::eventually`].
    pub async fn text(&self, url: impl reqwest::IntoUrl) -> Option<String> {
        self.client.get(url).send().await.ok()?.text().await.ok()
    }

    /// POST /v1/orders with an idempotency key.
    pub async fn order(
        &self,
        token: &str,
        key: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let res = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("order request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Any request with a token, an optional Idempotency-Key and a JSON body; returns the
    /// status and the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// An admin's token (admins are token subjects; they need no buyer row).
    pub fn admin_token(&self) -> String {
        self.token(900_001, Role::Admin)
    }

    /// `POST /v1/admin/orders/{id}/refund` as an admin.
    pub async fn refund(&self, order_id: i64, key: &str, reason: &str) -> (u16, serde_json::Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/admin/orders/{order_id}/refund"),
            &self.admin_token(),
            Some(key),
            serde_json::json!({ "reason": reason }),
        )
        .await
    }

    /// POST of a JSON body without a token (a sign-in): the status, the JSON answer and its
    /// `Retry-After`, if any.
    pub async fn post_signed_out(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value, Option<String>) {
        let res = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (
            status,
            res.json().await.unwrap_or(serde_json::Value::Null),
            retry_after,
        )
    }

    /// GET with a token; returns status and JSON body.
    pub async fn get(&self, token: Option<&str>, path: &str) -> (u16, serde_json::Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("get request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }
}
