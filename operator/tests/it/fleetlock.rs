//! FleetLock against the operator's real HTTP server, on the real control plane: lock, recursive re-lock, unlock, a full
//! semaphore, a wrong group, a missing header and a malformed body; FleetLock holders and
//! Kubernetes nodes share one budget, and holders survive an operator restart. A standby is
//! Ready but refuses FleetLock (503, Retry-After); only the leader answers /leaderz with 200.

use super::*;

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    async fn post(&self, path: &str, header: bool, body: &str) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_string());
        if header {
            req = req.header("fleet-lock-protocol", "true");
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn lock(&self, group: &str, id: &str) -> (u16, serde_json::Value) {
        let body = json!({"client_params": {"id": id, "group": group}}).to_string();
        self.post("/v1/pre-reboot", true, &body).await
    }

    async fn unlock(&self, group: &str, id: &str) -> (u16, serde_json::Value) {
        let body = json!({"client_params": {"id": id, "group": group}}).to_string();
        self.post("/v1/steady-state", true, &body).await
    }
}

async fn serve(op: Arc<Operator>) -> Http {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(slipway_operator::fleetlock::serve(
        listener,
        op,
        std::future::pending(),
    ));
    Http {
        base,
        client: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn fleetlock_locks_share_the_policy_budget_with_kubernetes_nodes() {
    let kube = cluster().await;
    let client = kube.client();
    let nodes = kube.names("node", 2);
    kube.add_nodes(&nodes).await;
    kube.apply_policy("workers", json!({"channel": "stable", "maxUnavailable": 2}))
        .await;
    let group = kube.name("workers");
    let clock = ManualClock::new(t0());
    let (_tx, rx) = leading();
    let running = start_operator(&kube, &clock, rx).await;
    let http = serve(running.op.clone()).await;
    wait_until_async("NodeUpdates", Duration::from_secs(20), async || {
        kube.updates().await.len() == 2
    })
    .await;
    stage(&client, &nodes[0]).await;
    wait_until_async("node-00 granted", Duration::from_secs(20), async || {
        kube.update(&nodes[0])
            .await
            .is_some_and(|u| u.spec.reboot_granted)
    })
    .await;

    assert_eq!(http.lock(&group, "host-a").await.0, 200, "a free slot");
    assert_eq!(
        http.lock(&group, "host-a").await.0,
        200,
        "recursive re-lock by the holder"
    );
    let (code, body) = http.lock(&group, "host-b").await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["kind"], "failed_lock");
    assert!(
        body["value"]
            .as_str()
            .unwrap()
            .contains("semaphore full: 2 of 2"),
        "{body}"
    );

    // A Kubernetes node staged now waits for the same budget.
    stage(&client, &nodes[1]).await;
    wait_until_async(
        "node-01 waits on the budget",
        Duration::from_secs(20),
        async || {
            kube.update(&nodes[1])
                .await
                .is_some_and(|u| u.spec.waiting_reason.as_deref() == Some("BudgetFull"))
        },
    )
    .await;

    // Protocol errors.
    let (code, body) = http
        .post(
            "/v1/pre-reboot",
            false,
            &json!({"client_params": {"id": "x", "group": group}}).to_string(),
        )
        .await;
    assert_eq!((code, body["kind"].as_str()), (400, Some("missing_header")));
    let (code, body) = http
        .post("/v1/pre-reboot", true, r#"{"client_params":{"id":"x"}}"#)
        .await;
    assert_eq!(
        (code, body["kind"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (code, body) = http.post("/v1/pre-reboot", true, "not json").await;
    assert_eq!((code, body["kind"].as_str()), (400, Some("bad_request")));
    let (code, body) = http.lock("nope", "host-a").await;
    assert_eq!((code, body["kind"].as_str()), (404, Some("unknown_group")));

    // Holders are recorded in the cluster and survive an operator restart.
    let holders: Vec<_> = kube
        .policy_status("workers")
        .await
        .fleet_lock_holders
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(holders, vec!["host-a".to_string()]);
    drop(running);
    let (_tx2, rx2) = leading();
    let running = start_operator(&kube, &clock, rx2).await;
    let http = serve(running.op.clone()).await;
    let (code, body) = http.lock(&group, "host-b").await;
    assert_eq!(code, 409, "the restarted operator forgot host-a: {body}");

    // steady-state releases; unlocking what one does not hold is fine.
    assert_eq!(http.unlock(&group, "host-a").await.0, 200);
    assert_eq!(http.unlock(&group, "host-zzz").await.0, 200);
    // The freed slot goes to whoever asks first: the waiting node (on the next evaluation) or
    // host-b. Either way the budget holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = http.lock(&group, "host-b").await;
    let node01 = kube.update(&nodes[1]).await.unwrap().spec.reboot_granted;
    assert!(code == 200 || node01, "the freed slot went to nobody");
    assert!(!(code == 200 && node01), "both took the one freed slot");
    let metrics = running.op.metrics().encode();
    assert!(
        metrics.contains(
            "slipway_operator_fleetlock_requests_total{op=\"steady-state\",result=\"ok\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_standby_is_ready_but_refuses_fleetlock_and_only_the_leader_answers_leaderz() {
    let kube = cluster().await;
    kube.apply_policy("workers", json!({"channel": "stable"}))
        .await;
    let group = kube.name("workers");
    let lock_body = json!({"client_params": {"id": "host-a", "group": group}}).to_string();
    let clock = ManualClock::new(t0());
    // Two replicas in a real election: "a" joins first and leads, "b" stands by.
    let (election_a, election_b) = leader_then_standby(&kube, "a", "b").await;
    let a = start_operator(&kube, &clock, election_a.leading.clone()).await;
    let b = start_operator(&kube, &clock, election_b.leading.clone()).await;
    let (leader, standby) = (serve(a.op.clone()).await, serve(b.op.clone()).await);
    assert!(a.op.is_leader() && !b.op.is_leader());

    // Both are Ready (a rolling update can proceed); /leaderz tells them apart.
    for (who, http) in [("leader", &leader), ("standby", &standby)] {
        assert_eq!(http.get("/readyz").await.0, 200, "{who} /readyz");
    }
    assert_eq!(leader.get("/leaderz").await.0, 200);
    assert_eq!(standby.get("/leaderz").await.0, 503);

    // The standby refuses FleetLock in the protocol's error format, saying when to retry.
    for (path, body) in [
        ("/v1/pre-reboot", lock_body.clone()),
        ("/v1/steady-state", lock_body.clone()),
    ] {
        let resp = standby
            .client
            .post(format!("{}{path}", standby.base))
            .header("fleet-lock-protocol", "true")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 503, "{path}");
        assert_eq!(
            resp.headers()["retry-after"],
            slipway_operator::fleetlock::NOT_LEADER_RETRY_AFTER_SECS.to_string(),
            "{path}"
        );
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["kind"], "not_leader", "{path}: {body}");
        assert!(
            body["value"]
                .as_str()
                .unwrap()
                .contains("not the leader; the Service routes to the leader"),
            "{body}"
        );
    }
    // The leader serves the same request.
    assert_eq!(leader.lock(&group, "host-a").await.0, 200);
    assert_eq!(leader.unlock(&group, "host-a").await.0, 200);

    // A replica whose election stopped is no longer Ready, nor the leader. (Dropping the
    // election aborts its task, which lets go of the channel soon after, not at once.)
    drop(election_b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while standby.get("/readyz").await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still Ready without an election"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(standby.get("/leaderz").await.0, 503);
    assert_eq!(leader.get("/readyz").await.0, 200);
}
