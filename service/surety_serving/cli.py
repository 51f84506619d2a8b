"""The ``surety`` command line: a table of subcommands."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surety_serving.uncertainty.calibrate import calibrate_arguments, calibrate_command

log = logging.getLogger("surety_serving")

#: Default models: name → module with ``build(entry: Path) -> ...`` (imported only when built,
#: so serving never imports torch).
DEFAULT_MODELS = {
    "digits": "surety_serving.models.digits",
    "fortune-topics": "surety_serving.export.fortune_topics",
    "stsb-judge": "surety_serving.export.stsb_judge",
}
#: What build-defaults writes; bump it when a default model's build changes in a way an entry
#: built before cannot be served with (2: OOD detector registry, fine-tuned fortune-topics;
#: 3: the OOD detector set with conformal p-values, deduplicated fortunes).
DEFAULTS_FORMAT = 3
#: Written into each entry build-defaults builds, recording DEFAULTS_FORMAT.
DEFAULTS_STAMP = ".build-defaults.json"


@dataclass(frozen=True)
class Command:
    """One subcommand: its arguments and what it runs (returning an exit status)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, help="default $SURETY_MODEL_REPOSITORY")
    parser.add_argument("--host", help="default $SURETY_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, help="default $SURETY_PORT or 8000")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port, each with every model; default $SURETY_WORKERS"
        " or 1",
    )


def serve(args: argparse.Namespace) -> int:
    """Serve the model repository with uvicorn (in ``--workers`` processes, default 1)."""
    from surety_serving.server import serve as run_server
    from surety_serving.settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("model_repository", args.model_repository),
            ("host", args.host),
            ("port", args.port),
            ("log_level", args.log_level),
            ("processes", args.workers),
        )
        if value is not None
    }
    settings = Settings(**overrides)
    logging.getLogger().setLevel(settings.log_level.upper())
    return run_server(settings)


def _build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository", type=Path, default=Path("model_repository"), help="where to write"
    )
    parser.add_argument("--force", action="store_true", help="rebuild entries that exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--only",
        choices=list(DEFAULT_MODELS),
        action="append",
        help="build only this default model (repeat the option); default: all of them",
    )


def build_defaults(args: argparse.Namespace) -> int:
    """Train and export every default model into the repository (skips existing entries)."""
    root: Path = args.model_repository
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        _build_entries(root, args.only or list(DEFAULT_MODELS), args.force, args.quiet)
    except BaseException:
        # A repository that did not exist before must not be left half-built (make would
        # take the folder for a finished one).
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return 0


def built_format(entry: Path) -> int | None:
    """The DEFAULTS_FORMAT an entry was built with (None: not by build-defaults, or unreadable)."""
    try:
        stamp = json.loads((entry / DEFAULTS_STAMP).read_text())
    except (OSError, ValueError):
        return None
    value = stamp.get("format") if isinstance(stamp, dict) else None
    return value if isinstance(value, int) else None


def _build_entries(root: Path, names: list[str], force: bool, quiet: bool) -> None:
    for name, module_name in DEFAULT_MODELS.items():
        if name not in names:
            continue
        entry = root / name
        if entry.exists() and not force:
            built = built_format(entry)
            if built == DEFAULTS_FORMAT:
                log.info("%s: %s exists; --force rebuilds it", name, entry)
                continue
            # An entry of an older build would not load with this version (e.g. uncertainty
            # artifacts of another format): it is replaced rather than served broken.
            log.info(
                "%s: %s was built by an older Surety (format %s); rebuilding", name, entry, built
            )
        # Written beside the entry under a hidden name, then renamed: a build that fails or is
        # interrupted never leaves a half-written entry for the server to trip on.
        staging = root / f".{name}.building"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("%s: building into %s", name, entry)
        module = importlib.import_module(module_name)
        module.build(staging, progress=not quiet)
        (staging / DEFAULTS_STAMP).write_text(json.dumps({"format": DEFAULTS_FORMAT}) + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
        log.info("%s: done", name)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    from surety_serving.export.commands import EXPORTS

    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (help_text, arguments, _) in EXPORTS.items():
        sub = kinds.add_parser(kind, help=help_text, description=help_text)
        arguments(sub)


def export(args: argparse.Namespace) -> int:
    """Dispatch ``surety export KIND`` to its entry in
    :data:`surety_serving.export.commands.EXPORTS`."""
    from surety_serving.export.commands import EXPORTS

    return EXPORTS[args.kind][2](args)


def _optimize_arguments(parser: argparse.ArgumentParser) -> None:
    from surety_serving.optimize.options import add_optimize_arguments

    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the model to rewrite")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT.onnx", help="where to write it"
    )
    add_optimize_arguments(parser)
    parser.add_argument(
        "--no-softmax",
        action="store_true",
        help="leave Softmax nodes as they are (by default the last-axis ones become "
        "ai.surety::TwoPassSoftmax)",
    )


def optimize(args: argparse.Namespace) -> int:
    """Rewrite a model with the ai.surety ops, check it against the original, write it."""
    from surety_serving.optimize.options import DriftError, OptimizeError, options_from_arguments
    from surety_serving.optimize.pipeline import optimize_file

    try:
        options = options_from_arguments(args, softmax=not args.no_softmax)
        report = optimize_file(args.model, args.output, options)
    except DriftError as error:
        print(error.report.format(), file=sys.stderr)
        print(f"optimize: {error}; nothing written", file=sys.stderr)
        return 1
    except (OptimizeError, ValueError) as error:
        print(f"optimize: {error}; nothing written", file=sys.stderr)
        return 1
    print(report.format())
    print(f"wrote {args.output}")
    return 0


def _fit_judge_arguments(parser: argparse.ArgumentParser) -> None:
    from surety_serving.judge.fit import METHODS

    parser.add_argument("name", help="the judge's name in the repository")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument(
        "--pairs", type=int, default=600, help="STS-B train pairs to fit and select on"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.25, help="of --pairs, for selection"
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        action="append",
        help="fit only these (repeat the option); default: all, the best on validation is kept",
    )
    parser.add_argument("--seed", type=int, default=0, help="which STS-B pairs are drawn")


def fit_judge(args: argparse.Namespace) -> int:
    """Fit a judge's layer weights on STS-B and write the best into its graph."""
    from surety_serving.judge.fit import METHODS, fit_judge, judge_scale, stsb_sample

    if not 0 < args.validation_fraction < 1 or args.pairs < 8:
        print("fit-judge: need --pairs >= 8 and 0 < --validation-fraction < 1", file=sys.stderr)
        return 2
    methods = tuple(m for m in METHODS if m in (args.method or METHODS))
    entry = args.model_repository / args.name
    try:
        sample = stsb_sample("train", args.pairs, judge_scale(entry), args.seed)
        fit_judge(
            entry,
            sample,
            validation_fraction=args.validation_fraction,
            methods=methods,
            version=args.version,
        )
    except (OSError, ValueError) as error:
        print(f"fit-judge: {error}", file=sys.stderr)
        return 1
    return 0


#: The data sets ``surety data`` prepares, each by a function of the cache folder and the seed
#: that returns its JSONL files by name (docs/models.md, docs/judge.md).
DATA_SETS: dict[str, Callable[[Path | None, int], dict[str, Path]]] = {
    "fortunes": lambda cache, seed: _fortunes(cache, seed),
    "stsb": lambda cache, seed: _stsb(cache),
    "doc-text": lambda cache, seed: _doc_text(cache, seed),
    "background": lambda cache, seed: _background(cache, seed),
}


def _fortunes(cache: Path | None, seed: int) -> dict[str, Path]:
    from surety_serving.data.fortunes import prepare_fortunes

    return prepare_fortunes(cache, seed=seed).split_paths()


def _stsb(cache: Path | None) -> dict[str, Path]:
    from surety_serving.data.stsb import prepare_stsb

    return prepare_stsb(cache).split_paths()


def _doc_text(cache: Path | None, seed: int) -> dict[str, Path]:
    from surety_serving.data.doc_text import prepare_doc_text

    return prepare_doc_text(cache, seed=seed)


def _background(cache: Path | None, seed: int) -> dict[str, Path]:
    from surety_serving.data.background import prepare_background

    return prepare_background(cache, seed=seed)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(DATA_SETS), help="the data set")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="default: its $SURETY_*_DIR variable, else data/<set> in the checkout",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (not for stsb)")


def data(args: argparse.Namespace) -> int:
    """Fetch (once) and split a data set; print each JSONL file with its record count."""
    from surety_serving.data.debian import DebianError
    from surety_serving.data.stsb import StsbError

    try:
        files = DATA_SETS[args.name](args.cache_dir, args.seed)
    except (DebianError, StsbError, OSError, ValueError) as error:
        print(f"data: {args.name}: {error}", file=sys.stderr)
        return 1
    for name, path in files.items():
        with path.open(encoding="utf-8") as lines:
            records = sum(1 for line in lines if line.strip())
        print(f"{name}\t{records}\t{path}")
    return 0


COMMANDS = (
    Command("serve", "serve the model repository over HTTP", _serve_arguments, serve),
    Command(
        "build-defaults",
        "train and export the default models into the repository",
        _build_arguments,
        build_defaults,
    ),
    Command("export", "export a model into the repository", _export_arguments, export),
    Command(
        "optimize",
        "rewrite an ONNX model with the ai.surety ops (checked against the original)",
        _optimize_arguments,
        optimize,
    ),
    Command(
        "fit-judge",
        "fit an LLM judge's layer weights on STS-B human judgments (LAGER and signed)",
        _fit_judge_arguments,
        fit_judge,
    ),
    Command(
        "calibrate",
        "choose and fit the OOD detector and SDM for a model version",
        calibrate_arguments,
        calibrate_command,
    ),
    Command("data", "fetch (once) and split a data set into JSONL files", _data_arguments, data),
)


def parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-parser per entry of COMMANDS."""
    root = argparse.ArgumentParser(prog="surety", description="Surety inference serving")
    subparsers = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return root


class _BarSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, where progress bars are drawn too: while tqdm is loaded, a message is written
    through it, above the bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        bars = sys.modules.get("tqdm")
        if bars is None:
            super().emit(record)
            return
        try:
            bars.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure_logging() -> None:
    """The one logging set-up of every command: messages on stderr with their time, level and
    module; the offline commands' progress (``surety_serving.*`` loggers) at INFO. Does nothing
    where logging is configured already (an embedding program, pytest)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[_BarSafeHandler()],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``surety`` console script."""
    configure_logging()
    args = parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
