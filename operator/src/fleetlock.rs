//! The operator's HTTP surface: the FleetLock protocol (`POST /v1/pre-reboot`,
//! `POST /v1/steady-state`) for hosts outside Kubernetes such as Zincati, plus `/metrics`,
//! `/healthz`, `/readyz` and `/leaderz`. A FleetLock group is the name of a `RolloutPolicy`; a
//! client id holding a slot counts against that policy's budget exactly like a rebooting node,
//! and the holders are recorded in the policy's status so a restart or a new leader keeps them.
//! A group `POLICY.DOMAIN` takes a slot of a policy with `maxUnavailablePerTopology` in that
//! topology domain (e.g. `workers.zone-a`): it counts against the domain's budget too.
//!
//! Every replica is Ready once it can serve (leader or standby), so Deployments roll; FleetLock
//! reaches the leader because its Service also selects the label the leader keeps on its own
//! Pod (`leader::label_pod`). A standby that gets a FleetLock request anyway (the label moving
//! between replicas) answers 503 with `Retry-After`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use slipway_api::crd::{FleetLockHolder, RolloutPolicyStatus};

use crate::metrics::FleetLockLabels;
use crate::plan::{self, ClusterView};
use crate::reconcile::Operator;
use crate::writes;

/// Largest FleetLock body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// `Retry-After` (seconds) of a standby's FleetLock refusal: long enough for the leader label
/// to move and the Service's endpoints to follow, short against a lease's 15 s.
pub const NOT_LEADER_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, Deserialize)]
struct Request {
    client_params: ClientParams,
}

/// The `client_params` of a FleetLock request.
#[derive(Debug, Deserialize)]
pub struct ClientParams {
    /// The machine's id (Zincati sends its app-specific machine id).
    pub id: String,
    /// The group: a `RolloutPolicy` name, optionally `.DOMAIN`.
    pub group: String,
}

fn error(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": kind, "value": value.into()}).to_string(),
    )
        .into_response()
}

/// A refused request: status, FleetLock error kind, message.
pub type Refusal = (StatusCode, &'static str, String);

/// Reads a FleetLock request (the `fleet-lock-protocol: true` header and a body of at most
/// [`MAX_BODY`] bytes naming a non-empty id and group), or says why it is refused.
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<ClientParams, Refusal> {
    let proto = headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok());
    if proto != Some("true") {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing_header",
            "the fleet-lock-protocol: true header is required".into(),
        ));
    }
    if body.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("body over {MAX_BODY} bytes"),
        ));
    }
    let req: Request = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be {{\"client_params\":{{\"id\":\"…\",\"group\":\"…\"}}}}: {e}"),
        )
    })?;
    let p = req.client_params;
    if p.id.trim().is_empty() || p.group.trim().is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "bad_request",
            "client_params.id and client_params.group must not be empty".into(),
        ));
    }
    Ok(p)
}

/// Why a FleetLock lock was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockRefused {
    /// No `RolloutPolicy` is named like the group.
    #[error("no RolloutPolicy named {0:?} (the FleetLock group names a policy)")]
    UnknownGroup(String),
    /// Budget, window, pause, halt or an invalid spec.
    #[error("{0}")]
    Waiting(String),
    /// This replica does not lead (the FleetLock Service selects the leader's Pod, so this
    /// happens only while the leader label moves).
    #[error("not the leader; the Service routes to the leader")]
    NotLeader,
    /// The status write failed.
    #[error("recording the lock failed: {0}")]
    Storage(String),
}

/// The policy status after `id` takes a slot of `group`, or `None` when it holds one already:
/// the same budget, window, pause and halt as the policy's Kubernetes nodes.
pub fn locked(
    view: &ClusterView,
    group: &str,
    id: &str,
    now: Timestamp,
) -> Result<Option<RolloutPolicyStatus>, LockRefused> {
    let (pv, domain) = policy(view, group)?;
    if pv.status.fleet_lock_holders.iter().any(|h| h.id == id) {
        return Ok(None);
    }
    let plan = plan::plan(view, now);
    let domain_budget = domain.as_deref().and_then(|d| {
        let t = pv.spec.max_unavailable_per_topology.as_ref()?;
        Some((d, plan::resolve_budget(&t.max, 1).unwrap_or(0)))
    });
    if let Some(r) =
        plan::fleetlock_refusal(&plan.policies[&pv.name], pv.spec.paused, now, domain_budget)
    {
        return Err(LockRefused::Waiting(r));
    }
    let mut status = pv.status.clone();
    status.fleet_lock_holders.push(FleetLockHolder {
        id: id.to_string(),
        since: Time(now),
        domain,
    });
    Ok(Some(status))
}

/// The policy status after `id` gives its slot of `group` back, or `None` when it held none.
pub fn unlocked(
    view: &ClusterView,
    group: &str,
    id: &str,
) -> Result<Option<RolloutPolicyStatus>, LockRefused> {
    let (pv, _) = policy(view, group)?;
    if !pv.status.fleet_lock_holders.iter().any(|h| h.id == id) {
        return Ok(None);
    }
    let mut status = pv.status.clone();
    status.fleet_lock_holders.retain(|h| h.id != id);
    Ok(Some(status))
}

/// The policy a group names, and the topology domain when it names one: `POLICY` is the
/// policy; `POLICY.DOMAIN` is a slot in DOMAIN of a policy with `maxUnavailablePerTopology`
/// (the longest such policy name wins, as names may hold dots themselves).
pub fn policy<'a>(
    view: &'a ClusterView,
    group: &str,
) -> Result<(&'a plan::PolicyView, Option<String>), LockRefused> {
    if let Some(p) = view.policies.iter().find(|p| p.name == group) {
        return Ok((p, None));
    }
    group
        .char_indices()
        .filter(|(_, c)| *c == '.')
        .rev()
        .find_map(|(i, _)| {
            let (name, domain) = (&group[..i], &group[i + 1..]);
            view.policies
                .iter()
                .find(|p| p.name == name && p.spec.max_unavailable_per_topology.is_some())
                .filter(|_| !domain.is_empty())
                .map(|p| (p, Some(domain.to_string())))
        })
        .ok_or_else(|| LockRefused::UnknownGroup(group.to_string()))
}

impl Operator {
    /// FleetLock `RecursiveLock`: `id` takes (or already holds) a slot of policy `group`.
    pub async fn fleetlock_lock(&self, group: &str, id: &str) -> Result<(), LockRefused> {
        self.change_holders(group, |view, now| locked(view, group, id, now))
            .await
    }

    /// FleetLock `UnlockIfHeld`: `id` gives its slot of `group` back (success if it held none).
    pub async fn fleetlock_unlock(&self, group: &str, id: &str) -> Result<(), LockRefused> {
        self.change_holders(group, |view, _| unlocked(view, group, id))
            .await
    }

    /// Both operations: on the leader, with its memory held (so evaluations wait), decide from
    /// a fresh view and write the policy's `fleetLockHolders` if they change.
    async fn change_holders(
        &self,
        group: &str,
        decide: impl FnOnce(&ClusterView, Timestamp) -> Result<Option<RolloutPolicyStatus>, LockRefused>,
    ) -> Result<(), LockRefused> {
        if !self.is_leader() {
            return Err(LockRefused::NotLeader);
        }
        let mut memory = self
            .leader_memory()
            .await
            .map_err(|e| LockRefused::Storage(e.to_string()))?;
        let snapshot = self.snapshot();
        let mut view = writes::view(&snapshot, &memory);
        // A closed Prometheus gate refuses FleetLock clients too (answers are cached).
        self.ask_prometheus(&mut view).await;
        let name = policy(&view, group)?.0.name.clone();
        let Some(status) = decide(&view, self.now())? else {
            return Ok(());
        };
        let patch = json!({ "status": { "fleetLockHolders": status.fleet_lock_holders } });
        if let Err(e) = self.patch_policy_status(&name, patch).await {
            self.metrics().write_errors.inc();
            return Err(LockRefused::Storage(e.to_string()));
        }
        memory
            .policies
            .insert(name.clone(), (snapshot.policy_uid(&name), status));
        drop(memory);
        self.trigger();
        Ok(())
    }
}

fn refused(e: LockRefused, failed_kind: &str) -> Response {
    match e {
        LockRefused::UnknownGroup(_) => {
            error(StatusCode::NOT_FOUND, "unknown_group", e.to_string())
        }
        LockRefused::Waiting(_) => error(StatusCode::CONFLICT, failed_kind, e.to_string()),
        LockRefused::NotLeader => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "not_leader", e.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, NOT_LEADER_RETRY_AFTER_SECS.into());
            resp
        }
        LockRefused::Storage(_) => error(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string()),
    }
}

fn count(op: &Operator, name: &'static str, result: &Response) {
    let result = if result.status().is_success() {
        "ok".to_string()
    } else {
        result.status().as_u16().to_string()
    };
    op.metrics()
        .fleetlock
        .get_or_create(&FleetLockLabels { op: name, result })
        .inc();
}

async fn pre_reboot(State(op): State<Arc<Operator>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match parse_request(&headers, &body) {
        Err((status, kind, value)) => error(status, kind, value),
        Ok(p) => match op.fleetlock_lock(&p.group, &p.id).await {
            Ok(()) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response(),
            Err(e) => refused(e, "failed_lock"),
        },
    };
    count(&op, "pre-reboot", &resp);
    resp
}

async fn steady_state(
    State(op): State<Arc<Operator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match parse_request(&headers, &body) {
        Err((status, kind, value)) => error(status, kind, value),
        Ok(p) => match op.fleetlock_unlock(&p.group, &p.id).await {
            Ok(()) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{}",
            )
                .into_response(),
            Err(e) => refused(e, "failed_unlock"),
        },
    };
    count(&op, "steady-state", &resp);
    resp
}

async fn metrics(State(op): State<Arc<Operator>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            slipway_api::names::OPENMETRICS_CONTENT_TYPE,
        )],
        op.metrics().encode(),
    )
        .into_response()
}

/// Ready = able to serve, leader or not (see [`Operator::is_ready`]): a standby must be Ready
/// too, or a Deployment's rolling update never completes.
async fn readyz(State(op): State<Arc<Operator>>) -> Response {
    if op.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the caches' watches or the leader election stopped\n",
        )
            .into_response()
    }
}

/// 200 on the leader, 503 on a standby: for whoever wants to find (or probe for) the leader.
async fn leaderz(State(op): State<Arc<Operator>>) -> Response {
    if op.is_leader() {
        (StatusCode::OK, "leader\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response()
    }
}

/// The operator's routes.
pub fn router(op: Arc<Operator>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/leaderz", get(leaderz))
        .with_state(op)
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    op: Arc<Operator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(op))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, now, policy};
    use crate::plan::PolicyView;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn view(max: i32) -> ClusterView {
        ClusterView {
            nodes: vec![node("a"), node("b")],
            policies: vec![policy("p").max(IntOrString::Int(max))],
        }
    }

    #[test]
    fn a_group_can_name_a_topology_domain_whose_budget_it_then_uses() {
        let zoned = |mut p: PolicyView| {
            p.spec.max_unavailable_per_topology = Some(slipway_api::crd::TopologyBudget {
                key: "zone".into(),
                max: IntOrString::Int(1),
            });
            p
        };
        let mut v = ClusterView {
            nodes: vec![node("a").label("zone", "zone-a")],
            policies: vec![
                zoned(policy("p").max(IntOrString::Int(5))),
                policy("q").select("pool", "none"),
            ],
        };
        let status = locked(&v, "p.zone-a", "host-1", now()).unwrap().unwrap();
        assert_eq!(
            status.fleet_lock_holders[0].domain.as_deref(),
            Some("zone-a")
        );
        v.policies[0].status = status;
        match locked(&v, "p.zone-a", "host-2", now()) {
            Err(LockRefused::Waiting(why)) => assert_eq!(
                why,
                "topology budget full: 1 of 1 slots in use in zone=zone-a"
            ),
            other => panic!("{other:?}"),
        }
        // Another domain (no node there yet) has its own slot.
        let status = locked(&v, "p.zone-b", "host-3", now()).unwrap().unwrap();
        v.policies[0].status = status;
        // The holder's domain is full for the nodes too.
        v.nodes[0] = v.nodes[0].clone().staged("2.0.0");
        let p = plan::plan(&v, now());
        assert!(matches!(
            p.nodes["a"].reason(),
            Some(plan::Reason::TopologyBudgetFull { domain, .. }) if domain == "zone-a"
        ));
        // Unlock by the same group; a policy without a topology budget takes no domain.
        let status = unlocked(&v, "p.zone-a", "host-1").unwrap().unwrap();
        assert_eq!(status.fleet_lock_holders.len(), 1);
        assert_eq!(
            locked(&v, "q.zone-a", "h", now()),
            Err(LockRefused::UnknownGroup("q.zone-a".into()))
        );
        assert_eq!(
            locked(&v, "p.", "h", now()),
            Err(LockRefused::UnknownGroup("p.".into()))
        );
    }

    #[test]
    fn a_lock_takes_a_slot_of_the_budget_and_is_recursive() {
        let mut v = view(1);
        let status = locked(&v, "p", "host-1", now())
            .unwrap()
            .expect("new holder");
        assert_eq!(status.fleet_lock_holders.len(), 1);
        assert_eq!(status.fleet_lock_holders[0].id, "host-1");
        assert_eq!(status.fleet_lock_holders[0].since, Time(now()));
        v.policies[0].status = status;
        assert_eq!(locked(&v, "p", "host-1", now()), Ok(None), "held already");
        match locked(&v, "p", "host-2", now()) {
            Err(LockRefused::Waiting(why)) => assert!(why.contains("semaphore full"), "{why}"),
            other => panic!("budget of one held by host-1, got {other:?}"),
        }
        let released = unlocked(&v, "p", "host-1").unwrap().expect("held");
        assert!(released.fleet_lock_holders.is_empty());
        assert_eq!(unlocked(&v, "p", "host-2"), Ok(None), "held nothing");
    }

    #[test]
    fn a_lock_obeys_pause_and_window_and_names_unknown_groups() {
        let mut v = view(2);
        v.policies[0]
            .checks
            .closed_gates
            .push(crate::plan::GateVerdict {
                gate: "alerts".into(),
                detail: "1 series: ALERTS{}".into(),
            });
        assert_eq!(
            locked(&v, "p", "h", now()),
            Err(LockRefused::Waiting(
                "gate alerts is closed: 1 series: ALERTS{}".into()
            ))
        );
        v.policies[0].checks.closed_gates.clear();
        v.policies[0].spec.paused = true;
        assert_eq!(
            locked(&v, "p", "h", now()),
            Err(LockRefused::Waiting("policy is paused".into()))
        );
        let v = ClusterView {
            nodes: vec![],
            policies: vec![policy("p").window("0 3 * * *", "1h")],
        };
        assert!(matches!(
            locked(&v, "p", "h", now()),
            Err(LockRefused::Waiting(w)) if w.starts_with("reboot window closed")
        ));
        assert_eq!(
            locked(&v, "nope", "h", now()),
            Err(LockRefused::UnknownGroup("nope".into()))
        );
        assert_eq!(
            unlocked(&v, "nope", "h"),
            Err(LockRefused::UnknownGroup("nope".into()))
        );
    }
}
