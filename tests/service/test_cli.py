"""The surety console script: the subcommand table and build-defaults' skip of built entries."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from surety_serving.cli import (
    COMMANDS,
    DEFAULT_MODELS,
    DEFAULTS_FORMAT,
    DEFAULTS_STAMP,
    built_format,
    main,
    parser,
)

pytestmark = pytest.mark.model


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


def test_build_defaults_keeps_existing_entries(repository, tmp_path, caplog):
    # Every default entry exists (fortune-topics and stsb-judge as stand-in folders: never built
    # in tests).
    root = tmp_path / "repo"
    shutil.copytree(repository / "digits", root / "digits")
    for name in DEFAULT_MODELS:
        (root / name).mkdir(exist_ok=True)
        stamp(root / name, DEFAULTS_FORMAT)
    before = (root / "digits" / "config.yaml").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="surety_serving")
    assert main(["build-defaults", "--model-repository", str(root)]) == 0
    out = caplog.text
    assert all(
        f"{name}: {root / name} exists; --force rebuilds it" in out for name in DEFAULT_MODELS
    )
    assert (root / "digits" / "config.yaml").stat().st_mtime_ns == before


def stamp(entry: Path, version: int) -> None:
    (entry / DEFAULTS_STAMP).write_text(json.dumps({"format": version}))


@pytest.mark.slow  # trains digits again
def test_build_defaults_rebuilds_entries_of_an_older_format(repository, tmp_path, caplog):
    root = tmp_path / "repo"
    shutil.copytree(repository / "digits", root / "digits")
    stamp(root / "digits", DEFAULTS_FORMAT - 1)
    for stand_in in ("fortune-topics", "stsb-judge"):  # never built in tests
        (root / stand_in).mkdir()
        stamp(root / stand_in, DEFAULTS_FORMAT)
    caplog.set_level(logging.INFO, logger="surety_serving")
    assert main(["build-defaults", "--model-repository", str(root), "--quiet"]) == 0
    out = caplog.text
    older = DEFAULTS_FORMAT - 1
    assert f"digits: {root / 'digits'} was built by an older Surety (format {older})" in out
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


def test_build_defaults_only_builds_the_named_models(tmp_path, caplog):
    root = tmp_path / "repo"
    (root / "fortune-topics").mkdir(parents=True)
    stamp(root / "fortune-topics", DEFAULTS_FORMAT)
    args = ["build-defaults", "--model-repository", str(root), "--only", "fortune-topics"]
    caplog.set_level(logging.INFO, logger="surety_serving")
    assert main(args) == 0
    assert "fortune-topics: " + str(root / "fortune-topics") + " exists" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == ["fortune-topics"]


def _labeled(path: Path, labels: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"text": f"text {i}", "label": label}) + "\n"
            for i, label in enumerate(labels)
        )
    )
    return path


def test_export_classifier_reports_a_failed_check_without_a_traceback(tmp_path, capsys):
    # Like `surety export judge`: an ExportError is one message and exit status 1, and the
    # repository is left as it was (no entry, no hidden work folder).
    train = _labeled(tmp_path / "train.jsonl", ["a", "b", "z"])
    root = tmp_path / "repo"
    argv = ["export", "classifier", "--train", str(train), "--test", str(train), "--name", "m"]
    assert main([*argv, "--labels", "a,b", "--model-repository", str(root)]) == 1
    err = capsys.readouterr().err
    assert "export classifier: labels ['z'] are not among ('a', 'b'); nothing written" in err
    assert "Traceback" not in err
    assert list(root.iterdir()) == []


def test_export_classifier_reports_a_missing_file(tmp_path, capsys):
    root = tmp_path / "repo"
    argv = ["export", "classifier", "--train", str(tmp_path / "none.jsonl"), "--test", "b"]
    assert main([*argv, "--name", "m", "--model-repository", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export classifier: ") and "none.jsonl" in err
    assert list(root.iterdir()) == []


def test_export_judge_reports_a_missing_model_alike(tmp_path, capsys):
    root = tmp_path / "repo"
    argv = ["export", "judge", "--model", str(tmp_path / "no-model"), "--name", "j"]
    assert main([*argv, "--model-repository", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("export judge: ") and "no-model" in err and "nothing written" in err
    assert list(root.iterdir()) == []


def test_the_command_line_shows_progress_messages_on_stderr(tmp_path):
    # configure_logging, run by main: the surety.* loggers' INFO messages reach stderr, with the
    # logger's name; stdout stays for results.
    root = tmp_path / "repo"
    (root / "fortune-topics").mkdir(parents=True)
    stamp(root / "fortune-topics", DEFAULTS_FORMAT)
    args = ["build-defaults", "--model-repository", str(root), "--only", "fortune-topics"]
    result = subprocess.run(
        [sys.executable, "-m", "surety_serving.cli", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "INFO surety_serving: fortune-topics: " in result.stderr and "exists" in result.stderr
    assert result.stdout == ""


def test_a_message_during_a_progress_bar_is_written_above_it():
    import io

    from tqdm import tqdm

    from surety_serving.cli import _BarSafeHandler

    stream = io.StringIO()
    handler = _BarSafeHandler(stream)
    record = logging.LogRecord("surety.x", logging.INFO, __file__, 1, "epoch 1 done", None, None)
    with tqdm(total=2, file=stream, desc="bar", ascii=True) as bar:
        bar.update(1)
        handler.emit(record)
        bar.update(1)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    assert "epoch 1 done" in lines  # a line of its own, not glued to the bar


def test_data_prints_each_file_with_its_record_count(capsys):
    """`surety data fortunes` on the cache `make data` filled: every split with its count."""
    assert main(["data", "fortunes"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    files = {name: (int(count), Path(path)) for name, count, path in rows}
    manifest = json.loads((files["train"][1].parent / "manifest.json").read_text())
    # The manifest counts each split by label (and, apart, what deduplication dropped).
    assert {name: count for name, (count, _) in files.items()} == {
        name: sum(manifest["counts"][name].values()) for name in files
    }
    assert {"train", "calibration", "test"} <= files.keys()


def test_data_names_the_set_and_the_problem(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert main(["data", "doc-text", "--cache-dir", str(blocked / "cache")]) == 1
    assert capsys.readouterr().err.startswith("data: doc-text: [Errno 20] Not a directory")
