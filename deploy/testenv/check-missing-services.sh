#!/usr/bin/env bash
# Proves that tests never pass because a service is missing: stops each real service in turn,
# runs the smoke test that needs it, and requires the test to FAIL with a message naming that
# service. Restarts the service afterwards. Part of deploy/test.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# service | cargo test arguments | text the failure must contain
checks=(
  "mosquitto|-p iot-testkit --features integration --test mqtt|Mosquitto (the MQTT broker) at"
  "kafka|-p iot-operator --features integration --test kafka_lag|Kafka at"
  "kube-apiserver|-p iot-testkit --features integration --test kubernetes|Kubernetes API server at"
)

failed=0
for check in "${checks[@]}"; do
  IFS='|' read -r service args expected <<<"$check"
  "$TESTENV_DIR/down.sh" "$service"
  out=$(mktemp)
  # shellcheck disable=SC2086
  if cargo test --locked $args >"$out" 2>&1; then
    log "FAIL: tests passed with $service stopped"
    failed=1
  elif grep -qF "$expected" "$out"; then
    log "ok: with $service stopped the tests fail naming it: $(grep -oF "$expected" "$out" | head -1) ..."
  else
    tail -n 40 "$out" >&2
    log "FAIL: with $service stopped the tests failed without naming it ('$expected')"
    failed=1
  fi
  rm -f "$out"
  "$TESTENV_DIR/up.sh" "$service"
done
exit $failed
