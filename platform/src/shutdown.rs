//! One cancellation token per process, cancelled on Ctrl-C or SIGTERM. Every long-running loop
//! (HTTP server, relay, consumers) listens to it or to a child of it.

use tokio_util::sync::CancellationToken;

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn on_signals() -> CancellationToken {
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
