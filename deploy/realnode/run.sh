#!/usr/bin/env bash
# The chart for real: on the test environment's real node (deploy/testenv/up.sh --node), with the
# images built on this machine. Each check prints "ok" or "FAIL" with its duration; the last line
# is "realnode: N passed, M failed" (deploy/test.sh adds it to the test totals).
#
#   deploy/realnode/run.sh            every check, in order (they build on each other)
#   deploy/realnode/run.sh CHECK...   only these (e.g. egress_guard)
#
# Checks: images (non-root, no shell, read-only root filesystem), egress_guard (no pod reaches an
# address outside this machine), install (helm install --wait, every pod Ready), samples (the
# operator in its pod reconciles deploy/samples/, enrichment pods run), data_flows (simulator ->
# Mosquitto -> bridge -> Kafka -> enrichment -> dashboard, read through a port-forward and the
# Service from the host), chaos (pods deleted under a sequence-numbered load), helm_test, upgrade (changed values roll the pods), network_policy
# (policies on: data still flows, a pod outside the allowed set is refused), uninstall (nothing
# left behind).
set -uo pipefail
cd "$(dirname "$0")/../.."
RUN_DIR=${IOT_TESTENV_RUN_DIR:-deploy/testenv/.run}
[[ -f $RUN_DIR/env ]] || { echo "realnode: the test environment is not up (deploy/testenv/up.sh --node)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$RUN_DIR/env"
[[ -n ${IOT_REAL_NODE:-} ]] || { echo "realnode: the test environment runs without the real node (deploy/testenv/up.sh --node)" >&2; exit 1; }
kubectl wait --for=condition=Ready "node/$IOT_REAL_NODE" --timeout=30s >/dev/null ||
  { echo "realnode: node $IOT_REAL_NODE is not Ready" >&2; exit 1; }

NS=${IOT_REALNODE_NAMESPACE:-iot-realnode}
RELEASE=iot
CHART=charts/iot-cloud
VALUES=deploy/realnode/values.yaml
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
SELECTOR="${IOT_REAL_NODE_LABEL%%=*}: ${IOT_REAL_NODE_LABEL#*=}"

log() { printf '[realnode %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "$*"; return 1; }

# probe_pod NAME SCRIPT [LABELS]: runs SCRIPT (busybox sh) in a pod on the real node, prints its
# output, and returns its exit status.
probe_pod() {
  local name=$1 script=$2 labels=${3:-"{}"}
  kubectl -n "$NS" delete pod "$name" --ignore-not-found --wait=true >/dev/null 2>&1
  kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, labels: $labels}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  nodeSelector: {$SELECTOR}
  tolerations: [{key: $IOT_REAL_NODE_TAINT, operator: Exists, effect: NoSchedule}]
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: probe
    image: docker.io/library/busybox:1.37
    imagePullPolicy: Never
    command: [sh, -c, $(printf '%s' "$script" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
EOF
  local phase="" deadline=$((SECONDS + 90))
  while ((SECONDS < deadline)); do
    phase=$(kubectl -n "$NS" get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null)
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 1
  done
  kubectl -n "$NS" logs "$name" 2>&1
  kubectl -n "$NS" delete pod "$name" --wait=false >/dev/null 2>&1
  [[ $phase == Succeeded ]]
}

svc_ip() { kubectl -n "$NS" get svc "$1" -o jsonpath='{.spec.clusterIP}'; }

# overview_counts: "smart_breaker=N smart_meter=N environmental_sensor=N online=N" from the
# dashboard's Overview through its Service (kube-proxy on the host).
overview_counts() {
  curl -sf --max-time 5 "http://$(svc_ip iot-dashboard):5001/api/overview" | python3 -c '
import json, sys
o = json.load(sys.stdin)
t = o["device_types"]
want = ["environmental_sensor", "smart_breaker", "smart_meter"]
print(" ".join("%s=%d" % (k, t.get(k, {}).get("enriched", {}).get("total", 0)) for k in want),
      "online=%d" % o["devices"]["online"])'
}

# wait_flowing SECONDS: waits until every device type's enriched count grows.
wait_flowing() {
  local deadline=$((SECONDS + $1)) before after
  before=$(overview_counts 2>/dev/null) || before=""
  while ((SECONDS < deadline)); do
    sleep 3
    after=$(overview_counts 2>/dev/null) || continue
    if [[ -n $before ]] && python3 - "$before" "$after" <<'EOF'; then
import sys
b = dict(kv.split("=") for kv in sys.argv[1].split())
a = dict(kv.split("=") for kv in sys.argv[2].split())
sys.exit(0 if all(int(a[k]) > int(b[k]) for k in b if k != "online") else 1)
EOF
      log "flowing: $before -> $after"
      return 0
    fi
    [[ -z $before ]] && before=$after
  done
  fail "data is not flowing on the dashboard (last: ${after:-no answer})"
}

check_images() {
  deploy/images/check.sh
}

# Pods can reach this machine (the bridge address: Kafka's POD listener, cluster DNS) and nothing
# beyond it: an outside address, and a Service IP without endpoints, are unreachable.
check_egress_guard() {
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create service clusterip no-endpoints --tcp=80:80 --dry-run=client -o yaml |
    kubectl apply -f - >/dev/null
  kubectl -n "$NS" patch service no-endpoints --type=merge -p '{"spec":{"selector":{"app":"nothing-has-this-label"}}}' >/dev/null
  local out
  out=$(probe_pod egress-probe "
set -u
nc -w 3 ${IOT_POD_KAFKA_BOOTSTRAP%:*} ${IOT_POD_KAFKA_BOOTSTRAP#*:} </dev/null && echo 'reach kafka: yes' || { echo 'reach kafka: no'; exit 1; }
mqtt=${IOT_POD_MQTT_URL#*://}
nc -w 3 \${mqtt%:*} \${mqtt#*:} </dev/null && echo 'reach mosquitto: yes' || { echo 'reach mosquitto: no'; exit 1; }
nc -w 3 kubernetes.default.svc.cluster.local 443 </dev/null && echo 'reach the API server: yes' || { echo 'reach the API server: no'; exit 1; }
nslookup kubernetes.default.svc.cluster.local >/dev/null && echo 'dns: yes' || { echo 'dns: no'; exit 1; }
for target in 1.1.1.1:443 8.8.8.8:53 93.184.215.14:80 $(svc_ip no-endpoints):80; do
  if nc -w 5 \${target%:*} \${target#*:} </dev/null; then echo \"LEAK: reached \$target\"; exit 1; fi
  echo \"unreachable: \$target\"
done
timeout 5 wget -q -O /dev/null http://example.com/ && { echo 'LEAK: http://example.com/'; exit 1; }
echo 'unreachable: http://example.com/'
")
  local rc=$?
  printf '%s\n' "$out" | sed 's/^/    /' >&2
  ((rc == 0)) || return 1
  # The kernel's own answer for a forwarded pod packet to the outside: the guard's unreachable
  # route ("No route to host"), while the same packet from this machine itself has a route.
  local answer
  answer=$(ip route get 1.1.1.1 from 10.42.200.200 iif iotbr0 2>&1)
  grep -qE 'unreachable|No route to host' <<<"$answer" ||
    { fail "the egress guard's policy route is missing: ip route get says '$answer'"; return 1; }
  log "routing decision for a pod packet to 1.1.1.1: $answer"
}

# The broker's data volume: a hostPath PersistentVolume on the node, bound to the chart's claim.
MOSQUITTO_PV=iot-realnode-mosquitto
MOSQUITTO_PV_DIR=${IOT_TESTENV_NODE_ROOT:-/var/lib/iot-cloud-testenv}/volumes/mosquitto
create_mosquitto_volume() {
  mkdir -p "$MOSQUITTO_PV_DIR" && chown 1883:1883 "$MOSQUITTO_PV_DIR" || return 1
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $MOSQUITTO_PV
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: iot-realnode-manual
  claimRef: {namespace: $NS, name: $RELEASE-mosquitto-data}
  hostPath: {path: $MOSQUITTO_PV_DIR, type: Directory}
EOF
}

check_install() {
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  create_mosquitto_volume || { fail "cannot create the broker's PersistentVolume"; return 1; }
  helm upgrade --install "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" \
    --set kafka.bootstrap="$IOT_POD_KAFKA_BOOTSTRAP" --wait --timeout 5m >/dev/null || {
    kubectl -n "$NS" get pods -o wide >&2
    return 1
  }
  local pods
  pods=$(kubectl -n "$NS" get pods -l app.kubernetes.io/instance="$RELEASE" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
  printf '%s\n' "$pods" | sed 's/^/    /' >&2
  [[ -n $pods ]] || fail "no pods"
  ! grep -qv " $IOT_REAL_NODE True\$" <<<"$pods" || fail "a pod is not Ready on $IOT_REAL_NODE"
}

check_samples() {
  kubectl -n "$NS" apply -f deploy/samples/ >/dev/null
  kubectl -n "$NS" wait --for=condition=Ready devicetypes --all --timeout=120s >/dev/null ||
    { kubectl -n "$NS" get devicetypes -o wide >&2; return 1; }
  local d
  for d in smart-breaker smart-meter environmental-sensor; do
    kubectl -n "$NS" rollout status "deployment/$d-enrichment" --timeout=120s >/dev/null ||
      { kubectl -n "$NS" get pods -o wide >&2; return 1; }
  done
  kubectl -n "$NS" get pods -l app.kubernetes.io/name=iot-enrichment -o wide --no-headers | sed 's/^/    /' >&2
}

check_data_flows() {
  wait_flowing 180 || return 1
  # The same through kubectl port-forward (API server -> kubelet -> the pod).
  local port=25501
  kubectl -n "$NS" port-forward svc/iot-dashboard "$port:5001" >"$WORK/pf.log" 2>&1 &
  # The tabs follow the registry ConfigMap, which reaches the pod's volume on the kubelet's next
  # sync of it (up to about a minute after the operator writes it).
  local pf=$! deadline=$((SECONDS + 120)) apps="" want="$NS/energy-analytics $NS/environmental-tracker $NS/smart-grid-monitor"
  while ((SECONDS < deadline)); do
    apps=$(curl -sf --max-time 3 "http://127.0.0.1:$port/api/applications" | python3 -c '
import json, sys
d = json.load(sys.stdin)
apps = d["applications"] if isinstance(d, dict) else d
print(" ".join(sorted(a["id"] for a in apps)))' 2>/dev/null) && [[ $apps == "$want" ]] && break
    sleep 1
  done
  kill "$pf" 2>/dev/null
  [[ $apps == "$want" ]] ||
    { fail "dashboard tabs through port-forward are '$apps' ($(grep -v '^Handling' "$WORK/pf.log"))"; return 1; }
  log "tabs through port-forward: $apps"
}

# Chaos in pods (workers/tests/realnode.rs): the bridge, an enrichment and the Mosquitto pod are
# deleted mid-stream under a sequence-numbered load.
check_chaos() {
  IOT_REALNODE_NAMESPACE=$NS cargo test --locked -q -p iot-workers --features integration,realnode \
    --test realnode -- --test-threads=1 --nocapture 2>&1 | grep -E 'realnode (chaos|autoscaling)|^test |^thread|^  left|^  right|^test result' | sed 's/^/    /' >&2
  return "${PIPESTATUS[0]}"
}

check_helm_test() {
  # The test pod is deleted when it succeeds (hook-delete-policy), so its log is shown on failure.
  if ! helm test "$RELEASE" -n "$NS" --timeout 3m >"$WORK/helm-test" 2>&1; then
    sed 's/^/    /' "$WORK/helm-test" >&2
    kubectl -n "$NS" logs iot-test-readiness 2>&1 | sed 's/^/    /' >&2
    return 1
  fi
  grep -E '^(TEST SUITE|Phase|Last)' "$WORK/helm-test" | sed 's/^/    /' >&2
}

# component_pods COMPONENT: uids of the release's pods of one component.
component_pods() {
  kubectl -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=$1" \
    -o jsonpath='{.items[*].metadata.uid}'
}

# Changed values roll the pods they change: a new log level replaces every IoT Cloud pod
# (operator, bridge, simulator, dashboard), Mosquitto (which has no log level) keeps running, and
# data flows again.
check_upgrade() {
  local c rolled=(operator bridge simulator dashboard)
  # A log level this release has never had (an extra, harmless filter directive).
  local level
  level="info,iot_realnode_upgrade_$(date +%s)=debug"
  declare -A before
  for c in "${rolled[@]}" mosquitto; do before[$c]=$(component_pods "$c"); done
  helm upgrade "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" --set kafka.bootstrap="$IOT_POD_KAFKA_BOOTSTRAP" \
    --set-json "logLevel=\"$level\"" --wait --timeout 5m >/dev/null || return 1
  kubectl -n "$NS" rollout status statefulset/iot-bridge --timeout=120s >/dev/null || return 1
  local now
  for c in "${rolled[@]}"; do
    now=$(component_pods "$c")
    [[ -n $now ]] || { fail "no $c pod after the upgrade"; return 1; }
    for uid in ${before[$c]}; do
      [[ " $now " != *" $uid "* ]] || { fail "the $c pod $uid was not replaced by the upgrade"; return 1; }
    done
  done
  [[ $(component_pods mosquitto) == "${before[mosquitto]}" ]] ||
    { fail "Mosquitto was restarted although nothing of it changed"; return 1; }
  [[ $(kubectl -n "$NS" get deploy iot-dashboard -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}') == "$level" ]] ||
    { fail "the dashboard does not run with the new log level"; return 1; }
  log "replaced: ${rolled[*]}; Mosquitto kept"
  wait_flowing 120
}

# NetworkPolicies on (kube-router enforces them): the pipeline still flows; a pod outside the
# allowed set cannot open the device listener (8883), the service listener (8884) or an admin port;
# one with the allowed labels can open the device listener, and still not the service listener
# (only the bridge and the simulator may).
check_network_policy() {
  helm upgrade "$RELEASE" "$CHART" -n "$NS" -f "$VALUES" --set kafka.bootstrap="$IOT_POD_KAFKA_BOOTSTRAP" \
    --set networkPolicy.enabled=true \
    --set-json 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]' \
    --set-json 'networkPolicy.mqttFrom=[{"podSelector":{"matchLabels":{"iot-realnode/mqtt":"allowed"}}}]' \
    --wait --timeout 5m >/dev/null || return 1
  sleep 3 # kube-router applies policies on its next sync
  local mqtt internal operator
  mqtt=$(svc_ip iot-mosquitto)
  internal=$(svc_ip iot-mosquitto-internal)
  operator=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].status.podIP}')
  probe_pod np-outsider "
if nc -w 3 $mqtt 8883 </dev/null; then echo 'outsider reached the device listener'; exit 1; fi; echo 'outsider: device listener (8883) refused'
if nc -w 3 $internal 8884 </dev/null; then echo 'outsider reached the service listener'; exit 1; fi; echo 'outsider: service listener (8884) refused'
if nc -w 3 $operator 9100 </dev/null; then echo 'outsider reached the operator admin port'; exit 1; fi; echo 'outsider: operator admin refused'
" >"$WORK/np1" 2>&1
  local rc=$?
  sed 's/^/    /' "$WORK/np1" >&2
  ((rc == 0)) || return 1
  probe_pod np-allowed "
nc -w 5 $mqtt 8883 </dev/null && echo 'allowed pod: device listener (8883) open' || { echo 'allowed pod: device listener refused'; exit 1; }
if nc -w 3 $internal 8884 </dev/null; then echo 'allowed pod reached the service listener'; exit 1; fi; echo 'allowed pod: service listener (8884) refused'
" "{iot-realnode/mqtt: allowed}" >"$WORK/np2" 2>&1 ||
    { sed 's/^/    /' "$WORK/np2" >&2; fail "a pod with the allowed label cannot open the device listener, or can open the service listener"; return 1; }
  sed 's/^/    /' "$WORK/np2" >&2
  wait_flowing 120
}

# Everything the release made goes with it: the samples first (the operator removes their
# Deployments and finalizers), then the release; nothing of either is left in the namespace.
check_uninstall() {
  kubectl -n "$NS" delete -f deploy/samples/ --wait=true --timeout=120s >/dev/null || return 1
  helm uninstall "$RELEASE" -n "$NS" --wait --timeout 3m >/dev/null || return 1
  local deadline=$((SECONDS + 60)) left
  while :; do
    left=$(kubectl -n "$NS" get all,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,leases,pvc \
      --no-headers -o name 2>/dev/null | grep -vE '^(configmap/kube-root-ca.crt|serviceaccount/default|service/no-endpoints)$')
    [[ -z $left ]] && break
    ((SECONDS < deadline)) || { fail "left behind in $NS: $(tr '\n' ' ' <<<"$left")"; return 1; }
    sleep 2
  done
  [[ -z $(kubectl get clusterroles,clusterrolebindings -l app.kubernetes.io/instance="$RELEASE" -o name) ]] ||
    { fail "cluster-scoped objects of the release are left behind"; return 1; }
  kubectl delete persistentvolume "$MOSQUITTO_PV" --ignore-not-found --wait=true >/dev/null &&
    rm -rf "$MOSQUITTO_PV_DIR" || { fail "cannot remove the broker's PersistentVolume"; return 1; }
  kubectl delete namespace "$NS" --wait=false >/dev/null
}

checks=("$@")
((${#checks[@]} > 0)) || checks=(images egress_guard install samples data_flows chaos helm_test upgrade network_policy uninstall)
passed=0 failed=0
for c in "${checks[@]}"; do
  start=$SECONDS
  log "check $c"
  if "check_$c"; then
    passed=$((passed + 1))
    log "ok - $c ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    log "FAIL - $c ($((SECONDS - start)) s)"
  fi
done
echo "realnode: $passed passed, $failed failed"
((failed == 0))
