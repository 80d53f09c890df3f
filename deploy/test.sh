#!/usr/bin/env bash
# The project's test command (README "Testing"; .ci/run calls exactly this).
# Starts the local test environment (building what is missing, cached under ~/.cache/iot-cloud),
# then runs every test tier against the real services, printing each stage's duration.
# The services are left running for the next run; stop them with deploy/testenv/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/stage.sh
source deploy/stage.sh

# The stage runner itself first: a test command that cannot fail is worse than none.
stage "stage runner self-test" deploy/stage-test.sh
# With the real node: a kubelet, containerd, kube-proxy, CoreDNS and kube-router next to the kwok
# node, and the project's images built from the Dockerfile (deploy/images/build.sh).
stage "test environment up (with the real node)" deploy/testenv/up.sh --node
if ((STATUS != 0)); then
  stage_summary
  exit "$STATUS"
fi
# shellcheck source=/dev/null
source deploy/testenv/.run/env

# The cluster answers as a user's kubectl sees it.
cluster_smoke() {
  [[ $(kubectl get --raw /readyz) == ok ]] || { echo "kube-apiserver /readyz is not ok" >&2; return 1; }
  kubectl wait --for=condition=Ready node/kwok-node-0 --timeout=30s >/dev/null
  helm version --short >/dev/null && promtool --version >/dev/null
}

TEST_LOG=$(mktemp)
cargo_tests() {
  # Unit and integration tests of every crate (doc-tests have none worth the compile time).
  # The integration tier too: `cargo test-integration` (.cargo/config.toml) is `cargo test` with
  # every crate's `integration` feature.
  cargo test-integration --lib --bins --tests --no-fail-fast 2>&1 | tee "$TEST_LOG"
  return "${PIPESTATUS[0]}"
}

stage "cluster smoke (kubectl, helm, promtool)" cluster_smoke
stage "cargo build (tests)" cargo build --locked --workspace --all-targets --all-features
if ((STATUS != 0)); then
  stage_summary
  exit "$STATUS"
fi
stage "cargo test (unit + integration)" cargo_tests
stage "packaging (helm, RBAC, monitoring, Tilt)" deploy/packaging-test.sh
JS_LOG=$(mktemp)
js_tests() {
  # The dashboard's pure JavaScript (ticks, series store, formatting), as ES modules, no browser.
  node --test workers/tests/dashboard-js/ 2>&1 | tee "$JS_LOG"
  return "${PIPESTATUS[0]}"
}
stage "dashboard JavaScript (node --test)" js_tests
E2E_LOG=$(mktemp)
browser_tests() {
  deploy/e2e/run.sh 2>&1 | tee "$E2E_LOG"
  return "${PIPESTATUS[0]}"
}
stage "browser end-to-end (dashboard in Chromium)" browser_tests
REALNODE_LOG=$(mktemp)
realnode_tests() {
  deploy/realnode/run.sh 2>&1 | tee "$REALNODE_LOG"
  return "${PIPESTATUS[0]}"
}
stage "real node: images, chart, chaos in pods (deploy/realnode/run.sh)" realnode_tests
# The whole platform as a user runs it without a cluster: the live operator with deploy/samples/
# applied, simulator, bridge, one enrichment per type and the dashboard as processes.
local_platform() {
  local rc=0
  IOT_SIM_SPEED=10 deploy/local-run.sh up && deploy/local-run.sh check || rc=$?
  deploy/local-run.sh down
  return "$rc"
}
stage "platform end to end (deploy/local-run.sh)" local_platform
if ((STATUS == 0)); then
  stage "missing services fail loudly" deploy/testenv/check-missing-services.sh
fi

stage_summary
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) {
  if ($(i + 1) ~ /^passed;/) p += $i; if ($(i + 1) ~ /^failed;/) f += $i } }
  END { print p + 0, f + 0 }' "$TEST_LOG")
# The browser test prints its own "N passed, M failed" line; add it to the total.
read -r e2e_passed e2e_failed < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$E2E_LOG" | tail -1) || true
# node --test ends with "# pass N" and "# fail M".
js_passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$JS_LOG" | tail -1)
js_failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$JS_LOG" | tail -1)
# deploy/realnode/run.sh ends with "realnode: N passed, M failed".
read -r rn_passed rn_failed < <(sed -n 's/^realnode: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$REALNODE_LOG" | tail -1) || true
passed=$((passed + ${e2e_passed:-0} + ${js_passed:-0} + ${rn_passed:-0}))
failed=$((failed + ${e2e_failed:-0} + ${js_failed:-0} + ${rn_failed:-0}))
rm -f "$TEST_LOG" "$E2E_LOG" "$JS_LOG" "$REALNODE_LOG"
# The closing line CI reads.
echo "tests: $passed passed, $failed failed"
exit "$STATUS"
