"""Debian packages as data: the cache that spares a download, and clear errors without apt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from surety_serving.data.debian import STAMP_NAME, DebianError, download_packages, read_stamp

pytestmark = pytest.mark.unit


def _no_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: None)


def test_a_stamped_cache_is_used_without_apt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_apt(monkeypatch)
    (tmp_path / "root" / "usr" / "share" / "doc" / "pkg").mkdir(parents=True)
    stamp = {"suite": "bookworm", "packages": [{"file": "pkg_1_all.deb", "sha256": "00"}]}
    (tmp_path / STAMP_NAME).write_text(json.dumps(stamp), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="surety_serving.data")
    root = download_packages(tmp_path, ["pkg"], [Path("usr/share/doc/pkg")])
    assert root == tmp_path / "root"
    assert read_stamp(tmp_path) == stamp
    assert caplog.messages == []  # nothing fetched, nothing said


def test_a_cache_without_an_expected_folder_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_apt(monkeypatch)
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / STAMP_NAME).write_text("{}", encoding="utf-8")
    with pytest.raises(DebianError, match=r"'apt-get' not found: fetching pkg-a, pkg-b"):
        download_packages(tmp_path, ["pkg-a", "pkg-b"], [Path("a"), Path("b")])
