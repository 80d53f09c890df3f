# shellcheck shell=bash
# The real node of the test environment (`up.sh --node`): a kubelet joined to the test API server,
# running real pods through its own containerd and runc, with a CNI bridge, kube-proxy, cluster
# DNS (CoreDNS) and NetworkPolicy enforcement (kube-router's firewall). Sourced by up.sh (start
# functions) and down.sh (stop_node_extras), after lib.sh.
#
# Safety: pod traffic can never leave this machine. Packets from the pod network are routed by a
# policy table whose default route is `unreachable` (the egress guard), installed before any pod
# starts; and the services that listen for pods (API server, CoreDNS, Kafka's POD listener) accept
# connections only from loopback and the pod bridge (the ingress guard).
#
# State outside the run directory, all removed by down.sh: $NODE_ROOT (containerd, kubelet),
# the bridge, the policy route, iptables chains and ipsets of CNI, kube-proxy and kube-router,
# sysctls the kubelet changes (saved and restored), an /etc/hosts line, the Node object.

NODE_NAME=${IOT_TESTENV_NODE_NAME:-iot-node-0}
NODE_ROOT=${IOT_TESTENV_NODE_ROOT:-/var/lib/iot-cloud-testenv}
NODE_BRIDGE=iotbr0
NODE_IP=10.42.0.1
POD_CIDR=10.42.0.0/16
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS_IP=10.96.0.10
KUBELET_PORT=${IOT_TESTENV_KUBELET_PORT:-30250}
KAFKA_POD_PORT=${IOT_TESTENV_KAFKA_POD_PORT:-29094}
EGRESS_TABLE=4242
# iptables chains (and rules jumping to them) of CNI, the kubelet, kube-proxy, kube-router and the
# ingress guard: removed on teardown, every other rule on this machine is kept.
NODE_CHAINS='CNI-|KUBE-|IOT-TESTENV-'
CONTAINERD_SOCK=$NODE_ROOT/containerd/containerd.sock
# Pods opt in to the real node with this node selector and toleration; everything else stays on
# the kwok node.
NODE_LABEL=iot-cloud.dev/node-kind=real
NODE_TAINT=iot-cloud.dev/real-node
# sysctls the node changes: saved at start, restored by down.sh.
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory
  kernel.panic kernel.panic_on_oops)

KUBELET_BIN="$IOT_CACHE/bin/kubernetes-node-$K8S_VERSION"
COREDNS_BIN="$IOT_CACHE/bin/coredns-$COREDNS_VERSION"
KUBE_ROUTER_BIN="$IOT_CACHE/bin/kube-router-$KUBE_ROUTER_VERSION"
IMAGE_ARCHIVES=${IOT_IMAGE_ARCHIVES:-$IOT_CACHE/images/out}

node_enabled() { [[ -f $RUN_DIR/node.enabled ]]; }

# A bearer token per node component (test-only identities; the API server reads them from
# tokens.csv): kubelet as system:node:NAME, kube-proxy as system:kube-proxy, CoreDNS and
# kube-router as their own users with read-only ClusterRoles.
node_token() {
  local f="$RUN_DIR/certs/token-$1"
  [[ -s $f ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f"
  cat "$f"
}
node_token_lines() {
  printf '%s,system:node:%s,kubelet-uid,"system:nodes"\n' "$(node_token kubelet)" "$NODE_NAME"
  printf '%s,system:kube-proxy,kube-proxy-uid\n' "$(node_token kube-proxy)"
  printf '%s,iot-testenv:coredns,coredns-uid\n' "$(node_token coredns)"
  printf '%s,iot-testenv:kube-router,kube-router-uid\n' "$(node_token kube-router)"
}

# node_kubeconfig NAME: a kubeconfig for one node component.
node_kubeconfig() {
  local f="$RUN_DIR/node/$1.kubeconfig"
  cat >"$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$RUN_DIR/certs/ca.crt"}
users:
- name: $1
  user: {token: "$(node_token "$1")"}
contexts:
- name: testenv
  context: {cluster: testenv, user: $1}
current-context: testenv
EOF
  echo "$f"
}

# write_if_changed FILE: stdin to FILE unless FILE already has that content (kube-proxy exits
# when its config file changes under it).
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# The bridge, the egress and ingress guards, forwarding. Runs before the API server, Kafka and
# CoreDNS bind the bridge address, and before any pod exists.
start_node_network() {
  mkdir -p "$RUN_DIR/node" "$NODE_ROOT"
  local s
  if [[ ! -f $NODE_ROOT/sysctl.saved ]]; then
    for s in "${NODE_SYSCTLS[@]}"; do
      printf '%s=%s\n' "$s" "$(sysctl -n "$s" 2>/dev/null || echo)"
    done >"$NODE_ROOT/sysctl.saved"
  fi
  [[ -e /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null ||
    die "the bridge netfilter module (br_netfilter) is missing: Services between pods need it"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip addr replace "$NODE_IP/16" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Egress guard: whatever the pod network sends that is not for this machine is unreachable.
  ip route replace "$POD_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP" table "$EGRESS_TABLE"
  ip route replace unreachable default table "$EGRESS_TABLE"
  ip rule show priority "$EGRESS_TABLE" | grep -q "lookup $EGRESS_TABLE" ||
    ip rule add from "$POD_CIDR" iif "$NODE_BRIDGE" lookup "$EGRESS_TABLE" priority "$EGRESS_TABLE"
  # Ingress guard: the API server binds every address (pods reach it through the `kubernetes`
  # Service at the bridge address); it and the bridge address accept only loopback and pods.
  if ! iptables -n -L IOT-TESTENV-INPUT >/dev/null 2>&1; then
    iptables -N IOT-TESTENV-INPUT
    iptables -A IOT-TESTENV-INPUT -i lo -j RETURN
    iptables -A IOT-TESTENV-INPUT -i "$NODE_BRIDGE" -j RETURN
    iptables -A IOT-TESTENV-INPUT -j DROP
    iptables -I INPUT -d "$NODE_IP" -j IOT-TESTENV-INPUT
    iptables -I INPUT -p tcp --dport "$APISERVER_PORT" -j IOT-TESTENV-INPUT
  fi
  grep -qE "^127\.0\.0\.1[[:space:]]+$NODE_NAME\$" /etc/hosts || echo "127.0.0.1 $NODE_NAME" >>/etc/hosts
}

start_containerd() {
  local c="$NODE_ROOT/containerd"
  mkdir -p "$c" "$NODE_ROOT/cni/net.d" "$NODE_ROOT/cni/ipam"
  # The CNI configuration must exist before containerd starts (1.6 ignores one added later).
  write_if_changed "$NODE_ROOT/cni/net.d/10-iot-testenv.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "iot-testenv",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE_ROOT/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
EOF
  write_if_changed "$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # Root here lacks CAP_SYS_RESOURCE: without this runc cannot set a container's oom_score_adj.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_ROOT/cni/net.d"
EOF
  launch containerd containerd --config "$c/config.toml"
  wait_for containerd 30 ctr -a "$CONTAINERD_SOCK" version
  import_node_images
}

# Imports every image archive built by deploy/images/build.sh that the node does not have yet.
import_node_images() {
  [[ -d $IMAGE_ARCHIVES ]] || die "no image archives in $IMAGE_ARCHIVES: run deploy/images/build.sh first"
  local f stamp
  for f in "$IMAGE_ARCHIVES"/*.tar; do
    [[ -e $f ]] || die "no image archives in $IMAGE_ARCHIVES: run deploy/images/build.sh first"
    # An archive is imported again only when it changed since its last import.
    stamp="$NODE_ROOT/containerd/imported-$(basename "$f").sha"
    if [[ -f $stamp ]] && [[ $(<"$stamp") == "$(stat -c '%s %Y' "$f")" ]]; then continue; fi
    ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$f" >/dev/null ||
      die "importing $f into the node's containerd failed"
    stat -c '%s %Y' "$f" >"$stamp"
  done
}

start_kubelet() {
  local k="$NODE_ROOT/kubelet"
  mkdir -p "$k"
  write_if_changed "$RUN_DIR/node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These VMs run cgroup v1, which kubelet 1.35 refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
# The test API server has no kubelet client certificate: it reaches the kubelet anonymously, so
# the kubelet listens on loopback only (a test fixture, never a production setting).
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((KUBELET_PORT - 2))
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
volumePluginDir: $k/volume-plugins
podLogsDir: $k/pod-logs
failSwapOn: false
# Imported images can never be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
registerWithTaints:
- {key: $NODE_TAINT, effect: NoSchedule}
serializeImagePulls: false
EOF
  launch kubelet "$KUBELET_BIN/kubelet" --config="$RUN_DIR/node/kubelet.yaml" \
    --kubeconfig="$(node_kubeconfig kubelet)" --root-dir="$k" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --node-labels="$NODE_LABEL"
  wait_for kubelet 90 "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" wait --for=condition=Ready \
    "node/$NODE_NAME" --timeout=2s
  # The node lifecycle controller is off in the test environment: lift the start-up taint here.
  "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" taint node "$NODE_NAME" \
    node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

start_kube_proxy() {
  write_if_changed "$RUN_DIR/node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $(node_kubeconfig kube-proxy)}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$((KUBELET_PORT + 6))
metricsBindAddress: 127.0.0.1:$((KUBELET_PORT + 7))
# NodePorts only on the bridge address (never on this machine's outside interfaces); leave the
# host's sysctls alone: no localhost NodePorts, no conntrack tuning.
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  launch kube-proxy "$KUBELET_BIN/kube-proxy" --config="$RUN_DIR/node/kube-proxy.yaml"
  wait_for kube-proxy 60 curl -sf "http://127.0.0.1:$((KUBELET_PORT + 6))/healthz"
}

# user_role USER RULES: a ClusterRole with RULES (YAML list items) bound to the user USER, as
# manifests for `kubectl apply -f -`.
user_role() {
  cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "$1"}
rules:
$2
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "$1"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "$1"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "$1"}]
EOF
}

# Cluster DNS: CoreDNS on the host at the bridge address, behind the kube-dns Service. No upstream
# forwarder: nothing outside this machine exists for the pods.
start_coredns() {
  {
    user_role iot-testenv:coredns '- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}'
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $CLUSTER_DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: iot-testenv}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
EOF
  } | "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" apply -f - >/dev/null
  write_if_changed "$RUN_DIR/node/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$((KUBELET_PORT + 8))
    ready 127.0.0.1:$((KUBELET_PORT + 9))
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $(node_kubeconfig coredns) testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loop
    loadbalance
}
EOF
  launch coredns "$COREDNS_BIN/coredns" -conf "$RUN_DIR/node/Corefile"
  wait_for coredns 60 curl -sf "http://127.0.0.1:$((KUBELET_PORT + 9))/ready"
}

# NetworkPolicy enforcement: kube-router with only its firewall controller.
start_kube_router() {
  user_role iot-testenv:kube-router '- {apiGroups: [""], resources: [namespaces, pods, services, nodes, endpoints], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [events], verbs: [create, patch]}' |
    "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" apply -f - >/dev/null
  launch kube-router "$KUBE_ROUTER_BIN/kube-router" --kubeconfig="$(node_kubeconfig kube-router)" \
    --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
    --health-port=$((KUBELET_PORT + 10)) --metrics-port=0 --enable-ipv4=true --enable-ipv6=false
  wait_for kube-router 60 curl -sf "http://127.0.0.1:$((KUBELET_PORT + 10))/healthz"
}

# Stops what survives the node's processes: every container (their shims outlive containerd),
# mounts, network state, iptables chains and ipsets, sysctls, the /etc/hosts line, the Node.
stop_node_extras() {
  local pid
  for pid in $(pgrep -f "containerd-shim.*-address $CONTAINERD_SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Container processes whose shim died are re-parented; find them by their cgroup (kubepods).
  for pid in $(grep -l '/kubepods' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # The pods' cgroups, deepest first (the kubelet's cgroupRoot is /).
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  local m
  if [[ -d $NODE_ROOT ]]; then
    # Unmount deepest first: volumes, rootfs overlays, network namespaces.
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
      awk -v root="$NODE_ROOT/" 'index($2, root) == 1 { print $2 }' /proc/self/mounts | sort -r)
  fi
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    # Pods' veths go with their network namespaces; drop any left, then the bridge.
    for m in $(ip -o link show master "$NODE_BRIDGE" | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
      ip link delete "$m" 2>/dev/null || true
    done
    ip link delete "$NODE_BRIDGE"
  fi
  while ip rule del priority "$EGRESS_TABLE" 2>/dev/null; do :; done
  ip route flush table "$EGRESS_TABLE" 2>/dev/null || true
  local t rules
  for t in filter nat mangle raw; do
    rules=$(iptables-save -t "$t" 2>/dev/null) || continue
    if grep -qE "$NODE_CHAINS" <<<"$rules"; then
      grep -vE "$NODE_CHAINS" <<<"$rules" | iptables-restore -T "$t"
    fi
  done
  for m in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do
    ipset destroy "$m" 2>/dev/null || true
  done
  if [[ -f $NODE_ROOT/sysctl.saved ]]; then
    while IFS='=' read -r m t; do
      if [[ -n $t ]]; then sysctl -qw "$m=$t" || true; fi
    done <"$NODE_ROOT/sysctl.saved"
  fi
  sed -i "/^127\.0\.0\.1[[:space:]]\+$NODE_NAME\$/d" /etc/hosts
  rm -rf /var/lib/cni/results/iot-testenv-* "$NODE_ROOT"
  if [[ -f $RUN_DIR/kubeconfig ]] && [[ $(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$APISERVER_PORT/readyz") == 200 ]]; then
    "$K8S_BIN/kubectl" --kubeconfig="$RUN_DIR/kubeconfig" delete node "$NODE_NAME" --ignore-not-found \
      --wait=false >/dev/null 2>&1 || true
  fi
}

# Prints what the node left behind on this machine (nothing, after down.sh).
node_leftovers() {
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && echo "bridge $NODE_BRIDGE"
  ip rule show priority "$EGRESS_TABLE" | grep -q . && echo "ip rule priority $EGRESS_TABLE"
  grep -qE "$NODE_CHAINS" <<<"$(iptables-save 2>/dev/null)" && echo "iptables chains ($NODE_CHAINS)"
  grep -qE '^(KUBE-|kube-router)' <<<"$(ipset list -n 2>/dev/null)" && echo "ipsets"
  awk -v root="$NODE_ROOT/" 'index($2, root) == 1 { found = 1 } END { exit !found }' /proc/self/mounts &&
    echo "mounts under $NODE_ROOT"
  pgrep -f "containerd-shim.*-address $CONTAINERD_SOCK" >/dev/null && echo "containerd shims"
  [[ -d $NODE_ROOT ]] && echo "directory $NODE_ROOT"
  compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null && echo "cgroups /sys/fs/cgroup/*/kubepods"
  grep -qE "^127\.0\.0\.1[[:space:]]+$NODE_NAME\$" /etc/hosts && echo "/etc/hosts entry"
  return 0
}
