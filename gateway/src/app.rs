//! Building and running the gateway. `main` and the tests use exactly this code path.

use crate::http;
use crate::http::auth::Keys;
use crate::state::AppState;
use anyhow::Context;
use memberline_platform::Settings;
use memberline_platform::metrics::Metrics;
use memberline_platform::outbox::Wake;
use memberline_platform::outbox::relay::Relay;
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections the embedded relay opens besides `database.max_connections`: one it keeps for
/// LISTEN, one for its batches, one spare while a lost connection is replaced.
pub const RELAY_CONNECTIONS: u32 = 3;

/// A built gateway: bound to its port, connected to the database, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens the pool of `database.max_connections`, which the lanes must leave room in.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.lanes.fit(settings.database.max_connections)?;
        let db = memberline_platform::db::connect(&settings.database).await?;
        Self::build_with_db(settings, db).await
    }

    /// Builds on an existing pool (tests share theirs, sized apart from the settings).
    pub async fn build_with_db(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        let addr = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (http.host, http.port)"))?;
        let payments = memberline_orders::providers::Payments::from_settings(
            &settings.payments,
            &settings.environment,
        )?;
        let wake = if settings.relay.embedded {
            Wake::in_process()
        } else {
            Wake::by_notify()
        };
        let metrics = Arc::new(Metrics::default());
        let purchases = memberline_orders::Purchases::start(
            db.clone(),
            wake.clone(),
            &settings.lanes,
            settings.database.max_connections,
            metrics.clone(),
        );
        let notifications = memberline_orders::notifications::Notifications::start(
            db.clone(),
            payments.clone(),
            wake.clone(),
            &settings.lanes,
            settings.database.max_connections,
            metrics.clone(),
        );
        let order_watch = crate::order_watch::OrderWatch::new(
            settings.push.buyer_streams_max,
            settings.push.buyer_streams_per_buyer,
            metrics.clone(),
        );
        let state = AppState {
            db,
            wake,
            purchases,
            notifications,
            payments,
            keys: Keys::new(settings.auth.signing_secret()?),
            metrics,
            topology: settings.topology(),
            broker_probe: Arc::new(memberline_platform::broker::Probe::new(
                settings.amqp.url.expose(),
                format!("{}.gateway.readiness", settings.amqp.prefix),
            )),
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.http.max_in_flight)),
            order_watch,
            settings: Arc::new(settings),
            push_hub: crate::hub::Hub::new(),
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

    /// The relay this gateway embeds, on `db`.
    fn relay(&self, db: DatabaseConnection) -> Relay {
        Relay::new(
            db,
            self.state.settings.amqp.url.expose().to_owned(),
            self.state.topology.clone(),
            self.state.settings.relay.clone(),
            self.state.metrics.clone(),
        )
        .woken_by(&self.state.wake)
    }

    /// Serves until `shutdown` fires, then stops accepting, lets in-flight requests finish and
    /// stops the embedded relay (if configured) after its current batch.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = if self.state.settings.relay.embedded {
            // Connections of its own (its LISTEN and its batches): under a rush of requests
            // the gateway's pool is all taken, and a relay queued behind them publishes late.
            let db = memberline_platform::db::connect_with(
                &self.state.settings.database,
                RELAY_CONNECTIONS,
            )
            .await?;
            Some(tokio::spawn(self.relay(db).run(shutdown.child_token())))
        } else {
            None
        };
        let hub = self.state.push_hub.clone();
        let push = tokio::spawn(hub.clone().run(
            self.state.settings.amqp.url.expose().to_owned(),
            self.state.topology.clone(),
            self.state.settings.relay.max_reconnect_delay_ms,
            shutdown.child_token(),
        ));
        let feed = tokio::spawn(hub.clone().watch_feed(
            self.state.db.clone(),
            Duration::from_millis(self.state.settings.push.feed_poll_ms),
            shutdown.child_token(),
        ));
        let orders = tokio::spawn(self.state.order_watch.clone().run(
            self.state.db.clone(),
            hub.subscribe(),
            Duration::from_millis(self.state.settings.push.feed_poll_ms),
            shutdown.child_token(),
        ));
        {
            // Open sockets close (1001) when the gateway stops; `run_until` waits for them.
            let (closing, shutdown) = (hub.closing.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                closing.cancel();
            });
        }
        let router = http::router(self.state.clone());
        tracing::info!(port = self.port(), "Gateway listening");
        axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server failed")?;
        shutdown.cancel();
        hub.sessions.close();
        if tokio::time::timeout(Duration::from_secs(15), hub.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket sessions did not close within 15 s");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), push).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), feed).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), orders).await;
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
