"""Debian packages as data: fetched with ``apt-get download`` and unpacked with ``dpkg -x``.

Nothing is installed system-wide: apt runs against a private sources list and state in a
temporary folder, and the packages are unpacked into ``<cache_dir>/root``. A stamp file,
``<cache_dir>/corpus.json``, records the suite, the mirror and each package file with its
sha256; while it exists (and the expected folders do), the download is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "DEBIAN_KEYRING",
    "DEBIAN_MIRROR",
    "DEBIAN_SUITE",
    "STAMP_NAME",
    "DebianError",
    "download_packages",
    "locked",
    "read_stamp",
    "repo_root",
]

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
STAMP_NAME = "corpus.json"


class DebianError(RuntimeError):
    """Packages could not be fetched or unpacked, or their contents could not be read."""


def repo_root() -> Path | None:
    """The repository checkout this package lives in, if it is run from one."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (created if needed) for the ``with`` block."""
    # A test run and a model build may prepare the same cache at once; one waits for the other.
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_stamp(cache_dir: Path) -> dict[str, Any]:
    """The stamp :func:`download_packages` wrote into ``cache_dir``."""
    stamp: dict[str, Any] = json.loads((cache_dir / STAMP_NAME).read_text(encoding="utf-8"))
    return stamp


def _run(step: str, command: Sequence[str], cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DebianError(f"{step}: could not run {command[0]}: {exc}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise DebianError(f"{step} failed (exit status {result.returncode}):\n{tail}")


def download_packages(
    cache_dir: Path,
    packages: Sequence[str],
    expect: Sequence[Path],
    *,
    suite: str = DEBIAN_SUITE,
    mirror: str = DEBIAN_MIRROR,
) -> Path:
    """Fetch ``packages`` from Debian and unpack them into ``cache_dir/root``; returns that root.

    ``expect`` are folders (relative to the root) the packages must provide. Cached: when the
    stamp and every expected folder exist, nothing is fetched.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / "root"
    stamp = cache_dir / STAMP_NAME
    if stamp.is_file() and all((root / path).is_dir() for path in expect):
        return root

    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise DebianError(
                f"{tool!r} not found: fetching {', '.join(packages)} needs a Debian system "
                f"(or unpack those packages into {root} yourself and write {stamp})"
            )
    if not DEBIAN_KEYRING.is_file():
        raise DebianError(f"{DEBIAN_KEYRING} is missing (package debian-archive-keyring)")

    log.info(f"downloading {' '.join(packages)} from Debian {suite} into {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debian-apt-") as tmp:
        work = Path(tmp)
        for sub in ("sources.list.d", "lists/partial", "cache/archives/partial", "debs"):
            (work / sub).mkdir(parents=True)
        (work / "sources.list").write_text(
            f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n", encoding="utf-8"
        )
        # A private sources list and state: the machine's apt configuration is never touched.
        apt_options = [
            f"-oDir::Etc::SourceList={work / 'sources.list'}",
            f"-oDir::Etc::SourceParts={work / 'sources.list.d'}",
            f"-oDir::State::Lists={work / 'lists'}",
            f"-oDir::Cache={work / 'cache'}",
            "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=1",
        ]
        log.info("apt-get update (private package lists)")
        # Without --error-on=any a failed fetch still exits 0, and the download step would
        # then report a misleading "Unable to locate package".
        _run("apt-get update", ["apt-get", "-q", "--error-on=any", *apt_options, "update"])
        log.info("apt-get download")
        _run(
            "apt-get download",
            ["apt-get", "-q", *apt_options, "download", *packages],
            cwd=work / "debs",
        )
        debs = sorted((work / "debs").glob("*.deb"))
        if len(debs) != len(packages):
            raise DebianError(f"expected {len(packages)} .deb files, got {[d.name for d in debs]}")
        staging = cache_dir / "root.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for deb in debs:
            log.info(f"unpacking {deb.name}")
            _run(f"dpkg -x {deb.name}", ["dpkg", "-x", str(deb), str(staging)])
        missing = [str(path) for path in expect if not (staging / path).is_dir()]
        if missing:
            raise DebianError(f"the packages did not contain {', '.join(missing)}")
        shutil.rmtree(root, ignore_errors=True)
        staging.replace(root)
        files = [
            {"file": deb.name, "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
            for deb in debs
        ]
    stamp.write_text(
        json.dumps({"suite": suite, "mirror": mirror, "packages": files}, indent=2) + "\n",
        encoding="utf-8",
    )
    log.info(f"packages unpacked in {root}")
    return root
