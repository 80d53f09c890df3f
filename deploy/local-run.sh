#!/usr/bin/env bash
# Runs the whole platform as local processes on the test environment's real API server, Kafka and
# Mosquitto, without Docker or a real cluster: the operator reconciles the sample DeviceTypes and
# Applications; the simulator, bridge, one enrichment per device type and the dashboard run as
# processes; the dashboard is served on http://localhost:5001.
#
#   deploy/local-run.sh up        start everything (builds what is missing; idempotent)
#   deploy/local-run.sh status    one line per process
#   deploy/local-run.sh check     assert that the running platform carries data end to end (the
#                                 test command runs up, check, down)
#   deploy/local-run.sh down      stop the processes (the test environment keeps running;
#                                 deploy/testenv/down.sh stops it)
#
# In a cluster the kubelet mounts ConfigMap iot-registry into the worker pods; here a small loop
# copies it from the API server into a file every 2 s, which the workers reload on change. Like the
# pods' volumes, it copies binaryData key registry.json.gz (compact JSON, gzip-compressed) as it is
# into registry.json: the workers recognise gzip by its first bytes.
# Environment: IOT_LOCAL_NAMESPACE (default iot), IOT_DASHBOARD_ADDR (default 127.0.0.1:5001).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
NS=${IOT_LOCAL_NAMESPACE:-iot}
DASHBOARD_ADDR=${IOT_DASHBOARD_ADDR:-127.0.0.1:5001}
LOCAL_DIR=deploy/testenv/.run/local
DEVICE_TYPES=(smart_breaker smart_meter environmental_sensor)

log() { printf '[local-run %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Processes in start order; `down` stops them in reverse.
PROCESSES=(operator registry-mirror bridge enrichment-smart_breaker enrichment-smart_meter
  enrichment-environmental_sensor simulator dashboard)

pid_of() {
  local f="$LOCAL_DIR/pids/$1.pid"
  [[ -f $f ]] && kill -0 "$(<"$f")" 2>/dev/null && cat "$f"
}

start() { # start NAME COMMAND...: in its own session, logging to .run/local/logs/NAME.log
  local name=$1
  shift
  if pid_of "$name" >/dev/null; then
    log "$name already running (pid $(pid_of "$name"))"
    return 0
  fi
  setsid "$@" >"$LOCAL_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$LOCAL_DIR/pids/$name.pid"
}

wait_http() { # wait_http NAME URL: until URL answers 200, or fail showing the log
  local name=$1 url=$2 deadline=$((SECONDS + 90))
  until curl -sf -o /dev/null "$url"; do
    pid_of "$name" >/dev/null || { tail -20 "$LOCAL_DIR/logs/$name.log" >&2; die "$name exited"; }
    ((SECONDS < deadline)) || { tail -20 "$LOCAL_DIR/logs/$name.log" >&2; die "$name not ready at $url"; }
    sleep 0.5
  done
}

up() {
  local started=$SECONDS
  mkdir -p "$LOCAL_DIR"/{pids,logs}
  deploy/testenv/up.sh
  # shellcheck source=/dev/null
  source deploy/testenv/.run/env
  log "building iot-operator and iot-worker"
  cargo build --locked -q -p iot-operator -p iot-workers --bins
  local target
  target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  local operator="$target/debug/iot-operator" worker="$target/debug/iot-worker"

  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  kubectl wait --for=condition=Established crd/devicetypes.iotcloud.dev crd/applications.iotcloud.dev --timeout=60s >/dev/null
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -n "$NS" -f deploy/samples/ >/dev/null

  start operator "$operator" run --namespace "$NS" --kafka-bootstrap "$IOT_KAFKA_BOOTSTRAP" \
    --worker-image iot-worker:local --admin-addr 127.0.0.1:9100 --leader-elect=false
  wait_http operator http://127.0.0.1:9100/readyz
  kubectl wait --for=condition=Ready dt --all -n "$NS" --timeout=120s >/dev/null
  log "operator ready; DeviceTypes Ready"

  local registry="$REPO/$LOCAL_DIR/registry.json"
  start registry-mirror bash -c "while :; do
      kubectl get configmap iot-registry -n '$NS' -o jsonpath='{.binaryData.registry\\.json\\.gz}' 2>/dev/null |
        base64 -d >'$registry.tmp' 2>/dev/null &&
        [[ -s '$registry.tmp' ]] && { cmp -s '$registry.tmp' '$registry' || mv '$registry.tmp' '$registry'; }
      sleep 2
    done"
  local deadline=$((SECONDS + 30))
  until [[ -s $registry ]]; do ((SECONDS < deadline)) || die "registry ConfigMap not mirrored"; sleep 0.5; done

  export IOT_REGISTRY_FILE=$registry RUST_LOG=${RUST_LOG:-info}
  # The test environment's broker: TLS (IOT_MQTT_CA_FILE from its env file) and a password per
  # identity on its service listener.
  start bridge env IOT_ADMIN_ADDR=127.0.0.1:9101 IOT_BRIDGE_CLIENT_ID=iot-bridge-local \
    IOT_MQTT_USERNAME=iot-bridge IOT_MQTT_PASSWORD_FILE="$IOT_TESTENV_MQTT_BRIDGE_PASSWORD_FILE" \
    "$worker" bridge
  wait_http bridge http://127.0.0.1:9101/readyz
  local port=9110 id
  for id in "${DEVICE_TYPES[@]}"; do
    start "enrichment-$id" env IOT_ADMIN_ADDR=127.0.0.1:$port IOT_DEVICE_TYPE="$id" "$worker" enrichment
    wait_http "enrichment-$id" "http://127.0.0.1:$port/readyz"
    port=$((port + 1))
  done
  start simulator env IOT_ADMIN_ADDR=127.0.0.1:9103 IOT_MQTT_USERNAME=iot-simulator \
    IOT_MQTT_PASSWORD_FILE="$IOT_TESTENV_MQTT_SIMULATOR_PASSWORD_FILE" "$worker" simulator
  start dashboard env IOT_DASHBOARD_ADDR="$DASHBOARD_ADDR" "$worker" dashboard
  wait_http dashboard "http://$DASHBOARD_ADDR/readyz"
  log "up in $((SECONDS - started)) s"
  cat >&2 <<EOF

  Dashboard        http://${DASHBOARD_ADDR/127.0.0.1/localhost}
  Operator         http://127.0.0.1:9100/metrics    kubectl get dt,iotapps -n $NS
  Bridge           http://127.0.0.1:9101/metrics
  Simulator        http://127.0.0.1:9103/metrics
  Enrichment       http://127.0.0.1:9110..9112/metrics (one per device type)
  Logs             $LOCAL_DIR/logs/
  Stop             deploy/local-run.sh down

EOF
}

down() {
  local i name pid
  for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
    name=${PROCESSES[i]}
    if pid=$(pid_of "$name"); then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
      log "stopped $name"
    fi
    rm -f "$LOCAL_DIR/pids/$name.pid"
  done
}

status() {
  local name pid rc=0
  for name in "${PROCESSES[@]}"; do
    if pid=$(pid_of "$name"); then
      printf '%-34s running  pid %s\n' "$name" "$pid"
    else
      printf '%-34s stopped\n' "$name"
      rc=1
    fi
  done
  return $rc
}

# The platform as a user sees it: every DeviceType Ready, messages of all three device types
# enriched and on the dashboard, devices online, one tab per sample Application, and the Smart
# Grid Monitor's topic never carrying another device type.
check() {
  # shellcheck source=/dev/null
  source deploy/testenv/.run/env
  local deadline=$((SECONDS + ${IOT_LOCAL_CHECK_TIMEOUT:-120})) last=""
  kubectl wait --for=condition=Ready dt --all -n "$NS" --timeout=60s >/dev/null ||
    die "DeviceTypes in $NS are not Ready"
  while :; do
    if last=$(curl -sf "http://$DASHBOARD_ADDR/api/overview" | python3 -c '
import json, sys
o = json.load(sys.stdin)
types = o["device_types"]
want = ["environmental_sensor", "smart_breaker", "smart_meter"]
def enriched(t):
    return types.get(t, {}).get("enriched", {}).get("total", 0)
online = o["devices"]["online"]
print(" ".join("%s=%d" % (t, enriched(t)) for t in want), "online=%d" % online)
sys.exit(0 if all(enriched(t) > 0 for t in want) and online >= 3 else 1)
'); then
      break
    fi
    ((SECONDS < deadline)) || die "no enriched messages of every device type on the dashboard in time (last: $last)"
    sleep 1
  done
  log "enriched messages on the dashboard: $last"
  local apps
  apps=$(curl -sf "http://$DASHBOARD_ADDR/api/applications" | python3 -c '
import json, sys
d = json.load(sys.stdin)
apps = d["applications"] if isinstance(d, dict) else d
print(" ".join(sorted(a["id"] for a in apps)))')
  [[ $apps == "$NS/energy-analytics $NS/environmental-tracker $NS/smart-grid-monitor" ]] ||
    die "dashboard tabs are '$apps', expected the three sample Applications"
  local drops
  drops=$(curl -sf "http://$DASHBOARD_ADDR/metrics" | awk '/^iot_dashboard_isolation_drops_total/ {s += $2} END {print s + 0}')
  [[ $drops == 0 ]] || die "$drops records of another device type arrived on a device type's enriched topic"
  local registry_apps
  registry_apps=$(python3 -c '
import gzip, json, sys
r = json.load(gzip.open(sys.argv[1]))
print(sum(len(t["applications"]) for t in r["deviceTypes"].values()))' "$LOCAL_DIR/registry.json")
  [[ $registry_apps == 3 ]] || die "the mirrored registry lists $registry_apps applications, expected 3"
  # Every metric the Grafana dashboards and alert rules query is exported by a running component.
  local all="$LOCAL_DIR/all.metrics" name port missing=()
  : >"$all"
  for port in 9100 9101 9103 9110 9111 9112; do curl -sf "http://127.0.0.1:$port/metrics" >>"$all"; done
  curl -sf "http://$DASHBOARD_ADDR/metrics" >>"$all"
  while IFS=$'\t' read -r name _; do
    [[ -z $name || $name == \#* ]] && continue
    grep -q "^${name}[{ ]" "$all" || missing+=("$name")
  done <deploy/monitoring/metrics-used.txt
  ((${#missing[@]} == 0)) ||
    die "queried by deploy/monitoring but not exported by the running components: ${missing[*]}"
  log "check passed: DeviceTypes Ready, all three device types enriched and shown, tabs $apps, no foreign records, all $(grep -vc '^#' deploy/monitoring/metrics-used.txt) monitored metrics exported"
}

case ${1:-up} in
  up) up ;;
  check) check ;;
  down) down ;;
  status) status ;;
  *) die "usage: deploy/local-run.sh [up|check|status|down]" ;;
esac
