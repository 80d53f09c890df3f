#!/usr/bin/env bash
# The project's test command (README "Testing"; .ci/run calls exactly this).
# Starts the local test environment (building what is missing, cached under ~/.cache/iot-cloud),
# then runs every test tier against the real services, printing each stage's duration.
# The services are left running for the next run; stop them with deploy/testenv/down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -a SUMMARY=()
stage() { # stage NAME COMMAND...
  local name=$1 start=$SECONDS
  shift
  printf '\n==> %s\n' "$name" >&2
  "$@"
  SUMMARY+=("$(printf '%-36s %5d s' "$name" $((SECONDS - start)))")
  printf '==> %s: done in %d s\n' "$name" $((SECONDS - start)) >&2
}

stage "test environment up" deploy/testenv/up.sh
# shellcheck source=/dev/null
source deploy/testenv/.run/env

stage "cargo build (tests)" cargo build --locked --workspace --all-targets
stage "cargo test (unit + integration)" cargo test --locked --workspace --no-fail-fast
stage "missing services fail loudly" deploy/testenv/check-missing-services.sh

printf '\nStage durations:\n' >&2
printf '  %s\n' "${SUMMARY[@]}" >&2
