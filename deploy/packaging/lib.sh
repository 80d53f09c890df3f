# Shared by the packaging scripts of deploy/packaging/ (sourced, not run): strict mode, the
# repository's paths, the tilt version and its cache, a scratch directory removed at exit, log/die,
# and the generated files that sync.sh writes and check.sh compares (the two must agree, so both
# call the same functions).
# Its variables are used by the scripts that source it, which shellcheck of lib.sh alone cannot see.
# shellcheck shell=bash disable=SC2034
set -euo pipefail
# The scripts run from the repository root, whichever way they were called: the paths below are
# relative to it.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CHART=charts/iot-cloud
MONITORING=deploy/monitoring
DOCS=docs/DEPLOYING.md
# The Python checks and generators (stdlib, PyYAML, jsonschema), one file per purpose; an absolute
# path, as some steps change directory.
PY=$PWD/deploy/packaging/py
TILT_VERSION=${TILT_VERSION:-v0.33.21}
IOT_CACHE=${IOT_CACHE:-$HOME/.cache/iot-cloud}
TILT_BIN="$IOT_CACHE/bin/tilt-$TILT_VERSION/tilt"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iot-packaging.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '[packaging %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# The prefix names the command people type, not the script that failed.
die() { printf 'packaging-test: %s\n' "$*" >&2; exit 1; }

# Every iot_* metric name the dashboards and alert rules query, with the component exporting it.
metrics_used() {
  python3 "$PY/metrics_used.py" "$MONITORING"
}

# values.yaml documentation: `values_doc --check` fails on a value without a `# --` comment (on it or
# on a parent key); `values_doc` prints the reference table of docs/DEPLOYING.md.
values_doc() {
  python3 "$PY/values_doc.py" "$CHART/values.yaml" "$@"
}

# Rewrites the values table between the markers of docs/DEPLOYING.md (to stdout).
docs_with_values_table() {
  values_doc --docs "$DOCS"
}
