//! Benchmark: a delta apply against a full apply of the same release, in the same run, for
//! (a) one Debian package added (the vm-tests' slot images 1.0.0 -> 2.0.0), (b) the kernel
//! replaced (2.0.0 -> the same tree with another Debian cloud kernel, built by
//! `scripts/bench-images.sh`), (c) an unrelated image (random bytes), and, with `--bench`, a
//! 4 GiB image with 1 block in 256 changed, for the engine's peak RSS at that size.
//!
//! Each apply runs the engine in a child process (this binary re-executed: its VmHWM is its
//! own) against a local HTTP server that serves the zstd payload, the block index and the
//! uncompressed image with `Range` from files and counts the bytes it sends. Each round runs
//! the delta and the full apply back to back; medians of the rounds are reported.
//!
//! `cargo bench -p slipway-agent --bench delta` (`make bench` builds the images first). Under
//! `cargo test --all-targets` (no `--bench`) it checks itself on small generated images.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{field, fill, key, median};
use slipway_api::blockindex::BlockIndex;
use slipway_api::manifest::{Blob, DeltaSource, OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Manifest, Sha256Digest};

mod common;

const BLOCK: u32 = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child-apply") {
        common::child_apply(Path::new(&args[1]));
        return;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run(bench));
}

/// Rounds per case (delta and full apply each); medians are reported.
fn rounds(bench: bool) -> usize {
    if bench { 3 } else { 1 }
}

struct Case {
    name: &'static str,
    old: PathBuf,
    new: PathBuf,
    /// The bytes share a delta may fetch to meet the target, if any.
    target_share: Option<f64>,
}

async fn run(bench: bool) {
    let tmp = common::bench_dir("slipway-delta-bench-");
    let dir = tmp.path();
    let mut cases = Vec::new();
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    // scripts/bench-images.sh builds all three from one tree; without it, (a) from the
    // vm-tests' own image set.
    let bench_images = target.join("bench-images");
    let set = if bench_images.join("slot-kernel.img").exists() {
        Some(bench_images)
    } else {
        std::fs::read_dir(target.join("vm-images"))
            .ok()
            .and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.join("slot-1.0.0.img").exists() && p.join("slot-2.0.0.img").exists()
                })
            })
    };
    match (bench, set) {
        (true, Some(set)) => {
            cases.push(Case {
                name: "(a) one package added",
                old: set.join("slot-1.0.0.img"),
                new: set.join("slot-2.0.0.img"),
                target_share: Some(0.15),
            });
            let kernel = set.join("slot-kernel.img");
            if kernel.exists() {
                cases.push(Case {
                    name: "(b) kernel replaced",
                    old: set.join("slot-2.0.0.img"),
                    new: kernel,
                    target_share: None,
                });
            } else {
                println!("(b) skipped: no slot-kernel.img (run scripts/bench-images.sh)");
            }
            let unrelated = dir.join("unrelated.img");
            let len = std::fs::metadata(set.join("slot-2.0.0.img")).unwrap().len();
            fill(&unrelated, len, 77);
            cases.push(Case {
                name: "(c) unrelated image",
                old: set.join("slot-1.0.0.img"),
                new: unrelated,
                target_share: None,
            });
            let (old, new) = (dir.join("big-old.img"), dir.join("big-new.img"));
            eprintln!("bench: writing two 4 GiB images");
            fill(&old, 4 << 30, 5);
            changed_copy(&old, &new, 256);
            cases.push(Case {
                name: "(d) 4 GiB, 1 block in 256 changed",
                old,
                new,
                target_share: None,
            });
        }
        (true, None) => {
            println!(
                "no slot images in target/bench-images or target/vm-images: run scripts/bench-images.sh"
            );
            std::process::exit(1);
        }
        (false, _) => {
            let (old, new, other) = (dir.join("old.img"), dir.join("new.img"), dir.join("o.img"));
            fill(&old, 8 << 20, 1);
            changed_copy(&old, &new, 64);
            fill(&other, 8 << 20, 2);
            cases.push(Case {
                name: "small, 1 block in 64 changed",
                old: old.clone(),
                new,
                target_share: Some(0.05),
            });
            cases.push(Case {
                name: "small, unrelated",
                old,
                new: other,
                target_share: None,
            });
        }
    }
    println!(
        "delta benchmark: delta apply vs full apply, same run, median of {} rounds",
        rounds(bench)
    );
    println!(
        "{:<36} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "case", "image MiB", "fetched", "delta s", "full s", "ratio", "RSS dlt", "RSS full"
    );
    for case in &cases {
        let r = measure(dir, case, rounds(bench)).await;
        println!(
            "{:<36} {:>10.1} {:>8.2}% {:>9.2} {:>9.2} {:>7.2} {:>8.1}M {:>8.1}M{}",
            case.name,
            r.image as f64 / (1 << 20) as f64,
            r.share * 100.0,
            r.delta_secs,
            r.full_secs,
            r.delta_secs / r.full_secs,
            r.delta_rss,
            r.full_rss,
            if r.fell_back {
                "  (fell back to the full payload)"
            } else {
                ""
            }
        );
        if let Some(max) = case.target_share {
            assert!(
                r.share <= max,
                "{}: fetched {:.2}% (target <= {:.0}%)",
                case.name,
                r.share * 100.0,
                max * 100.0
            );
        }
    }
    println!("targets: (a) fetched <= 15%; (c) ratio <= 1 (no slower); (d) RSS <= 64 MiB");
}

struct Measured {
    image: u64,
    share: f64,
    delta_secs: f64,
    full_secs: f64,
    delta_rss: f64,
    full_rss: f64,
    fell_back: bool,
}

async fn measure(dir: &Path, case: &Case, rounds: usize) -> Measured {
    let work = dir.join("case");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    // The release: a zstd payload (as published), the index and the uncompressed image.
    eprintln!("bench: {}: compressing and indexing", case.name);
    let payload = work.join("payload.zst");
    let status = Command::new("zstd")
        .args(["-q", "-1", "-T0", "-f"])
        .arg(&case.new)
        .arg("-o")
        .arg(&payload)
        .status()
        .expect("zstd");
    assert!(status.success());
    let (index, image_digest) = BlockIndex::build(
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&case.new).unwrap()),
        BLOCK,
    )
    .unwrap();
    let index_file = work.join("index");
    std::fs::write(&index_file, index.to_bytes()).unwrap();
    let image = index.image_size;
    drop(index);
    let server = serve(vec![
        ("payload", payload.clone()),
        ("index", index_file.clone()),
        ("image", case.new.clone()),
    ])
    .await;
    let digest_of = |p: &Path| {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Sha256Digest::from_hasher(h)
    };
    let payload_len = std::fs::metadata(&payload).unwrap().len();
    let index_len = std::fs::metadata(&index_file).unwrap().len();
    let manifest = Manifest {
        kind: RELEASE_TYPE.into(),
        channel: "stable".into(),
        version: "2.0.0".parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        os: Some(OsImage {
            url: "/v1/payloads/payload".into(),
            size: payload_len,
            sha256: digest_of(&payload),
            format: PayloadFormat::Zstd,
            delta: Some(DeltaSource {
                block_size: BLOCK,
                index: Blob {
                    url: "/v1/payloads/index".into(),
                    size: index_len,
                    sha256: digest_of(&index_file),
                },
                image: Blob {
                    url: "/v1/payloads/image".into(),
                    size: image,
                    sha256: image_digest,
                },
            }),
        }),
        runtime: vec![],
        min_from_version: None,
        advisories: vec![],
    };
    manifest.validate().unwrap();
    *OFFER.lock().unwrap() =
        Some(serde_json::json!({ "update": manifest.sign(&[&key()]) }).to_string());
    // The running slot: the old image; the inactive slot: a sparse file of zeros (nothing
    // useful left in it), made anew for every apply.
    let running = work.join("slot-a");
    std::fs::copy(&case.old, &running).unwrap();
    let (mut delta, mut full, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    let (mut delta_rss, mut full_rss, mut fell_back) = (0f64, 0f64, false);
    for round in 0..rounds {
        for use_delta in [true, false] {
            let node = work.join(format!("node-{round}-{use_delta}"));
            setup_node(&node, &running, image, &server.url, use_delta);
            server.sent.store(0, Ordering::Relaxed);
            let out = Command::new(std::env::current_exe().unwrap())
                .arg("--child-apply")
                .arg(&node)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "engine child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let secs = field(&stdout, "apply_secs");
            let rss = field(&stdout, "vmhwm_kib") / 1024.0;
            let sent = server.sent.load(Ordering::Relaxed);
            if use_delta {
                delta.push(secs);
                delta_rss = delta_rss.max(rss);
                shares.push(sent as f64 / image as f64);
                fell_back |= sent >= payload_len;
            } else {
                full.push(secs);
                full_rss = full_rss.max(rss);
            }
            std::fs::remove_dir_all(&node).unwrap();
        }
    }
    Measured {
        image,
        share: median(shares),
        delta_secs: median(delta),
        full_secs: median(full),
        delta_rss,
        full_rss,
        fell_back,
    }
}

/// `old` with one 4 KiB block in every `every` changed, into `new`.
fn changed_copy(old: &Path, new: &Path, every: u64) {
    let mut src = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(old).unwrap());
    let mut dst = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(new).unwrap());
    let mut block = vec![0u8; BLOCK as usize];
    let mut i = 0u64;
    loop {
        let n = src.read(&mut block).unwrap();
        if n == 0 {
            break;
        }
        if i % every == every / 2 {
            for b in &mut block[..n] {
                *b = !*b;
            }
        }
        dst.write_all(&block[..n]).unwrap();
        i += 1;
    }
    dst.flush().unwrap();
}

struct Server {
    url: String,
    sent: Arc<AtomicU64>,
}

static OFFER: std::sync::LazyLock<Arc<std::sync::Mutex<Option<String>>>> =
    std::sync::LazyLock::new(|| Arc::new(std::sync::Mutex::new(None)));

/// Serves `files` at `/v1/payloads/{name}` from disk with single `Range`s, counting the bytes
/// sent; answers checks with the offer in [`OFFER`].
async fn serve(files: Vec<(&'static str, PathBuf)>) -> Server {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use futures::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    type Files = Arc<(Vec<(&'static str, PathBuf)>, Arc<AtomicU64>)>;
    let sent = Arc::new(AtomicU64::new(0));
    let state: Files = Arc::new((files, sent.clone()));
    let app =
        axum::Router::new()
            .route(
                "/v1/payloads/{name}",
                get(
                    |State(files): State<Files>,
                     UrlPath(name): UrlPath<String>,
                     headers: HeaderMap| async move {
                        let Some((_, path)) = files.0.iter().find(|(n, _)| *n == name) else {
                            return StatusCode::NOT_FOUND.into_response();
                        };
                        let mut file = tokio::fs::File::open(path).await.unwrap();
                        let len = file.metadata().await.unwrap().len();
                        let range = headers
                            .get(header::RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes="))
                            .and_then(|v| v.split_once('-'))
                            .and_then(|(a, b)| {
                                let a: u64 = a.parse().ok()?;
                                let b: u64 = if b.is_empty() {
                                    len - 1
                                } else {
                                    b.parse().ok()?
                                };
                                Some((a, b.min(len - 1)))
                            });
                        let (status, start, end) = match range {
                            Some((a, b)) if a <= b => (StatusCode::PARTIAL_CONTENT, a, b),
                            _ => (StatusCode::OK, 0, len - 1),
                        };
                        file.seek(std::io::SeekFrom::Start(start)).await.unwrap();
                        let counter = files.1.clone();
                        let body = tokio_util::io::ReaderStream::with_capacity(
                            file.take(end + 1 - start),
                            1 << 20,
                        )
                        .map(move |c| {
                            if let Ok(c) = &c {
                                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                            }
                            c
                        });
                        let mut resp = axum::body::Body::from_stream(body).into_response();
                        *resp.status_mut() = status;
                        let h = resp.headers_mut();
                        h.insert(header::CONTENT_LENGTH, (end + 1 - start).into());
                        if status == StatusCode::PARTIAL_CONTENT {
                            h.insert(
                                header::CONTENT_RANGE,
                                format!("bytes {start}-{end}/{len}").parse().unwrap(),
                            );
                        }
                        resp
                    },
                ),
            )
            .with_state(state)
            .route(
                "/v1/check",
                post(|| async { OFFER.lock().unwrap().clone().unwrap_or_default() }),
            )
            .route(
                "/v1/events",
                post(|| async { axum::http::StatusCode::NO_CONTENT }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    // As the update server does: without TCP_NODELAY a small response's body waits for the
    // client's delayed ACK of its head (40 ms a request).
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url, sent }
}

/// A machine whose running slot is `running`, its inactive slot sparse and empty.
fn setup_node(dir: &Path, running: &Path, image: u64, url: &str, delta: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::File::create(dir.join("slot-b"))
        .unwrap()
        .set_len(image)
        .unwrap();
    common::machine(
        dir,
        url,
        running,
        &dir.join("slot-b"),
        &format!("delta = {delta}"),
    );
}
