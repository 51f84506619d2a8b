#!/usr/bin/env bash
# Install the tools the deployment tests need, from Debian's own archive, only when missing:
#   prometheus      `prometheus` and `promtool` (Debian 12: 2.42), to check the scrape config and
#                   recording rules and to run a real Prometheus against a real server
#   docker-compose  1.29, to validate docker-compose.yml (`docker-compose config` needs no daemon)
# A second call finds both and does nothing. Needs root (or sudo) and apt-get.
#
# The prometheus package would start a system-wide Prometheus on :9090 scraping localhost; the
# tests start their own on free ports, and nothing may keep running after them, so package
# scripts are kept from starting services while installing, and a service that still came up
# (a systemd host) is stopped and disabled.
#
# usage: scripts/deploy_tools.sh
set -euo pipefail

# tool -> package that provides it
declare -A package_of=([prometheus]=prometheus [promtool]=prometheus [docker-compose]=docker-compose)
missing=()
for tool in prometheus promtool docker-compose; do
  if ! command -v "$tool" >/dev/null; then
    missing+=("${package_of[$tool]}")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
# One name per package (prometheus and promtool come together).
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

command -v apt-get >/dev/null || {
  echo "deploy_tools: apt-get not found; install ${packages[*]} by hand (a Debian system is expected)" >&2
  exit 1
}
sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "deploy_tools: run as root (or install sudo)" >&2; exit 1; }
  sudo=(sudo)
fi

# invoke-rc.d asks /usr/sbin/policy-rc.d whether a package may start its service; 101 = no.
# Put one in place for the install unless the host has its own (containers usually do), and
# remove only the one written here.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# written by surety scripts/deploy_tools.sh for one install\nexit 101\n' |
    "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  own_policy=true
fi
cleanup() {
  if $own_policy; then
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT

echo "==> deploy_tools: installing ${packages[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends: prometheus recommends node-exporter (another service) and
# docker-compose recommends docker.io (a daemon); the tests need neither.
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# A systemd host ignores policy-rc.d for units enabled through deb-systemd-helper: stop and
# disable the package's Prometheus so nothing listens on :9090 after this script.
if [[ " ${packages[*]} " == *" prometheus "* ]]; then
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    # sysvinit with no policy-rc.d of its own: called directly, as invoke-rc.d would obey
    # the policy file and refuse to stop it too.
    "${sudo[@]}" /etc/init.d/prometheus stop >/dev/null || true
  fi
fi

for tool in prometheus promtool docker-compose; do
  command -v "$tool" >/dev/null || { echo "deploy_tools: '$tool' is still missing after the install" >&2; exit 1; }
done
echo "==> deploy_tools: $(prometheus --version 2>&1 | head -n1); $(docker-compose version --short 2>/dev/null || docker-compose --version)"
