//! `kubectl slipway`: Slipway's rollouts from the command line. Install by putting this binary
//! on PATH (kubectl finds plugins named `kubectl-*`). Reads and writes only the RolloutPolicy
//! and NodeUpdate objects the operator uses, with your kubeconfig's credentials.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use slipway_api::crd::{CLEAR_HALT_ANNOTATION, NodeUpdate, RolloutPolicy};
use slipway_operator::kubectl;

/// Slipway's rollouts: which nodes update, which wait and why, and the policy switches.
#[derive(Debug, Parser)]
#[command(name = "kubectl slipway", version, about)]
struct Args {
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every RolloutPolicy (target, progress, budget, window, state) and every node (phase,
    /// versions, grant, what it waits for).
    Status,
    /// Why NODE is waiting (or what it is doing): the reason, its policy's budget, window,
    /// settle time, closed gates, halt or pause.
    Why {
        /// The node.
        node: String,
    },
    /// Stop new grants in POLICY (nodes already draining or rebooting finish).
    Pause {
        /// The RolloutPolicy.
        policy: String,
    },
    /// Let POLICY grant again.
    Resume {
        /// The RolloutPolicy.
        policy: String,
    },
    /// Clear POLICY's halt after failures (the failed nodes are acknowledged and do not count
    /// towards haltAfterFailures again).
    ClearHalt {
        /// The RolloutPolicy.
        policy: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(context: Option<String>) -> Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(e) if options.context.is_none() => kube::Config::incluster()
            .map_err(|_| e)
            .context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?,
        Err(e) => return Err(e).context("reading the kubeconfig"),
    };
    Client::try_from(config).context("connecting to the Kubernetes API")
}

async fn policy(api: &Api<RolloutPolicy>, name: &str) -> Result<RolloutPolicy> {
    match api.get_opt(name).await.context("reading RolloutPolicies")? {
        Some(p) => Ok(p),
        None => bail!("no RolloutPolicy named {name:?} (kubectl slipway status lists them)"),
    }
}

async fn run(args: Args) -> Result<String> {
    let client = client(args.context).await?;
    let policies: Api<RolloutPolicy> = Api::all(client.clone());
    let updates: Api<NodeUpdate> = Api::all(client.clone());
    match args.command {
        Cmd::Status => {
            let ps = policies
                .list(&ListParams::default())
                .await
                .context("listing RolloutPolicies (are Slipway's CRDs installed?)")?;
            let us = updates
                .list(&ListParams::default())
                .await
                .context("listing NodeUpdates")?;
            Ok(kubectl::status(&ps.items, &us.items))
        }
        Cmd::Why { node } => {
            let Some(update) = updates
                .get_opt(&node)
                .await
                .context("reading NodeUpdates")?
            else {
                bail!(
                    "node {node:?} has no NodeUpdate: no such node, or the operator has not seen it yet"
                );
            };
            let p = match &update.spec.policy {
                Some(name) => policies
                    .get_opt(name)
                    .await
                    .context("reading RolloutPolicies")?,
                None => None,
            };
            Ok(kubectl::why(&node, &update, p.as_ref()))
        }
        Cmd::Pause { policy: name } => set_paused(&policies, &name, true).await,
        Cmd::Resume { policy: name } => set_paused(&policies, &name, false).await,
        Cmd::ClearHalt { policy: name } => {
            let p = policy(&policies, &name).await?;
            if p.status.as_ref().and_then(|s| s.halt.as_ref()).is_none() {
                return Ok(format!(
                    "rolloutpolicy/{name} is not halted; nothing to clear\n"
                ));
            }
            let token = jiff::Timestamp::now().as_second().to_string();
            policies
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {CLEAR_HALT_ANNOTATION: token}}}),
                    ),
                )
                .await
                .with_context(|| format!("annotating rolloutpolicy/{name}"))?;
            Ok(format!(
                "rolloutpolicy/{name}: halt cleared (the operator acknowledges the failed nodes on its next evaluation)\n"
            ))
        }
    }
}

async fn set_paused(api: &Api<RolloutPolicy>, name: &str, paused: bool) -> Result<String> {
    let p = policy(api, name).await?;
    if p.spec.paused == paused {
        let already = if paused {
            "already paused"
        } else {
            "not paused"
        };
        return Ok(format!("rolloutpolicy/{name} is {already}\n"));
    }
    let word = if paused { "paused" } else { "resumed" };
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": paused}})),
    )
    .await
    .with_context(|| format!("patching rolloutpolicy/{name}"))?;
    Ok(format!("rolloutpolicy/{name} {word}\n"))
}
