#!/usr/bin/env bash
# Packaging checks of IoT Cloud: the Helm chart, the monitoring files, the Tiltfile, the image build
# context. Needs the local test environment (deploy/testenv/up.sh, then
# `source deploy/testenv/.run/env`): a real kube-apiserver with kwok, helm and promtool.
#
#   deploy/packaging-test.sh              run every check (prints each step and its duration)
#   deploy/packaging-test.sh sync         copy crds/, deploy/samples/, deploy/monitoring/ into the
#                                         chart and regenerate dashboards and metrics-used.txt
#   deploy/packaging-test.sh build-tilt   build tilt from its Go module into ~/.cache/iot-cloud/bin/
#
# This is only the entry point: each command is a script of deploy/packaging/ (check.sh, sync.sh,
# build-tilt.sh, with lib.sh shared and the Python checks in py/).
# Environment:
#   PACKAGING_HELM_TEST=1    also run `helm test` (needs a cluster that runs containers: under kwok
#                            the test pod never completes, so it is off by default)
#   PACKAGING_KEEP=1         keep the namespaces created for the checks (for debugging)
#   IOT_OPERATOR_BIN         iot-operator binary to run (default: `cargo build --workspace
#                            --all-targets`, the test command's build, then target/debug/)
#   TILT_VERSION             tilt version for build-tilt and the Tiltfile check (v0.33.21)
set -euo pipefail
dir="$(dirname "$0")/packaging"
case ${1:-} in
  sync) exec "$dir/sync.sh" ;;
  build-tilt) exec "$dir/build-tilt.sh" ;;
  "") exec "$dir/check.sh" ;;
  *) printf 'packaging-test: %s\n' "unknown command ${1}; use: (none) | sync | build-tilt" >&2; exit 1 ;;
esac
