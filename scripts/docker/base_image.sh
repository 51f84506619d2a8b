#!/usr/bin/env bash
# Make the local base image surety-base:trixie (Debian trixie, minbase) unless it exists: for
# machines that reach Debian's package mirror but no image registry, where debian:trixie-slim
# cannot be pulled. debootstrap builds the root filesystem from the mirror this machine's apt
# uses; the tarball is cached in build/docker/, so a lost image is re-imported in seconds.
#
# Delete build/docker/trixie-minbase.tar and `docker rmi surety-base:trixie` to refresh it.
#
# usage: scripts/docker/base_image.sh   (prints the image's tag on stdout)
set -euo pipefail
# shellcheck source=scripts/docker/lib.sh
source "$(dirname "$0")/lib.sh"

tag=${SURETY_LOCAL_BASE:-surety-base:trixie}
suite=trixie
tarball=$cache_dir/$suite-minbase.tar

if docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag exists"
  echo "$tag"
  exit 0
fi

# The Debian mirror of this machine's apt sources (deb822 .sources files or the one-line
# format), so the base comes from where apt already fetches; deb.debian.org otherwise.
debian_mirror() {
  local uri
  uri=$(
    {
      grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
      grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
    } | grep -E '/debian/?$' | head -n 1
  ) || true
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -s $tarball ]]; then
  apt_install debootstrap
  mirror=$(debian_mirror)
  mkdir -p "$cache_dir"
  rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$tarball.partial"' EXIT
  # mktemp makes the folder 0700, and it becomes the image's /: users other than root could
  # not reach anything.
  chmod 0755 "$rootfs"
  log "debootstrap --variant=minbase $suite from $mirror (about half a minute)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$cache_dir/debootstrap.log" 2>&1 || {
    tail -n 20 "$cache_dir/debootstrap.log" >&2
    die "debootstrap failed (full log: $cache_dir/debootstrap.log)"
  }
  # What debian:*-slim does too: later apt-get installs skip documentation, manuals and
  # translations (copyright files stay), and the base carries no package lists or apt caches.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/*/changelog* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  log "packing the root filesystem into $tarball"
  tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi

log "importing $tarball as $tag"
docker import --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "Debian $suite minbase (debootstrap), made by scripts/docker/base_image.sh" \
  "$tarball" "$tag" >/dev/null
log "$tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "$tag"
