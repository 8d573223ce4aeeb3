//! `slipway-image`: builds Slipway's container images as OCI image layouts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use slipway_images::{COMPONENTS, Options, Provenance, layout_dir, rootfs};

/// Builds the slipway-operator, slipway-agent and slipway-server images from built binaries,
/// without a container engine: one OCI image layout per image under --out, reproducible (the
/// same binaries and --created give the same digests). Prints NAME DIGEST SIZE per image and
/// writes them to OUT/images.env (OPERATOR_DIGEST=sha256:..., AGENT_DIGEST, SERVER_DIGEST).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where the binaries are (e.g. target/release).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the layouts go: OUT/slipway-operator, OUT/slipway-agent, OUT/slipway-server.
    #[arg(long, default_value = "target/images")]
    out: PathBuf,
    /// The images' version: the tag in each layout's index and
    /// org.opencontainers.image.version.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// The commit built (org.opencontainers.image.revision).
    #[arg(long, default_value = "unknown")]
    revision: String,
    /// Where the source lives (org.opencontainers.image.source).
    #[arg(long, default_value = "https://github.com/slipway-dev/slipway")]
    source: String,
    /// Creation time, seconds since the epoch; defaults to $SOURCE_DATE_EPOCH, else 0.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    created: u64,
    /// The CA bundle copied into the images (empty: none).
    #[arg(long, default_value = rootfs::CA_BUNDLE)]
    ca_bundle: String,
    /// zstd level of the layers (1-22; 19 makes small images, 3 fast ones).
    #[arg(long, default_value_t = slipway_images::layout::ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: i32,
    /// Also build slipway-pause, the pod sandbox image of the test nodes, from this static
    /// `pause` binary (scripts/build-node-runtime.sh builds it).
    #[arg(long, value_name = "PATH")]
    pause: Option<PathBuf>,
    /// Build only these images (default: all three).
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    for name in &args.only {
        anyhow::ensure!(
            COMPONENTS.iter().any(|c| c.name == name),
            "--only {name}: no such image (slipway-operator, slipway-agent, slipway-server)"
        );
    }
    let ca = if args.ca_bundle.is_empty() {
        None
    } else {
        Some(std::fs::read(&args.ca_bundle).with_context(|| {
            format!(
                "reading the CA bundle {} (apt-get install ca-certificates, or --ca-bundle '')",
                args.ca_bundle
            )
        })?)
    };
    let options = Options {
        bin_dir: args.bin_dir,
        ca_bundle: ca,
        zstd_level: args.zstd_level,
    };
    let provenance = Provenance {
        source: args.source,
        revision: args.revision,
        version: args.tag,
        created: args.created,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut env = String::new();
    for c in COMPONENTS
        .iter()
        .filter(|c| args.only.is_empty() || args.only.iter().any(|o| o == c.name))
    {
        let dir = layout_dir(&args.out, c);
        let built = c
            .build(&options, &dir, &provenance)
            .with_context(|| format!("building {}", c.name))?;
        println!(
            "{} {} {} bytes ({})",
            c.name,
            built.manifest.digest,
            built.download_size(),
            dir.display()
        );
        env.push_str(&format!(
            "{}_DIGEST={}\n",
            c.name.trim_start_matches("slipway-").to_uppercase(),
            built.manifest.digest
        ));
    }
    if let Some(pause) = &args.pause {
        let dir = args.out.join("slipway-pause");
        let built = slipway_images::pause(pause, &dir, &provenance, options.zstd_level)
            .context("building slipway-pause")?;
        println!(
            "slipway-pause {} {} bytes ({})",
            built.manifest.digest,
            built.download_size(),
            dir.display()
        );
        env.push_str(&format!("PAUSE_DIGEST={}\n", built.manifest.digest));
    }
    std::fs::write(args.out.join("images.env"), env)?;
    Ok(())
}
