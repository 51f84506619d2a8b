#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ API headers from Debian trixie's libonnxruntime-dev into DEST,
# without installing anything system-wide: a private apt sources list and state directory,
# `apt-get download`, then `dpkg -x`. The result is cached: a second call is a no-op.
#
# usage: scripts/fetch_ort_headers.sh DEST
set -euo pipefail

dest=${1:?usage: fetch_ort_headers.sh DEST}
marker="$dest/usr/include/onnxruntime/onnxruntime_lite_custom_op.h"
if [[ -f $marker ]]; then
  exit 0
fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch_ort_headers: '$tool' not found (a Debian system is needed to fetch libonnxruntime-dev)" >&2; exit 1; }
done

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f $keyring ]] || { echo "fetch_ort_headers: $keyring is missing (package debian-archive-keyring)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources.list.d" "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=$keyring] http://deb.debian.org/debian trixie main" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=$work/sources.list.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=1"
)
echo "fetch_ort_headers: downloading libonnxruntime-dev from Debian trixie into $dest" >&2
apt-get -q "${apt_opts[@]}" update >&2
(cd "$work/debs" && apt-get -q "${apt_opts[@]}" download libonnxruntime-dev >&2)
mkdir -p "$dest"
dpkg -x "$work"/debs/libonnxruntime-dev_*.deb "$dest"
[[ -f $marker ]] || { echo "fetch_ort_headers: libonnxruntime-dev did not contain $marker" >&2; exit 1; }
echo "fetch_ort_headers: headers in $dest/usr/include/onnxruntime" >&2
