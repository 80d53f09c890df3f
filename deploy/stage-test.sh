#!/usr/bin/env bash
# Tests deploy/stage.sh, the stage runner of the test command: a step that fails inside a stage
# fails the stage even when later steps succeed, the steps after it do not run, and the next
# stage still runs. Run by deploy/test.sh before anything else; exits non-zero on a wrong answer.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/stage.sh
source deploy/stage.sh

failures=0
expect() { # expect DESCRIPTION ACTUAL EXPECTED
  if [[ $2 == "$3" ]]; then
    printf 'ok    %s\n' "$1"
  else
    printf 'FAIL  %s: got %q, expected %q\n' "$1" "$2" "$3"
    failures=$((failures + 1))
  fi
}

marker=$(mktemp)
trap 'rm -f "$marker"' EXIT
fails_in_the_middle() {
  false
  echo "ran after the failure" >"$marker"
  true
}
passes() { true; }
exits_with_3() { return 3; }

stage "passing stage" passes 2>/dev/null
expect "a passing stage leaves STATUS at 0" "$STATUS" 0
stage "failing step, then succeeding ones" fails_in_the_middle 2>/dev/null
expect "a failing step fails its stage" "$STATUS" 1
expect "steps after the failing one do not run" "$(cat "$marker")" ""
STATUS=0
stage "stage after a failed one" exits_with_3 2>/dev/null
expect "the next stage still runs and reports its own status" "$STATUS" 3
expect "every stage is in the summary" "${#SUMMARY[@]}" 3
expect "the summary names the failure" "$(printf '%s\n' "${SUMMARY[@]}" | grep -c FAILED)" 2

if ((failures > 0)); then
  echo "deploy/stage.sh: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy/stage.sh: all checks passed"
