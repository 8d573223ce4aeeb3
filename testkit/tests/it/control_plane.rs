//! The control plane harness stops every component and deletes its directory when the process
//! that started it dies without any clean-up: here, a child test process that aborts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_testkit::ControlPlane;
use slipway_testkit::control_plane::Options;

const CHILD: &str = "SLIPWAY_TESTKIT_ABORT_CHILD";

/// Processes whose command line mentions `dir` (the components all name files in it).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            out.push(cmdline);
        }
    }
    out
}

#[tokio::test]
async fn a_process_that_aborts_leaves_no_component_running_and_no_directory() {
    if let Some(report) = std::env::var_os(CHILD) {
        // The child: start a control plane, say where, and die without unwinding.
        let cp = ControlPlane::start(Options {
            scheduler: true,
            ..Options::default()
        })
        .await
        .unwrap();
        assert!(!processes_using(cp.dir()).is_empty());
        std::fs::write(&report, cp.dir().display().to_string()).unwrap();
        std::process::abort();
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("dir");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "control_plane::a_process_that_aborts_leaves_no_component_running_and_no_directory",
            "--nocapture",
        ])
        .env(CHILD, &report)
        .env_remove("SLIPWAY_KEEP_CONTROL_PLANE")
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");
    let dir = PathBuf::from(std::fs::read_to_string(&report).expect("the child reports its dir"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = processes_using(&dir);
        if left.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there a minute after the abort: {left:?}, dir exists: {}",
            dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
