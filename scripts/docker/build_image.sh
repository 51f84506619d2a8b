#!/usr/bin/env bash
# Build the Surety image in one go (`make image` runs this): a Docker engine (started if
# needed), a Debian trixie base, the wheelhouse, the default models, then `docker build`. Every
# step is cached, so a second run costs the build's own cached layers (seconds).
#
# usage: scripts/docker/build_image.sh
# environment:
#   SURETY_IMAGE       the tag to build (default surety:latest)
#   SURETY_BASE_IMAGE  the base image; default debian:trixie-slim when it is here or can be
#                      pulled, else the local surety-base:trixie (scripts/docker/base_image.sh)
set -euo pipefail
# shellcheck source=scripts/docker/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

image=${SURETY_IMAGE:-surety:latest}
[[ ${image##*/} == *:* ]] || image+=:latest
public_base=debian:trixie-slim
started=$SECONDS

log "1/5 Docker engine"
"$repo_root/scripts/docker/engine.sh" >/dev/null # (the pid of a daemon it started)

log "2/5 base image"
base=${SURETY_BASE_IMAGE:-}
if [[ -z $base ]]; then
  if docker image inspect "$public_base" >/dev/null 2>&1; then
    base=$public_base
  elif timeout 60 docker pull -q "$public_base" >/dev/null 2>&1; then
    base=$public_base
  else
    log "$public_base cannot be pulled (no registry reachable?); using a local Debian trixie base"
    base=$("$repo_root/scripts/docker/base_image.sh")
  fi
fi
log "base: $base"

log "3/5 wheelhouse"
"$repo_root/scripts/docker/wheelhouse.sh"

log "4/5 default models in model_repository/"
# build-defaults builds the entries that are missing (or of an older format) and skips the
# others in about a second; building needs the dev venv's torch (make build). The image carries
# the two classifiers; the LLM judge (540 MB of weights) is left out (.dockerignore) and mounted
# where it is wanted (docs/deployment.md).
[[ -x .venv/bin/surety ]] || die ".venv/bin/surety is missing: run 'make build' first"
.venv/bin/surety build-defaults --model-repository model_repository --quiet \
  --only digits --only fortune-topics

log "5/5 docker build -t $image"
version=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
  revision+="-dirty"
fi
# The builder stage gets a tag of its own (IMAGE-builder): it is the layer cache of the next
# build (compiler, ORT headers, the compiled wheel), and an untagged stage would look like
# garbage to `docker image prune`.
builder=${image%:*}-builder:${image##*:}
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
old_image=$(image_id "$image")
old_builder=$(image_id "$builder")
# --network host: this machine's engine runs without a bridge network (engine.sh), and apt in
# the build's RUN steps needs the network; elsewhere it is harmless. --force-rm: a failed step
# leaves no container behind.
build_args=(
  --network host --force-rm
  --build-arg "BASE_IMAGE=$base"
  --build-arg "VERSION=$version"
  --build-arg "REVISION=$revision"
)
docker build "${build_args[@]}" --target builder -t "$builder" "$repo_root"
docker build "${build_args[@]}" -t "$image" "$repo_root"

# The images this build superseded (with the vfs storage driver every layer is a full copy of
# the filesystem, gigabytes a build): removed with their own layers, the shared ones stay. An
# image still tagged elsewhere or used by a container is kept (rmi refuses; that is fine).
superseded() { # OLD_ID TAG: remove OLD_ID if TAG now names another image
  [[ -n $1 && $1 != "$(image_id "$2")" ]] || return 0
  if docker rmi "$1" >/dev/null 2>&1; then
    log "removed the image $2 was before (${1#sha256:})"
  fi
}
superseded "$old_image" "$image"
superseded "$old_builder" "$builder"

size=$(docker image inspect --format '{{.Size}}' "$image")
log "built $image on $base in $((SECONDS - started)) s: $((size / 1000000)) MB"
