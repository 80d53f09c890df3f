#!/usr/bin/env bash
# Builds the Go-based parts of the local test environment once and caches them under
# ~/.cache/iot-cloud/bin/<tool>-<version>/ (keyed by version, so a version bump rebuilds only
# that tool). Safe to run repeatedly: a tool whose directory already holds its binaries is skipped.
#
#   deploy/testenv/build-tools.sh [tool...]     tools: etcd kube kwok helm promtool
#                                               node tools: kubelet coredns kube-router
set -euo pipefail
source "$(dirname "$0")/versions.sh"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
BIN_ROOT="$IOT_CACHE/bin"
WORK_ROOT="$IOT_CACHE/gowork"
mkdir -p "$BIN_ROOT" "$WORK_ROOT"

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# wrapper_module DIR MODULE@VERSION PKG...: a throwaway module that requires MODULE, so `go build`
# can build its commands PKG... even when MODULE's own go.mod has replace lines.
wrapper_module() {
  local dir=$1 modver=$2; shift 2
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init local/iot-cloud-testenv-tools >/dev/null 2>&1
  # Kubernetes' go.mod replaces its staging modules with ./staging/...; point each at the
  # published module of the matching v0.X.Y version instead.
  if [[ $modver == k8s.io/kubernetes@* ]]; then
    local gomod
    gomod=$(go mod download -json "$modver" | sed -n 's/.*"GoMod": "\([^"]*\)".*/\1/p')
    local m
    for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*|\1|p' "$gomod"); do
      go mod edit -replace="$m=$m@$K8S_STAGING_VERSION"
    done
  fi
  local pkgs=() p
  for p in "$@"; do pkgs+=("$p@${modver#*@}"); done
  go get "${pkgs[@]}" >/dev/null
}

build_etcd() {
  local out="$BIN_ROOT/etcd-$ETCD_VERSION"
  [[ -x $out/etcd ]] && return 0
  log "building etcd $ETCD_VERSION"
  wrapper_module "$WORK_ROOT/etcd" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
  go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
  mv "$out.tmp" "$out"
}

# build_k8s_cmds DIR CMD...: Kubernetes commands at K8S_VERSION, with version stamps, into DIR.
build_k8s_cmds() {
  local out=$1; shift
  [[ -x $out/$1 ]] && return 0
  log "building $* $K8S_VERSION"
  wrapper_module "$WORK_ROOT/$(basename "$out")" "k8s.io/kubernetes@$K8S_VERSION" "${@/#/k8s.io/kubernetes/cmd/}"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local v=k8s.io/component-base/version cv=k8s.io/client-go/pkg/version
  local ld="-s -w"
  for p in $v $cv; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$out.tmp"
  local cmd
  for cmd in "$@"; do
    log "  go build $cmd"
    go build -p 2 -trimpath -ldflags "$ld" -o "$out.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  mv "$out.tmp" "$out"
}

build_kube() {
  build_k8s_cmds "$BIN_ROOT/kubernetes-$K8S_VERSION" kubectl kube-apiserver kube-controller-manager kube-scheduler
}
build_kubelet() {
  build_k8s_cmds "$BIN_ROOT/kubernetes-node-$K8S_VERSION" kubelet kube-proxy
}

# CoreDNS with only the plugins the node's cluster DNS uses (no forwarder: nothing outside exists).
build_coredns() {
  local out="$BIN_ROOT/coredns-$COREDNS_VERSION"
  [[ -x $out/coredns ]] && return 0
  log "building coredns $COREDNS_VERSION"
  local plugins=(bind ready health errors log loadbalance cache hosts kubernetes loop)
  wrapper_module "$WORK_ROOT/coredns" "github.com/coredns/coredns@$COREDNS_VERSION" github.com/coredns/coredns/coremain
  {
    printf 'package main\n\nimport (\n\t"github.com/coredns/coredns/core/dnsserver"\n\t"github.com/coredns/coredns/coremain"\n'
    printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "${plugins[@]}"
    printf ')\n\n// The order of the directives is the order in which plugins handle a query.\n'
    printf 'func init() {\n\tdnsserver.Directives = []string{'
    printf '"%s", ' "${plugins[@]}"
    printf '}\n}\n\nfunc main() { coremain.Run() }\n'
  } >main.go
  gofmt -w main.go
  go mod tidy >/dev/null 2>&1
  go build -p 2 -trimpath -ldflags "-s -w" -o "$out.tmp/coredns" .
  mv "$out.tmp" "$out"
}
build_kube-router() {
  build_plain kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2 \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router kube-router
}

build_plain() { # build_plain NAME VERSION MODULE PKG BINARY [LDFLAGS]
  local name=$1 ver=$2 mod=$3 pkg=$4 binary=$5 ld=${6:-}
  local out="$BIN_ROOT/$name-$ver"
  [[ -x $out/$binary ]] && return 0
  log "building $name $ver"
  wrapper_module "$WORK_ROOT/$name" "$mod@$ver" "$pkg"
  go build -p 2 -trimpath -ldflags "-s -w $ld" -o "$out.tmp/$binary" "$pkg"
  mv "$out.tmp" "$out"
}

build_kwok() {
  build_plain kwok "$KWOK_VERSION" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
}
build_helm() {
  build_plain helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}
build_promtool() {
  build_plain promtool "$PROMETHEUS_MODULE_VERSION" github.com/prometheus/prometheus \
    github.com/prometheus/prometheus/cmd/promtool promtool
}

tools=("$@")
[[ ${#tools[@]} -eq 0 ]] && tools=(etcd kube kwok helm promtool)
for t in "${tools[@]}"; do
  start=$SECONDS
  "build_$t"
  log "$t ready ($((SECONDS - start)) s)"
done
