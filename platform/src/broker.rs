//! Broker sessions, shared by the relay, the workers and the tools: connecting with a bounded
//! wait, closing with a bounded wait, and supervising a session so that any connection or channel
//! failure builds a new one after a capped, jittered pause (`backon`), until shutdown.
//!
//! lapin's own connection recovery is not used: it would not re-apply `basic_qos` or confirm
//! mode on the channels it restores, so every session here starts from a fresh connection.

use backon::BackoffBuilder;
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// Longest wait for one broker operation (connect, publish, cancel, close): a broker under a
/// memory or disk alarm blocks publishers and never answers.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker addresses of `amqp.url`: one URL, or several separated by commas (the nodes of a
/// cluster), each a full `amqp://` URL.
pub fn addresses(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

/// Connects to the broker at `url` (see [`addresses`]), naming the connection `name` (it shows
/// in `rabbitmqctl list_connections`). With several addresses it starts at a random one, so
/// that processes spread over a cluster's nodes, and tries the others in turn when one fails or
/// takes longer than [`OP_TIMEOUT`]: a process whose node went away reconnects to another.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let addresses = addresses(url);
    anyhow::ensure!(!addresses.is_empty(), "amqp.url names no broker");
    let first = rand::random_range(0..addresses.len());
    let mut failures = Vec::new();
    for address in addresses.iter().cycle().skip(first).take(addresses.len()) {
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        match tokio::time::timeout(OP_TIMEOUT, Connection::connect(address, props)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => failures.push(format!("{}: {e}", host_of(address))),
            Err(_) => failures.push(format!("{}: timed out", host_of(address))),
        }
    }
    anyhow::bail!("no broker answered ({})", failures.join("; "))
}

/// `host:port` of an AMQP URL, for messages (never its credentials).
fn host_of(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or_default().to_owned()
}

/// Closes `conn`, giving up after [`OP_TIMEOUT`].
pub async fn close(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, reason.into())).await;
}

/// Capped, jittered exponential pauses between reconnects, from 50 ms up to `max_ms`.
pub fn backoff(max_ms: u64) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(max_ms.max(50)))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How one session ended, when it did not end by shutdown.
#[derive(Debug)]
pub enum SessionError {
    /// The connection or channel broke: build a new session after a pause.
    Lost(anyhow::Error),
    /// This process must not run (say, the dead-letter path is missing): stop and report.
    Fatal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for SessionError {
    fn from(e: E) -> Self {
        SessionError::Lost(e.into())
    }
}

/// Told by a session once it is fully set up, so that the next failure starts the backoff from
/// its shortest pause again.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicBool>);

impl Progress {
    pub fn connected(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `session` again and again until it returns `Ok` (shutdown) or a fatal error, or until
/// `shutdown` fires while it waits to reconnect. `what` names the loop in log lines.
pub async fn supervise<F, Fut>(
    what: &str,
    max_delay_ms: u64,
    shutdown: &CancellationToken,
    mut session: F,
) -> anyhow::Result<()>
where
    F: FnMut(Progress) -> Fut,
    Fut: Future<Output = Result<(), SessionError>>,
{
    let mut delays = backoff(max_delay_ms);
    while !shutdown.is_cancelled() {
        let progress = Progress::default();
        match session(progress.clone()).await {
            Ok(()) => break,
            Err(SessionError::Fatal(e)) => {
                error!(error = %e, "{what} cannot run");
                return Err(e);
            }
            Err(SessionError::Lost(e)) => {
                if progress.0.load(Ordering::SeqCst) {
                    delays = backoff(max_delay_ms);
                }
                let delay = delays.next().unwrap_or(Duration::from_millis(max_delay_ms));
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "{what} lost the broker or the database; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    Ok(())
}

/// A readiness probe that keeps one connection open and reconnects only when it was lost, so a
/// probe every few seconds does not open (and close) an AMQP connection each time.
pub struct Probe {
    url: String,
    name: String,
    conn: Mutex<Option<Connection>>,
}

impl Probe {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            conn: Mutex::new(None),
        }
    }

    /// Whether the broker is reachable: the kept connection is still open, or a new one opens.
    pub async fn reachable(&self) -> bool {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| c.status().connected()) {
            return true;
        }
        match connect(&self.url, &self.name).await {
            Ok(conn) => {
                *slot = Some(conn);
                true
            }
            Err(_) => {
                *slot = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_names_every_node_and_messages_show_no_credentials() {
        let url = "amqp://u:secret@10.0.0.1:5672/%2f, amqp://u:secret@10.0.0.2:5673/%2f,";
        let nodes = addresses(url);
        assert_eq!(nodes.len(), 2);
        assert_eq!(host_of(nodes[1]), "10.0.0.2:5673");
        assert_eq!(addresses("amqp://localhost"), vec!["amqp://localhost"]);
    }

    #[tokio::test]
    async fn connecting_tries_every_address_and_names_each_failure() {
        // Two closed ports: both are tried, and the error says so.
        let closed = |port| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let url = format!("{},{}", closed(1), closed(2));
        let err = connect(&url, "test").await.unwrap_err().to_string();
        assert!(
            err.contains("127.0.0.1:1") && err.contains("127.0.0.1:2"),
            "{err}"
        );
        assert!(!err.contains("guest"), "{err}");
    }
}
