//! Stopping cleanly on SIGTERM (systemd, the kubelet) or Ctrl-C.

/// Completes on the first SIGTERM or SIGINT. If the SIGTERM handler cannot be installed, says
/// so and waits for Ctrl-C alone.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_completes_the_signal() {
        let waiter = tokio::spawn(shutdown_signal());
        // Let the handler install before the signal is sent.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke on SIGTERM")
            .unwrap();
    }
}
