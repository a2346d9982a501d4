//! The integration harness: every test gets its own PostgreSQL database (random name, migrated,
//! catalogue seeded), its own RabbitMQ names (a unique prefix), and a gateway on port 0 built
//! through the same `Application` as production. Nothing is mocked; tests wait with
//! [`eventually`] instead of sleeping.
//!
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432`) and `TEST_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`) point the harness at other servers.
//!
//! - [`app`]: [`TestApp`] and how to start one ([`spawn_app`], [`Options`]), in-process
//!   workers, and the HTTP helpers tests call the gateway with.
//! - [`database`]: [`TestDb`], a fresh database per test, and the SQL helpers on [`TestApp`].
//! - [`broker`]: the real broker: channels, taps on the events exchange, publishing, queue
//!   depths, and deleting a test's topology.
//! - [`process`]: the workspace binaries (`memberline-workers`, `memberline relay`) as real
//!   processes against a [`TestApp`], killed when their guard is dropped.
//! - [`provider`]: the payment provider emulator as a process, and a gateway paying through it.
//! - [`proxy`]: a TCP proxy a test can cut to make the broker unreachable.
//! - [`invariants`]: the totals that must agree with their rows after any run: an effect
//!   applied twice shows there, where unique constraints hide it from row counts.

pub mod app;
pub mod broker;
pub mod database;
pub mod invariants;
pub mod process;
pub mod provider;
pub mod proxy;

pub use app::{Options, TestApp, spawn_app, spawn_app_with, start_worker, test_settings};
pub use broker::{
    Seen, Tap, amqp_url, broker_channel, broker_connection, consumer_prefetches, queue_state,
};
pub use database::{TestDb, database_server_url};
pub use process::{Process, spawn_relay, spawn_workers};

use std::future::Future;
use std::time::Duration;

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

/// Runs `cleanup` to completion on a thread with its own runtime. `Drop` runs inside the
/// test's runtime, which must not be blocked on, and may be running because the test panicked.
fn clean_up<F>(cleanup: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(cleanup());
    })
    .join();
}
