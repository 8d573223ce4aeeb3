//! Benchmark: the engine applying a large payload from a local HTTP server into a slot file,
//! against the two limits measured in the same run over the same bytes: `openssl dgst -sha256`
//! (SHA-NI hashing, the CPU limit) and a plain copy + fsync (the disk limit).
//!
//! `cargo bench -p slipway-agent --bench apply` (sizes in MiB: `-- 1024 4096`; default 1024;
//! 8 MiB when run as a test by `cargo test --all-targets`).
//! The engine runs in a child process (this binary re-executed) so that its peak RSS (VmHWM)
//! is its own; the HTTP server serves the payload from memory in the parent. Each round
//! measures the two limits and the engine back to back; the ratio is the median of the rounds'.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{field, key, median};
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Manifest, Sha256Digest};

mod common;

/// Rounds (limits + engine); medians are reported.
const RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child-apply") {
        common::child_apply(Path::new(&args[1]));
        return;
    }
    let sizes: Vec<u64> = args
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect::<Vec<u64>>();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then a small payload checks that the benchmark still works without taking minutes.
    let default = if args.iter().any(|a| a == "--bench") {
        1024
    } else {
        8
    };
    let sizes = if sizes.is_empty() {
        vec![default]
    } else {
        sizes
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    for mib in sizes {
        rt.block_on(bench(mib << 20));
    }
}

async fn bench(len: u64) {
    let tmp = common::bench_dir("slipway-bench-");
    let dir = tmp.path();
    let payload = dir.join("payload.img");
    eprintln!("bench: writing a {} MiB payload", len >> 20);
    let digest = common::fill(&payload, len, 0x2545_F491_4F6C_DD1D);

    // The sha2 crate alone, in memory: shows whether its SHA-NI path is in use.
    let mut sha2_rate = Vec::new();
    {
        use sha2::Digest as _;
        let block = vec![0x5au8; 64 << 20];
        for _ in 0..RUNS {
            let t = Instant::now();
            let mut h = sha2::Sha256::new();
            for _ in 0..(len / block.len() as u64).max(1) {
                h.update(&block);
            }
            std::hint::black_box(h.finalize());
            sha2_rate.push(
                (len / block.len() as u64).max(1) as f64 * block.len() as f64
                    / t.elapsed().as_secs_f64(),
            );
        }
    }

    // Rounds of the two limits and the engine back to back, so that a noisy neighbour on
    // this shared machine weighs on all three of a round; the ratio is taken per round.
    // The inactive slot: a file of the payload's size, written once before the rounds, so that
    // the copy and the engine both overwrite allocated blocks, as on a slot partition.
    let slot = dir.join("slot-b");
    copy_rate(&payload, &slot, len);
    let server = serve(payload.clone()).await;
    let (mut openssl, mut copy, mut engine, mut rss, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..RUNS {
        let o = openssl_rate(&payload, len, digest);
        let c = copy_rate(&payload, &slot, len);
        let node = dir.join(format!("node-{round}"));
        let (e, r) = engine_rate(&node, &slot, &server, len, digest);
        eprintln!(
            "bench: round {}: openssl {:.2} GB/s, copy+fsync {:.2} GB/s, engine {:.2} GB/s \
             (ratio {:.2}), peak RSS {r:.1} MiB",
            round + 1,
            o / 1e9,
            c / 1e9,
            e / 1e9,
            e / o.min(c)
        );
        ratios.push(e / o.min(c));
        openssl.push(o);
        copy.push(c);
        engine.push(e);
        rss.push(r);
    }
    let gb = |b: f64| b / 1e9;
    let (o, c, e) = (median(openssl), median(copy), median(engine));
    let r = rss.iter().copied().fold(0.0, f64::max);
    println!(
        "apply benchmark, payload {} MiB, median of {RUNS} runs",
        len >> 20
    );
    println!("  openssl dgst -sha256 (CPU limit):  {:.2} GB/s", gb(o));
    println!("  copy + fsync (disk limit):         {:.2} GB/s", gb(c));
    println!(
        "  sha2 crate in memory (the engine's hasher): {:.2} GB/s",
        gb(median(sha2_rate))
    );
    println!(
        "  engine apply (download, hash, write, fsync, re-read verify): {:.2} GB/s",
        gb(e)
    );
    println!(
        "  ratio engine / slower limit:       {:.2} (median of the rounds' ratios; target >= 0.8)",
        median(ratios)
    );
    println!(
        "  engine peak RSS (VmHWM, highest):  {:.1} MiB (target <= 32)",
        r
    );
}

/// `openssl dgst -sha256` over the payload file, bytes per second.
fn openssl_rate(payload: &Path, len: u64, digest: Sha256Digest) -> f64 {
    let t = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(payload)
        .output()
        .expect("openssl");
    let rate = len as f64 / t.elapsed().as_secs_f64();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest.to_hex()));
    rate
}

/// A plain copy of the payload over the slot file, then fsync, bytes per second.
fn copy_rate(payload: &Path, slot: &Path, len: u64) -> f64 {
    let t = Instant::now();
    let mut src = std::fs::File::open(payload).unwrap();
    let mut dst = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(slot)
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n]).unwrap();
    }
    dst.sync_all().unwrap();
    len as f64 / t.elapsed().as_secs_f64()
}

/// One engine apply in a child process: bytes per second and the child's peak RSS in MiB.
fn engine_rate(
    node: &Path,
    slot: &Path,
    server: &Server,
    len: u64,
    digest: Sha256Digest,
) -> (f64, f64) {
    setup_node(node, slot, server, len, digest);
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--child-apply")
        .arg(node)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "engine child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let apply_secs = field(&stdout, "apply_secs");
    let hwm_kib = field(&stdout, "vmhwm_kib");
    std::fs::remove_dir_all(node).unwrap();
    (len as f64 / apply_secs, hwm_kib / 1024.0)
}

struct Server {
    url: String,
}

/// The payload server. It serves from memory (chunks of one shared buffer, no copies): on a
/// node the server is another machine, so its cost must not count against the engine on these
/// two cores (streaming from disk through tokio's blocking pool took about a third of a core).
async fn serve(payload: PathBuf) -> Server {
    use axum::routing::{get, post};
    let bytes = bytes::Bytes::from(std::fs::read(&payload).unwrap());
    let app = axum::Router::new()
        .route(
            "/v1/payloads/os",
            get(move || {
                let bytes = bytes.clone();
                async move {
                    let len = bytes.len();
                    let chunks = (0..len.div_ceil(1 << 20)).map(move |i| {
                        let end = ((i + 1) << 20).min(len);
                        Ok::<_, std::io::Error>(bytes.slice(i << 20..end))
                    });
                    axum::response::Response::builder()
                        .header("content-length", len)
                        .body(axum::body::Body::from_stream(futures::stream::iter(chunks)))
                        .unwrap()
                }
            }),
        )
        .route(
            "/v1/check",
            post(
                |axum::extract::State(offer): axum::extract::State<
                    Arc<std::sync::Mutex<Option<String>>>,
                >| async move {
                    offer
                        .lock()
                        .unwrap()
                        .clone()
                        .unwrap_or_else(|| "{\"update\":null}".into())
                },
            ),
        )
        .route(
            "/v1/events",
            post(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .with_state(OFFER.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url }
}

static OFFER: std::sync::LazyLock<Arc<std::sync::Mutex<Option<String>>>> =
    std::sync::LazyLock::new(|| Arc::new(std::sync::Mutex::new(None)));

fn setup_node(dir: &Path, slot_b: &Path, server: &Server, len: u64, digest: Sha256Digest) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("slot-a"), b"running").unwrap();
    common::machine(dir, &server.url, &dir.join("slot-a"), slot_b, "");
    let manifest = Manifest {
        kind: RELEASE_TYPE.into(),
        channel: "stable".into(),
        version: "2.0.0".parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        os: Some(OsImage {
            url: "/v1/payloads/os".into(),
            size: len,
            sha256: digest,
            format: PayloadFormat::Raw,
            delta: None,
        }),
        runtime: vec![],
        min_from_version: None,
        advisories: vec![],
    };
    let answer = serde_json::json!({ "update": manifest.sign(&[&key()]) });
    *OFFER.lock().unwrap() = Some(answer.to_string());
}
