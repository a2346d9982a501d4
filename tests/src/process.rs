//! The workspace's binaries as real processes: finding them next to the test binary
//! ([`binary`]), starting them against a [`TestApp`]'s database and broker names with a clean
//! environment ([`spawn`], [`spawn_workers`], [`spawn_relay`]), and a [`Process`] guard that
//! kills its child when dropped, so a failing test leaves no orphan behind.
//!
//! Nothing of the test's own environment leaks into the child: it gets `PATH`, the settings
//! below, and then the caller's extra `MEMBERLINE__…` variables, which win over the defaults.

use crate::TestApp;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The workspace binary `name`, built next to the test binary (`cargo build --bins`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "build the workspace binaries first ({})",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 (for a child's own listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Process(Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl From<Child> for Process {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The settings every child of `app` starts with: its database and broker names, no config
/// files, the test's short retry ladder and reconnect pauses, quiet logs, no ops listeners (so
/// parallel tests do not fight over the default ports) and no retention job.
pub fn app_env(app: &TestApp) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("MEMBERLINE_CONFIG_DIR", "/nonexistent".to_owned()),
        (
            "MEMBERLINE__DATABASE__URL",
            app.settings.database.url.expose().to_owned(),
        ),
        (
            "MEMBERLINE__AMQP__URL",
            app.settings.amqp.url.expose().to_owned(),
        ),
        ("MEMBERLINE__AMQP__PREFIX", app.topology.prefix().to_owned()),
        ("MEMBERLINE__AMQP__RETRY_DELAYS_MS", "100,200".to_owned()),
        (
            "MEMBERLINE__WORKERS__MAX_RECONNECT_DELAY_MS",
            "200".to_owned(),
        ),
        (
            "MEMBERLINE__RELAY__MAX_RECONNECT_DELAY_MS",
            "200".to_owned(),
        ),
        ("MEMBERLINE__WORKERS__METRICS_ADDR", String::new()),
        ("MEMBERLINE__RELAY__METRICS_ADDR", String::new()),
        ("MEMBERLINE__RETENTION__ENABLED", "false".to_owned()),
        ("MEMBERLINE__LOG__FILTER", "error".to_owned()),
    ]
    .into_iter()
    .chain(
        crate::app::LOAD_UNBOUNDED
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned())),
    )
    .collect()
}

/// Starts binary `name` with `args` against `app`: a cleared environment, then [`app_env`],
/// then `extra` (which overrides it). Output is discarded.
pub fn spawn(app: &TestApp, name: &str, args: &[&str], extra: &[(&str, String)]) -> Process {
    let mut cmd = Command::new(binary(name));
    // Clear first: whatever is set after this is all the child sees.
    cmd.env_clear()
        .envs(app_env(app))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn()
        .map(Process)
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// `memberline-workers` (all four workers in one process) against `app`, with `extra` settings.
pub fn spawn_workers(app: &TestApp, extra: &[(&str, String)]) -> Process {
    spawn(app, "memberline-workers", &[], extra)
}

/// `memberline relay` (the standalone relay) against `app`, with `extra` settings.
pub fn spawn_relay(app: &TestApp, extra: &[(&str, String)]) -> Process {
    spawn(app, "memberline", &["relay"], extra)
}
