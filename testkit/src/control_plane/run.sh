#!/usr/bin/env bash
# Starts a Kubernetes control plane on loopback for Slipway's tests and `make cluster`, and
# stops it when its standard input closes: the harness holds the other end of that pipe, so the
# control plane goes away with the process that started it, however that process ends (a
# panic, an abort, SIGKILL). Written by testkit's control_plane module, which waits for
# readiness and mints credentials; everything here is plain files under $DIR.
#
# In: BIN (kube-apiserver, kube-controller-manager, kube-scheduler, etcd), DIR (empty, ours to
# delete unless KEEP=1), ETCD_PORT, ETCD_PEER_PORT, API_PORT, KCM_PORT, SCHED_PORT, SCHEDULER
# (1 to run kube-scheduler), GRACE (node-monitor grace period, e.g. 20s), EXTRA_SANS (more
# subjectAltNames for the serving certificate, e.g. "IP:10.0.2.101" for QEMU guests).
set -euo pipefail
cd "$DIR"
pids=()
stop() {
  trap - EXIT INT TERM
  exec 2>/dev/null # no job-control chatter about the components we end
  # One at a time, in reverse start order (controllers, the API server, then etcd), each given
  # five seconds to exit cleanly.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[i]}" 2>/dev/null || true
  done
  wait || true
  cd /
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap stop EXIT INT TERM

# --- PKI: one CA for serving and client certificates, a service-account signing key.
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout ca.key -out ca.crt -subj "/CN=slipway-test-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
cert() { # name subject extensions
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$1.ext" -out "$1.crt"
  rm -f "$1.csr" "$1.ext"
}
cert apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local${EXTRA_SANS:+,$EXTRA_SANS}
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
client="extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
cert admin "/O=system:masters/CN=slipway-admin" "$client"
cert controller-manager "/CN=system:kube-controller-manager" "$client"
cert scheduler "/CN=system:kube-scheduler" "$client"
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key
ossl pkey -in sa.key -pubout -out sa.pub

kubeconfig() { # name
  cat > "$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: slipway-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $DIR/ca.crt
users:
- name: $1
  user:
    client-certificate: $DIR/$1.crt
    client-key: $DIR/$1.key
contexts:
- name: $1
  context: {cluster: slipway-test, user: $1}
current-context: $1
KC
}
kubeconfig admin
kubeconfig controller-manager
kubeconfig scheduler

# Audit: full request and response bodies for the objects a rollout's budget is judged on
# (tests replay them in resourceVersion order), metadata for other writes, nothing for reads.
cat > audit-policy.yaml <<AP
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  verbs: ["get", "list", "watch"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["nodes", "nodes/status", "pods", "pods/eviction"]
  - group: "slipway.dev"
    resources: ["nodeupdates", "nodeupdates/status", "rolloutpolicies", "rolloutpolicies/status"]
  - group: "coordination.k8s.io"
    resources: ["leases"]
- level: Metadata
AP

mkdir -p logs
"$BIN/etcd" --name default --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level warn </dev/null >logs/etcd.log 2>&1 &
pids+=($!)

# Kubelets are never dialled by the tests (no logs, exec or port-forward): the QEMU nodes' kubelets
# report InternalIP 10.0.2.15, their slirp address, which from this machine is an address on no
# network of ours. Hostname only, so the API server never sends anything there.
"$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file apiserver.crt --tls-private-key-file apiserver.key \
  --client-ca-file ca.crt \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file sa.pub --service-account-signing-key-file sa.key \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 \
  --authorization-mode Node,RBAC \
  --endpoint-reconciler-type none \
  --enable-admission-plugins NodeRestriction \
  --allow-privileged=true \
  --audit-log-path "$DIR/audit.log" --audit-policy-file audit-policy.yaml \
  --audit-log-format json --audit-log-mode blocking --audit-log-maxsize 0 \
  --event-ttl 1h \
  --kubelet-preferred-address-types Hostname \
  </dev/null >logs/kube-apiserver.log 2>&1 &
pids+=($!)

# The controllers need the API server's bootstrap RBAC: start them once it is ready.
for _ in $(seq 600); do
  if curl -sf --cacert ca.crt --cert admin.crt --key admin.key \
      "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
    break
  fi
  kill -0 "${pids[1]}" 2>/dev/null || { echo "kube-apiserver exited; see $DIR/logs" >&2; exit 1; }
  sleep 0.2
done

"$BIN/kube-controller-manager" \
  --kubeconfig controller-manager.kubeconfig \
  --authentication-kubeconfig controller-manager.kubeconfig \
  --authorization-kubeconfig controller-manager.kubeconfig \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
  --service-account-private-key-file sa.key --root-ca-file ca.crt \
  --use-service-account-credentials \
  --cluster-signing-cert-file ca.crt --cluster-signing-key-file ca.key \
  --service-cluster-ip-range 10.0.0.0/24 \
  --node-monitor-period 2s --node-monitor-grace-period "$GRACE" \
  --leader-elect=false \
  </dev/null >logs/kube-controller-manager.log 2>&1 &
pids+=($!)

if [ "${SCHEDULER:-0}" = 1 ]; then
  "$BIN/kube-scheduler" \
    --kubeconfig scheduler.kubeconfig \
    --authentication-kubeconfig scheduler.kubeconfig \
    --authorization-kubeconfig scheduler.kubeconfig \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false \
    </dev/null >logs/kube-scheduler.log 2>&1 &
  pids+=($!)
fi

echo "started ${pids[*]}"
# Hold until the harness closes our standard input (or a component exits on its own).
read -r _ || true
