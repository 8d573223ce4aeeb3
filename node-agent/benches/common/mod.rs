//! What the engine benchmarks share: a test machine's files, the engine run in a child process
//! (its peak RSS its own), and reading the figures the child prints.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use slipway_agent::engine::sysext::UnitManager;
use slipway_agent::engine::{Engine, Facts, Settings};
use slipway_api::{EnginePhase, PrivateKey, Root, Sha256Digest};

/// `len` pseudo-random bytes (xorshift from `seed`) into `path`, fsynced; returns their SHA-256.
pub fn fill(path: &Path, len: u64, seed: u64) -> Sha256Digest {
    use sha2::Digest as _;
    use std::io::Write as _;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut h = sha2::Sha256::new();
    let mut x: u64 = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    f.get_ref().sync_all().unwrap();
    Sha256Digest::from_hasher(h)
}

/// The release key (and the machine's one-key root of trust).
/// A temporary directory for a bench's files, under `BENCH_DIR` if set (a disk rather than the
/// tmpfs of /tmp, for sizes that do not fit in memory).
pub fn bench_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(
            std::env::var_os("BENCH_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .unwrap()
}

pub fn key() -> PrivateKey {
    PrivateKey::from_seed([1; 32])
}

/// The median of `v` (sorted in place).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The value the child printed as `name=value`.
pub fn field(out: &str, name: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("child printed no {name}: {out}"))
}

/// A machine in `dir` running 1.0.0 from slot A (`slot_a`), writing slot B (`slot_b`), checking
/// with the server at `url`; `extra` goes into its engine drop-in.
pub fn machine(dir: &Path, url: &str, slot_a: &Path, slot_b: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let root = Root::new(1, 1, &[key().public()]).sign(&[&key()]);
    std::fs::write(dir.join("root.json"), root.to_json_pretty()).unwrap();
    std::fs::write(
        dir.join("machine-id"),
        "bench0000000000000000000000000000\n",
    )
    .unwrap();
    std::fs::write(dir.join("os-release"), "SLIPWAY_VERSION=1.0.0\n").unwrap();
    std::fs::write(dir.join("cmdline"), "slipway.slot=A\n").unwrap();
    std::fs::write(dir.join("boot_id"), "bench-boot\n").unwrap();
    slipway_agent::engine::boot::grub::GrubEnv::create(dir.join("grubenv")).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("engine.toml"),
        format!(
            r#"server = "{url}"
root = "{d}/root.json"
state-dir = "{d}/state"
machine-id-file = "{d}/machine-id"
os-release = "{d}/os-release"
cmdline = "{d}/cmdline"
boot-id-file = "{d}/boot_id"
{extra}
[slots]
a = "{a}"
b = "{b}"
[boot]
backend = "grub"
grubenv = "{d}/grubenv"
"#,
            a = slot_a.display(),
            b = slot_b.display(),
        ),
    )
    .unwrap();
}

struct NoUnits;

#[async_trait::async_trait]
impl UnitManager for NoUnits {
    async fn restart_unit(&self, unit: &str) -> slipway_agent::Result<()> {
        Err(slipway_agent::Error::Dbus(format!(
            "no units in the benchmark ({unit})"
        )))
    }
}

/// The child: open the engine of the machine in `dir`, check, apply; print `apply_secs=` and
/// `vmhwm_kib=`.
pub fn child_apply(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let settings = Settings::load(&[], &[dir.join("engine.toml")]).unwrap();
        let facts = Facts::read(&settings).unwrap();
        let backend = slipway_agent::engine::boot::open(&settings.boot).unwrap();
        let engine = Engine::open(settings, facts, backend, Arc::new(NoUnits)).unwrap();
        engine.start().await.unwrap();
        let t = Instant::now();
        engine.check().await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let snap = engine.snapshot();
        assert_eq!(snap.phase, EnginePhase::Staged, "{}", snap.last_error);
        println!("apply_secs={secs}");
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        .unwrap();
    println!("vmhwm_kib={hwm}");
}
