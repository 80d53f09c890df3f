#!/usr/bin/env bash
# Browser end-to-end test of the dashboard, in headless Chromium (Debian's `chromium` package,
# driven by playwright-core through executablePath: no browser download) against the running
# pipeline: simulator -> Mosquitto -> bridge -> Kafka -> enrichment -> dashboard, all `iot-worker`
# processes of one installation of their own (topic prefix, MQTT topic root, registry file from
# deploy/samples) on the test environment's brokers.
#
#   deploy/testenv/up.sh && deploy/e2e/run.sh
#
# Screenshots of every tab and the workers' logs go to deploy/e2e/artifacts/. The last line is
# "N passed, M failed"; the exit status is non-zero when anything failed.
#
# Environment: CHROMIUM (default /usr/bin/chromium), IOT_WORKER_BIN (default: the debug build under
# $CARGO_TARGET_DIR, built first), IOT_E2E_SKIP_BUILD=1 to use binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
E2E=deploy/e2e
ARTIFACTS=$PWD/$E2E/artifacts
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
SUMMARY=""

fail() {
  echo "e2e: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

command -v node >/dev/null || fail "node is missing: install Node.js 18 or later (Debian: apt-get install -y nodejs npm)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
  fail "node $(node --version) is too old: Node.js 18 or later is needed"
[[ -x $CHROMIUM ]] || fail "chromium is missing at $CHROMIUM: apt-get install -y chromium (or set CHROMIUM=/path/to/chromium)"
command -v mosquitto_pub >/dev/null || fail "mosquitto_pub is missing: apt-get install -y mosquitto-clients"
if [[ -z ${IOT_KAFKA_BOOTSTRAP:-} && -f deploy/testenv/.run/env ]]; then
  # shellcheck source=/dev/null
  source deploy/testenv/.run/env
fi
HOW="start the test environment with deploy/testenv/up.sh and source deploy/testenv/.run/env"
[[ -n ${IOT_KAFKA_BOOTSTRAP:-} ]] || fail "Kafka is not configured: IOT_KAFKA_BOOTSTRAP is not set; $HOW"
[[ -n ${IOT_MQTT_URL:-} ]] || fail "Mosquitto is not configured: IOT_MQTT_URL is not set; $HOW"

if [[ ! -d $E2E/node_modules/playwright-core ]]; then
  (cd "$E2E" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2) ||
    fail "npm ci in $E2E failed (it installs playwright-core)"
fi

TARGET=${CARGO_TARGET_DIR:-$PWD/target}/debug
if [[ ${IOT_E2E_SKIP_BUILD:-} != 1 ]]; then
  cargo build --locked -p iot-operator --bin iot-operator >&2 || fail "cargo build -p iot-operator failed"
  cargo build --locked -p iot-workers --bin iot-worker --example registry_topics >&2 ||
    fail "cargo build -p iot-workers failed"
fi
WORKER=${IOT_WORKER_BIN:-$TARGET/iot-worker}
TOPICS=$TARGET/examples/registry_topics
for bin in "$WORKER" "$TARGET/iot-operator" "$TOPICS"; do
  [[ -x $bin ]] || fail "$bin is missing (build it, or unset IOT_E2E_SKIP_BUILD)"
done

mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS"/*.png "$ARTIFACTS"/*.log
PREFIX="e2e-$(date +%s)-$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iot-e2e.XXXXXX")
REGISTRY_FILE=$WORK/registry.json
PIDS=()

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  IOT_KAFKA_BOOTSTRAP=$IOT_KAFKA_BOOTSTRAP "$TOPICS" "$REGISTRY_FILE" --delete >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [[ -n $SUMMARY ]]; then
    echo "$SUMMARY"
  elif ((rc != 0)); then
    echo "0 passed, 1 failed"
  fi
}
trap cleanup EXIT

"$TARGET/iot-operator" registry -f deploy/samples --topic-prefix "$PREFIX" >"$REGISTRY_FILE" ||
  fail "iot-operator registry -f deploy/samples failed"
"$TOPICS" "$REGISTRY_FILE" >"$ARTIFACTS/topics.log" 2>&1 ||
  fail "creating the topics of $PREFIX failed: $(tail -3 "$ARTIFACTS/topics.log")"

export IOT_TOPIC_PREFIX=$PREFIX IOT_MQTT_TOPIC_ROOT="e2e/$PREFIX" IOT_REGISTRY_FILE=$REGISTRY_FILE
export IOT_REGISTRY_POLL_MS=300 IOT_LOG_FORMAT=text RUST_LOG=${RUST_LOG:-info} IOT_ADMIN_ADDR=127.0.0.1:0
export IOT_SHUTDOWN_GRACE_SECONDS=2
start() { # start NAME ARGS...: an iot-worker process, logged to the artifacts
  local name=$1
  shift
  "$WORKER" "$@" >"$ARTIFACTS/$name.log" 2>&1 &
  PIDS+=($!)
}
# The broker's service listener: TLS (IOT_MQTT_CA_FILE from the environment) and a password
# per identity.
IOT_MQTT_USERNAME=iot-bridge IOT_MQTT_PASSWORD_FILE=${IOT_TESTENV_MQTT_BRIDGE_PASSWORD_FILE:-} \
  IOT_BRIDGE_CLIENT_ID="bridge-$PREFIX" start bridge bridge
start enrichment enrichment
# Two devices of each type, ten times faster than real time.
IOT_MQTT_USERNAME=iot-simulator IOT_MQTT_PASSWORD_FILE=${IOT_TESTENV_MQTT_SIMULATOR_PASSWORD_FILE:-} \
  start simulator simulator --breakers 2 --meters 2 --sensors 2 --speed 10 --seed 7
echo "e2e: pipeline of $PREFIX started; running the browser test" >&2

status=0
ARTIFACTS=$ARTIFACTS REGISTRY_FILE=$REGISTRY_FILE DASHBOARD_BIN=$WORKER CHROMIUM=$CHROMIUM \
  node "$E2E/dashboard.test.mjs" 2>&1 | tee "$ARTIFACTS/test.log" >&2 || status=$?
SUMMARY=$(tail -n 1 "$ARTIFACTS/test.log")
[[ $SUMMARY =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]] || SUMMARY="0 passed, 1 failed"
for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "e2e: a pipeline worker (pid $pid) died; see $ARTIFACTS/*.log" >&2; status=1; }
done
echo "e2e: screenshots and logs in $ARTIFACTS" >&2
exit "$status"
