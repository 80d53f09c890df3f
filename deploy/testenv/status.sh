#!/usr/bin/env bash
# Prints one line per test-environment service: running or not, pid, port. Exits non-zero when
# any service is down.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

down=0
for name in "${SERVICES[@]}"; do
  port=$(service_port "$name")
  if pid=$(service_pid "$name"); then
    state=running
    if [[ -n $port ]] && ! port_open "$port"; then state="running, port $port not answering"; down=1; fi
  else
    state=stopped pid=-
    down=1
  fi
  printf '%-24s %-32s pid %-8s %s\n' "$name" "$state" "$pid" "${port:+127.0.0.1:$port}"
done
exit $down
