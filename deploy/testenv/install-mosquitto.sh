#!/usr/bin/env bash
# Makes sure Mosquitto >= $MOSQUITTO_MIN_VERSION (and its clients) is installed. Older brokers,
# such as Debian 12's 2.0.11, do not honour an MQTT 5 client's Receive Maximum (fixed upstream in
# 2.0.13), so the bridge's flow control could not be tested against them. On Debian 12 the newer
# package comes from bookworm-backports, which this script enables when needed.
set -euo pipefail
source "$(dirname "$0")/versions.sh"

installed_version() {
  local bin
  bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  [[ -x $bin ]] || return 0
  { "$bin" -h 2>/dev/null || true; } | sed -n 's/^mosquitto version \([0-9.]*\).*/\1/p' | head -n 1
}

new_enough() { # new_enough VERSION: VERSION >= MOSQUITTO_MIN_VERSION
  [[ -n $1 ]] && [[ $(printf '%s\n%s\n' "$MOSQUITTO_MIN_VERSION" "$1" | sort -V | head -n 1) == "$MOSQUITTO_MIN_VERSION" ]]
}

version=$(installed_version)
if new_enough "$version" && command -v mosquitto_pub >/dev/null; then
  exit 0
fi
echo "[install-mosquitto] found '${version:-none}', need >= $MOSQUITTO_MIN_VERSION: installing" >&2
target=()
if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  list=/etc/apt/sources.list.d/bookworm-backports.sources
  if [[ ! -f $list ]]; then
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$list"
  fi
  target=(-t bookworm-backports)
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${target[@]}" mosquitto mosquitto-clients >/dev/null
version=$(installed_version)
new_enough "$version" || { echo "install-mosquitto: Mosquitto $version is older than $MOSQUITTO_MIN_VERSION" >&2; exit 1; }
echo "[install-mosquitto] Mosquitto $version" >&2
