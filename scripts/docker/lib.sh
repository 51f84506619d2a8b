# Sourced by the scripts beside it (not run on its own): messages, the paths they share, and
# installing Debian packages on demand, so that a fresh machine (CI's included) needs nothing
# installed by hand.
# shellcheck shell=bash

#: The repository root, whatever directory the script was started from.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
#: Caches of the image build (the base rootfs tarball, the wheelhouse): under build/, which
#: `make clean` removes and git ignores. (Read by the scripts that source this file.)
# shellcheck disable=SC2034
cache_dir=${SURETY_DOCKER_CACHE:-$repo_root/build/docker}

log() { printf '%s: %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# apt_install PACKAGE...: install the packages that are not installed yet (needs root).
apt_install() {
  local missing=() package
  for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$package")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install them by hand"
  [[ $(id -u) == 0 ]] || die "${missing[*]} missing: install them as root (apt-get install ${missing[*]})"
  log "installing ${missing[*]} with apt-get (once per machine)"
  # The package lists may be missing or stale on a fresh machine; one update per install.
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
