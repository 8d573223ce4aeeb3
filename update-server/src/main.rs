//! `slipway-server`: parses settings, opens the store, binds, serves until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use slipway_api::TrustedRoot;
use slipway_runtime::{SystemClock, shutdown_signal};
use slipway_server::auth::AdminTokens;
use slipway_server::config::Settings;
use slipway_server::payloads::PayloadDir;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{self, Retention};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::parse();
    if settings.print_openapi {
        use std::io::Write as _;
        std::io::stdout()
            .write_all(&slipway_server::openapi::document_bytes())
            .context("writing the OpenAPI document")?;
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if settings.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }

    // TLS first: a server that would serve plain HTTP to the network is refused before it
    // opens anything.
    let certificates = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(slipway_server::tls::Certificates::load(cert, key)?),
        _ => {
            if !settings.listen.ip().is_loopback() && !settings.allow_plain_http {
                anyhow::bail!(
                    "refusing to serve plain HTTP on {}: machines' checks and admin tokens would cross the network unencrypted. \
                     Give --tls-cert and --tls-key, or --allow-plain-http (SLIPWAY_ALLOW_PLAIN_HTTP=true) behind a TLS-terminating proxy",
                    settings.listen
                );
            }
            None
        }
    };
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let url = settings.database_url();
    let store = store::open(&url, settings.database_pool)
        .await
        .context("opening the database")?;
    let root_path = settings.root_path();
    let root = match std::fs::read(&root_path) {
        Ok(bytes) => Some(
            TrustedRoot::bootstrap(&bytes)
                .with_context(|| format!("{}: not a valid root of trust", root_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %root_path.display(), "no root of trust: publishing is refused");
            None
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", root_path.display())),
    };
    let tokens_path = settings.tokens_path();
    let tokens = match AdminTokens::load(&tokens_path)? {
        Some(t) => t,
        None => {
            tracing::warn!(path = %tokens_path.display(), "no admin token file: the admin API is disabled");
            AdminTokens::default()
        }
    };
    let state = AppState::new(StateConfig {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        root,
        tokens,
        payloads: PayloadDir::open(&settings.data_dir)?,
        limits: Limits {
            payload: settings.max_payload_bytes,
            header_read: settings.header_read_timeout,
            body_deadline: settings.body_deadline,
            body_idle: settings.body_idle_timeout,
            write_stall: settings.write_stall_timeout,
            ..Limits::default()
        },
        retention: Retention {
            max_age: settings.events_max_age,
            max_count: settings.events_max_count,
            per_machine: settings.events_per_machine,
        },
        refresh: settings.refresh,
        gate_interval: settings.gate_interval,
    })
    .await?;
    let cloudevents = slipway_events::Emitter::start(
        slipway_events::Settings {
            queue_bound: settings.cloudevents_queue,
            ..slipway_events::Settings::new(
                settings
                    .public_url
                    .as_ref()
                    .map_or_else(|| "/slipway/server".to_string(), ToString::to_string),
                settings.cloudevents_sinks.clone(),
            )
        },
        state.metrics().cloudevents.clone(),
    )
    .context("starting the CloudEvents emitter")?;
    state.set_cloudevents(cloudevents.clone());
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let acceptor = match &certificates {
        Some(c) => {
            // SIGHUP re-reads the certificate and key; connections in progress are not touched.
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?;
            let reloading = c.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    match reloading.reload() {
                        Ok(()) => tracing::info!(
                            "SIGHUP: TLS certificate reloaded (and the client bundle)"
                        ),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the one in use stays (and the client bundle)")
                        }
                    }
                }
            });
            match &settings.client_ca {
                Some(bundle) => {
                    let acceptor = c.acceptor_with(Some(bundle))?;
                    let policy = slipway_server::tls::IdentityPolicy {
                        trust_domain: settings.spiffe_trust_domain.clone().unwrap_or_default(),
                        path_prefix: settings.spiffe_path_prefix.clone(),
                    };
                    tracing::info!(bundle = %bundle.display(), ids = %policy.id_of("MACHINE_ID"), "machines must present an X.509-SVID naming them");
                    state.require_identity(policy);
                    Some(acceptor)
                }
                None => Some(c.acceptor()?),
            }
        }
        None => None,
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    // Handlers first: a SIGTERM sent as soon as "listening" is read must stop the server
    // cleanly, not kill it (seen under load in `tls::plain_http_off_loopback...`).
    let shutdown = shutdown_signal();
    tracing::info!(%addr, backend = store.backend(), data_dir = %settings.data_dir.display(), "listening on {scheme}://{addr}");
    slipway_server::serve_with(listener, state, acceptor, shutdown).await?;
    cloudevents
        .shutdown(std::time::Duration::from_secs(5))
        .await;
    Ok(())
}
