//! The post-boot health check from the node's `RolloutPolicy.spec.healthCheck`: a systemd unit
//! active, a command exiting 0, and the Node Ready, all at once, polled until they pass or the
//! timeout ends. A failure names the check that was still failing, so `NodeUpdate.status.
//! lastError` says why the slot was marked bad.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::systemd::SystemdClient;

/// What must hold.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// A unit that must be `active`.
    pub unit: Option<String>,
    /// argv of a command that must exit 0 (empty: none).
    pub command: Vec<String>,
    /// The Node must be Ready.
    pub node_ready: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// Time between attempts.
    pub interval: Duration,
    /// Longest a single command run may take.
    pub command_timeout: Duration,
}

/// Reads a unit's `ActiveState`.
#[async_trait]
pub trait Units: Send + Sync {
    /// `active`, `failed`, `inactive`, ... (`inactive` for a unit systemd does not know).
    async fn active_state(&self, unit: &str) -> Result<String, String>;
}

/// Reads whether the Node is Ready.
#[async_trait]
pub trait NodeReadiness: Send + Sync {
    /// The Node's `Ready` condition is `True`.
    async fn ready(&self) -> Result<bool, String>;
}

/// systemd over D-Bus.
#[derive(Debug, Clone)]
pub struct SystemdUnits {
    client: SystemdClient,
}

impl SystemdUnits {
    /// Uses `conn` (the system bus in production).
    pub fn new(conn: zbus::Connection) -> Self {
        Self {
            client: SystemdClient::new(conn),
        }
    }
}

#[async_trait]
impl Units for SystemdUnits {
    async fn active_state(&self, unit: &str) -> Result<String, String> {
        self.client
            .active_state(unit)
            .await
            .map_err(|e| e.to_string())
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("health command {program:?} could not start: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "health command {program:?} did not finish within {:.1}s",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("health command {program:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Err(format!(
                "health command {program:?} exited with {}{}",
                out.status,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ))
        }
    }
}

/// One pass over every check; the first failing one, in words.
pub async fn check_once(
    check: &HealthCheck,
    units: &dyn Units,
    node: &dyn NodeReadiness,
) -> Result<(), String> {
    if let Some(unit) = &check.unit {
        let state = units
            .active_state(unit)
            .await
            .map_err(|e| format!("reading {unit}: {e}"))?;
        if state != "active" {
            return Err(format!("unit {unit} is {state}, not active"));
        }
    }
    run_command(&check.command, check.command_timeout).await?;
    if check.node_ready
        && !node
            .ready()
            .await
            .map_err(|e| format!("reading the Node: {e}"))?
    {
        return Err("the Node is not Ready".into());
    }
    Ok(())
}

/// Polls until every check passes (`Ok`) or the timeout ends (`Err` with the last failure).
pub async fn wait_healthy(
    check: &HealthCheck,
    units: &dyn Units,
    node: &dyn NodeReadiness,
) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    loop {
        let failure = match check_once(check, units, node).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() + check.interval > deadline {
            return Err(format!(
                "not healthy after {:.1}s: {failure}",
                check.timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(check.interval).await;
    }
}
