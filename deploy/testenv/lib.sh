# Shared settings and helpers of the local test environment scripts (up.sh, down.sh, status.sh).
# Every service listens on 127.0.0.1 only; ports can be moved with the IOT_TESTENV_* variables
# when something else on the machine already uses them.
TESTENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TESTENV_DIR/../.." && pwd)
source "$TESTENV_DIR/versions.sh"

RUN_DIR=${IOT_TESTENV_RUN_DIR:-$TESTENV_DIR/.run}
ETCD_PORT=${IOT_TESTENV_ETCD_PORT:-23790}
ETCD_PEER_PORT=${IOT_TESTENV_ETCD_PEER_PORT:-23800}
APISERVER_PORT=${IOT_TESTENV_APISERVER_PORT:-26443}
KAFKA_PORT=${IOT_TESTENV_KAFKA_PORT:-29092}
KAFKA_CONTROLLER_PORT=${IOT_TESTENV_KAFKA_CONTROLLER_PORT:-29093}
# Mosquitto: the service listener (TLS and passwords: the bridge, the simulator, tests' own
# clients) and the device listener (TLS and a client certificate per device).
MQTT_PORT=${IOT_TESTENV_MQTT_PORT:-21883}
MQTT_DEVICE_PORT=${IOT_TESTENV_MQTT_DEVICE_PORT:-28883}
MQTT_PKI="$RUN_DIR/pki"
# Seconds between saves of the broker's sessions: what a kill -9 of Mosquitto can lose at most.
MQTT_AUTOSAVE_SECONDS=${IOT_TESTENV_MQTT_AUTOSAVE_SECONDS:-2}
# A test-only bearer token for the admin user; the API server listens on loopback only.
ADMIN_TOKEN=iot-cloud-testenv-admin-token

K8S_BIN="$IOT_CACHE/bin/kubernetes-$K8S_VERSION"
ETCD_BIN="$IOT_CACHE/bin/etcd-$ETCD_VERSION"
KWOK_BIN="$IOT_CACHE/bin/kwok-$KWOK_VERSION"
HELM_BIN="$IOT_CACHE/bin/helm-$HELM_VERSION"
PROMTOOL_BIN="$IOT_CACHE/bin/promtool-$PROMETHEUS_MODULE_VERSION"
KAFKA_HOME="$IOT_CACHE/kafka-$KAFKA_VERSION"
TOOLS_BIN="$RUN_DIR/bin" # symlinks to every tool, put on PATH by the env file

# The services in start order; down.sh stops them in reverse.
SERVICES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kafka mosquitto)
# shellcheck source=deploy/testenv/node.sh
source "$TESTENV_DIR/node.sh"
# With the real node (up.sh --node), its services come last.
NODE_SERVICES=(containerd kubelet kube-proxy coredns kube-router)
if node_enabled; then SERVICES+=("${NODE_SERVICES[@]}"); fi

log() { printf '[testenv %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_file() { echo "$RUN_DIR/pids/$1.pid"; }

# service_pid NAME: prints the pid of a running service started by up.sh, or fails.
service_pid() {
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

service_port() {
  case $1 in
    etcd) echo "$ETCD_PORT" ;;
    kube-apiserver) echo "$APISERVER_PORT" ;;
    kafka) echo "$KAFKA_PORT" ;;
    mosquitto) echo "$MQTT_PORT" ;;
    *) echo "" ;;
  esac
}
