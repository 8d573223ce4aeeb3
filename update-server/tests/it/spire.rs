//! Machine identity from a real SPIRE (server and agent built by `scripts/build-spire.sh`): the
//! agent attests with a join token, the engine (in process) is attested by SPIRE's unix workload
//! attestor and fetches its X.509-SVID from the Workload API socket; the update server, trusting
//! SPIRE's bundle, lets it check and report as itself, refuses an engine that claims another
//! machine's id with it, and the engine keeps working across an SVID rotation (SVIDs live 30 s
//! here, so the agent rotates them within about 15 s). SPIRE's datastore is a database of the
//! tests' throwaway PostgreSQL.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TOKEN, manifest, release_key};
use crate::process::{KillOnDrop, sigterm, spawn_on};
use crate::tls::{client, tls_args, tls_dir};

const TRUST_DOMAIN: &str = "slipway.test";
const MACHINE: &str = "0000000000000000000000000000beef";

/// Where `scripts/build-spire.sh` put the binaries (`SLIPWAY_KUBE_ROOT` overrides the root, as
/// for the Kubernetes components).
fn spire_bin(name: &str) -> PathBuf {
    let env = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-versions.env"),
    )
    .unwrap();
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in scripts/kube-versions.env"))
            .to_owned()
    };
    let root = std::env::var("SLIPWAY_KUBE_ROOT").unwrap_or_else(|_| value("KUBE_TOOLS_ROOT"));
    let bin = Path::new(&root)
        .join(format!("spire-{}", value("SPIRE_VERSION")))
        .join("bin")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/build-spire.sh (scripts/setup.sh does)",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `healthcheck` passes (SPIRE's own readiness probe), or fails with the log.
async fn healthy(program: &Path, socket: &Path, log: &Path, what: &str) {
    let start = Instant::now();
    loop {
        let ok = Command::new(program)
            .args(["healthcheck", "-socketPath"])
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} not healthy within 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A SPIRE server and an agent attested to it with a join token, on loopback and unix sockets
/// in `dir`; a workload entry gives processes of this test's user the machine's SPIFFE ID.
struct Spire {
    _server: KillOnDrop,
    _agent: KillOnDrop,
    agent_socket: PathBuf,
    bundle: PathBuf,
}

async fn spire(dir: &Path) -> Spire {
    let (server_bin, agent_bin) = (spire_bin("spire-server"), spire_bin("spire-agent"));
    let port = crate::pg::free_port();
    let d = dir.display();
    let server_socket = dir.join("server.sock");
    // SPIRE's SQLite datastore needs a cgo build; its PostgreSQL one does not, and the tests
    // have a real PostgreSQL at hand.
    let datastore = crate::pg::cluster().new_database_keyvalue().await;
    std::fs::write(
        dir.join("server.conf"),
        format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{d}/server.sock"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{d}/server-data"
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "postgres"
      connection_string = "{datastore}"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
}}
"#
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let server = KillOnDrop(
        Command::new(&server_bin)
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("server.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    healthy(
        &server_bin,
        &server_socket,
        &dir.join("server.err"),
        "spire-server",
    )
    .await;

    let node_id = format!("spiffe://{TRUST_DOMAIN}/node/test");
    let token_out = run(Command::new(&server_bin)
        .args(["token", "generate", "-socketPath"])
        .arg(&server_socket)
        .args(["-spiffeID", &node_id, "-ttl", "600"]));
    let token = token_out
        .split_whitespace()
        .last()
        .expect("a join token")
        .to_owned();
    // The workload: processes of this user (the test process, where the engine runs). Its
    // SVIDs live 30 s, so the agent rotates them every 15 s or so.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    run(Command::new(&server_bin)
        .args(["entry", "create", "-socketPath"])
        .arg(&server_socket)
        .args([
            "-parentID",
            &node_id,
            "-spiffeID",
            &format!("spiffe://{TRUST_DOMAIN}/slipway/machine/{MACHINE}"),
            "-selector",
            &format!("unix:uid:{uid}"),
            "-x509SVIDTTL",
            "30",
        ]));
    let bundle = dir.join("bundle.pem");
    std::fs::write(
        &bundle,
        run(Command::new(&server_bin)
            .args(["bundle", "show", "-format", "pem", "-socketPath"])
            .arg(&server_socket)),
    )
    .unwrap();

    std::fs::write(
        dir.join("agent.conf"),
        format!(
            r#"agent {{
  data_dir = "{d}/agent-data"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{d}/agent.sock"
  trust_domain = "{TRUST_DOMAIN}"
  trust_bundle_path = "{d}/bundle.pem"
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#
        ),
    )
    .unwrap();
    let agent_socket = dir.join("agent.sock");
    let agent = KillOnDrop(
        Command::new(&agent_bin)
            .args(["run", "-config"])
            .arg(dir.join("agent.conf"))
            .args(["-joinToken", &token])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    healthy(
        &agent_bin,
        &agent_socket,
        &dir.join("agent.err"),
        "spire-agent",
    )
    .await;
    Spire {
        _server: server,
        _agent: agent,
        agent_socket,
        bundle,
    }
}

#[tokio::test]
async fn the_engine_takes_its_identity_from_a_real_spire_and_keeps_it_across_rotations() {
    let t = tls_dir();
    let s = spire(t.dir.path()).await;
    let db = format!("sqlite://{}", t.dir.path().join("db").display());
    let mut args = tls_args(t.dir.path());
    args.extend([
        "--client-ca".to_owned(),
        s.bundle.display().to_string(),
        "--spiffe-trust-domain".to_owned(),
        TRUST_DOMAIN.to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn_on(t.dir.path(), &db, "127.0.0.1:0", &args);
    let url = server.url.clone();
    let admin = client(Some(&t.ca));
    let payload = b"os image 2.0.0 for machines with SPIRE identities".repeat(64);
    let (sha, st) = crate::harness::upload_to(&admin, &url, &payload).await;
    assert!(st.is_success(), "{st}");
    let env = manifest("stable", "2.0.0", &payload, sha).sign(&[&release_key()]);
    let post = |path: &'static str, body: String| {
        let (admin, url) = (admin.clone(), url.clone());
        async move {
            let resp = admin
                .post(format!("{url}{path}"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
        }
    };
    post("/v1/admin/releases", env.to_json_pretty()).await;
    let known = |id: &'static str| {
        let (admin, url) = (admin.clone(), url.clone());
        async move {
            admin
                .get(format!("{url}/v1/admin/machines/{id}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status()
        }
    };

    let extra = format!(
        "ca = \"{}\"\nspiffe-endpoint = \"unix://{}\"\n",
        t.dir.path().join("ca.pem").display(),
        s.agent_socket.display()
    );
    let node = tempfile::tempdir().unwrap();
    let engine = crate::mirror::engine_with(node.path(), &url, &extra).await;
    // The agent serves the SVID once it has synced the entry (every few seconds).
    let svid = engine
        .wait_for_svid(Duration::from_secs(60))
        .await
        .expect("an SVID from the Workload API within 60 s");
    assert_eq!(
        svid.spiffe_id,
        format!("spiffe://{TRUST_DOMAIN}/slipway/machine/{MACHINE}")
    );
    // Nothing promoted yet: the check goes through and finds nothing.
    engine.check().await.unwrap();
    assert!(
        engine.snapshot().last_error.is_empty(),
        "{}",
        engine.snapshot().last_error
    );
    assert_eq!(known(MACHINE).await, StatusCode::OK, "the server saw it");

    // Another machine's engine on the same host gets the same workload identity: it cannot
    // report as itself with it.
    let other = tempfile::tempdir().unwrap();
    let impostor = crate::mirror::engine_as(
        other.path(),
        &url,
        &extra,
        "0000000000000000000000000000cafe",
    )
    .await;
    impostor
        .wait_for_svid(Duration::from_secs(60))
        .await
        .unwrap();
    let _ = impostor.check().await;
    let err = impostor.snapshot().last_error;
    assert!(err.contains("identity-mismatch"), "{err}");
    drop(impostor);
    assert_eq!(
        known("0000000000000000000000000000cafe").await,
        StatusCode::NOT_FOUND,
        "nothing recorded for the impostor's claim"
    );

    // Rotation: the agent issues a new SVID before the old one's half-life; the engine takes
    // it without a restart and the server accepts it.
    let first = svid.serial.clone();
    let start = Instant::now();
    let rotated = loop {
        let now = engine.svid().unwrap();
        if now.serial != first {
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no rotation within 90 s (SVIDs live 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "SVID rotated after {:?}: serial {} -> {}",
        start.elapsed(),
        first,
        rotated.serial
    );
    assert!(rotated.not_after > svid.not_after);
    // With the new SVID: offered, staged and reported.
    post(
        "/v1/admin/channels/stable/promote",
        json!({"version": "2.0.0"}).to_string(),
    )
    .await;
    engine.check().await.unwrap();
    crate::mirror::assert_staged(&engine, "2.0.0");
    engine.flush_reports().await;
    assert_eq!(engine.queued_events().len(), 0, "reports accepted");
    sigterm(server);
}
