//! A real server on 127.0.0.1:0 with either store, a manual clock, a one-key root of trust and
//! an admin token; helpers to publish releases and ask for updates as machines do.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use semver::Version;
use serde_json::{Value, json};
use slipway_api::manifest::{OsImage, PayloadFormat, RELEASE_TYPE};
use slipway_api::{Envelope, Manifest, PrivateKey, Root, Sha256Digest, TrustedRoot};
use slipway_runtime::ManualClock;
use slipway_server::auth::AdminTokens;
use slipway_server::payloads::PayloadDir;
use slipway_server::state::{AppState, Limits, StateConfig};
use slipway_server::store::{self, Retention};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-admin-token-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn release_key() -> PrivateKey {
    PrivateKey::from_seed([7; 32])
}

pub fn root_json() -> String {
    let key = release_key();
    Root::new(1, 1, &[key.public()])
        .sign(&[&key])
        .to_json_pretty()
}

pub fn t0() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

pub struct TestServer {
    pub url: String,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub database: String,
    #[allow(dead_code)]
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn database_url(backend: Backend, dir: &TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("slipway.db").display()),
        Backend::Postgres => crate::pg::cluster().new_database().await,
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = database_url(backend, &dir).await;
        Self::start_with(
            dir,
            database,
            Arc::new(ManualClock::new(t0())),
            Limits::default(),
        )
        .await
    }

    pub async fn start_with(
        dir: TempDir,
        database: String,
        clock: Arc<ManualClock>,
        limits: Limits,
    ) -> Self {
        let store = store::open(&database, 8).await.expect("open store");
        let state = AppState::new(StateConfig {
            store,
            clock: clock.clone(),
            root: Some(TrustedRoot::bootstrap(root_json().as_bytes()).unwrap()),
            tokens: AdminTokens::parse(TOKEN).unwrap(),
            payloads: PayloadDir::open(dir.path()).unwrap(),
            limits,
            retention: Retention {
                max_age: Duration::from_secs(30 * 86_400),
                max_count: 1_000_000,
                per_machine: 1000,
            },
            refresh: Duration::from_secs(3600),
            gate_interval: Duration::from_millis(100),
        })
        .await
        .expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(slipway_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            url,
            clock,
            client: reqwest::Client::new(),
            dir,
            database,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server (gracefully) and starts a new one on the same data and database.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_with(
            dir,
            self.database.clone(),
            self.clock.clone(),
            Limits::default(),
        )
        .await
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn set_now(&self, at: Timestamp) {
        self.clock.set(at);
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}/v1/admin{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GET `path` (no token): the status and the body as text.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn upload(&self, bytes: &[u8]) -> Sha256Digest {
        let (sha, status) = upload_to(&self.client, &self.url, bytes).await;
        assert!(status.is_success(), "upload: {status}");
        sha
    }

    /// Uploads a payload and publishes a release of it; returns the envelope.
    pub async fn publish(&self, channel: &str, version: &str) -> Envelope {
        self.publish_with(channel, version, |_| {}).await
    }

    pub async fn publish_with(
        &self,
        channel: &str,
        version: &str,
        edit: impl FnOnce(&mut Manifest),
    ) -> Envelope {
        let payload = format!("os image {channel} {version}")
            .repeat(50)
            .into_bytes();
        let sha256 = self.upload(&payload).await;
        let mut m = manifest(channel, version, &payload, sha256);
        edit(&mut m);
        let env = m.sign(&[&release_key()]);
        let resp = self
            .client
            .post(format!("{}/v1/admin/releases", self.url))
            .bearer_auth(TOKEN)
            .body(env.to_json_pretty())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "publish: {}",
            resp.text().await.unwrap()
        );
        env
    }

    pub async fn promote(&self, channel: &str, version: &str, waves: Value) {
        let (s, b) = self
            .admin(
                reqwest::Method::POST,
                &format!("/channels/{channel}/promote"),
                Some(json!({"version": version, "waves": waves})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "promote: {b}");
    }

    /// A check as a machine does it; the offered version, if any.
    pub async fn check(&self, machine: &str, channel: &str, version: &str) -> Option<Version> {
        let (s, b) = self
            .post_raw(
                "/v1/check",
                json!({"machineId": machine, "channel": channel, "version": version, "arch": "x86_64", "group": "", "bootId": "b"})
                    .to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "check: {b}");
        let update = &b["update"];
        if update.is_null() {
            return None;
        }
        let env: Envelope = serde_json::from_value(update.clone()).unwrap();
        let m = TrustedRoot::bootstrap(root_json().as_bytes())
            .unwrap()
            .verify_release_envelope(&env)
            .expect("offered envelope verifies");
        Some(m.version)
    }

    /// How many of `machines` are offered an update, checking concurrently.
    pub async fn offered(&self, machines: &[String], channel: &str, version: &str) -> usize {
        use futures::StreamExt;
        futures::stream::iter(machines)
            .map(|m| self.check(m, channel, version))
            .buffer_unordered(32)
            .filter(|o| std::future::ready(o.is_some()))
            .count()
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Uploads `bytes` to the server at `url` with the admin token: their digest and the answer's
/// status.
pub async fn upload_to(
    client: &reqwest::Client,
    url: &str,
    bytes: &[u8],
) -> (Sha256Digest, StatusCode) {
    let sha = Sha256Digest::of(bytes);
    let resp = client
        .put(format!("{url}/v1/admin/payloads/{sha}"))
        .bearer_auth(TOKEN)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    (sha, resp.status())
}

pub fn manifest(channel: &str, version: &str, payload: &[u8], sha256: Sha256Digest) -> Manifest {
    Manifest {
        kind: RELEASE_TYPE.into(),
        channel: channel.into(),
        version: version.parse().unwrap(),
        expires: "2099-01-01T00:00:00Z".parse().unwrap(),
        os: Some(OsImage {
            url: format!("/v1/payloads/{sha256}"),
            size: payload.len() as u64,
            sha256,
            format: PayloadFormat::Raw,
            delta: None,
        }),
        runtime: Vec::new(),
        min_from_version: None,
        advisories: Vec::new(),
    }
}
