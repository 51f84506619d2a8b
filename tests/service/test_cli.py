"""The surety console script: the subcommand table and build-defaults' skip of built entries."""

from __future__ import annotations

import subprocess
import sys

from service.cli import COMMANDS, main, parser


def test_every_command_has_help():
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert command.name in result.stdout


def test_serve_arguments_parse():
    args = parser().parse_args(["serve", "--port", "9000", "--model-repository", "/tmp/r"])
    assert (args.port, str(args.model_repository), args.host) == (9000, "/tmp/r", None)


def test_build_defaults_keeps_existing_entries(repository, capsys):
    before = (repository / "digits" / "config.yaml").stat().st_mtime_ns
    assert main(["build-defaults", "--model-repository", str(repository)]) == 0
    assert "exists; --force rebuilds it" in capsys.readouterr().out
    assert (repository / "digits" / "config.yaml").stat().st_mtime_ns == before
