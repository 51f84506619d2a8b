"""The surety console script: the subcommand table and build-defaults' skip of built entries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from surety_serving.cli import (
    COMMANDS,
    DEFAULT_MODELS,
    DEFAULTS_FORMAT,
    DEFAULTS_STAMP,
    built_format,
    main,
    parser,
)


def test_every_command_has_help():
    result = subprocess.run(
        [sys.executable, "-m", "surety_serving.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for command in COMMANDS:
        assert command.name in result.stdout


def test_serve_arguments_parse():
    args = parser().parse_args(["serve", "--port", "9000", "--model-repository", "/tmp/r"])
    assert (args.port, str(args.model_repository), args.host) == (9000, "/tmp/r", None)


def test_build_defaults_keeps_existing_entries(repository, tmp_path, capsys):
    # Every default entry exists (fortune-topics and stsb-judge as stand-in folders: never built
    # in tests).
    root = tmp_path / "repo"
    shutil.copytree(repository / "digits", root / "digits")
    for name in DEFAULT_MODELS:
        (root / name).mkdir(exist_ok=True)
        stamp(root / name, DEFAULTS_FORMAT)
    before = (root / "digits" / "config.yaml").stat().st_mtime_ns
    assert main(["build-defaults", "--model-repository", str(root)]) == 0
    out = capsys.readouterr().out
    assert all(
        f"{name}: {root / name} exists; --force rebuilds it" in out for name in DEFAULT_MODELS
    )
    assert (root / "digits" / "config.yaml").stat().st_mtime_ns == before


def stamp(entry: Path, version: int) -> None:
    (entry / DEFAULTS_STAMP).write_text(json.dumps({"format": version}))


def test_build_defaults_rebuilds_entries_of_an_older_format(repository, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(repository / "digits", root / "digits")
    stamp(root / "digits", DEFAULTS_FORMAT - 1)
    for stand_in in ("fortune-topics", "stsb-judge"):  # never built in tests
        (root / stand_in).mkdir()
        stamp(root / stand_in, DEFAULTS_FORMAT)
    assert main(["build-defaults", "--model-repository", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"digits: {root / 'digits'} was built by an older Surety (format 1)" in out
    assert "fortune-topics: " + str(root / "fortune-topics") + " exists" in out
    assert built_format(root / "digits") == DEFAULTS_FORMAT
    assert (root / "digits" / "1" / "uncertainty" / "ood.json").is_file()


def test_defaults_include_the_text_model_and_the_judge():
    assert list(DEFAULT_MODELS) == ["digits", "fortune-topics", "stsb-judge"]


def test_export_classifier_arguments_parse():
    args = parser().parse_args(
        ["export", "classifier", "--train", "a.jsonl", "--test", "b.jsonl", "--name", "m"]
    )
    assert (args.command, args.kind, args.name, args.version) == ("export", "classifier", "m", 1)
    assert (args.encoder, str(args.model_repository), args.max_length) == (
        None,
        "model_repository",
        None,
    )


def test_export_classifier_keeps_an_existing_version(tmp_path, capsys):
    (tmp_path / "m" / "1").mkdir(parents=True)
    argv = ["export", "classifier", "--train", "a", "--test", "b", "--name", "m"]
    assert main([*argv, "--model-repository", str(tmp_path)]) == 1
    assert "exists; --force replaces it" in capsys.readouterr().err


def test_build_defaults_only_builds_the_named_models(tmp_path, capsys):
    root = tmp_path / "repo"
    (root / "fortune-topics").mkdir(parents=True)
    stamp(root / "fortune-topics", DEFAULTS_FORMAT)
    args = ["build-defaults", "--model-repository", str(root), "--only", "fortune-topics"]
    assert main(args) == 0
    assert "fortune-topics: " + str(root / "fortune-topics") + " exists" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["fortune-topics"]
