# Stages of a test script, sourced by deploy/test.sh (and tested by deploy/stage-test.sh).
#
#   stage NAME COMMAND...   runs COMMAND (a program or a shell function) in a subshell with errexit
#                           on, so that any failing step inside a function fails the stage; prints
#                           and records its duration and outcome; a failure sets STATUS. Always
#                           returns 0, so that the next stage runs: check STATUS where a failure
#                           must stop the script.
#   stage_summary           prints every stage's duration and outcome.
#
# Why not `stage ... || status=$?`: bash ignores errexit inside a function (and every subshell it
# starts) when the call is part of an `||` list, so a failing step followed by a succeeding one
# would pass.

STATUS=0
declare -a SUMMARY=()

stage() {
  local name=$1 start=$SECONDS rc=0 outcome="done" line
  shift
  printf '\n==> %s\n' "$name" >&2
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  ((rc == 0)) || outcome="FAILED ($rc)"
  line=$(printf '%-40s %5d s  %s' "$name" $((SECONDS - start)) "$outcome")
  SUMMARY+=("$line")
  printf '==> %s: %s in %d s\n' "$name" "$outcome" $((SECONDS - start)) >&2
  if ((rc != 0)); then
    STATUS=$rc
  fi
}

stage_summary() {
  printf '\nStage durations:\n' >&2
  printf '  %s\n' "${SUMMARY[@]}" >&2
}
