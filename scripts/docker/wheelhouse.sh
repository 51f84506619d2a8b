#!/usr/bin/env bash
# Build the wheelhouse that the image installs from, build/docker/wheels/: pip inside a
# `docker build` cannot reach the package index here, so every Python package comes in with the
# build context instead. Wheels for Debian trixie's python3 (CPython 3.13, glibc 2.41, x86-64),
# downloaded by this machine's pip whatever Python runs it.
#
# What goes in is the project's locks (exact versions and hashes, `make lock` writes them from
# pyproject.toml), copied beside the wheels for the Dockerfile to install from:
#   serving.lock   [project].dependencies: everything `surety serve` imports (the `models`
#                  extra, torch and transformers included, is for building models and stays out
#                  of the image)
#   build.lock     [build-system].requires: scikit-build-core, cmake, ninja
# The locks are resolved on this machine's Python; their hashes cover every file PyPI has for
# each pinned version, so the CPython 3.13 wheels are checked too.
# Cached: rebuilt only when those locks (or this script) change.
#
# usage: scripts/docker/wheelhouse.sh
set -euo pipefail
# shellcheck source=scripts/docker/lib.sh
source "$(dirname "$0")/lib.sh"

wheels=$cache_dir/wheels
# Outside wheels/: the folder is build context, and a file in it that changed would make the
# image rebuild every layer from its COPY on.
stamp=$cache_dir/wheels.sha256
python_version=3.13 # trixie's python3
glibc_minor=41      # trixie's glibc 2.41: manylinux_2_x wheels up to x = 41 run on it

python=$repo_root/.venv/bin/python
[[ -x $python ]] || python=python3
locks=("$repo_root/requirements/serving.lock" "$repo_root/requirements/build.lock")

want=$(cat "${locks[@]}" "$0" | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" && -d $wheels ]]; then
  log "$wheels is up to date ($(find "$wheels" -name '*.whl' | wc -l) wheels)"
  exit 0
fi

mkdir -p "$cache_dir"
staging=$(mktemp -d "$cache_dir/wheels.XXXXXX")
trap 'rm -rf "$staging"' EXIT
cp "${locks[@]}" "$staging/"

platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for ((minor = 5; minor <= glibc_minor; minor++)); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done

log "downloading wheels for CPython $python_version (manylinux x86-64) into $wheels"
"$python" -m pip --disable-pip-version-check download -q --dest "$staging" \
  --only-binary=:all: --implementation cp --python-version "$python_version" \
  --abi "cp${python_version/./}" "${platforms[@]}" \
  --require-hashes -r "$staging/serving.lock" -r "$staging/build.lock"

rm -rf "$wheels"
mv "$staging" "$wheels"
trap - EXIT
echo "$want" >"$stamp"
log "$wheels: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
