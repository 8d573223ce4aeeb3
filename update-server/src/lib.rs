//! The update server (`slipway-server`): channels with phased rollouts, signed releases,
//! payloads served with HTTP Range, what every machine reports, and metrics. `rollout` holds
//! the decisions (pure); `routes` the HTTP API; `store` SQLite and PostgreSQL behind one trait.
//! Also the `slipway` CLI's file helpers ([`files`]).

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod files;
pub mod metrics;
pub mod payloads;
pub mod rollout;
pub mod routes;
pub mod state;
pub mod store;

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

pub use error::{Error, Result};
pub use state::AppState;

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight requests
/// finish, flushes the store and returns. Housekeeping (snapshot refresh for other replicas'
/// changes, event retention) runs alongside.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(state.clone(), stop_rx));
    let app = routes::router(state.clone());
    // Small JSON answers on keep-alive connections: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await;
    let _ = stop_tx.send(true);
    let _ = housekeeping.await;
    state.store().close().await;
    tracing::info!("stopped");
    result
}

async fn housekeeping(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut refresh = tokio::time::interval(state.0.refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = refresh.tick() => {
                if let Err(e) = state.reload().await {
                    tracing::warn!(error = %e, "refreshing releases and channels failed");
                }
            }
            _ = prune.tick() => {
                let now = state.0.clock.now();
                match state.store().prune_events(state.0.retention, now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned events beyond retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning events failed"),
                }
            }
        }
    }
}
