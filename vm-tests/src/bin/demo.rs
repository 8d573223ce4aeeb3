//! `slipway-demo`: a rolling OS update across QEMU nodes, the way a cluster admin meets
//! Slipway. Starts the update server, a Kubernetes API (the test kit's STAND-IN for
//! kube-apiserver), the operator and N QEMU nodes running the engine and the node agent;
//! publishes 2.0.0, applies a RolloutPolicy and shows the rollout live, with the dashboard URL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slipway_api::crd::RolloutPolicySpec;
use slipway_vm_tests::fleet::{
    CHANNEL, Efficiency, Fleet, FleetOptions, NodeView, fleet_policy, note_done,
};

/// A rolling OS update across QEMU nodes (software emulation; a few minutes).
#[derive(Debug, Parser)]
#[command(name = "slipway-demo", version, about)]
struct Args {
    /// Number of QEMU nodes (each needs about 800 MiB of memory and a share of the CPU).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Keep everything running after the rollout, to explore the dashboard; Ctrl-C ends it.
    #[arg(long)]
    keep: bool,
    /// A RolloutPolicy (YAML: a whole object or just its spec) instead of the default one
    /// (maxUnavailable 1, a reboot window opening at the next whole minute, health check).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Give up after this many minutes.
    #[arg(long, default_value_t = 30)]
    timeout_mins: u64,
    /// Only build (or reuse) the node images in target/vm-images, then exit.
    #[arg(long)]
    images_only: bool,
}

fn read_policy(path: &PathBuf) -> Result<RolloutPolicySpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let spec = match value.get("spec") {
        Some(s) if value.get("kind").is_some() => s.clone(),
        _ => value,
    };
    serde_json::from_value(spec)
        .with_context(|| format!("{} is not a RolloutPolicy spec", path.display()))
}

fn line(t: f64, v: &NodeView) -> String {
    // No status yet: the node's agent has not reported (the guest is still booting).
    let phase = v
        .phase
        .map_or("Booting".to_owned(), |p| p.as_str().to_owned());
    let version = match (&v.current, &v.target) {
        (Some(c), Some(t)) if c != t => format!("{c} → {t}"),
        (Some(c), _) => c.clone(),
        (None, Some(t)) => format!("? → {t}"),
        (None, None) => "?".into(),
    };
    let mut notes = Vec::new();
    if v.granted {
        notes.push("granted".to_owned());
    }
    if v.cordoned {
        notes.push("cordoned".to_owned());
    }
    if !v.ready {
        notes.push("NotReady".to_owned());
    }
    if let (Some(w), Some(_)) = (&v.waiting, v.phase) {
        notes.push(format!("waiting: {w}"));
    }
    if let Some(e) = &v.last_error {
        notes.push(format!("error: {e}"));
    }
    if let Some(b) = &v.booted {
        notes.push(format!("booted slot {b}"));
    }
    format!(
        "[{:>4}:{:02}] {:<8} {:<12} {:<16} {}",
        (t as u64) / 60,
        (t as u64) % 60,
        v.name,
        phase,
        version,
        notes.join(", ")
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let custom = args.policy.as_ref().map(read_policy).transpose()?;
    let started = Instant::now();
    println!(
        "Slipway demo: a rolling OS update across {} QEMU nodes (TCG software emulation)",
        args.nodes
    );
    println!("  building (or reusing) the node images…");
    let images = slipway_vm_tests::image::build().context("building the node images")?;
    if args.images_only {
        println!("  images in {}", images.dir.display());
        return Ok(());
    }
    println!(
        "  images ready in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        if images.build_secs > 0.0 {
            "built"
        } else {
            "cached"
        }
    );
    let mut fleet = Fleet::start(
        &FleetOptions {
            nodes: args.nodes,
            dir: None,
        },
        images,
    )?;
    println!();
    println!("  update server + dashboard  {}", fleet.server.url);
    println!(
        "  Kubernetes API             {}  (kube-apiserver {}, built from upstream; admin kubeconfig {})",
        fleet.cp.url(),
        slipway_testkit::control_plane::Versions::pinned().kubernetes,
        fleet.cp.admin_kubeconfig().display()
    );
    println!(
        "  slipway-operator           {}/metrics",
        fleet.operator_url
    );
    println!("  files and logs             {}", fleet.dir.display());
    println!(
        "  Slipway installed with helm install (images from the local registry {}, pinned by digest)",
        fleet.registry.addr()
    );
    println!();
    println!(
        "  booting the nodes: kubelet joins, the agent's DaemonSet pod and the workload start ..."
    );
    let ready_at = fleet.wait_ready(Duration::from_secs(900))?;
    println!(
        "  {} nodes Ready with their pods after {ready_at:.0} s",
        args.nodes
    );
    println!();
    let window_start = Timestamp::from_second(
        (Timestamp::now() + SignedDuration::from_secs(45)).as_second() / 60 * 60 + 60,
    )?;
    let spec = match custom {
        Some(s) => s,
        None => fleet_policy("2.0.0", window_start, 120, Duration::from_secs(120)),
    };
    let target = spec.version.clone().unwrap_or_else(|| "2.0.0".into());
    fleet.release("2.0.0").context("publishing 2.0.0")?;
    println!("  published 2.0.0 on channel {CHANNEL} (signed with the slipway CLI)");
    fleet.apply_policy("demo", spec.clone())?;
    println!(
        "  applied RolloutPolicy demo: maxUnavailable {}, windows {}",
        match &spec.max_unavailable {
            IntOrString::Int(i) => i.to_string(),
            IntOrString::String(s) => s.clone(),
        },
        if spec.windows.is_empty() {
            "none (always open)".to_owned()
        } else {
            spec.windows
                .iter()
                .map(|w| format!("\"{}\" for {} ({})", w.schedule, w.duration, w.time_zone))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("  nodes boot, download and stage 2.0.0, then wait for the window and their turn:");
    println!();
    let mut finished: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut last_summary = Instant::now();
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    let result = fleet.wait_until(
        &format!("every node on {target}"),
        Duration::from_secs(args.timeout_mins * 60),
        |vs| vs.iter().all(|v| v.done_on(&target)),
        |t, _, after| {
            for v in after {
                // One line per change of state; download progress goes in the summaries.
                let text = line(t, v);
                let key = text
                    .split_once(']')
                    .map_or(text.as_str(), |(_, k)| k)
                    .to_owned();
                if printed.get(&v.name) != Some(&key) {
                    println!("{text}");
                    printed.insert(v.name.clone(), key);
                }
            }
            note_done(&mut finished, after, &target);
            if last_summary.elapsed() > Duration::from_secs(20) {
                last_summary = Instant::now();
                let done = after.iter().filter(|v| v.done_on(&target)).count();
                let downloads: Vec<String> = after
                    .iter()
                    .filter_map(|v| Some(format!("{} {}%", v.name, v.progress?)))
                    .collect();
                println!(
                    "          ── {done}/{} nodes on {target}{}",
                    after.len(),
                    if downloads.is_empty() {
                        String::new()
                    } else {
                        format!("; downloading: {}", downloads.join(", "))
                    }
                );
            }
        },
    );
    println!();
    match &result {
        Ok(_) => println!(
            "Rollout complete in {:.0} s.",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("The rollout did not complete: {e:#}"),
    }
    let (worst, _) = fleet.max_unavailable_seen();
    println!("  most nodes unavailable at once: {worst}");
    let grants = fleet.first_grants();
    let k = match &spec.max_unavailable {
        IntOrString::Int(i) => (*i).max(1) as usize,
        IntOrString::String(_) => 1,
    };
    if let Some(eff) = Efficiency::compute(&grants, &finished, k) {
        for (node, secs) in &eff.cycles {
            println!("  {node}: grant → Ready on {target} in {secs:.0} s");
        }
        println!(
            "  rollout {:.0} s; ideal ceil({}/{k}) × median cycle = {:.0} s; overhead {:+.0}%",
            eff.rollout,
            eff.cycles.len(),
            eff.ideal,
            eff.overhead() * 100.0
        );
    }
    println!(
        "  dashboard: {}  (cluster view: {}cluster)",
        fleet.server.url, fleet.server.url
    );
    if args.keep {
        println!();
        println!("Everything keeps running (--keep). Press Ctrl-C to stop.");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Inside the runtime: the handlers install as shutdown_signal is called.
        rt.block_on(async { slipway_runtime::shutdown_signal().await });
    }
    println!("Stopping the nodes, the operator and the server…");
    fleet.shutdown()?;
    println!("Done; nothing is left running.");
    result.map(|_| ())
}
