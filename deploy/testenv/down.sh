#!/usr/bin/env bash
# Stops every process deploy/testenv/up.sh started (in reverse start order) and checks that none
# of the test environment's ports is still listening. Data is kept unless --purge is given.
#
#   deploy/testenv/down.sh [--purge]     stop everything
#   deploy/testenv/down.sh kafka         stop only the named services (tests use this)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

purge=false
only=()
for a in "$@"; do
  if [[ $a == --purge ]]; then purge=true; else only+=("$a"); fi
done
targets=("${SERVICES[@]}")
((${#only[@]} > 0)) && targets=("${only[@]}")

for ((i = ${#targets[@]} - 1; i >= 0; i--)); do
  name=${targets[i]}
  if pid=$(service_pid "$name"); then
    # Each service runs in its own session (setsid), so signal the whole process group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 15 s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name"
  fi
  rm -f "$(pid_file "$name")"
  # The real node's containers, mounts and network state go with it, while the API server still
  # runs (its Node object is deleted too).
  if [[ $name == containerd ]] && ((${#only[@]} == 0)); then
    stop_node_extras
    log "removed the real node's containers, network and state"
  fi
done

((${#only[@]} > 0)) && exit 0
busy=()
for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$MQTT_PORT"; do
  port_open "$port" && busy+=("$port")
done
((${#busy[@]} == 0)) || die "still listening on 127.0.0.1 port(s) ${busy[*]}"
# A node whose services were already gone (killed, or a crashed session) is cleaned up too.
[[ -n $(node_leftovers) ]] && stop_node_extras
left=$(node_leftovers)
[[ -z $left ]] || die "the real node left behind: ${left//$'\n'/, }"
rm -f "$RUN_DIR/node.enabled"

if $purge; then
  rm -rf "$RUN_DIR/data" "$RUN_DIR/certs" "$RUN_DIR/logs" "$RUN_DIR/env" "$RUN_DIR/kubeconfig"
  log "removed test environment data"
fi
log "test environment down"
