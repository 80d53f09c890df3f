# Shared by deploy/images/build.sh and check.sh (sourced, not run): strict mode, paths, the
# versions read from the Dockerfile and the chart, and the names of every image. The names are the
# ones the chart and the node ask for, so the images are found without a registry.
# Its variables are used by the scripts that source it, which shellcheck of lib.sh alone cannot see.
# shellcheck shell=bash disable=SC2034
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGES_DIR=$REPO_ROOT/deploy/images
IOT_CACHE=${IOT_CACHE:-$HOME/.cache/iot-cloud}
IMAGE_CACHE=$IOT_CACHE/images
# The archives for `ctr images import`, one per image (deploy/testenv/node.sh imports *.tar here).
IMAGE_OUT=$IMAGE_CACHE/out
# Runs RUN steps in a chroot: no runc (which cannot set oom_score_adj here), host network.
export BUILDAH_ISOLATION=chroot

# One source of truth: the Dockerfile's ARG defaults and base image, the chart's appVersion.
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$REPO_ROOT/Dockerfile" | head -n1; }
RUST_VERSION=$(dockerfile_arg RUST_VERSION)
DEBIAN_RELEASE=$(dockerfile_arg DEBIAN_RELEASE)
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$REPO_ROOT/charts/iot-cloud/Chart.yaml")
[[ -n $RUST_VERSION && -n $DEBIAN_RELEASE && -n $APP_VERSION ]] ||
  { echo "images: cannot read RUST_VERSION/DEBIAN_RELEASE (Dockerfile) or appVersion (Chart.yaml)" >&2; exit 1; }

# Stand-ins for the base images, made here from Debian packages and the host's Rust toolchain.
DEBIAN_IMAGE=docker.io/library/debian:$DEBIAN_RELEASE-slim
RUST_IMAGE=docker.io/library/rust:$RUST_VERSION-slim-$DEBIAN_RELEASE
DISTROLESS_IMAGE=$(sed -n 's/^FROM \(gcr\.io\/distroless\/[^ ]*\) AS operator$/\1/p' "$REPO_ROOT/Dockerfile")
[[ -n $DISTROLESS_IMAGE ]] || { echo "images: no distroless FROM line for the operator in the Dockerfile" >&2; exit 1; }

# The images a real node needs: the chart's (values.yaml: operator/enrichment/bridge/... image,
# mosquitto.image, tests.image, with short names expanded as containerd does) and the kubelet's
# sandbox image (sandbox_image in deploy/testenv/node.sh).
OPERATOR_IMAGE=ghcr.io/iot-cloud/iot-operator:$APP_VERSION
WORKER_IMAGE=ghcr.io/iot-cloud/iot-worker:$APP_VERSION
MOSQUITTO_IMAGE=docker.io/library/eclipse-mosquitto:2
BUSYBOX_IMAGE=docker.io/library/busybox:1.37
PAUSE_IMAGE=registry.k8s.io/pause:3.10
# Archive file name (without .tar) of each of them.
declare -A ARCHIVE=([$OPERATOR_IMAGE]=iot-operator [$WORKER_IMAGE]=iot-worker
  [$MOSQUITTO_IMAGE]=eclipse-mosquitto [$BUSYBOX_IMAGE]=busybox [$PAUSE_IMAGE]=pause)
NODE_IMAGES=("$OPERATOR_IMAGE" "$WORKER_IMAGE" "$MOSQUITTO_IMAGE" "$BUSYBOX_IMAGE" "$PAUSE_IMAGE")

# image_id IMAGE: the full ID of IMAGE in buildah's storage, or nothing.
image_id() { { buildah images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null || true; } | head -n1; }
# image_label IMAGE KEY: a label of IMAGE, or nothing.
image_label() {
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}
# image_user IMAGE: the configured user of IMAGE.
image_user() { buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$1"; }
