//! The update server (`slipway-server`): channels with phased rollouts, signed releases,
//! payloads served with HTTP Range, what every machine reports, and metrics. `rollout` holds
//! the decisions (pure); `routes` the HTTP API; `store` SQLite and PostgreSQL behind one trait.
//! Also the `slipway` CLI's helpers: [`files`], [`magic`] (payload formats by their first
//! bytes) and [`release`] (building release manifests from flags and files).

pub mod api_error;
pub mod auth;
pub mod clusters;
pub mod config;
pub mod conn;
pub mod dashboard;
pub mod deltafiles;
pub mod error;
pub mod files;
pub mod gate;
pub mod gatekeeper;
pub mod magic;
pub mod metrics;
pub mod mirror;
pub mod openapi;
pub mod payloads;
pub mod release;
pub mod rollout;
pub mod routes;
pub mod state;
pub mod store;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

pub use error::{Error, Result};
pub use state::AppState;

/// How long a client may take to send a request's headers (also bounds idle keep-alive
/// connections): slow or stalled clients cannot pin connections forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight requests
/// finish (up to [`SHUTDOWN_GRACE`]), flushes the store and returns. Housekeeping (snapshot
/// refresh for other replicas' changes, event retention) runs alongside.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (see [`tls::Certificates::acceptor`]).
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = tokio::spawn(housekeeping(state.clone(), stop_rx));
    let app = routes::router(state.clone());
    // axum::serve sets no timer, so hyper would wait for headers forever; this loop is
    // axum::serve plus a header-read timeout.
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.0.limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small JSON answers on keep-alive connections: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = state.0.limits.header_read;
        let write_stall = state.0.limits.write_stall;
        let tls = tls.clone();
        tokio::spawn(async move {
            // hyper's header-read timeout starts with the first request's first byte (the
            // automatic HTTP/1-or-2 detection reads it without a timer): a client that
            // connects and sends nothing would hold its connection forever.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(first_byte, stream.peek(&mut first)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let stream = conn::WriteProgress::new(stream, write_stall);
            // Each request of the connection carries the client's verified SPIFFE ID, if any.
            let with_identity = |identity: tls::ClientIdentity| {
                TowerToHyperService::new(tower::ServiceExt::map_request(
                    app,
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(identity.clone());
                        req
                    },
                ))
            };
            let result = match tls {
                None => {
                    let service = with_identity(tls::ClientIdentity::default());
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    // The handshake is bounded like the headers: a client that stalls in it
                    // cannot hold its connection.
                    let stream =
                        match tokio::time::timeout(first_byte, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map_or(tls::PeerId::None, |c| tls::spiffe_id(c));
                    let service = with_identity(tls::ClientIdentity(identity));
                    // A client that completes the handshake and then sends nothing is held no
                    // longer than one that sends nothing at all.
                    let Some(stream) = conn::Prefixed::first_bytes(stream, first_byte).await else {
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; dropping them");
    }
    let _ = stop_tx.send(true);
    let _ = housekeeping.await;
    state.store().close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn housekeeping(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The state loaded its first snapshot when it was built: the first refresh is one period on.
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + state.0.refresh,
        state.0.refresh,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gates = tokio::time::interval(state.0.gate_interval);
    gates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Replicas on one database tell each other of their changes (PostgreSQL's LISTEN/NOTIFY):
    // live views refresh on every replica, and a release or channel change is reloaded at once.
    let listener = {
        let state = state.clone();
        state
            .store()
            .clone()
            .listen(std::sync::Arc::new(move |notice: &str| {
                state.take_notice(notice)
            }))
    };
    let replicated = listener.is_some();
    let mut announce = tokio::time::interval(state::ANNOUNCE_EVERY);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced = state.local_changes();
    let mut adoption = tokio::time::interval(state::ADOPTION_EVERY);
    adoption.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                if let Some(l) = listener {
                    l.abort();
                }
                return;
            }
            _ = announce.tick(), if replicated => {
                let seen = state.local_changes();
                if let Some(notice) = state.notice_since(announced) {
                    match state.store().announce(&notice).await {
                        Ok(()) => announced = seen,
                        Err(e) => tracing::warn!(error = %e, "telling other replicas of a change failed"),
                    }
                }
            }
            _ = adoption.tick() => {
                if let Err(e) = state.sample_adoption().await {
                    tracing::warn!(error = %e, "counting machines per version failed");
                }
            }
            _ = refresh.tick() => {
                if let Err(e) = state.reload_with(false).await {
                    tracing::warn!(error = %e, "refreshing releases and channels failed");
                }
            }
            _ = gates.tick() => {
                if let Err(e) = gatekeeper::tick(&state).await {
                    tracing::warn!(error = %e, "evaluating health gates failed");
                }
            }
            _ = prune.tick() => {
                let now = state.0.clock.now();
                match state.store().prune_events(state.0.retention, now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned events beyond retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning events failed"),
                }
                if let Err(e) = state.store().prune_adoption(state.0.retention.max_age, now).await {
                    tracing::warn!(error = %e, "pruning adoption samples failed");
                }
                match state.store().prune_cluster_history(state.0.retention.max_age, now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned cluster history beyond retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning cluster history failed"),
                }
            }
        }
    }
}
