#!/usr/bin/env bash
# Make sure a Docker engine answers here: install Debian's docker.io when dockerd is missing and
# start dockerd when no daemon answers. Idempotent: with an engine up it only says so.
#
# The daemon is started the way this kind of machine allows (no iptables, no bridge network, the
# vfs storage driver, which needs no overlay support from the kernel), so builds and containers
# use `--network host`. It keeps running after this script, like a system service would; its log
# is $SURETY_DOCKERD_LOG (default /var/log/surety-dockerd.log). When this script started the
# daemon it prints the daemon's pid on stdout (and nothing otherwise), so that a caller such as
# the image test can stop what it started: `kill PID` stops dockerd and its containerd.
#
# usage: scripts/docker/engine.sh
set -euo pipefail
# shellcheck source=scripts/docker/lib.sh
source "$(dirname "$0")/lib.sh"

dockerd_log=${SURETY_DOCKERD_LOG:-/var/log/surety-dockerd.log}
pidfile=/var/run/docker.pid
wait_s=${SURETY_DOCKERD_WAIT_S:-90}

answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && answers; then
  log "a Docker engine answers (server $(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

command -v dockerd >/dev/null || apt_install docker.io
command -v docker >/dev/null || die "docker.io is installed but there is no docker CLI on PATH"

started=false
if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  # A daemon that is still starting (e.g. one another script launched a moment ago): wait for
  # it rather than start a second one on the same socket and data root.
  log "dockerd (pid $(cat "$pidfile")) is running but not answering yet; waiting (log: $dockerd_log)"
else
  [[ $(id -u) == 0 ]] || die "no Docker engine answers and starting dockerd needs root"
  log "starting dockerd (log: $dockerd_log)"
  mkdir -p "$(dirname "$dockerd_log")"
  # setsid + nohup: the daemon outlives this script and the shell or test that ran it.
  setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    >>"$dockerd_log" 2>&1 </dev/null &
  started=true
fi

deadline=$((SECONDS + wait_s))
until answers; do
  if ((SECONDS >= deadline)); then
    log "the last lines of $dockerd_log:"
    tail -n 20 "$dockerd_log" >&2 || true
    die "no Docker engine answered within ${wait_s} s"
  fi
  sleep 0.5
done
log "Docker engine up (server $(docker version --format '{{.Server.Version}}'), log: $dockerd_log)"
if [[ $started == true ]]; then
  cat "$pidfile"
fi
