//! The generated CRDs on the real kube-apiserver: what our schema refuses, the server refuses
//! (naming the same field); the server applies the defaults; the real kubectl prints the
//! printer columns with values and explains the fields.

use super::*;

#[tokio::test]
async fn invalid_policies_are_refused_by_the_api_server_naming_the_field() {
    let kube = cluster().await;
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        kube.client(),
        &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
    );
    for (spec, field) in [
        (
            json!({"channel": "stable", "maxUnavailable": "lots"}),
            "spec.maxUnavailable",
        ),
        (
            json!({"channel": "stable", "maxUnavailable": -1}),
            "spec.maxUnavailable",
        ),
        (
            json!({"channel": "stable", "windows": [{"schedule": "0 2 * * *", "duration": "2 hours"}]}),
            "spec.windows[0].duration",
        ),
        (
            json!({"channel": "stable", "windows": [{"schedule": "0 2 *", "duration": "2h"}]}),
            "spec.windows[0].schedule",
        ),
        (json!({"channel": "Stable!"}), "spec.channel"),
        (json!({"maxUnavailable": 1}), "spec.channel"),
    ] {
        let name = kube.name("bad");
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": name}, "spec": spec.clone()
        }))
        .unwrap();
        let err = raw
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{spec} accepted"));
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{spec}: {s:?}");
                assert_eq!(s.reason, "Invalid", "{spec}: {s:?}");
                assert!(s.message.contains(field), "{spec}: {}", s.message);
            }
            other => panic!("{spec}: {other}"),
        }
    }
    // A NodeUpdate status with an unknown phase is refused on the status subresource.
    let nus: Api<NodeUpdate> = Api::all(kube.client());
    let name = kube.name("nu");
    nus.create(
        &PostParams::default(),
        &NodeUpdate::new(&name, Default::default()),
    )
    .await
    .unwrap();
    let err = nus
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Exploded"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("status.phase")),
        "{err}"
    );
}

#[tokio::test]
async fn the_api_server_applies_the_schema_defaults() {
    let kube = cluster().await;
    let raw: Api<kube::api::DynamicObject> = Api::all_with(
        kube.client(),
        &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
    );
    let ok: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "RolloutPolicy", "metadata": {"name": kube.name("ok")},
        "spec": {"channel": "stable", "windows": [{"schedule": "0 2 * * *", "duration": "2h"}]}
    }))
    .unwrap();
    let created = raw.create(&PostParams::default(), &ok).await.unwrap();
    assert_eq!(created.data["spec"]["maxUnavailable"], json!(1));
    assert_eq!(created.data["spec"]["haltAfterFailures"], json!(1));
    assert_eq!(created.data["spec"]["windows"][0]["timeZone"], json!("UTC"));
    // What the server stored reads back into our types.
    let typed: RolloutPolicy = Api::all(kube.client()).get(&kube.name("ok")).await.unwrap();
    assert_eq!(typed.spec.channel, "stable");
}

#[tokio::test]
async fn kubectl_prints_the_columns_and_explains_the_fields() {
    let kube = cluster().await;
    let client = kube.client();
    kube.apply_policy(
        "cols",
        json!({"channel": "stable", "maxUnavailable": "25%"}),
    )
    .await;
    let node = kube.name("colnode");
    let mut nu = NodeUpdate::new(&node, Default::default());
    nu.spec.target_version = Some("2.0.0".into());
    nu.spec.waiting_reason = Some("WindowClosed".into());
    nu.metadata.labels = Some([(TEST_LABEL.to_string(), kube.id.clone())].into());
    Api::<NodeUpdate>::all(client.clone())
        .create(&PostParams::default(), &nu)
        .await
        .unwrap();
    stage(&client, &node).await;
    Api::<RolloutPolicy>::all(client.clone())
        .patch_status(
            &kube.name("cols"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"targetVersion": "2.0.0", "progress": "0/1", "unavailable": 0, "window": "open"}})),
        )
        .await
        .unwrap();
    let selector = format!("{TEST_LABEL}={}", kube.id);
    let text = kubectl_ok(&kube, &["get", "rp,nu", "-l", &selector]);
    let lines: Vec<&str> = text.lines().collect();
    let rp_header = lines
        .iter()
        .position(|l| l.starts_with("NAME") && l.contains("CHANNEL"))
        .unwrap_or_else(|| panic!("{text}"));
    for col in [
        "CHANNEL",
        "TARGET",
        "UPDATED",
        "UNAVAILABLE",
        "WINDOW",
        "AGE",
    ] {
        assert!(lines[rp_header].contains(col), "{col}: {text}");
    }
    let rp_row = lines[rp_header + 1];
    for v in ["stable", "2.0.0", "0/1", "open"] {
        assert!(rp_row.contains(v), "{v} not in {rp_row:?}");
    }
    let nu_header = lines
        .iter()
        .position(|l| l.starts_with("NAME") && l.contains("PHASE"))
        .unwrap_or_else(|| panic!("{text}"));
    for col in ["PHASE", "CURRENT", "TARGET", "GRANTED", "REASON", "AGE"] {
        assert!(lines[nu_header].contains(col), "{col}: {text}");
    }
    let nu_row = lines[nu_header + 1];
    for v in [
        node.as_str(),
        "Staged",
        "1.0.0",
        "2.0.0",
        "false",
        "WindowClosed",
    ] {
        assert!(nu_row.contains(v), "{v} not in {nu_row:?}");
    }
    // kubectl explain reads the published schema, docs included.
    let explained = kubectl_ok(&kube, &["explain", "rolloutpolicy.spec.maxUnavailable"]);
    assert!(
        explained.contains("Most nodes unavailable at once"),
        "{explained}"
    );
    let explained = kubectl_ok(&kube, &["explain", "nodeupdates.status"]);
    assert!(explained.contains("phase"), "{explained}");
}
