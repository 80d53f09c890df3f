#!/usr/bin/env bash
# Starts the local test environment on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (one fake node), Apache Kafka (KRaft, single node) and Mosquitto.
# Builds or installs what is missing first (cached under ~/.cache/iot-cloud, keyed by version).
# Idempotent: a service that is already running is left alone.
#
#   deploy/testenv/up.sh                 build what is missing, start everything
#   deploy/testenv/up.sh --node          the same plus a real node (node.sh): builds the node's
#                                        binaries and the images (deploy/images/build.sh), runs real pods
#   deploy/testenv/up.sh kafka mosquitto start (or restart after down.sh NAME) only these
#
# Afterwards `source deploy/testenv/.run/env` gives KUBECONFIG, IOT_KAFKA_BOOTSTRAP, IOT_MQTT_URL
# and a PATH with kubectl, helm, promtool and kwok.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

mkdir -p "$RUN_DIR"/{pids,logs,data,bin}

stage() { # stage NAME COMMAND...: runs one step and prints how long it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  log "$name ready ($((SECONDS - start)) s)"
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds; on timeout, names the service
# and shows the end of its log.
wait_for() {
  local name=$1 timeout=$2 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! service_pid "$name" >/dev/null; then
      tail -n 30 "$RUN_DIR/logs/$name.log" >&2 || true
      die "$name exited during start-up (log: $RUN_DIR/logs/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$RUN_DIR/logs/$name.log" >&2 || true
      die "$name not ready after ${timeout}s (log: $RUN_DIR/logs/$name.log)"
    fi
    sleep 0.5
  done
}

# launch NAME COMMAND...: starts COMMAND in the background in its own session, logging to
# .run/logs/NAME.log, unless NAME is already running.
launch() {
  local name=$1
  shift
  if service_pid "$name" >/dev/null; then
    log "$name already running (pid $(service_pid "$name"))"
    return 0
  fi
  local port
  port=$(service_port "$name")
  if [[ -n $port ]] && port_open "$port"; then
    die "port $port for $name is taken by a process this script did not start; stop it or set IOT_TESTENV_* ports"
  fi
  setsid "$@" >"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
}

ensure_tools() {
  "$TESTENV_DIR/build-tools.sh"
  if [[ ! -f $KAFKA_HOME/libs/kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar ]]; then
    log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
    rm -rf "$KAFKA_HOME.tmp"
    mvn -q -B -f "$TESTENV_DIR/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$KAFKA_HOME.tmp/libs"
    rm -rf "$KAFKA_HOME" && mv "$KAFKA_HOME.tmp" "$KAFKA_HOME"
  fi
  "$TESTENV_DIR/install-mosquitto.sh"
  if node_enabled; then
    "$TESTENV_DIR/build-tools.sh" kubelet coredns kube-router
    [[ -n ${IOT_IMAGE_ARCHIVES:-} ]] || "$REPO_ROOT/deploy/images/build.sh"
  fi
  local t
  for t in "$K8S_BIN"/* "$ETCD_BIN/etcd" "$KWOK_BIN/kwok" "$HELM_BIN/helm" "$PROMTOOL_BIN/promtool"; do
    ln -sf "$t" "$TOOLS_BIN/"
  done
}

start_etcd() {
  launch etcd "$ETCD_BIN/etcd" --name=testenv --data-dir="$RUN_DIR/data/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="testenv=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn --quota-backend-bytes=4294967296
  wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

write_kubeconfig() {
  cat >"$RUN_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $RUN_DIR/certs/ca.crt
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: iot-cloud-testenv
  context: {cluster: testenv, user: admin, namespace: default}
current-context: iot-cloud-testenv
EOF
}

start_apiserver() {
  mkdir -p "$RUN_DIR/certs"
  [[ -f $RUN_DIR/certs/sa.key ]] || openssl genrsa -out "$RUN_DIR/certs/sa.key" 2048 2>/dev/null
  {
    echo "$ADMIN_TOKEN,admin,admin-uid,\"system:masters\""
    if node_enabled; then node_token_lines; fi
  } >"$RUN_DIR/certs/tokens.csv"
  # A small CA and a serving certificate for 127.0.0.1/localhost signed by it, so that clients
  # verify the server (kube-rs checks the IP SAN) instead of skipping TLS verification.
  local c="$RUN_DIR/certs"
  # The serving certificate also names the `kubernetes` Service IP and the bridge address, for
  # clients in pods on the real node.
  local sans="IP:127.0.0.1,IP:$NODE_IP,IP:${SERVICE_CIDR%.0/16}.1,DNS:localhost,DNS:kubernetes"
  sans+=",DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  if [[ ! -f $c/apiserver.crt ]] || ! grep -qxF "subjectAltName=$sans" "$c/apiserver.ext"; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=iot-cloud-testenv-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$c/apiserver.key" -out "$c/apiserver.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=$sans" >"$c/apiserver.ext"
    openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
      -days 3650 -extfile "$c/apiserver.ext" -out "$c/apiserver.crt" 2>/dev/null
  fi
  # With the real node, pods reach the API server through the `kubernetes` Service, whose endpoint
  # is the advertise address (never loopback): bind every address, behind node.sh's ingress
  # guard so that only loopback and the pod bridge get through.
  local bind=127.0.0.1 advertise=127.0.0.1
  if node_enabled; then bind=0.0.0.0 advertise=$NODE_IP; fi
  launch kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$bind" --advertise-address="$advertise" --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$RUN_DIR/certs/apiserver.crt" --tls-private-key-file="$RUN_DIR/certs/apiserver.key" \
    --client-ca-file="$RUN_DIR/certs/ca.crt" \
    --token-auth-file="$RUN_DIR/certs/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT" \
    --service-account-key-file="$RUN_DIR/certs/sa.key" \
    --service-account-signing-key-file="$RUN_DIR/certs/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --enable-priority-and-fairness=false --max-requests-inflight=1000 --max-mutating-requests-inflight=500 \
    --profiling=false
  write_kubeconfig
  wait_for kube-apiserver 120 "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" get --raw /readyz
}

start_controller_manager() {
  # The volume binder and the PV/PVC protection controllers run: the real node's broker keeps its
  # sessions on a PersistentVolume that deploy/realnode/run.sh creates (there is no provisioner).
  launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$RUN_DIR/kubeconfig" --secure-port=0 --leader-elect=false \
    --service-account-private-key-file="$RUN_DIR/certs/sa.key" \
    --root-ca-file="$RUN_DIR/certs/ca.crt" \
    --kube-api-qps=500 --kube-api-burst=1000 --concurrent-deployment-syncs=10 \
    --concurrent-replicaset-syncs=10 --concurrent-gc-syncs=20 \
    --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,-attachdetach,-persistentvolume-expander,-ephemeral-volume'
  # Ready once the service-account controller has created the default namespace's account.
  wait_for kube-controller-manager 90 "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" \
    get serviceaccount default -n default
}

start_scheduler() {
  launch kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$RUN_DIR/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --kube-api-qps=500 --kube-api-burst=1000
  sleep 1
  service_pid kube-scheduler >/dev/null || { tail -20 "$RUN_DIR/logs/kube-scheduler.log"; die "kube-scheduler exited"; }
}

start_kwok() {
  launch kwok "$KWOK_BIN/kwok" --kubeconfig="$RUN_DIR/kubeconfig" --config="$TESTENV_DIR/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 --node-ip=10.244.0.1 --server-address=127.0.0.1:0
  "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "1000"}
  capacity: {cpu: "64", memory: 256Gi, pods: "1000"}
EOF
  wait_for kwok 60 "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" wait --for=condition=Ready \
    node/kwok-node-0 --timeout=2s
  # The API server taints every new node not-ready; the node lifecycle controller that would lift
  # it is off (it would mark the heartbeat-less fake node unhealthy), so lift it here.
  "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" taint node kwok-node-0 \
    node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

start_kafka() {
  local props="$RUN_DIR/kafka.properties" data="$RUN_DIR/data/kafka"
  # With the real node, pods reach the broker on a second listener at the bridge address.
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if node_enabled; then
    listeners+=",POD://$NODE_IP:$KAFKA_POD_PORT" advertised+=",POD://$NODE_IP:$KAFKA_POD_PORT"
    protocols+=",POD:PLAINTEXT"
  fi
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
EOF
  local cp="$KAFKA_HOME/libs/*"
  local jvm=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$TESTENV_DIR/kafka/log4j2.properties" -cp "$cp")
  if [[ ! -f $data/meta.properties ]]; then
    "${jvm[@]}" kafka.tools.StorageTool format --standalone -t "$(cat /proc/sys/kernel/random/uuid | tr -d - | head -c 22)" \
      -c "$props" >"$RUN_DIR/logs/kafka-format.log" 2>&1 || { cat "$RUN_DIR/logs/kafka-format.log"; die "kafka storage format failed"; }
  fi
  launch kafka "${jvm[@]}" kafka.Kafka "$props"
  wait_for kafka 120 grep -q "Kafka Server started" "$RUN_DIR/logs/kafka.log"
}

# The broker's certificates and identities, made once per run directory (openssl and
# mosquitto_passwd; the device credentials of tests come from `iot-operator device-credentials`):
#   server-ca.{crt,key}, server.{crt,key}  the broker's certificate (127.0.0.1, the node address)
#   device-ca.{crt,key}, devices.crl       the device CA and its certificate revocation list
#   {bridge,simulator}.password, passwd    the services' passwords and the broker's hashed file
ensure_mqtt_pki() {
  local d=$MQTT_PKI
  [[ -f $d/passwd && -f $d/devices.crl ]] && return 0
  log "making the broker's certificates and identities in $d"
  rm -rf "$d.tmp" && mkdir -p "$d.tmp" && chmod 700 "$d.tmp"
  (
    set -e
    cd "$d.tmp"
    ca() {
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=$2" -keyout "$1.key" -out "$1.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
    }
    ca server-ca "iot-cloud test environment broker CA"
    ca device-ca "iot-cloud test environment device CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
      "$NODE_IP" >server.ext
    openssl x509 -req -in server.csr -CA server-ca.crt -CAkey server-ca.key -CAcreateserial \
      -days 3650 -extfile server.ext -out server.crt 2>/dev/null
    # An empty CRL: Mosquitto checks every device certificate against it from the start.
    touch index.txt && echo 01 >crlnumber
    printf '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=3650\n' >ca.cnf
    openssl ca -gencrl -config ca.cnf -keyfile device-ca.key -cert device-ca.crt \
      -out devices.crl 2>/dev/null
    local who
    for who in bridge simulator; do
      openssl rand -hex 24 >"$who.password"
      mosquitto_passwd -b $([[ -f passwd ]] || echo -c) passwd "iot-$who" "$(<"$who.password")"
    done
    rm -f server.csr server.ext server-ca.srl index.txt* crlnumber* ca.cnf
    chmod 600 ./*.key ./*.password passwd
  )
  rm -rf "$d" && mv "$d.tmp" "$d"
}

start_mosquitto() {
  ensure_mqtt_pki
  local pki=$MQTT_PKI
  # Who may do what, one password file and one ACL for the whole broker: Mosquitto 2.0 with
  # `per_listener_settings true` no longer queues messages for a persistent session while its
  # client is away (a bridge restart then loses what devices publish meanwhile), so the listeners
  # share the security settings and differ in how a client proves who it is. Every test
  # installation has its own topic root (itest/<prefix>, e2e/<prefix>, iot for the local run), so
  # the services' rights span all roots here; the chart confines them to its root. `topic read #`
  # also lets the bridge subscribe through its shared group: Mosquitto checks
  # `$share/<group>/<filter>` against `<filter>`. A device (username = its certificate's common
  # name) publishes only under its own id and reads nothing.
  cat >"$RUN_DIR/mosquitto.acl" <<EOF
user iot-bridge
topic read #
topic read \$SYS/broker/#

user iot-simulator
topic write #

pattern write iot/%u/raw
pattern write iot/%u/trends
pattern write iot/%u/status
pattern write itest/+/%u/raw
pattern write itest/+/%u/trends
pattern write itest/+/%u/status
EOF
  # The service listener (TLS, passwords): the bridge, the simulator and tests' own clients, on
  # loopback and (with the real node) at the node address for pods.
  local service_listener="certfile $pki/server.crt
keyfile $pki/server.key"
  local pod_listener=""
  if node_enabled; then pod_listener="listener $MQTT_PORT $NODE_IP
$service_listener"; fi
  # Durable like the chart's broker: sessions and their queues are saved to disk every
  # $MQTT_AUTOSAVE_SECONDS s and at a graceful stop, so `down.sh mosquitto; up.sh mosquitto` loses
  # nothing. Packets are limited to the bridge's payload limit plus room for topic and properties
  # (workers/src/bridge: MQTT_PACKET_OVERHEAD). Started as root, Mosquitto runs as its own user,
  # which must own the data directory and read the PKI (it reloads it on SIGHUP).
  local data="$RUN_DIR/data/mosquitto"
  mkdir -p "$data"
  chmod 600 "$RUN_DIR/mosquitto.acl"
  rm -f "$RUN_DIR"/mosquitto-*.acl
  if [[ $EUID -eq 0 ]] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto "$data"
    chown -R mosquitto:"$(id -gn mosquitto)" "$pki" "$RUN_DIR/mosquitto.acl"
  fi
  cat >"$RUN_DIR/mosquitto.conf" <<EOF
allow_anonymous false
password_file $pki/passwd
acl_file $RUN_DIR/mosquitto.acl
persistence true
persistence_location $data/
autosave_interval $MQTT_AUTOSAVE_SECONDS
persistent_client_expiration 1d
max_packet_size $((256 * 1024 + 16 * 1024))
max_queued_messages 1000000
max_queued_bytes $((1024 * 1024 * 1024))
max_inflight_messages 1000
log_dest stdout
log_type error
log_type warning
log_type notice

listener $MQTT_PORT 127.0.0.1
$service_listener
$pod_listener

# Devices: a client certificate of the device CA, whose common name is the device id, the
# username and the client id (no device can take a client id of the bridge's).
listener $MQTT_DEVICE_PORT 127.0.0.1
certfile $pki/server.crt
keyfile $pki/server.key
cafile $pki/device-ca.crt
require_certificate true
use_identity_as_username true
use_username_as_clientid true
crlfile $pki/devices.crl
EOF
  local bin
  bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  launch mosquitto "$bin" -c "$RUN_DIR/mosquitto.conf"
  wait_for mosquitto 30 port_open "$MQTT_PORT"
}

write_env() {
  cat >"$RUN_DIR/env" <<EOF
# Written by deploy/testenv/up.sh: \`source\` it to use the local test environment.
export KUBECONFIG=$RUN_DIR/kubeconfig
export IOT_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export IOT_MQTT_URL=mqtts://127.0.0.1:$MQTT_PORT
export IOT_MQTT_CA_FILE=$MQTT_PKI/server-ca.crt
# The identities of the broker's service listener (usernames iot-bridge and iot-simulator), and
# the device listener with the device CA that signs device certificates (CN = device id).
export IOT_TESTENV_MQTT_BRIDGE_PASSWORD_FILE=$MQTT_PKI/bridge.password
export IOT_TESTENV_MQTT_SIMULATOR_PASSWORD_FILE=$MQTT_PKI/simulator.password
export IOT_TESTENV_MQTT_DEVICE_URL=mqtts://127.0.0.1:$MQTT_DEVICE_PORT
export IOT_TESTENV_MQTT_PKI=$MQTT_PKI
export IOT_TESTENV_RUN_DIR=$RUN_DIR
case ":\$PATH:" in *":$TOOLS_BIN:"*) ;; *) export PATH=$TOOLS_BIN:\$PATH ;; esac
EOF
  if node_enabled; then
    cat >>"$RUN_DIR/env" <<EOF
# The real node: pods reach Kafka at IOT_POD_KAFKA_BOOTSTRAP, Mosquitto at IOT_POD_MQTT_URL, and
# opt in to the node with its label as node selector and a toleration of its taint.
export IOT_REAL_NODE=$NODE_NAME
export IOT_POD_KAFKA_BOOTSTRAP=$NODE_IP:$KAFKA_POD_PORT
export IOT_POD_MQTT_URL=mqtts://$NODE_IP:$MQTT_PORT
export IOT_REAL_NODE_LABEL=$NODE_LABEL
export IOT_REAL_NODE_TAINT=$NODE_TAINT
export IOT_NODE_CONTAINERD=$CONTAINERD_SOCK
EOF
  fi
}

declare -A START=([etcd]=start_etcd [kube-apiserver]=start_apiserver
  [kube-controller-manager]=start_controller_manager [kube-scheduler]=start_scheduler
  [kwok]=start_kwok [kafka]=start_kafka [mosquitto]=start_mosquitto
  [containerd]=start_containerd [kubelet]=start_kubelet [kube-proxy]=start_kube_proxy
  [coredns]=start_coredns [kube-router]=start_kube_router)

total=$SECONDS
wanted=()
for a in "$@"; do
  if [[ $a == --node ]]; then
    if ! node_enabled && service_pid kube-apiserver >/dev/null; then
      die "the test environment runs without the real node; stop it first (deploy/testenv/down.sh)"
    fi
    if ! node_enabled; then
      touch "$RUN_DIR/node.enabled"
      SERVICES+=("${NODE_SERVICES[@]}")
    fi
  else
    wanted+=("$a")
  fi
done
if ((${#wanted[@]} == 0)); then
  stage "tools" ensure_tools
  wanted=("${SERVICES[@]}")
  if node_enabled; then stage "node network and guards" start_node_network; fi
fi
for name in "${wanted[@]}"; do
  [[ -n ${START[$name]:-} ]] || die "unknown service '$name' (known: ${SERVICES[*]})"
  stage "$name" "${START[$name]}"
done
write_env
log "test environment up in $((SECONDS - total)) s; use: source $RUN_DIR/env"
