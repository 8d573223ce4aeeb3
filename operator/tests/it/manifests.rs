//! The deployment surface, checked with the real tools: `kubectl kustomize manifests/`, the Helm
//! chart rendered and linted by Helm's own Go engine (scripts/helm.py over helm-python-sdk),
//! every object validated against Kubernetes 1.33's schemas (kubernetes-validate, strict), the
//! chart and the kustomization rendering the same objects, the CRD copies identical, RBAC least
//! privilege with the agent held to its own node by the admission policy and the operator's pod
//! access (its leader label) confined to its namespace, the FleetLock Service selecting the
//! leader's label while the Deployment rolls, and the Grafana dashboard querying only metrics
//! the components register.
//!
//! The tools live in a venv that scripts/setup.sh creates (default /opt/slipway-tools,
//! `SLIPWAY_TOOLS_DIR` overrides); without them these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::*;

const NAMESPACE: &str = "slipway-system";
const KUBE_VERSION: &str = "1.33.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("manifests/helm/slipway")
}

struct Tools {
    python: PathBuf,
    kubectl: PathBuf,
    validate: PathBuf,
}

fn tools() -> Tools {
    let dir = std::env::var_os("SLIPWAY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/slipway-tools"));
    let t = Tools {
        python: dir.join("bin/python"),
        kubectl: dir.join("bin/kubectl"),
        validate: dir.join("bin/kubernetes-validate"),
    };
    for p in [&t.python, &t.kubectl, &t.validate] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/setup.sh (it installs Helm's engine, kubectl and \
             kubernetes-validate from scripts/tools-requirements.txt into {})",
            p.display(),
            dir.display()
        );
    }
    t
}

/// Runs `cmd`; returns (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, stdout, stderr) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn kustomize() -> String {
    run_ok(
        Command::new(tools().kubectl)
            .arg("kustomize")
            .arg(repo().join("manifests")),
    )
}

fn helm_cmd(sub: &str) -> Command {
    let mut c = Command::new(tools().python);
    c.arg(repo().join("scripts/helm.py")).arg(sub);
    c
}

/// `helm template slipway manifests/helm/slipway -n NS` with `values` (YAML) as `-f`.
fn helm_template(namespace: &str, values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    run_ok(
        helm_cmd("template")
            .arg(chart())
            .args(["--name", "slipway", "--namespace", namespace, "-f"])
            .arg(&file),
    )
}

/// (apiVersion, kind, namespace, name)
type Key = (String, String, String, String);

fn key(obj: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&obj["apiVersion"]),
        s(&obj["kind"]),
        s(&obj["metadata"]["namespace"]),
        s(&obj["metadata"]["name"]),
    )
}

/// `100.0` as `100`: kustomize re-encodes YAML and writes integral floats (the CRDs' generated
/// `maximum: 100.0`) as integers; the value is the same.
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

fn by_key(objs: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for o in objs.into_iter().map(normalize) {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k:?} rendered twice");
    }
    map
}

fn kinds(objs: &[Value], kind: &str) -> Vec<Value> {
    objs.iter().filter(|o| o["kind"] == kind).cloned().collect()
}

/// The object of `kind` named `name`.
fn object(objs: &[Value], kind: &str, name: &str) -> Option<Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .cloned()
}

/// Every optional part of the chart switched on.
const ALL_ON: &str = r#"
image: {tag: "0.2.0", pullPolicy: Always}
imagePullSecrets: [{name: registry}]
channel: beta
serverUrl: https://updates.example.net
operator:
  replicas: 3
  report: {serverUrl: "https://updates.example.net", clusterName: prod-eu, tokenSecret: report}
server:
  storage: {size: 50Gi, storageClassName: fast}
  tls: {secretName: slipway-server-tls}
engine: {ca: /etc/slipway/ca.pem, allowPlainHttp: true, spiffeEndpoint: "unix:///run/spire/agent/public/api.sock"}
rolloutPolicy:
  enabled: true
  name: workers
  spec:
    maxUnavailable: 25%
    haltAfterFailures: 2
    windows: [{schedule: "0 2 * * *", duration: 4h, timeZone: Europe/Berlin}]
    nodeSelector: {matchLabels: {pool: workers}}
metrics:
  serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
"#;

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_with_everything_on() {
    let dir = tempfile::tempdir().unwrap();
    let all_on = dir.path().join("all-on.yaml");
    std::fs::write(&all_on, ALL_ON).unwrap();
    for values in [None, Some(&all_on)] {
        let mut cmd = helm_cmd("lint");
        cmd.arg(chart()).args([
            "--strict",
            "--namespace",
            NAMESPACE,
            "--kube-version",
            &format!("v{KUBE_VERSION}"),
        ]);
        if let Some(v) = values {
            cmd.arg("-f").arg(v);
        }
        let out = run_ok(&mut cmd);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
    }
}

#[test]
fn images_come_from_the_registry_pinned_by_digest_and_a_malformed_digest_is_refused() {
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let values = format!(
        "image: {{registry: 127.0.0.1:5000/slipway, tag: \"9.9.9\", operatorDigest: \"{}\", agentDigest: \"{}\"}}",
        d('a'),
        d('b')
    );
    let objs = docs(&helm_template(NAMESPACE, &values));
    let image = |kind: &str, name: &str| {
        object(&objs, kind, name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        image("Deployment", "slipway-operator"),
        format!("127.0.0.1:5000/slipway/slipway-operator@{}", d('a'))
    );
    assert_eq!(
        image("DaemonSet", "slipway-agent"),
        format!("127.0.0.1:5000/slipway/slipway-agent@{}", d('b'))
    );
    // No digest: the tag.
    assert_eq!(
        image("Deployment", "slipway-server"),
        "127.0.0.1:5000/slipway/slipway-server:9.9.9"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "image: {serverDigest: \"sha256:1234\"}").unwrap();
    let (ok, stdout, stderr) = run(helm_cmd("template")
        .arg(chart())
        .args(["--name", "slipway", "--namespace", NAMESPACE, "-f"])
        .arg(&file));
    assert!(!ok, "a malformed digest rendered:\n{stdout}");
    assert!(
        stderr.contains("image.serverDigest \"sha256:1234\": expected sha256:<64 hex digits>"),
        "{stderr}"
    );
}

#[test]
fn pods_can_be_pointed_at_the_api_server_and_share_the_nodes_network() {
    let objs = docs(&helm_template(
        NAMESPACE,
        "apiServer: {host: 10.0.2.101, port: 443}\nagent: {hostNetwork: true}\n\
         operator: {hostNetwork: true}",
    ));
    for (kind, name) in [
        ("Deployment", "slipway-operator"),
        ("DaemonSet", "slipway-agent"),
    ] {
        let pod = &object(&objs, kind, name).unwrap()["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let value = |k: &str| {
            env.iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            value("KUBERNETES_SERVICE_HOST"),
            Some(json!("10.0.2.101")),
            "{name}"
        );
        assert_eq!(
            value("KUBERNETES_SERVICE_PORT"),
            Some(json!("443")),
            "{name}"
        );
    }
    for (kind, name) in [
        ("Deployment", "slipway-operator"),
        ("DaemonSet", "slipway-agent"),
    ] {
        let pod = &object(&objs, kind, name).unwrap()["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true, "{name}");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{name}");
    }
    // The update server never: it has no reason to.
    let server =
        &object(&objs, "Deployment", "slipway-server").unwrap()["spec"]["template"]["spec"];
    assert!(server.get("hostNetwork").is_none());
    // By default neither: the kustomization parity test above holds the rest.
    let defaults = docs(&helm_template(NAMESPACE, "{}"));
    for (kind, name) in [
        ("Deployment", "slipway-operator"),
        ("DaemonSet", "slipway-agent"),
    ] {
        let pod = &object(&defaults, kind, name).unwrap()["spec"]["template"]["spec"];
        assert!(pod.get("hostNetwork").is_none(), "{name}");
        assert!(
            !pod["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "KUBERNETES_SERVICE_HOST"),
            "{name}"
        );
    }
}

#[test]
fn the_operator_reports_to_an_update_server_when_the_chart_says_so() {
    let objs = docs(&helm_template(NAMESPACE, ALL_ON));
    let pod = &object(&objs, "Deployment", "slipway-operator").unwrap()["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["SLIPWAY_SERVER_URL"], "https://updates.example.net");
    assert_eq!(env["SLIPWAY_CLUSTER_NAME"], "prod-eu");
    let token = env["SLIPWAY_SERVER_TOKEN_FILE"];
    // The token file is the Secret's key `token`, mounted read-only where the variable says.
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["secret"]["secretName"], "report");
    let item = &volume["secret"]["items"][0];
    assert_eq!(item["key"], "token");
    assert_eq!(
        format!(
            "{}/{}",
            mount["mountPath"].as_str().unwrap(),
            item["path"].as_str().unwrap()
        ),
        token
    );
    // Every variable the chart sets is one the operator reads (clap lists them in --help).
    let help = Command::new(env!("CARGO_BIN_EXE_slipway-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for name in env.keys().filter(|k| k.starts_with("SLIPWAY_")) {
        assert!(help.contains(&format!("[env: {name}=")), "{name}: {help}");
    }
    // Off by default: no variable, no volume.
    let defaults = docs(&helm_template(NAMESPACE, "{}"));
    let pod =
        &object(&defaults, "Deployment", "slipway-operator").unwrap()["spec"]["template"]["spec"];
    assert!(pod.get("volumes").is_none());
    assert!(
        !pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SLIPWAY_SERVER_URL")
    );
}

#[test]
fn helm_lint_fails_a_broken_chart() {
    // The lint above would be worthless if it passed anything: break a copy of the chart.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("slipway");
    run_ok(Command::new("cp").arg("-r").arg(chart()).arg(&copy));
    let template = copy.join("templates/operator.yaml");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(
        &template,
        text.replace(".Values.operator.replicas }}", ".Values.operator.replicas"),
    )
    .unwrap();
    let (ok, stdout, stderr) = run(helm_cmd("lint").arg(&copy).arg("--strict"));
    assert!(
        !ok,
        "a template with an unclosed action linted clean:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("[ERROR]"), "{stdout}{stderr}");
}

#[test]
fn the_chart_renders_the_same_objects_as_the_kustomization() {
    let kustomized = by_key(docs(&kustomize()));
    let mut charted = by_key(docs(&helm_template(NAMESPACE, "{}")));
    // The chart's CRDs (crds/, installed by Helm before the templates) and the Namespace that
    // `helm install --create-namespace` creates are the only objects templates do not render.
    let crd_dir = chart().join("crds");
    for entry in std::fs::read_dir(&crd_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for crd in docs(&text) {
            charted.insert(key(&crd), normalize(crd));
        }
    }
    let namespace = (
        "v1".to_string(),
        "Namespace".to_string(),
        String::new(),
        NAMESPACE.to_string(),
    );
    assert!(kustomized.contains_key(&namespace));
    let only_kustomize: Vec<_> = kustomized
        .keys()
        .filter(|k| !charted.contains_key(*k) && **k != namespace)
        .collect();
    let only_chart: Vec<_> = charted
        .keys()
        .filter(|k| !kustomized.contains_key(*k))
        .collect();
    assert!(
        only_kustomize.is_empty() && only_chart.is_empty(),
        "only in the kustomization: {only_kustomize:?}; only in the chart: {only_chart:?}"
    );
    for (k, obj) in &charted {
        let other = &kustomized[k];
        assert!(
            obj == other,
            "{k:?} differs.\nchart:\n{}\nkustomization:\n{}",
            serde_json::to_string_pretty(obj).unwrap(),
            serde_json::to_string_pretty(other).unwrap()
        );
    }
    // Everything the brief names is there.
    for (kind, name) in [
        ("Deployment", "slipway-operator"),
        ("DaemonSet", "slipway-agent"),
        ("Deployment", "slipway-server"),
        ("Service", "slipway-server"),
        ("PersistentVolumeClaim", "slipway-server-data"),
        ("ValidatingAdmissionPolicy", "slipway-agent-own-node"),
        ("ValidatingAdmissionPolicyBinding", "slipway-agent-own-node"),
        ("ValidatingAdmissionPolicy", "slipway-agent-own-nodeupdate"),
        (
            "ValidatingAdmissionPolicyBinding",
            "slipway-agent-own-nodeupdate",
        ),
        ("ValidatingAdmissionPolicy", "slipway-agent-own-pods"),
        ("ValidatingAdmissionPolicyBinding", "slipway-agent-own-pods"),
        ("CustomResourceDefinition", "rolloutpolicies.slipway.dev"),
        ("CustomResourceDefinition", "nodeupdates.slipway.dev"),
    ] {
        assert!(
            kustomized.keys().any(|k| k.1 == kind && k.3 == name),
            "no {kind} {name}"
        );
    }
}

#[test]
fn the_chart_s_crds_are_the_generated_ones_byte_for_byte() {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = repo().join("manifests/crds");
    let copy = chart().join("crds");
    assert_eq!(names(&generated), names(&copy), "run `make generate`");
    assert_eq!(names(&generated).len(), 2);
    for name in names(&generated) {
        assert!(
            std::fs::read(generated.join(&name)).unwrap()
                == std::fs::read(copy.join(&name)).unwrap(),
            "{name}: the chart's copy differs from manifests/crds (run `make generate`)"
        );
    }
}

/// Runs kubernetes-validate (strict, Kubernetes 1.33) on `yaml`; returns the kinds it had no
/// schema for.
fn validate(yaml: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (ok, stdout, stderr) = run(Command::new(tools().validate)
        .args(["--strict", "--kubernetes-version", KUBE_VERSION])
        .arg(&file));
    assert!(ok, "kubernetes-validate refused:\n{stdout}{stderr}");
    let out = format!("{stdout}{stderr}");
    let passed = out.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        docs(yaml).len() - out.matches("Couldn't find schema").count(),
        "{out}"
    );
    out.lines()
        .filter_map(|l| l.split("Couldn't find schema for kind ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn every_rendered_object_validates_against_kubernetes_1_33() {
    let no_schema = validate(&kustomize());
    assert!(no_schema.is_empty(), "no schema for {no_schema:?}");
    let no_schema = validate(&helm_template(NAMESPACE, "{}"));
    assert!(no_schema.is_empty(), "no schema for {no_schema:?}");
    // Custom resources have no schema here: the RolloutPolicy goes through the CRD's own
    // schema in the next test, the ServiceMonitor is prometheus-operator's.
    let all_on = helm_template(NAMESPACE, ALL_ON);
    assert_eq!(
        validate(&all_on),
        BTreeSet::from(["RolloutPolicy".to_string(), "ServiceMonitor".to_string()])
    );
    // And the validator is strict: an unknown field fails.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, tragetPort: 8080}]}\n",
    )
    .unwrap();
    let (ok, stdout, _) = run(Command::new(tools().validate)
        .args(["--strict", "--kubernetes-version", KUBE_VERSION])
        .arg(&file));
    assert!(!ok && stdout.contains("tragetPort"), "{stdout}");
}

#[tokio::test]
async fn the_chart_s_optional_objects_are_what_the_components_expect() {
    let objs = docs(&helm_template(NAMESPACE, ALL_ON));
    // The RolloutPolicy: accepted by an API server enforcing the generated CRD schema, and
    // read back by the operator's own type.
    let rp = kinds(&objs, "RolloutPolicy")
        .pop()
        .expect("no RolloutPolicy");
    let cluster = super::cluster().await;
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        cluster.client(),
        &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
    );
    let created = api
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(rp).unwrap(),
        )
        .await
        .expect("the chart's RolloutPolicy was refused by the CRD schema");
    let typed: RolloutPolicy =
        serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
    assert_eq!(typed.name_any(), "workers");
    assert_eq!(typed.spec.channel, "beta");
    assert_eq!(typed.spec.windows.len(), 1);
    assert_eq!(typed.spec.halt_after_failures, 2);
    // The same object with a field the schema refuses is refused: the check above is real.
    let mut bad = kinds(&objs, "RolloutPolicy").pop().unwrap();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["windows"][0]["duration"] = json!("four hours");
    assert!(
        api.create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(bad).unwrap()
        )
        .await
        .is_err()
    );

    // The ServiceMonitor selects the two metrics Services, on their named port.
    let sm = kinds(&objs, "ServiceMonitor")
        .pop()
        .expect("no ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let services = kinds(&objs, "Service");
    let selected: BTreeSet<&str> = services
        .iter()
        .filter(|s| {
            selector
                .iter()
                .all(|(k, v)| s["metadata"]["labels"][k] == *v)
        })
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        selected,
        BTreeSet::from([
            "slipway-agent-metrics",
            "slipway-operator-metrics",
            "slipway-server"
        ])
    );
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");

    // The engine drop-in carries the URL and channel.
    let cm = kinds(&objs, "ConfigMap")
        .pop()
        .expect("no engine ConfigMap");
    let toml = cm["data"]["50-cluster.toml"].as_str().unwrap();
    assert!(
        toml.contains(r#"server = "https://updates.example.net""#)
            && toml.contains(r#"channel = "beta""#)
            && toml.contains(r#"ca = "/etc/slipway/ca.pem""#)
            && toml.contains("allow-plain-http = true")
            && toml.contains(r#"spiffe-endpoint = "unix:///run/spire/agent/public/api.sock""#),
        "{toml}"
    );
    // With a TLS Secret the server serves HTTPS from it (probes too) and is not told to allow
    // plain HTTP; without one it is (it listens on the pod's network, not loopback).
    let server = object(&objs, "Deployment", "slipway-server").unwrap();
    let container = &server["spec"]["template"]["spec"]["containers"][0];
    let env: BTreeMap<String, String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        env["SLIPWAY_TLS_CERT"], "/etc/slipway/tls/tls.crt",
        "{env:?}"
    );
    assert_eq!(env["SLIPWAY_TLS_KEY"], "/etc/slipway/tls/tls.key");
    assert!(!env.contains_key("SLIPWAY_ALLOW_PLAIN_HTTP"));
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let volumes = server["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "slipway-server-tls"),
        "{volumes:?}"
    );
    let defaults = docs(&helm_template(NAMESPACE, "{}"));
    let plain = object(&defaults, "Deployment", "slipway-server").unwrap();
    let env = &plain["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SLIPWAY_ALLOW_PLAIN_HTTP" && e["value"] == "true"),
        "{env}"
    );
    // Values reach the workloads.
    for w in kinds(&objs, "Deployment")
        .iter()
        .chain(&kinds(&objs, "DaemonSet"))
    {
        let pod = &w["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["image"],
            format!(
                "ghcr.io/slipway-dev/{}:0.2.0",
                w["metadata"]["name"].as_str().unwrap()
            )
        );
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry"}]));
    }
    let operator = object(&objs, "Deployment", "slipway-operator").unwrap();
    assert_eq!(operator["spec"]["replicas"], 3);
    // Without the server, none of its objects.
    let off = docs(&helm_template(NAMESPACE, "server: {enabled: false}"));
    assert!(
        off.iter().all(|o| !o["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("slipway-server")),
        "server objects rendered with server.enabled=false"
    );
}

/// The verbs a set of rules grants on `group`/`resource`.
fn verbs_on(rules: &[Value], group: &str, resource: &str) -> BTreeSet<String> {
    let has =
        |list: &Value, want: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == want));
    rules
        .iter()
        .filter(|r| has(&r["apiGroups"], group) && has(&r["resources"], resource))
        .flat_map(|r| r["verbs"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Checks the rendered objects: no wildcard anywhere; the agent's writes to Nodes, NodeUpdates
/// and pods are all covered by the own-node admission policy, bound with Deny, matching the
/// agent's service account in `namespace`.
fn check_rbac(objs: &[Value], namespace: &str) {
    let roles: Vec<Value> = kinds(objs, "ClusterRole")
        .into_iter()
        .chain(kinds(objs, "Role"))
        .collect();
    assert!(roles.len() >= 3, "roles: {roles:?}");
    for role in &roles {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
                for v in rule[field].as_array().into_iter().flatten() {
                    let v = v.as_str().unwrap();
                    assert!(
                        !v.contains('*'),
                        "{} {}: wildcard {field} {v:?}",
                        role["kind"],
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }

    // Which ClusterRole is the agent's: the one bound to the DaemonSet's service account.
    let ds = kinds(objs, "DaemonSet").pop().expect("no DaemonSet");
    let sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let ds_namespace = ds["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(ds_namespace, namespace);
    let agent_roles: Vec<String> = kinds(objs, "ClusterRoleBinding")
        .iter()
        .chain(&kinds(objs, "RoleBinding"))
        .filter(|b| {
            b["subjects"].as_array().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == namespace
            })
        })
        .map(|b| {
            assert_eq!(b["kind"], "ClusterRoleBinding", "agent bound by {b}");
            b["roleRef"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(agent_roles.len(), 1, "agent bindings: {agent_roles:?}");
    let agent = roles
        .iter()
        .find(|r| r["kind"] == "ClusterRole" && r["metadata"]["name"] == agent_roles[0])
        .unwrap();
    let rules = agent["rules"].as_array().unwrap();

    // The admission policies (one per kind) and their bindings.
    let vaps: Vec<Value> =
        kinds(objs, "ValidatingAdmissionPolicy")
            .into_iter()
            .filter(|p| {
                p["spec"]["matchConditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["expression"].as_str().unwrap_or_default().contains(&format!(
                        "request.userInfo.username == 'system:serviceaccount:{namespace}:{sa}'"
                    ))
                    })
            })
            .collect();
    assert!(
        !vaps.is_empty(),
        "no ValidatingAdmissionPolicy matches the agent's service account"
    );
    let mut validations: Vec<String> = Vec::new();
    for vap in &vaps {
        assert_eq!(vap["spec"]["failurePolicy"], "Fail");
        let policy_name = vap["metadata"]["name"].as_str().unwrap();
        let binding = kinds(objs, "ValidatingAdmissionPolicyBinding")
            .into_iter()
            .find(|b| b["spec"]["policyName"] == policy_name)
            .unwrap_or_else(|| panic!("the own-node policy {policy_name} is not bound"));
        assert!(
            binding["spec"]["validationActions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "Deny"),
            "{binding}"
        );
        let mine: Vec<String> = vap["spec"]["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["expression"].as_str().unwrap().to_string())
            .collect();
        assert!(
            mine.iter().any(|e| e.contains("variables.nodeName != ''")),
            "{policy_name} lets a token without a node through: {mine:?}"
        );
        validations.extend(mine);
    }
    assert!(
        validations
            .iter()
            .any(|e| e.contains("request.name == variables.nodeName")),
        "no validation ties the object to the agent's node: {validations:?}"
    );
    assert!(
        validations
            .iter()
            .any(|e| e.contains("oldObject.spec.nodeName == variables.nodeName")),
        "no validation ties deleted pods to the agent's node: {validations:?}"
    );
    let covered = |group: &str, resource: &str, operation: &str| {
        vaps.iter().any(|vap| {
            vap["spec"]["matchConstraints"]["resourceRules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| {
                    r["apiGroups"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|g| g == group)
                        && r["resources"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x == resource)
                        && r["operations"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|o| o == operation)
                })
        })
    };

    // Every write the agent may make to a node-scoped thing goes through the policy.
    let node_scoped = [
        ("", "nodes"),
        ("slipway.dev", "nodeupdates"),
        ("slipway.dev", "nodeupdates/status"),
        ("", "pods"),
    ];
    let mut writes = 0;
    for (group, resource) in node_scoped {
        for verb in verbs_on(rules, group, resource) {
            let operation = match verb.as_str() {
                "get" | "list" | "watch" => continue,
                "update" | "patch" => "UPDATE",
                "delete" => "DELETE",
                other => panic!("the agent may {other} {resource}: not allowed at all"),
            };
            writes += 1;
            assert!(
                covered(group, resource, operation),
                "the agent may {verb} {group}/{resource} but the own-node policy does not check \
                 {operation}"
            );
        }
    }
    // It must be able to do its job: cordon, report, evict, read pods for the drain.
    assert!(verbs_on(rules, "", "nodes").contains("patch"));
    assert!(verbs_on(rules, "slipway.dev", "nodeupdates/status").contains("patch"));
    assert!(verbs_on(rules, "", "pods/eviction").contains("create"));
    assert!(verbs_on(rules, "", "pods").contains("list"));
    assert!(writes >= 3);
    // Nothing else mutable: the agent creates only evictions.
    for rule in rules {
        for verb in rule["verbs"].as_array().unwrap() {
            let resources: Vec<&str> = rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            if verb == "create" {
                assert_eq!(resources, ["pods/eviction"], "agent create {resources:?}");
            }
            if ["update", "patch", "delete", "deletecollection"].contains(&verb.as_str().unwrap()) {
                for r in &resources {
                    assert!(
                        node_scoped.iter().any(|(_, x)| x == r),
                        "agent may {verb} {r}, outside the own-node policy"
                    );
                }
            }
        }
    }
}

/// Everything the operator's service account may do, as (scope, group, resource) → verbs, where
/// scope is "cluster" for a ClusterRole bound by a ClusterRoleBinding and the namespace for a
/// Role (or ClusterRole) bound by a RoleBinding.
fn operator_permissions(objs: &[Value]) -> BTreeMap<(String, String, String), BTreeSet<String>> {
    let operator = object(objs, "Deployment", "slipway-operator").expect("no operator Deployment");
    let sa = operator["spec"]["template"]["spec"]["serviceAccountName"].clone();
    let namespace = operator["metadata"]["namespace"].clone();
    let mut perms: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for binding in kinds(objs, "ClusterRoleBinding")
        .into_iter()
        .chain(kinds(objs, "RoleBinding"))
    {
        let binds_operator = binding["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == namespace
        });
        if !binds_operator {
            continue;
        }
        let scope = match binding["kind"].as_str().unwrap() {
            "ClusterRoleBinding" => "cluster".to_string(),
            _ => binding["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        let role_ref = &binding["roleRef"];
        let role = objs
            .iter()
            .find(|r| {
                r["kind"] == role_ref["kind"]
                    && r["metadata"]["name"] == role_ref["name"]
                    && (r["kind"] == "ClusterRole"
                        || r["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("{binding} binds a missing role"));
        for rule in role["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    perms
                        .entry((
                            scope.clone(),
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                        ))
                        .or_default()
                        .extend(
                            rule["verbs"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_str().unwrap().to_string()),
                        );
                }
            }
        }
    }
    perms
}

/// The operator may do exactly what its code calls, and its pod writes (the leader label on its
/// own Pod) are namespaced: a Role in its namespace; cluster-wide it may only list pods (for
/// blockingPodSelector).
fn check_operator_rbac(objs: &[Value], namespace: &str) {
    let perms = operator_permissions(objs);
    let set = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    let key = |scope: &str, group: &str, resource: &str| {
        (scope.to_string(), group.to_string(), resource.to_string())
    };
    let expected = BTreeMap::from([
        (key("cluster", "", "nodes"), set(&["get", "list", "watch"])),
        (
            key("cluster", "slipway.dev", "rolloutpolicies"),
            set(&["get", "list", "watch"]),
        ),
        (
            key("cluster", "slipway.dev", "rolloutpolicies/status"),
            set(&["patch"]),
        ),
        (
            key("cluster", "slipway.dev", "nodeupdates"),
            set(&["get", "list", "watch", "create", "patch", "delete"]),
        ),
        (
            key("cluster", "events.k8s.io", "events"),
            set(&["create", "patch"]),
        ),
        (
            key(namespace, "coordination.k8s.io", "leases"),
            set(&["create", "get", "patch"]),
        ),
        (key(namespace, "", "pods"), set(&["get", "patch"])),
        (key("cluster", "", "pods"), set(&["list"])),
        (key("cluster", "", "namespaces"), set(&["list"])),
    ]);
    assert_eq!(perms, expected, "the operator's permissions");
    let pods_anywhere_else: Vec<_> = perms
        .iter()
        .filter(|((scope, group, resource), verbs)| {
            group.is_empty()
                && resource.starts_with("pods")
                && scope != namespace
                && **verbs != set(&["list"])
        })
        .collect();
    assert!(
        pods_anywhere_else.is_empty(),
        "the operator's pod access must stay in {namespace}: {pods_anywhere_else:?}"
    );
}

#[test]
fn the_operator_may_do_what_its_code_calls_and_change_pods_only_in_its_namespace() {
    check_operator_rbac(&docs(&kustomize()), NAMESPACE);
    check_operator_rbac(&docs(&helm_template("updates", "{}")), "updates");
    // The check bites: pod writes granted through the ClusterRole (cluster-wide) are refused.
    let mut objs = docs(&kustomize());
    for o in &mut objs {
        if o["kind"] == "ClusterRole" && o["metadata"]["name"] == "slipway-operator" {
            o["rules"]
                .as_array_mut()
                .unwrap()
                .push(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}));
        }
    }
    assert!(std::panic::catch_unwind(|| check_operator_rbac(&objs, NAMESPACE)).is_err());
}

#[test]
fn the_fleetlock_service_selects_the_leader_and_the_operator_rolls() {
    for (what, objs, namespace) in [
        ("kustomization", docs(&kustomize()), NAMESPACE),
        ("chart", docs(&helm_template("updates", "{}")), "updates"),
    ] {
        let service = |name: &str| {
            object(&objs, "Service", name).unwrap_or_else(|| panic!("{what}: no Service {name}"))
        };
        // FleetLock: the operator's pods, and of those only the one the leader labelled (the
        // label name is the code's).
        let fleetlock = service("slipway-operator");
        assert_eq!(
            fleetlock["spec"]["selector"],
            json!({
                "app.kubernetes.io/name": "slipway-operator",
                slipway_operator::leader::LEADER_LABEL: "true",
            }),
            "{what}"
        );
        // Metrics: every replica.
        let metrics = service("slipway-operator-metrics");
        assert_eq!(
            metrics["spec"]["selector"],
            json!({"app.kubernetes.io/name": "slipway-operator"}),
            "{what}"
        );
        assert_eq!(metrics["spec"]["publishNotReadyAddresses"], true, "{what}");
        let operator = object(&objs, "Deployment", "slipway-operator").unwrap();
        assert_eq!(operator["metadata"]["namespace"], namespace);
        // Every replica is Ready (standbys too), so a rolling update completes; never fewer
        // than the replicas asked for.
        assert_eq!(
            operator["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
            "{what}"
        );
        // The Deployment selects by the app label alone: the leader label, which comes and
        // goes, never changes which pods it owns.
        assert_eq!(
            operator["spec"]["selector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "slipway-operator"}),
            "{what}"
        );
    }
}

#[test]
fn rbac_has_no_wildcards_and_holds_the_agent_to_its_own_node() {
    check_rbac(&docs(&kustomize()), NAMESPACE);
    // The chart puts the namespace it is installed in into the policy's username check.
    check_rbac(&docs(&helm_template("updates", "{}")), "updates");

    // The check itself bites: the agent allowed to update any NodeUpdate outside the policy.
    let mut objs = docs(&kustomize());
    for o in &mut objs {
        if o["kind"] == "ValidatingAdmissionPolicy"
            && o["metadata"]["name"] == "slipway-agent-own-nodeupdate"
        {
            o["spec"]["matchConstraints"]["resourceRules"][0]["resources"] = json!(["nodeupdates"]);
        }
    }
    let caught = std::panic::catch_unwind(|| check_rbac(&objs, NAMESPACE));
    assert!(
        caught.is_err(),
        "nodeupdates/status left unchecked went unnoticed"
    );
    let mut objs = docs(&kustomize());
    for o in &mut objs {
        if o["kind"] == "ClusterRole" && o["metadata"]["name"] == "slipway-operator" {
            o["rules"][0]["verbs"] = json!(["*"]);
        }
    }
    assert!(std::panic::catch_unwind(|| check_rbac(&objs, NAMESPACE)).is_err());
}

#[test]
fn workloads_run_with_least_privilege() {
    let objs = docs(&kustomize());
    let workloads: Vec<Value> = kinds(&objs, "Deployment")
        .into_iter()
        .chain(kinds(&objs, "DaemonSet"))
        .collect();
    assert_eq!(workloads.len(), 3);
    for w in &workloads {
        let name = w["metadata"]["name"].as_str().unwrap();
        let pod = &w["spec"]["template"]["spec"];
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].is_null() || pod[host] == false, "{name}: {host}");
        }
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(sc["capabilities"]["add"].is_null(), "{name}");
            assert!(
                sc["privileged"].is_null() || sc["privileged"] == false,
                "{name}"
            );
            for r in ["requests", "limits"] {
                for q in ["cpu", "memory"] {
                    assert!(c["resources"][r][q].is_string(), "{name}: no {r}.{q}");
                }
            }
        }
        let host_paths: Vec<&Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("hostPath"))
            .collect();
        match name {
            "slipway-agent" => {
                // Root for the bus policy and logind, and the bus socket: nothing more.
                assert_eq!(
                    host_paths,
                    [&json!({"path": "/run/dbus/system_bus_socket", "type": "Socket"})]
                );
                assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
                let env = &pod["containers"][0]["env"];
                assert!(
                    env.as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["name"] == "NODE_NAME"
                            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
                );
                assert_eq!(pod["containers"][0]["args"][0], "node");
            }
            _ => {
                assert!(host_paths.is_empty(), "{name}: hostPath");
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
                let c = &pod["containers"][0];
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            }
        }
    }
    let operator = workloads
        .iter()
        .find(|w| w["metadata"]["name"] == "slipway-operator")
        .unwrap();
    assert_eq!(operator["spec"]["replicas"], 2);
    let env: BTreeMap<&str, &str> = operator["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        env,
        BTreeMap::from([
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ])
    );
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The sample names Prometheus stores for a family.
fn samples(family: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Counter => vec![format!("{family}_total")],
        Kind::Gauge => vec![family.to_string()],
        Kind::Histogram => ["bucket", "sum", "count"]
            .iter()
            .map(|s| format!("{family}_{s}"))
            .collect(),
    }
}

/// The arguments of the call whose `(` is at the start of `s`, split at top-level commas.
fn call_args(s: &str) -> Vec<String> {
    let (mut depth, mut in_str, mut args, mut cur) = (0, false, Vec::new(), String::new());
    for ch in s.chars() {
        match ch {
            '"' => in_str = !in_str,
            '(' | '[' if !in_str => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' | ']' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    args.push(cur.trim().to_string());
                    return args;
                }
            }
            ',' if !in_str && depth == 1 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    panic!("unbalanced call: {s}")
}

/// The metric families a prometheus-client registry in `src` registers:
/// `Registry::with_prefix("p")`, then `register("name", help, value)` or
/// `register_with_unit("name", help, Unit::X, value)`, the kind read from the `let` that made
/// `value`.
fn families_in_source(src: &str) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    let Some(at) = src.find("Registry::with_prefix(") else {
        return out;
    };
    let prefix = call_args(&src[at + "Registry::with_prefix".len()..])[0]
        .trim_matches('"')
        .to_string();
    let mut rest = src;
    while let Some(i) = rest.find(".register") {
        rest = &rest[i + ".register".len()..];
        let with_unit = rest.starts_with("_with_unit(");
        let open = rest.find('(').unwrap();
        let args = call_args(&rest[open..]);
        let name = args[0].trim_matches('"');
        let (unit, value) = if with_unit {
            let unit = args[2].strip_prefix("Unit::").unwrap().to_lowercase();
            (Some(unit), &args[3])
        } else {
            (None, &args[2])
        };
        let var = value.trim_end_matches(".clone()");
        let decl = src
            .find(&format!("let {var} ="))
            .unwrap_or_else(|| panic!("no `let {var} =` for metric {name}"));
        let stmt = &src[decl..decl + src[decl..].find(';').unwrap()];
        let kind = if stmt.contains("Histogram") {
            Kind::Histogram
        } else if stmt.contains("Counter") {
            Kind::Counter
        } else if stmt.contains("Gauge") {
            Kind::Gauge
        } else {
            panic!("{name}: unknown metric type in `{stmt}`")
        };
        let family = match unit {
            Some(u) => format!("{prefix}_{name}_{u}"),
            None => format!("{prefix}_{name}"),
        };
        out.insert(family, kind);
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// `slipway_<component>_...` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("slipway_") {
        let boundary = i == 0 || {
            let b = rest.as_bytes()[i - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let end = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |e| i + e);
        if boundary {
            out.insert(rest[i..end].to_string());
        }
        rest = &rest[end..];
    }
    out
}

#[test]
fn the_source_scan_finds_exactly_what_the_operator_registers() {
    // The scan below reads the update server's registry from its source (this crate does not
    // link the server); here it must agree with the operator's real registry.
    let scanned = families_in_source(
        &std::fs::read_to_string(repo().join("operator/src/metrics.rs")).unwrap(),
    );
    use slipway_operator::metrics::{
        FleetLockLabels, GateLabels, Metrics, PhaseLabels, ReasonLabels,
    };
    let metrics = Metrics::new();
    // A family appears in the text only once it has a label set.
    metrics
        .nodes
        .get_or_create(&PhaseLabels {
            phase: "Idle".into(),
        })
        .set(1);
    metrics
        .waiting
        .get_or_create(&ReasonLabels {
            reason: "WindowClosed".into(),
        })
        .set(1);
    metrics
        .fleetlock
        .get_or_create(&FleetLockLabels {
            op: "pre-reboot",
            result: "ok".into(),
        })
        .inc();
    metrics
        .gate_closed
        .get_or_create(&GateLabels {
            policy: "workers".into(),
            gate: "alerts".into(),
        })
        .set(1);
    let encoded = metrics.encode();
    let real: BTreeMap<String, Kind> = encoded
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => panic!("{other}"),
            };
            (name.to_string(), kind)
        })
        .collect();
    assert_eq!(scanned, real);
    assert!(real.len() >= 10, "{encoded}");
    // The sample names the scan derives are the ones the encoder writes.
    for line in encoded.lines().filter(|l| !l.starts_with('#')) {
        let sample = line.split(['{', ' ']).next().unwrap();
        assert!(
            scanned
                .iter()
                .any(|(f, k)| samples(f, *k).iter().any(|s| s == sample)),
            "{sample} not derived from the scan"
        );
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_components_register() {
    let mut registered = BTreeSet::new();
    let mut families = 0;
    for component in ["operator/src", "update-server/src", "node-agent/src"] {
        for file in rust_files(&repo().join(component)) {
            let src = std::fs::read_to_string(&file).unwrap();
            for (family, kind) in families_in_source(&src) {
                families += 1;
                registered.extend(samples(&family, kind));
            }
        }
    }
    assert!(
        families >= 15,
        "only {families} families found: {registered:?}"
    );

    let path = repo().join("manifests/grafana/slipway.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "slipway-overview");
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    let mut components = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{}: no Slipway metric in {expr}",
                panel["title"]
            );
            for n in &names {
                components.insert(n.split('_').nth(1).unwrap().to_string());
            }
            queried.extend(names);
        }
    }
    // Names anywhere in the dashboard (descriptions, variables) count too.
    let everywhere = metric_names(&dashboard.to_string());
    let unknown: Vec<_> = everywhere.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics no component registers: {unknown:?}\nregistered: {registered:?}"
    );
    // All three components are on it.
    assert_eq!(
        components,
        BTreeSet::from([
            "agent".to_string(),
            "operator".to_string(),
            "server".to_string()
        ])
    );
    assert!(queried.len() >= 12, "{queried:?}");
}
