//! The integration harness: every test gets its own PostgreSQL database (random name, migrated,
//! catalogue seeded), its own RabbitMQ names (a unique prefix), and a gateway on port 0 built
//! through the same `Application` as production. Nothing is mocked; tests wait with
//! [`eventually`] instead of sleeping.
//!
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432`) and `TEST_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`) point the harness at other servers.

pub mod proxy;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use memberline_gateway::auth::{Keys, Role};
use memberline_gateway::{Application, Settings, seed};
use memberline_schema::Migrator;
use memberline_schema::topology::Topology;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn database_server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A fresh, migrated database with the catalogue seeded. Dropped by [`TestDb::drop_now`] or
/// when the owning [`TestApp`] is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub conn: DatabaseConnection,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_with(true).await
    }

    /// A fresh database, migrated (and seeded) only when `migrate` is true.
    pub async fn create_with(migrate: bool) -> Self {
        let name = format!("ml_test_{}", Uuid::new_v4().simple());
        let server = database_server_url();
        let admin = Database::connect(format!("{server}/postgres"))
            .await
            .expect("PostgreSQL must be running (make test starts it)");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = format!("{server}/{name}");
        let conn = Database::connect(&url)
            .await
            .expect("connect test database");
        if migrate {
            Migrator::up(&conn, None).await.expect("migrations apply");
            seed::catalogue(&conn).await.expect("catalogue seeds");
        }
        Self { name, url, conn }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}

fn drop_database(name: &str) {
    let name = name.to_owned();
    // Drop runs inside the test's runtime: clean up on a thread with its own.
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(async {
            if let Ok(admin) =
                Database::connect(format!("{}/postgres", database_server_url())).await
            {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                admin.close().await.ok();
            }
        });
    })
    .join();
}

fn delete_topology(topology: Topology) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(async {
            let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            else {
                return;
            };
            // One name at a time, on a fresh channel after any error (a queue a test deleted
            // itself closes the channel), so one failure does not leave the rest behind.
            let Ok(mut ch) = conn.create_channel().await else {
                return;
            };
            let queues = topology.all_queues().into_iter().map(|q| (true, q));
            let exchanges = [
                topology.events_exchange(),
                topology.unrouted_exchange(),
                topology.push_exchange(),
            ]
            .into_iter()
            .map(|e| (false, e));
            for (is_queue, name) in queues.chain(exchanges) {
                let deleted = if is_queue {
                    ch.queue_delete(name.as_str().into(), Default::default())
                        .await
                        .map(|_| ())
                } else {
                    ch.exchange_delete(name.as_str().into(), Default::default())
                        .await
                };
                if deleted.is_err() {
                    match conn.create_channel().await {
                        Ok(fresh) => ch = fresh,
                        Err(_) => return,
                    }
                }
            }
            let _ = conn.close(200, "test cleanup".into()).await;
        });
    })
    .join();
}

/// How a test wants its gateway.
#[derive(Clone, Debug)]
pub struct Options {
    /// Broker URL the gateway uses (a [`proxy::TcpProxy`] in outage tests).
    pub amqp_url: String,
    /// Run the relay inside the gateway.
    pub embedded_relay: bool,
    /// Start all four workers in the test process.
    pub workers: bool,
    /// Extra `MEMBERLINE__…` settings.
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            amqp_url: amqp_url(),
            embedded_relay: true,
            workers: false,
            env: vec![],
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
    pub worker_metrics: std::sync::Arc<memberline_gateway::metrics::Metrics>,
    pub shutdown: CancellationToken,
}

/// Starts one worker runtime in this process; it stops with `shutdown`.
pub fn start_worker(
    db: &DatabaseConnection,
    settings: &Settings,
    handler: std::sync::Arc<dyn memberline_workers::runtime::Handler>,
    metrics: std::sync::Arc<memberline_gateway::metrics::Metrics>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let ctx =
        memberline_workers::runtime::WorkerContext::new(db.clone(), settings.clone(), metrics);
    tokio::spawn(memberline_workers::runtime::run(
        handler,
        ctx,
        shutdown.child_token(),
    ))
}

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
    ];
    vars.extend(extra.iter().cloned());
    Settings::load_from(
        None,
        "test",
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)),
    )
    .expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

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
    let ch = broker_channel().await;
    topology.declare(&ch).await.expect("topology declares");

    let app = Application::build_with_db(settings.clone(), db.conn.clone())
        .await
        .expect("application builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until(shutdown.clone()));
    let worker_metrics = std::sync::Arc::new(memberline_gateway::metrics::Metrics::default());
    if options.workers {
        for worker in memberline_schema::topology::Worker::ALL {
            let handler = memberline_workers::handler_for(worker, &settings).expect("handler");
            start_worker(
                &db.conn,
                &settings,
                handler,
                worker_metrics.clone(),
                &shutdown,
            );
        }
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

/// A channel on the real broker (not through any proxy).
pub async fn broker_channel() -> Channel {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running (make test starts it)");
    conn.create_channel().await.expect("channel")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        delete_topology(self.topology.clone());
    }
}

impl TestApp {
    pub fn token(&self, user_id: i64, role: Role) -> String {
        self.keys.issue(user_id, role, 600)
    }

    pub fn user_token(&self, user_id: i64) -> String {
        self.token(user_id, Role::User)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
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

    /// The id of a seeded plan by code.
    pub async fn plan_id(&self, code: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM plans WHERE code = $1",
                [code.into()],
            ))
            .await
            .unwrap()
            .expect("seeded plan");
        row.try_get("", "id").unwrap()
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

    /// One integer from a SQL query (counts, sums).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .expect("one row");
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Binds a fresh exclusive queue of the test's own to the events exchange.
    pub async fn tap(&self, routing_key: &str) -> Tap {
        let ch = broker_channel().await;
        let queue = format!("{}.tap.{}", self.topology.prefix(), Uuid::new_v4().simple());
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            self.topology.events_exchange().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Tap {
            _channel: ch,
            consumer,
        }
    }
}

/// A test's own queue on the events exchange.
pub struct Tap {
    _channel: Channel,
    consumer: Consumer,
}

/// A message seen on a tap.
#[derive(Debug)]
pub struct Seen {
    pub body: serde_json::Value,
    pub message_id: Option<String>,
    pub persistent: bool,
}

impl Tap {
    /// The next message, or `None` if none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Seen> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.ok();
        Some(Seen {
            body: serde_json::from_slice(&delivery.data).expect("JSON message"),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            persistent: delivery.properties.delivery_mode() == &Some(2),
        })
    }

    /// Collects messages until `n` arrived or `wait` passes with nothing new.
    pub async fn collect(&mut self, n: usize, wait: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        while seen.len() < n {
            match self.next(wait).await {
                Some(m) => seen.push(m),
                None => break,
            }
        }
        seen
    }
}

impl TestApp {
    /// Publishes raw bytes to the events exchange (confirmed), as a misbehaving or replaying
    /// publisher would.
    pub async fn publish_event(&self, routing_key: &str, body: &[u8]) {
        let ch = broker_channel().await;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = ch
            .basic_publish(
                self.topology.events_exchange().into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Every outbox payload of one event type, oldest first.
    pub async fn outbox_payloads(&self, event_type: &str) -> Vec<serde_json::Value> {
        self.db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT payload FROM outbox WHERE event_type = $1 ORDER BY created_at, id",
                [event_type.into()],
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.try_get::<serde_json::Value>("", "payload").unwrap())
            .collect()
    }

    /// Messages waiting in a queue (passive declare).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let ch = broker_channel().await;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
    }

    /// Waits until `sql` (one integer) returns `want`.
    pub async fn wait_for_count(&self, what: &str, sql: &str, want: i64) {
        eventually(what, Duration::from_secs(60), || async {
            (self.scalar(sql).await == want).then_some(())
        })
        .await;
    }
}
