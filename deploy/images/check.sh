#!/usr/bin/env bash
# Checks the images deploy/images/build.sh made, in buildah's storage: the runtime images
# (operator, worker and their distroless base) run as 65532 and hold no shell, package manager or
# setuid file, and their binaries start; Mosquitto runs as 1883, has no shell either and is recent
# enough; busybox has the applets the chart's test and probe pods use; pause is static and alone.
# Prints one line per check and exits non-zero when one fails.
#
#   deploy/images/check.sh            the checks above
#   deploy/images/check.sh --import   also imports the archives into a throwaway containerd (own
#                                     root, state and socket under /tmp) and checks the names
# shellcheck source=deploy/images/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=deploy/testenv/versions.sh
source "$REPO_ROOT/deploy/testenv/versions.sh"

CONTAINERS=()
CONTAINERD_PID=""
CTR_DIR=""
cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  if [[ -n $CONTAINERD_PID ]]; then
    kill "$CONTAINERD_PID" 2>/dev/null || true
    wait "$CONTAINERD_PID" 2>/dev/null || true
  fi
  if [[ -n $CTR_DIR ]]; then rm -rf "$CTR_DIR"; fi
}
trap cleanup EXIT

failed=0 passed=0
# check DESCRIPTION CMD...: runs CMD quietly and prints ok or FAIL.
check() {
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then
    printf 'ok    %s\n' "$what"; passed=$((passed + 1))
  else
    printf 'FAIL  %s\n' "$what"; failed=$((failed + 1))
  fi
}

# open IMAGE: a working container of IMAGE; sets C (its name) and ROOT (its mounted filesystem).
open() {
  C=$(buildah from --pull=never --quiet "$1")
  CONTAINERS+=("$C")
  ROOT=$(buildah mount "$C")
}

user_is() { [[ $(image_user "$1") == "$2" ]]; }
# Nothing that runs or installs programs: shells, busybox, package managers, or setuid files.
no_shell() {
  [[ -z $(find "$1" -xdev \( -name sh -o -name bash -o -name dash -o -name ash -o -name busybox \
    -o -name apt -o -name apt-get -o -name dpkg \) -print -quit) ]]
}
no_setuid() { [[ -z $(find "$1" -xdev -perm /6000 -type f -print -quit) ]]; }
# An executable with no ELF interpreter, i.e. static.
is_static() { [[ -x $1 ]] && ! readelf -l "$1" | grep -q INTERP; }
runs() { buildah run "$C" -- "$@"; }
version_at_least() { [[ $(printf '%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

check_runtime() { # IMAGE [BINARY]
  local image=$1 binary=${2:-}
  if [[ -z $(image_id "$image") ]]; then check "$image exists" false; return; fi
  open "$image"
  check "$image runs as 65532:65532" user_is "$image" 65532:65532
  check "$image has no shell, busybox or package manager" no_shell "$ROOT"
  check "$image has no setuid/setgid file" no_setuid "$ROOT"
  check "$image has /tmp mode 1777" test "$(stat -c %a "$ROOT/tmp" 2>/dev/null)" = 1777
  check "$image has /home/nonroot owned by 65532" test "$(stat -c %u "$ROOT/home/nonroot" 2>/dev/null)" = 65532
  if [[ -n $binary ]]; then
    check "$image: $binary --help runs (as 65532, with the image's libraries only)" runs "$binary" --help
  fi
}

check_mosquitto() {
  local version
  if [[ -z $(image_id "$MOSQUITTO_IMAGE") ]]; then check "$MOSQUITTO_IMAGE exists" false; return; fi
  open "$MOSQUITTO_IMAGE"
  check "$MOSQUITTO_IMAGE runs as 1883:1883" user_is "$MOSQUITTO_IMAGE" 1883:1883
  check "$MOSQUITTO_IMAGE has no shell, busybox or package manager" no_shell "$ROOT"
  # `mosquitto -h` prints the version only once the loader found every library it links.
  version=$(runs /usr/sbin/mosquitto -h 2>&1 | sed -n 's/^mosquitto version \([0-9.]*\).*/\1/p' || true)
  check "$MOSQUITTO_IMAGE: mosquitto ${version:-?} starts, >= $MOSQUITTO_MIN_VERSION" \
    version_at_least "${version:-0}" "$MOSQUITTO_MIN_VERSION"
  check "$MOSQUITTO_IMAGE: /mosquitto/config/mosquitto.conf exists" test -f "$ROOT/mosquitto/config/mosquitto.conf"
  check "$MOSQUITTO_IMAGE: /mosquitto/data is owned by 1883" test "$(stat -c %u "$ROOT/mosquitto/data" 2>/dev/null)" = 1883
}

check_busybox() {
  local applet
  if [[ -z $(image_id "$BUSYBOX_IMAGE") ]]; then check "$BUSYBOX_IMAGE exists" false; return; fi
  open "$BUSYBOX_IMAGE"
  for applet in sh wget nc nslookup timeout; do
    check "$BUSYBOX_IMAGE: $applet runs" runs "$applet" --help
  done
}

check_pause() {
  if [[ -z $(image_id "$PAUSE_IMAGE") ]]; then check "$PAUSE_IMAGE exists" false; return; fi
  open "$PAUSE_IMAGE"
  check "$PAUSE_IMAGE runs as 65535:65535" user_is "$PAUSE_IMAGE" 65535:65535
  check "$PAUSE_IMAGE: /pause is static" is_static "$ROOT/pause"
  check "$PAUSE_IMAGE: /pause is the only file" test "$(find "$ROOT" -xdev -type f | wc -l)" = 1
}

# Imports every archive into a containerd of its own and checks that each image has its exact name.
check_import() {
  local sock f names image
  CTR_DIR=$(mktemp -d /tmp/iot-images-ctr.XXXXXX)
  sock=$CTR_DIR/containerd.sock
  cat >"$CTR_DIR/config.toml" <<EOF
version = 2
root = "$CTR_DIR/root"
state = "$CTR_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTR_DIR/opt"
EOF
  containerd --config "$CTR_DIR/config.toml" >"$CTR_DIR/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  local deadline=$((SECONDS + 30))
  until ctr -a "$sock" version >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { cat "$CTR_DIR/containerd.log" >&2; check "throwaway containerd starts" false; return; }
    sleep 0.2
  done
  for f in "$IMAGE_OUT"/*.tar; do
    check "ctr images import $f" ctr -a "$sock" -n k8s.io images import "$f"
  done
  names=$(ctr -a "$sock" -n k8s.io images ls -q)
  printf '%s\n' "$names" | sed 's/^/      imported: /'
  for image in "${NODE_IMAGES[@]}"; do
    check "containerd has $image" grep -qxF "$image" <<<"$names"
  done
}

import=false
case ${1:-} in
  "") ;;
  --import) import=true ;;
  *) echo "usage: deploy/images/check.sh [--import]" >&2; exit 2 ;;
esac
check_runtime "$DISTROLESS_IMAGE"
check_runtime "$OPERATOR_IMAGE" /usr/local/bin/iot-operator
check_runtime "$WORKER_IMAGE" /usr/local/bin/iot-worker
check_mosquitto
check_busybox
check_pause
if $import; then check_import; fi
echo "images: $passed passed, $failed failed"
((failed == 0))
