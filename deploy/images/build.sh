#!/usr/bin/env bash
# Builds every image the chart needs on a real node without pulling anything, and writes each as
# an archive for `ctr -n k8s.io images import` into ~/.cache/iot-cloud/images/out/ (IOT_CACHE):
# the operator and the worker from the repository's Dockerfile; Mosquitto, busybox (helm test and
# probe pods) and the kubelet's pause image from deploy/images/*/Containerfile.
# Their base images are stand-ins made here first and kept in buildah's storage, keyed by Debian
# release and Rust version (read from the Dockerfile): a Debian minbase (debootstrap from the
# host's mirror), a Rust builder (that plus gcc, the host's CA certificates and the host's Rust
# toolchain) and a distroless-like runtime (loader, libc, libgcc_s, libstdc++, CA certificates,
# zoneinfo, user 65532; no shell). Runs as root; needs buildah, debootstrap and rustc.
# Safe to run repeatedly: stand-ins that exist are kept, the image builds use buildah's layer cache,
# and an archive is rewritten only when its image changed.
#
#   deploy/images/build.sh              everything (cold: 7-16 min on 2 cores, warm: seconds)
#   deploy/images/build.sh --base-only  only the base-image stand-ins
#   deploy/images/check.sh              then: runtime images are non-root and have no shell
# shellcheck source=deploy/images/lib.sh
source "$(dirname "$0")/lib.sh"

# Bump to rebuild the stand-ins after changing how they are made.
STANDIN_REVISION=1
STANDIN_LABEL=dev.iot-cloud.stand-in
ROOTFS_TAR=$IMAGE_CACHE/rootfs-$DEBIAN_RELEASE-minbase-r$STANDIN_REVISION.tar
LOGS=$IMAGE_CACHE/logs
mkdir -p "$IMAGE_OUT" "$LOGS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iot-images.XXXXXX")
CONTAINERS=()
cleanup() {
  local c m
  trap - ERR
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  # An interrupted debootstrap leaves /proc mounted in its target: never descend into a mount.
  for m in $(findmnt -rn -o TARGET | { grep -F "$WORK/" || true; } | sort -r); do umount -l "$m" || true; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Say which command stopped the build (set -e alone exits silently).
set -E
trap 'log "ERROR: line $LINENO: $BASH_COMMAND"' ERR

# run_logged NAME CMD...: runs CMD with its output in $LOGS/NAME.log; on failure shows its end.
run_logged() {
  local name=$1; shift
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    tail -n 40 "$LOGS/$name.log" >&2
    die "$name failed (whole log: $LOGS/$name.log)"
  fi
}

# new_container BASE: a working container in $C (removed at exit unless committed).
new_container() {
  C=$(buildah from --pull=never --quiet "$1")
  CONTAINERS+=("$C")
}

# A stand-in is current when it carries the label of the inputs it was made from.
standin_current() { [[ $(image_label "$1" "$STANDIN_LABEL") == "$2" ]]; }

# commit_standin CONTAINER IMAGE KEY: commits, and drops the image it replaces when nothing uses it.
commit_standin() {
  local old
  old=$(image_id "$2")
  buildah config --label "$STANDIN_LABEL=$3" "$1"
  buildah commit --quiet --rm "$1" "$2" >/dev/null
  if [[ -n $old ]]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
}

# The host's Debian mirrors (containers reach them through the host's network); IOT_DEBIAN_MIRROR
# overrides the main one.
host_apt_uris() {
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | tr ' ' '\n'
  fi
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" { print ($2 ~ /^\[/ ? $3 : $2) }' /etc/apt/sources.list
  fi
}

# The minbase rootfs tarball the Debian and distroless stand-ins are made from; built only when
# one of them is (the stand-ins may outlive the cache directory).
ensure_rootfs() {
  [[ -f $ROOTFS_TAR ]] && return 0
  local start=$SECONDS
  local mirror security root=$WORK/rootfs
  mirror=${IOT_DEBIAN_MIRROR:-$(host_apt_uris | grep -v -m1 security || true)}
  security=$(host_apt_uris | grep -m1 security || true)
  [[ -n $mirror ]] || die "no Debian mirror in /etc/apt/sources.list.d/debian.sources or sources.list (set IOT_DEBIAN_MIRROR)"
  log "debootstrap $DEBIAN_RELEASE (minbase) from $mirror"
  run_logged debootstrap debootstrap --variant=minbase --include=ca-certificates,libstdc++6,libgcc-s1,tzdata \
    "$DEBIAN_RELEASE" "$root" "$mirror"
  {
    echo "deb $mirror $DEBIAN_RELEASE main"
    echo "deb $mirror $DEBIAN_RELEASE-updates main"
    if [[ -n $security ]]; then echo "deb $security $DEBIAN_RELEASE-security main"; fi
  } >"$root/etc/apt/sources.list"
  # Caches, logs and the host's resolv.conf/hostname are no part of an image (the runtime
  # provides the last two).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/etc/resolv.conf "$root"/etc/hostname
  find "$root/var/log" -type f -delete
  tar -C "$root" --numeric-owner -cf "$ROOTFS_TAR.partial" .
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
  log "  rootfs $ROOTFS_TAR ready ($((SECONDS - start)) s)"
}

build_debian() {
  local key="$DEBIAN_RELEASE minbase r$STANDIN_REVISION" c
  standin_current "$DEBIAN_IMAGE" "$key" && return 0
  ensure_rootfs
  new_container scratch
  c=$C
  buildah add --quiet "$c" "$ROOTFS_TAR" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$c"
  commit_standin "$c" "$DEBIAN_IMAGE" "$key"
}

# Like the official rust:*-slim image (CARGO_HOME=/usr/local/cargo, RUSTUP_HOME=/usr/local/rustup,
# cargo and rustc on PATH), with the host's toolchain instead of rustup's download, and trusting
# the host's extra CA certificates (HTTPS to crates.io fails without them here).
build_rust() {
  local host_version sysroot triple key c mnt toolchain b certs=()
  host_version=$(rustc --version | awk '{print $2}')
  case $host_version in
    "$RUST_VERSION" | "$RUST_VERSION".*) ;;
    *) die "the host's rustc is $host_version but the Dockerfile has RUST_VERSION=$RUST_VERSION: install that toolchain (rustup default $RUST_VERSION) or change the Dockerfile" ;;
  esac
  key="$DEBIAN_RELEASE $(rustc --version) r$STANDIN_REVISION"
  standin_current "$RUST_IMAGE" "$key" && return 0
  sysroot=$(rustc --print sysroot)
  triple=$(rustc -vV | sed -n 's/^host: //p')
  toolchain=/usr/local/rustup/toolchains/$host_version-$triple
  new_container "$DEBIAN_IMAGE"
  c=$C
  shopt -s nullglob
  certs=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
  if ((${#certs[@]} > 0)); then buildah copy --quiet "$c" "${certs[@]}" /usr/local/share/ca-certificates/ >/dev/null; fi
  log "  apt-get install gcc libc6-dev"
  run_logged rust-apt buildah run "$c" -- sh -c 'apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* && update-ca-certificates'
  log "  toolchain $host_version from $sysroot"
  mnt=$(buildah mount "$c")
  mkdir -p "$mnt$toolchain" "$mnt/usr/local/cargo/bin"
  cp -a "$sysroot/bin" "$sysroot/lib" "$mnt$toolchain/"
  for b in "$mnt$toolchain"/bin/*; do ln -s "$toolchain/bin/${b##*/}" "$mnt/usr/local/cargo/bin/${b##*/}"; done
  chmod -R a+w "$mnt/usr/local/cargo" "$mnt/usr/local/rustup"
  buildah umount "$c" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$host_version" "$c"
  run_logged rust-check buildah run "$c" -- sh -c 'rustc --version && cargo --version && gcc --version'
  commit_standin "$c" "$RUST_IMAGE" "$key"
}

# Like gcr.io/distroless/cc-debian12:nonroot: the files of libc6, libgcc-s1 and libstdc++6 that a
# program loads, CA certificates, zoneinfo, passwd/group with nonroot = 65532; no shell, no package
# manager. The files come from the minbase rootfs, so they match the builder's glibc.
build_distroless() {
  local key="$DEBIAN_RELEASE r$STANDIN_REVISION" root=$WORK/distroless-src stage=$WORK/distroless c libdir
  standin_current "$DISTROLESS_IMAGE" "$key" && return 0
  ensure_rootfs
  mkdir -p "$root" "$stage"
  tar -C "$root" -xf "$ROOTFS_TAR"
  libdir=$(cd "$root" && find usr/lib -maxdepth 2 -name libc.so.6 -printf '%h\n' | head -n1)
  [[ -n $libdir ]] || die "no libc.so.6 in the rootfs"
  (
    cd "$root"
    shopt -s failglob
    # lib and lib64 are the merged-/usr symlinks; the loader's path in every binary is
    # /lib64/ld-linux-*.so.2.
    tar --numeric-owner -cf - lib lib64 usr/lib64/ld-linux-*.so.* "$libdir"/ld-linux-*.so.* \
      "$libdir"/{libc,libm,libdl,libpthread,librt,libresolv,libnss_files,libnss_dns}.so.* \
      "$libdir"/libgcc_s.so.1 "$libdir"/libstdc++.so.6* \
      etc/ssl/certs/ca-certificates.crt usr/share/zoneinfo etc/os-release usr/lib/os-release \
      usr/share/doc/{libc6,libgcc-s1,libstdc++6,ca-certificates,tzdata}/copyright
  ) | tar -C "$stage" -xf -
  mkdir -p "$stage/etc" "$stage/tmp" "$stage/root" "$stage/home/nonroot"
  chmod 1777 "$stage/tmp"
  chmod 700 "$stage/root" "$stage/home/nonroot"
  chown 65532:65532 "$stage/home/nonroot"
  printf '%s\n' root:x:0:0:root:/root:/sbin/nologin nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin \
    nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin >"$stage/etc/passwd"
  printf '%s\n' root:x:0: nobody:x:65534: nonroot:x:65532: >"$stage/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$stage/etc/nsswitch.conf"
  # Every library the loader needs for libstdc++ (the largest closure) is there.
  if chroot "$stage" /lib64/ld-linux-x86-64.so.2 --list "/$libdir/libstdc++.so.6" 2>&1 | grep 'not found'; then
    die "the distroless stand-in misses a library"
  fi
  tar -C "$stage" --numeric-owner -cf "$WORK/distroless.tar" .
  new_container scratch
  c=$C
  buildah add --quiet "$c" "$WORK/distroless.tar" / >/dev/null
  buildah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$c"
  commit_standin "$c" "$DISTROLESS_IMAGE" "$key"
}

# bud LOG IMAGE ARG...: `buildah bud` with the layer cache and nothing pulled, tagging IMAGE; the
# image it replaces is dropped (the layers it shares with the new one stay, as cache).
bud() {
  local name=$1 image=$2 old; shift 2
  old=$(image_id "$image")
  run_logged "$name" buildah bud --layers --pull=never -t "$image" "$@"
  if [[ -n $old && $old != "$(image_id "$image")" ]]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
}

# The Dockerfile as it is; the worker build reuses the operator build's stages (--layers).
build_project() {
  local target image
  for target in operator worker; do
    image=$OPERATOR_IMAGE
    [[ $target == worker ]] && image=$WORKER_IMAGE
    log "  $image (log: $LOGS/$target.log)"
    bud "$target" "$image" --target "$target" -f "$REPO_ROOT/Dockerfile" "$REPO_ROOT"
  done
}

# build_small IMAGE DIR BUILD-ARG...: an image from deploy/images/DIR/Containerfile.
build_small() {
  local image=$1 dir=$2; shift 2
  bud "$dir" "$image" "${@/#/--build-arg=}" -f "$IMAGES_DIR/$dir/Containerfile" "$IMAGES_DIR/$dir"
}
build_helpers() {
  build_small "$MOSQUITTO_IMAGE" mosquitto "BASE=$DEBIAN_IMAGE" "RUNTIME=$DISTROLESS_IMAGE" \
    "MOSQUITTO_MIN_VERSION=$(sed -n 's/^MOSQUITTO_MIN_VERSION=//p' "$REPO_ROOT/deploy/testenv/versions.sh")"
  build_small "$BUSYBOX_IMAGE" busybox "BASE=$DEBIAN_IMAGE"
  build_small "$PAUSE_IMAGE" pause "BUILDER=$RUST_IMAGE"
}

# An archive is rewritten only when its image changed (node.sh re-imports changed archives only).
# docker-archive keeps the full name in its manifest, so containerd imports it under that name.
export_images() {
  local image name file stamp id
  for image in "${NODE_IMAGES[@]}"; do
    name=${ARCHIVE[$image]} file=$IMAGE_OUT/${ARCHIVE[$image]}.tar stamp=$IMAGE_OUT/.${ARCHIVE[$image]}.id
    id=$(image_id "$image")
    [[ -n $id ]] || die "$image was not built"
    if [[ -f $file && -f $stamp && $(<"$stamp") == "$id $image" ]]; then continue; fi
    rm -f "$IMAGE_OUT/.$name.partial"
    buildah push --quiet "$image" "docker-archive:$IMAGE_OUT/.$name.partial:$image" >/dev/null
    mv "$IMAGE_OUT/.$name.partial" "$file"
    echo "$id $image" >"$stamp"
    log "  wrote $file"
  done
}

summary() {
  local image
  printf '%-46s %9s %9s  %s\n' IMAGE SIZE ARCHIVE FILE
  for image in "${NODE_IMAGES[@]}"; do
    printf '%-46s %9s %9s  %s\n' "$image" "$(buildah images --format '{{.Size}}' "$image" | head -n1)" \
      "$(du -h "$IMAGE_OUT/${ARCHIVE[$image]}.tar" | cut -f1)" "$IMAGE_OUT/${ARCHIVE[$image]}.tar"
  done
}

stage() { # stage NAME FUNCTION: runs FUNCTION and logs its duration
  local start=$SECONDS
  "$2"
  log "$1 ready ($((SECONDS - start)) s)"
}

base_only=false
case ${1:-} in
  "") ;;
  --base-only) base_only=true ;;
  -h | --help) sed -n '2,/^[^#]/{/^# shellcheck/d;s/^# \{0,1\}//p}' "$0"; exit 0 ;;
  *) die "unknown argument $1 (usage: deploy/images/build.sh [--base-only])" ;;
esac
((EUID == 0)) || die "run as root (buildah's storage, debootstrap and chroot need it)"
for tool in buildah debootstrap rustc chroot; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install buildah debootstrap)"
done
# One build at a time: they share the cache directory and the image names.
exec 9>"$IMAGE_CACHE/.lock"
flock -n 9 || { log "waiting for another build.sh to finish"; flock 9; }

total=$SECONDS
stage "$DEBIAN_IMAGE" build_debian
stage "$RUST_IMAGE" build_rust
stage "$DISTROLESS_IMAGE" build_distroless
if ! $base_only; then
  stage "project images" build_project
  stage "mosquitto, busybox, pause" build_helpers
  stage "archives in $IMAGE_OUT" export_images
  summary
fi
log "done ($((SECONDS - total)) s)"
