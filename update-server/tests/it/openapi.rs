//! The API's contract: the OpenAPI document served at `/openapi.json` is the committed
//! `docs/openapi.json`, every operation in it is routed, and schemathesis (from the tools venv
//! that scripts/setup.sh installs) finds no server error and no answer outside the contract.

use std::path::PathBuf;
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TOKEN, TestServer};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[tokio::test]
async fn the_served_document_is_the_committed_one_and_every_operation_is_routed() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (status, served) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        served == committed,
        "docs/openapi.json is not what the server serves: run `make generate` and commit it"
    );

    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.1");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            // Every parameter filled with a value its schema allows.
            let url = path
                .replace("{sha256}", &"0".repeat(64))
                .replace("{channel}", "stable")
                .replace("{version}", "1.0.0")
                .replace("{id}", "m1");
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut req = s.client.request(method.clone(), format!("{}{url}", s.url));
            if op["security"].is_array() {
                req = req.bearer_auth(TOKEN);
            }
            if op["requestBody"]["content"]["application/json"].is_object() {
                req = req.json(&json!({}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such endpoint"),
                "{method} {path} is documented but not routed: {status} {body}"
            );
            let documented = op["responses"].get(status.as_str()).is_some();
            assert!(
                documented,
                "{method} {path} answered {status}, which it does not document: {body}"
            );
        }
    }
    assert!(operations >= 20, "only {operations} operations");
}

/// The venv scripts/setup.sh installs schemathesis into.
fn schemathesis() -> PathBuf {
    let dir = std::env::var_os("SLIPWAY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/slipway-tools"));
    let bin = dir.join("bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup.sh (it installs the tests' Python tools)",
        bin.display()
    );
    bin
}

/// Property-based tests from the document, against a live server with a published, promoted
/// release and a machine that checked and reported, so that lookups find things too. Bounded:
/// a fixed number of examples per operation, and a fixed seed so that a failure reproduces.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_contract() {
    let bin = schemathesis();
    let s = TestServer::start(Backend::Sqlite).await;
    s.publish("stable", "1.0.0").await;
    s.publish("stable", "1.1.0").await;
    s.promote("stable", "1.1.0", json!([{"after": "0s", "fraction": 1.0}]))
        .await;
    assert!(s.check("m1", "stable", "1.0.0").await.is_some());
    let payload = s.upload(b"a payload for Range requests").await;

    let examples = 40;
    let report = tempfile::tempdir().unwrap();
    // A schema can say what a body looks like, not whether its signature verifies, whether
    // its bytes hash to the name they are uploaded under, or whether waves are in order: a
    // schema-valid body may meet 422 there (only there), and a Range past the payload's end
    // 416. The payload operations get a payload that exists, so that Range, If-Range and
    // If-None-Match reach the code they test, and the release operations a release that
    // exists, so that they get past 404.
    let config = report.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[operations]]
include-operation-id = ["publishRelease", "uploadPayload", "promote"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-operation-id = ["getPayload", "headPayload"]
parameters = {{ sha256 = "{payload}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "304", "416"]

[[operations]]
include-operation-id = ["setAdvisory", "clearAdvisory", "setFloor", "clearFloor"]
parameters = {{ channel = "stable", version = "1.0.0" }}
"#
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", s.url))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", "20261207"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .arg("--no-color")
        .args(["--report", "json"])
        .arg("--report-json-path")
        .arg(report.path().join("run.json"))
        .env("NO_COLOR", "1")
        .current_dir(report.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}); its output is above",
        out.status.code()
    );
    // The run covered every operation.
    let run: Value =
        serde_json::from_slice(&std::fs::read(report.path().join("run.json")).unwrap()).unwrap();
    let doc: Value = serde_json::from_str(&s.get("/openapi.json").await.1).unwrap();
    let documented: u64 = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i.as_object().unwrap().len() as u64)
        .sum();
    println!(
        "schemathesis: operations {}, test cases {}",
        run["operations"], run["test_cases"]
    );
    // Loading the document from the server, schemathesis leaves out the document's own URL.
    let expected = documented - 1;
    assert_eq!(
        run["operations"]["total"], expected,
        "{}",
        run["operations"]
    );
    assert_eq!(
        run["operations"]["tested"], expected,
        "{}",
        run["operations"]
    );
    assert!(run["test_cases"]["generated"].as_u64().unwrap() >= documented * 10);
}
