#!/usr/bin/env bash
# The fresh-install check, before a release: clone HEAD into a temporary folder and run the
# README's two commands there as a new user would, with no .venv, no pip cache and no models:
# `make test`, then `make run` until the server answers ready on http://127.0.0.1:$PORT (8000
# unless PORT is set; then it is stopped). Prints how long each took and how it ended; docs/operations.md records the runs.
#
#   scripts/fresh_install.sh            # from the lock (requirements/full.lock), as CI does
#   scripts/fresh_install.sh --newest   # the newest versions pyproject.toml allows (no lock):
#                                       # finds the next upstream break before a user does, and
#                                       # lists every package whose version differs from the lock
#
# Options: --keep leaves the clone (and its logs) in place; --no-run stops after `make test`.
# Exit status: 0 when both commands succeeded, 1 otherwise. Logs: <clone>.test.log, <clone>.run.log.
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
mode=lock keep=false run=true
for arg in "$@"; do
  case $arg in
  --newest) mode=newest ;;
  --keep) keep=true ;;
  --no-run) run=false ;;
  *)
    echo "usage: $0 [--newest] [--keep] [--no-run]" >&2
    exit 2
    ;;
  esac
done

log() { printf 'fresh: %s\n' "$*" >&2; }
port=${PORT:-8000}
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; }

if $run && port_busy; then
  log "error: 127.0.0.1:$port is taken; make run serves there (set PORT, or pass --no-run)"
  exit 2
fi

clone=$(mktemp -d /tmp/surety-fresh.XXXXXX)
git clone --quiet --no-local "$repo_root" "$clone"
commit=$(git -C "$clone" rev-parse --short HEAD)
log "commit $commit, mode $mode, clone $clone"
cleanup() {
  if $keep; then log "kept $clone"; else rm -rf "$clone"; fi
}
trap cleanup EXIT

# A new user's machine: no pip cache to reuse, the resolution mode asked for.
export PIP_NO_CACHE_DIR=1 SURETY_RESOLVE=$mode
cd "$clone"

status=0
start=$SECONDS
if make test >"$clone.test.log" 2>&1; then test_result=passed; else test_result=failed status=1; fi
test_seconds=$((SECONDS - start))
summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$clone.test.log" | tail -1 || true)
log "make test: $test_result after ${test_seconds}s ${summary:+($summary)} — log $clone.test.log"

if [[ $mode == newest ]]; then
  # What moved since the lock: the names to look at first when the newest versions break.
  .venv/bin/python - "$clone/requirements/full.lock" <<'PY' >&2 || true
import re, sys
from importlib.metadata import distributions

locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open(sys.argv[1]).read(), re.M))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(n): v for n, v in locked.items()}
moved = sorted(
    (norm(d.metadata["Name"]), locked.get(norm(d.metadata["Name"]), "(not locked)"), d.version)
    for d in distributions()
    if locked.get(norm(d.metadata["Name"])) != d.version and norm(d.metadata["Name"]) != "surety-serving"
)
print(f"fresh: {len(moved)} packages differ from requirements/full.lock:")
for name, old, new in moved:
    print(f"fresh:   {name} {old} -> {new}")
PY
fi

if $run; then
  start=$SECONDS
  setsid make run PORT="$port" >"$clone.run.log" 2>&1 &
  pid=$!
  run_result="not ready after 30 min"
  while ((SECONDS - start < 1800)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      run_result="exited before ready" status=1
      break
    fi
    if python3 -c 'import sys, urllib.request as u; u.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v2/health/ready", timeout=2)' "$port" 2>/dev/null; then
      run_result=ready
      break
    fi
    sleep 2
  done
  run_seconds=$((SECONDS - start))
  [[ $run_result == ready ]] || status=1
  kill -TERM -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  log "make run: $run_result after ${run_seconds}s — log $clone.run.log"
fi

log "commit $commit, mode $mode: $([[ $status == 0 ]] && echo OK || echo FAILED)"
exit "$status"
