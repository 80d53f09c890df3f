#!/usr/bin/env bash
# `deploy/packaging-test.sh sync`: copies crds/, deploy/samples/ and deploy/monitoring/ into the
# chart and regenerates the dashboards, deploy/monitoring/metrics-used.txt and the values table of
# docs/DEPLOYING.md: everything check.sh fails on when it is stale.
# shellcheck source=deploy/packaging/lib.sh
source "$(dirname "$0")/lib.sh"

sync_copies() {
  rm -f "$CHART"/crds/*.yaml "$CHART"/samples/*.yaml "$CHART"/files/dashboards/*.json
  cp crds/*.yaml "$CHART/crds/"
  cp deploy/samples/*.yaml "$CHART/samples/"
  python3 "$MONITORING/generate-dashboards.py" "$MONITORING/dashboards"
  cp "$MONITORING"/dashboards/*.json "$CHART/files/dashboards/"
  cp "$MONITORING/rules/iot-cloud.rules.yaml" "$CHART/files/iot-cloud.rules.yaml"
  metrics_used >"$MONITORING/metrics-used.txt"
  docs_with_values_table >"$WORK/docs.md" && cp "$WORK/docs.md" "$DOCS"
  log "synced the chart's copies; regenerated dashboards, $MONITORING/metrics-used.txt and the values table of $DOCS"
}

sync_copies
