//! Building and running the gateway. `main` and the tests use exactly this code path.

use crate::api;
use crate::auth::Keys;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::settings::{DatabaseSettings, Settings};
use crate::state::AppState;
use anyhow::Context;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Opens the PostgreSQL pool described by `settings`.
pub async fn connect_db(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(settings.url.expose().to_owned());
    opts.max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(opts)
        .await
        .context("cannot connect to PostgreSQL (database.url)")
}

/// A built gateway: bound to its port, connected to the database, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = connect_db(&settings.database).await?;
        Self::build_with_db(settings, db).await
    }

    /// Builds on an existing pool (tests share theirs).
    pub async fn build_with_db(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        let addr = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (http.host, http.port)"))?;
        let state = AppState {
            db,
            keys: Keys::new(settings.auth.jwt_secret.expose()),
            metrics: Arc::new(Metrics::default()),
            topology: settings.topology(),
            settings: Arc::new(settings),
        };
        Ok(Self { listener, state })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The relay this gateway would embed.
    pub fn relay(&self) -> Relay {
        Relay::new(
            self.state.db.clone(),
            self.state.settings.amqp.url.expose().to_owned(),
            self.state.topology.clone(),
            self.state.settings.relay.clone(),
            self.state.metrics.clone(),
        )
    }

    /// Serves until `shutdown` fires, then stops accepting, lets in-flight requests finish and
    /// stops the embedded relay (if configured) after its current batch.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = self
            .state
            .settings
            .relay
            .embedded
            .then(|| tokio::spawn(self.relay().run(shutdown.child_token())));
        let router = api::router(self.state.clone());
        tracing::info!(port = self.port(), "Gateway listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("HTTP server failed")?;
        if let Some(relay) = relay {
            shutdown.cancel();
            if tokio::time::timeout(Duration::from_secs(10), relay)
                .await
                .is_err()
            {
                tracing::warn!("Relay did not stop within 10 s");
            }
        }
        Ok(())
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutdown requested");
        t.cancel();
    });
    token
}
