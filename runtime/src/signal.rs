//! Stopping cleanly on SIGTERM (systemd, the kubelet) or Ctrl-C.

/// Completes on the first SIGTERM or SIGINT. The handlers are installed by this call, not when
/// the future is first polled: a SIGTERM sent any time after it (say, right after a server
/// logged that it listens) stops gracefully instead of killing the process by the signal's
/// default action. Call it inside the Tokio runtime. If a handler cannot be installed, says so
/// and waits for the other.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"))
        .ok();
    let int = signal(SignalKind::interrupt())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGINT"))
        .ok();
    async move {
        let term = async {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let int = async {
            match int {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = term => tracing::info!("SIGTERM received: stopping"),
            () = int => tracing::info!("interrupted: stopping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_completes_the_signal() {
        // Installed by the call itself: a signal sent before the future is ever polled still
        // completes it, and does not kill the test process.
        let waiter = shutdown_signal();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke on SIGTERM");
    }
}
