#!/usr/bin/env bash
# `deploy/packaging-test.sh build-tilt`: builds tilt $TILT_VERSION from its Go module into
# ~/.cache/iot-cloud/bin/ (once: a cached binary is kept), for the Tiltfile check of check.sh.
# `go install` refuses tilt (its go.mod has replace lines), hence the wrapper module.
# shellcheck source=deploy/packaging/lib.sh
source "$(dirname "$0")/lib.sh"

build_tilt() {
  [[ -x $TILT_BIN ]] && { log "tilt $TILT_VERSION already built: $TILT_BIN"; return 0; }
  command -v go >/dev/null || die "go is needed to build tilt"
  local work="$IOT_CACHE/gowork/tilt" gomod modcache out
  out=$(dirname "$TILT_BIN")
  # cgo: the Tiltfile language server links tree-sitter (C).
  export GOTOOLCHAIN=local CGO_ENABLED=1 GOFLAGS=-buildvcs=false
  rm -rf "$work" && mkdir -p "$work" && cd "$work"
  go mod init local/iot-cloud-tilt >/dev/null 2>&1
  gomod=$(go mod download -json "github.com/tilt-dev/tilt@$TILT_VERSION" | sed -n 's/.*"GoMod": "\([^"]*\)".*/\1/p')
  [[ -n $gomod ]] || die "tilt $TILT_VERSION is not available from the Go module proxy"
  # Copy tilt's replace lines into this wrapper module.
  awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&/=>/{print} /^replace [^(]/{sub(/^replace /,"");print}' "$gomod" |
    while read -r old _ new ver; do go mod edit -replace="$old=$new@$ver"; done
  # Tilt's own go.sum (inside its checksum-verified module) vouches for its dependencies; some of
  # them are unknown to the checksum database this machine reaches.
  modcache=$(go env GOMODCACHE)
  go mod download "github.com/tilt-dev/tilt@$TILT_VERSION"
  cp "$modcache/github.com/tilt-dev/tilt@$TILT_VERSION/go.sum" go.sum && chmod u+w go.sum
  go get "github.com/tilt-dev/tilt/cmd/tilt@$TILT_VERSION"
  rm -rf "$out.tmp"
  go build -p 2 -trimpath -ldflags "-s -w -X main.version=${TILT_VERSION#v}" -o "$out.tmp/tilt" \
    github.com/tilt-dev/tilt/cmd/tilt
  mv "$out.tmp" "$out"
  log "built $TILT_BIN"
}

build_tilt
